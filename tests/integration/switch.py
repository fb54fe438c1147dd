"""Helpers for applying policies to a lab switch in tests."""

from __future__ import annotations

from pathlib import Path

from ovsmgr.compiler import CompiledPolicy, compile_policy
from ovsmgr.lab.ovs import Lab
from ovsmgr.policy import load_policy, load_policy_text
from ovsmgr.southbound.openflow import OfctlFlowTable
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch.apply import ApplyResult, apply_policy

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def target_of(lab: Lab) -> SwitchTarget:
    return SwitchTarget(lab.db_endpoint, lab.dir, lab.dir, lab=lab.name)


def compiled_file(name: str) -> CompiledPolicy:
    return compile_policy(load_policy([POLICIES / name]))


def compiled_text(text: str) -> CompiledPolicy:
    return compile_policy(load_policy_text(text, "test.yaml"))


def apply(lab: Lab, compiled: CompiledPolicy, **kwargs: object) -> ApplyResult:
    return apply_policy(compiled, target_of(lab), **kwargs)  # type: ignore[arg-type]


def flow_table(lab: Lab, bridge: str = "br0") -> OfctlFlowTable:
    return OfctlFlowTable(target_of(lab).mgmt(bridge))


def counter(lab: Lab, table: int, match: str) -> int:
    """n_packets of the flow(s) in `table` whose match contains `match`."""
    total = 0
    for line in lab.ofctl(["dump-flows", f"table={table}"]).splitlines():
        if match in line and "n_packets=" in line:
            total += int(line.split("n_packets=")[1].split(",")[0])
    return total
