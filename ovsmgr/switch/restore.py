"""Put the last applied flows back on a bridge after its switch restarted.

ovs-vswitchd keeps no flows across a restart; with fail_mode=secure the
bridge then drops everything until someone pushes the policy again. A
controller does that by itself when the switch reconnects; for bridges run by
`ovsmgr apply` alone, the `ovsmgr-restore@BRIDGE` systemd unit runs this after
Open vSwitch starts: it pushes the flows recorded at the last apply (or by the
controller) in the state file, as one bundle, touching only ovsmgr's flows.
"""

from __future__ import annotations

import json
from pathlib import Path

from ovsmgr.southbound.openflow import FlowTable, OfctlFlowTable, parse_flow_line
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch.apply import state_path
from ovsmgr.switch.plan import Plan, make_plan


class RestoreError(Exception):
    pass


def restore_applied(target: SwitchTarget, bridge: str, table: FlowTable | None = None) -> Plan:
    """Push what differs from the recorded flows; raise when nothing was ever recorded."""
    path: Path = state_path(target, bridge)
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise RestoreError(f"nothing to restore: no {path} (was a policy ever applied to {bridge}?)") from exc
    flows = [parse_flow_line(line) for line in state.get("flows", [])]
    table = table or OfctlFlowTable(target.mgmt(bridge))
    plan = make_plan(table.dump(), flows)
    if not plan.empty:
        table.push(plan.bundle())
    return plan
