"""OVSDB for controller mode: the bridge, its ports, and the bridge pointed at the controller.

The bridge runs `fail_mode=secure` whatever the policy says: with the controller
gone, the switch keeps enforcing the flows it has and never falls back to
NORMAL switching. The controller row gets `max_backoff` 1 s (OVS would wait up
to 8 s before reconnecting to a restarted controller), out-of-band connections,
and a packet-in rate limit so a flood of rejected or logged packets is
throttled by the switch before it reaches the controller.

The row and its options are written in one transaction. OVS sends inactivity
probes (`inactivity_probe`, 5 s at least) on tcp: and ssl: connections only: a
`unix:` target (a lab's default) needs none, since a controller that dies closes
the socket, and `rconn_connect` turns probes off for it. Written in a second
transaction, the options would turn them back on or not, depending on whether
ovs-vswitchd saw the two transactions in one reconfiguration or in two: a hung
controller on a unix socket would be noticed in some runs and not in others.
In one, it never is (the bridge stays secure either way); over tcp it always is.
"""

from __future__ import annotations

import logging
from typing import Any

from ovsmgr.policy import ResolvedPolicy
from ovsmgr.southbound.ovsdb import SwitchDB
from ovsmgr.southbound.ovslib import idlutils, ovs_command
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch.settings import datapath_type, ensure_switch_settings

log = logging.getLogger("ovsmgr.controller")

CONTROLLER_OPTIONS: dict[str, Any] = {
    "max_backoff": 1000,
    "inactivity_probe": 5000,
    "connection_mode": "out-of-band",
    "controller_rate_limit": 1000,
    "controller_burst_limit": 250,
}


PASSIVE = ("pssl:", "ptcp:", "punix:")
"""Controller targets on which the switch listens (OVS's passive connection methods)."""


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

    def point_at(self, bridge: str, targets: list[str], options: dict[str, Any]) -> None:
        """The bridge's controllers (one, or a fleet's controllers in HA) with `options`, in one
        transaction, so that ovs-vswitchd configures each connection once, with its options (see the
        module's notes)."""
        self._run(f"point {bridge} at {', '.join(targets)}", [self._api.set_controller(bridge, targets),
                                                               _ControllerOptions(self._api, bridge, options)])


class _ControllerOptions(ovs_command.BaseCommand):
    def __init__(self, api: Any, bridge: str, options: dict[str, Any]) -> None:
        super().__init__(api)
        self.bridge = bridge
        self.options = options

    def run_idl(self, txn: Any) -> None:
        bridge = idlutils.row_by_value(self.api.idl, "Bridge", "name", self.bridge)
        for row in bridge.controller:
            for column, value in self.options.items():
                if _scalar(getattr(row, column, None)) != value:  # a row inserted in this txn has none
                    setattr(row, column, value)


def _scalar(value: Any) -> Any:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def prepare_bridge(target: SwitchTarget, policy: ResolvedPolicy, *, before_flows: bool,
                   controller: str | list[str] | None = None) -> None:
    """Before the first push: the bridge exists, secure, pointed at us. After it: ports, zone limit.

    The controller is set before the first push because OVS empties a bridge's flow table
    when its first controller is added (or its last removed): set after, it would wipe the
    flows just pushed and drop everything until the switch connected and we reconciled.
    The bridge's passive listeners (`pssl:`, `ptcp:`, `punix:`: how a site reads the switch, or
    how `fleet status` reaches its `openflow:`) are the site's and stay.
    """
    bridge = policy.bridge
    with ControllerDB(target.db) as db:
        if before_flows:
            db.ensure_bridge(bridge, datapath_type=datapath_type(policy.datapath, target), fail_mode="secure")
            if controller is not None:
                targets = [controller] if isinstance(controller, str) else list(controller)
                existing = db.get_controllers(bridge)
                targets += [t for t in existing if t.startswith(PASSIVE) and t not in targets]
                if sorted(existing) != sorted(targets):
                    log.info("pointing %s at %s", bridge, ", ".join(targets))
                    db.point_at(bridge, targets, CONTROLLER_OPTIONS)
                else:
                    db.set_controller_options(bridge, CONTROLLER_OPTIONS)
            return
        for warning in ensure_switch_settings(db, policy, target):
            log.warning("%s", warning)
