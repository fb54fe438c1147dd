"""OVSDB for controller mode: the bridge, its ports, and the bridge pointed at the controller.

The bridge runs `fail_mode=secure` whatever the policy says: with the controller
gone, the switch keeps enforcing the flows it has and never falls back to
NORMAL switching. The controller row gets `max_backoff` 1 s (OVS would wait up
to 8 s before reconnecting to a restarted controller), out-of-band connections,
and a packet-in rate limit so a flood of rejected or logged packets is
throttled by the switch before it reaches the controller.
"""

from __future__ import annotations

import logging
from typing import Any

from ovsdbapp.backend.ovs_idl import command as ovs_command
from ovsdbapp.backend.ovs_idl import idlutils

from ovsmgr.policy import ResolvedPolicy
from ovsmgr.southbound.ovsdb import OvsdbError, SwitchDB, set_zone_limit
from ovsmgr.southbound.target import SwitchTarget

log = logging.getLogger("ovsmgr.controller")

CONTROLLER_OPTIONS: dict[str, Any] = {
    "max_backoff": 1000,
    "inactivity_probe": 5000,
    "connection_mode": "out-of-band",
    "controller_rate_limit": 1000,
    "controller_burst_limit": 250,
}


class ControllerDB(SwitchDB):
    """`SwitchDB` plus the Controller row's options."""

    def __enter__(self) -> ControllerDB:
        return self

    def datapath_id(self, bridge: str) -> int | None:
        """The bridge's datapath id, as the switch says it in OpenFlow (None before vswitchd set it)."""
        value = _scalar(self._read(f"get datapath_id of {bridge}", self._api.db_get("Bridge", bridge, "datapath_id")))
        return int(value, 16) if value else None

    def set_controller_options(self, bridge: str, options: dict[str, Any]) -> None:
        """Set columns of every Controller row of the bridge (only those that differ)."""
        self._run(f"set controller options of {bridge}", [_ControllerOptions(self._api, bridge, options)])


class _ControllerOptions(ovs_command.BaseCommand):
    def __init__(self, api: Any, bridge: str, options: dict[str, Any]) -> None:
        super().__init__(api)
        self.bridge = bridge
        self.options = options

    def run_idl(self, txn: Any) -> None:
        bridge = idlutils.row_by_value(self.api.idl, "Bridge", "name", self.bridge)
        for row in bridge.controller:
            for column, value in self.options.items():
                if _scalar(getattr(row, column)) != value:
                    setattr(row, column, value)


def _scalar(value: Any) -> Any:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _datapath(policy: ResolvedPolicy, target: SwitchTarget) -> str:
    """A lab switch is userspace whatever the policy says (as in apply)."""
    if target.lab is not None or policy.datapath == "dpdk":
        return "netdev"
    return policy.datapath


def prepare_bridge(target: SwitchTarget, policy: ResolvedPolicy, *, before_flows: bool,
                   controller: str | None = None) -> None:
    """Before the first push: the bridge exists, secure. After it: ports, zone limit, controller."""
    bridge = policy.bridge
    with ControllerDB(target.db) as db:
        if before_flows:
            db.ensure_bridge(bridge, datapath_type=_datapath(policy, target), fail_mode="secure")
            return
        have = db.ofports(bridge)
        for port in policy.ports.values():
            if port.interface is not None or port.type == "dpdk":
                options = {"dpdk-devargs": port.devargs} if port.devargs else None
                db.ensure_port(bridge, port.name, port.ofport, port.type or "", options)
            elif port.name in have and have[port.name] != port.ofport:
                raise OvsdbError(f"port {port.name} is ofport {have[port.name]} on {bridge}, the policy says {port.ofport}")
        appctl = target.appctl()
        if policy.max_connections is not None and appctl is not None:
            set_zone_limit(appctl, policy.ct_zone, policy.max_connections)
        if controller is not None:
            if db.get_controllers(bridge) != [controller]:
                log.info("pointing %s at %s", bridge, controller)
                db.set_controllers(bridge, [controller])
            db.set_controller_options(bridge, CONTROLLER_OPTIONS)
