"""Put the last applied flows back on a bridge after its switch restarted.

ovs-vswitchd keeps no flows across a restart; with fail_mode=secure the
bridge then drops everything until someone pushes the policy again. A
controller does that by itself when the switch reconnects; for bridges run by
`ovsmgr apply` alone, the `ovsmgr-restore@BRIDGE` systemd unit runs this after
Open vSwitch starts: it pushes the flows recorded at the last apply (or by the
controller) as one bundle, touching only ovsmgr's flows.
"""

from __future__ import annotations

from ovsmgr.southbound.openflow import FlowTable
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch import record as rec
from ovsmgr.switch.connect import flow_table
from ovsmgr.switch.plan import Plan, desired_mods, make_plan


class RestoreError(Exception):
    pass


def restore_applied(target: SwitchTarget, bridge: str, table: FlowTable | None = None) -> Plan:
    """Push what differs from the recorded flows; raise when nothing was ever recorded."""
    flows = rec.read_flows(target, bridge)
    if flows is None:
        raise RestoreError(f"nothing to restore: no {rec.flows_path(target, bridge)} "
                           f"(was a policy ever applied to {bridge}?)")
    if table is not None:
        return _push(table, flows)
    with flow_table(target, bridge) as own:
        return _push(own, flows)


def _push(table: FlowTable, flows: list[rec.FlowMod]) -> Plan:
    plan = make_plan(table.read(), desired_mods(flows))
    if not plan.empty:
        table.push(plan.bundle())
    return plan
