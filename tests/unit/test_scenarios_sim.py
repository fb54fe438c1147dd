"""Every scenario table in tests/scenarios/ run through the simulator.

A table lists packets and what must come of them for one example policy; the lab
runner runs the same tables against a real OVS. See tests/scenarios/README.md.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest

from ovsmgr.policy import load_policy
from ovsmgr.sim.scenarios import ScenarioTable, load_table, run_scenario, source_problems
from ovsmgr.sim.session import SimulatedSwitch
from ovsmgr.sim.trace import format_trace

ROOT = Path(__file__).resolve().parents[2]
TABLES = sorted((ROOT / "tests" / "scenarios").glob("*.yaml"))
POLICIES = sorted((ROOT / "policies").glob("*.yaml"))


@cache
def _table(path: Path) -> ScenarioTable:
    return load_table(path)


@cache
def _switch(path: Path) -> SimulatedSwitch:
    table = _table(path)
    return SimulatedSwitch.from_policy(load_policy(list(table.policy_files)), table.hosts)


def _cases() -> list[Any]:
    cases: list[Any] = []
    for path in TABLES:
        for scenario in _table(path).scenarios:
            marks = [pytest.mark.xfail(reason=scenario.known_issue, strict=True)] if scenario.known_issue else []
            cases.append(pytest.param(path, scenario.name, id=f"{path.stem}: {scenario.name}", marks=marks))
    return cases


def test_every_example_policy_has_a_scenario_table() -> None:
    covered = {policy for path in TABLES for policy in _table(path).policy_files}
    missing = [p.name for p in POLICIES if p.resolve() not in covered]
    assert not missing, f"example policies without a table in tests/scenarios/: {missing}"


@pytest.mark.parametrize("path", TABLES, ids=[p.stem for p in TABLES])
def test_table_sends_from_the_hosts_addresses(path: Path) -> None:
    table = _table(path)
    assert set(table.hosts) <= set(_switch(path).port_numbers), "hosts: names a port the policy lacks"
    assert source_problems(table, _switch(path)) == []


@pytest.mark.parametrize(("path", "name"), _cases())
def test_scenario(path: Path, name: str) -> None:
    switch = _switch(path)
    scenario = next(s for s in _table(path).scenarios if s.name == name)
    report = []
    failed = False
    for number, outcome in enumerate(run_scenario(switch, scenario), 1):
        report.append(f"step {number}: {outcome.step.send}")
        if outcome.problems:
            failed = True
            report += [f"  problem: {p}" for p in outcome.problems]
            report += ["  " + line for line in format_trace(outcome.trace, switch.port_names)]
    assert not failed, "\n".join(report)
