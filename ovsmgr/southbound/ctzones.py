"""Conntrack zones in OVSDB: the Datapath row of a datapath type, its CT_Zone rows and their
CT_Timeout_Policy, as ovsdbapp commands that `ovsdb.SwitchDB` runs in its transactions.

What ovsmgr writes here carries external_ids `ovsmgr-bridge` (the bridge whose policy set it),
so it never overwrites a zone someone else configured and removes only its own rows.
"""

from __future__ import annotations

from typing import Any

from ovsmgr.southbound.ovslib import ovs_command


class ZoneError(Exception):
    """The rows of a conntrack zone cannot be written as asked (someone else's zone, no database row)."""


SCHEMA = "Open_vSwitch"


OWNER_KEY = "ovsmgr-bridge"
"""external_ids key on the CT_Zone and CT_Timeout_Policy rows ovsmgr writes: the bridge whose policy
set them. A Datapath row ovsmgr had to create carries it too, so it is removed with its last zone."""


def _system_row(api: Any) -> Any:
    rows = list(api.tables[SCHEMA].rows.values())
    if not rows:
        raise ZoneError("the database has no Open_vSwitch row (not initialised)")
    return rows[0]


class EnsureDatapath(ovs_command.BaseCommand):
    """The Datapath row of a datapath type, created (owned by `owner`) when there is none.

    ovs-vswitchd reports a datapath's capabilities only in its Datapath row, so the row must
    exist before they can be checked."""

    def __init__(self, api: Any, dp_type: str, owner: str) -> None:
        super().__init__(api)
        self.dp_type = dp_type
        self.owner = owner

    def run_idl(self, txn: Any) -> None:
        system = _system_row(self.api)
        if self.dp_type not in system.datapaths:
            row = txn.insert(self.api.tables["Datapath"])
            row.external_ids = {OWNER_KEY: self.owner}
            system.setkey("datapaths", self.dp_type, row)


class SetZoneTimeouts(ovs_command.BaseCommand):
    """Give conntrack zone `zone` of a datapath the timeout policy `timeouts`; drop every other
    zone entry `owner` set (a policy whose zone changed), and a Datapath row it created that is
    left without zones. An entry someone else set for the zone is not overwritten."""

    def __init__(self, api: Any, dp_type: str, zone: int | None, timeouts: dict[str, int], owner: str) -> None:
        super().__init__(api)
        self.dp_type = dp_type
        self.zone = zone
        self.timeouts = timeouts
        self.owner = owner

    def run_idl(self, txn: Any) -> None:
        system = _system_row(self.api)
        for dp_type, datapath in list(system.datapaths.items()):
            for zone, entry in list(datapath.ct_zones.items()):
                if entry.external_ids.get(OWNER_KEY) == self.owner and (dp_type, zone) != (self.dp_type, self.zone):
                    datapath.delkey("ct_zones", zone)
            if self.zone is None or dp_type != self.dp_type:
                self._drop_if_unused(system, dp_type, datapath)
        if self.zone is not None:
            self._set(txn, system.datapaths[self.dp_type])

    def _set(self, txn: Any, datapath: Any) -> None:
        entry = datapath.ct_zones.get(self.zone)
        if entry is not None and entry.external_ids.get(OWNER_KEY) != self.owner:
            raise ZoneError(f"conntrack zone {self.zone} of the {self.dp_type} datapath already has a "
                             "timeout policy that ovsmgr did not set for this bridge; it is left alone")
        policy = entry.timeout_policy[0] if entry is not None and entry.timeout_policy else None
        if policy is not None and dict(policy.timeouts) == self.timeouts:
            return
        policy = txn.insert(self.api.tables["CT_Timeout_Policy"])
        policy.timeouts = self.timeouts
        policy.external_ids = {OWNER_KEY: self.owner}
        if entry is None:
            entry = txn.insert(self.api.tables["CT_Zone"])
            entry.external_ids = {OWNER_KEY: self.owner}
            datapath.setkey("ct_zones", self.zone, entry)
        entry.timeout_policy = [policy]

    def _drop_if_unused(self, system: Any, dp_type: str, datapath: Any) -> None:
        if datapath.external_ids.get(OWNER_KEY) == self.owner and not datapath.ct_zones:
            system.delkey("datapaths", dp_type)


class ZoneTimeouts(ovs_command.ReadOnlyCommand):
    def run_idl(self, txn: Any) -> None:
        out = {}
        for dp_type, datapath in _system_row(self.api).datapaths.items():
            for zone, entry in datapath.ct_zones.items():
                policy = entry.timeout_policy[0] if entry.timeout_policy else None
                out[(dp_type, zone)] = (dict(policy.timeouts) if policy else {}, dict(entry.external_ids))
        self.result = out


class DatapathCapabilities(ovs_command.ReadOnlyCommand):
    def __init__(self, api: Any, dp_type: str) -> None:
        super().__init__(api)
        self.dp_type = dp_type

    def run_idl(self, txn: Any) -> None:
        datapath = _system_row(self.api).datapaths.get(self.dp_type)
        self.result = None if datapath is None else dict(datapath.capabilities)
