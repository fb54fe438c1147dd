"""Helpers for applying policies to a lab switch in tests."""

from __future__ import annotations

from pathlib import Path

from ovsmgr.compiler import CompiledPolicy, compile_policy
from ovsmgr.lab.ovs import Lab
from ovsmgr.policy import load_policy, load_policy_text
from ovsmgr.southbound.openflow import InstalledFlow, SwitchConnection, SwitchFlowTable
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


class LabFlows:
    """A lab bridge's flow table as tests look at it: ovsmgr's flows over its own OpenFlow
    connection, and every flow as `ovs-ofctl` (an independent reader) prints it."""

    def __init__(self, lab: Lab, bridge: str) -> None:
        self.lab, self.bridge = lab, bridge

    def dump(self) -> list[InstalledFlow]:
        with SwitchConnection(target_of(self.lab).openflow(self.bridge)) as connection:
            return SwitchFlowTable(connection).read()

    def dump_text(self) -> str:
        """Every flow of the bridge, ours or not, sorted: for byte-for-byte comparisons."""
        out = self.lab.ofctl(["dump-flows", "--no-stats"]) if self.bridge == "br0" else ""
        return "".join(sorted(out.splitlines(keepends=True)))


def flow_table(lab: Lab, bridge: str = "br0") -> LabFlows:
    return LabFlows(lab, bridge)


def counter(lab: Lab, table: int, match: str) -> int:
    """n_packets of the flow(s) in `table` whose match contains `match`."""
    total = 0
    for line in lab.ofctl(["dump-flows", f"table={table}"]).splitlines():
        if match in line and "n_packets=" in line:
            total += int(line.split("n_packets=")[1].split(",")[0])
    return total


def settle_flow_stats(lab: Lab) -> None:
    """Wait until the switch has added the packets its datapath flows passed so far to the OpenFlow
    flows they came from (its revalidators do that in rounds, about every half second): two whole
    rounds, the second begun after this was called."""
    for _ in range(2):
        lab.appctl(["revalidator/wait"])
