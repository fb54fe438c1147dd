"""Every scenario table against a real switch: what the simulator says is what OVS does.

One lab per table, its hosts those of the table's `hosts:`; the table's policy is
applied, then every scenario runs from an empty conntrack, each step's packet
sent as a real frame from the in-port host (`ovsmgr.lab.scenarios`). A step
fails when the real switch and the simulator differ (verdict, output ports,
fields as delivered, deciding rule), or when either differs from the table;
scenarios with a `known_issue` may differ from the table, never from each other.
A `reject` shows as not delivered: no controller runs to answer the sender.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ovsmgr.cli import main
from ovsmgr.compiler import compile_policy
from ovsmgr.lab.compare import format_table
from ovsmgr.lab.scenarios import ScenarioLab, Timing, add_host_addresses, lab_ports
from ovsmgr.policy import load_policy
from ovsmgr.sim.scenarios import load_table

from .switch import apply

pytestmark = pytest.mark.integration

TABLES = sorted((Path(__file__).resolve().parents[1] / "scenarios").glob("*.yaml"))
TIME_LIMIT = 60.0
TIMING = Timing(drop_wait=1.0)
"""Generous: other work may load this machine, and a late frame would read as a drop."""


@pytest.mark.parametrize("path", TABLES, ids=[p.stem for p in TABLES])
def test_scenario_table_on_a_real_switch(lab_factory, path: Path) -> None:
    table = load_table(path)
    compiled = compile_policy(load_policy(list(table.policy_files)))
    started = time.monotonic()
    lab = lab_factory(lab_ports(table, compiled.policy), bridge=compiled.policy.bridge)
    add_host_addresses(lab, table, compiled.policy)
    apply(lab, compiled)
    report = ScenarioLab(lab, table, compiled, TIMING).run()
    elapsed = time.monotonic() - started

    disagreeing = [s for s in report.steps if s.disagreements]
    shown = [s for s in report.steps if s.disagreements or (not s.ok and not s.scenario.known_issue)]
    text = "\n".join(format_table(report, everything=False))
    assert not shown, f"{len(disagreeing)} step(s) where simulator and real switch disagree:\n{text}"
    assert report.steps and len(report.steps) == sum(len(s.steps) for s in table.scenarios)
    assert elapsed < TIME_LIMIT, f"{path.name} took {elapsed:.0f} s (limit {TIME_LIMIT:.0f} s)"
    print(text)


def test_lab_scenarios_command_prints_each_side(lab_factory) -> None:
    lab_factory(up=False)  # skips without root or OVS, like every test here
    path = next(p for p in TABLES if p.stem == "seed-nat")
    name = "inside pings; the echo request leaves from 200.200.200.200 and the reply returns"
    result = CliRunner().invoke(main, ["lab", "scenarios", str(path), "--scenario", name])
    assert result.exit_code == 0, result.output
    for word in ("sent      inside: icmp", "expected  allow", "simulator allow", "real      allow",
                 "2 steps; simulator and real switch agree on 2; 0 step(s) fail"):
        assert word in result.output
