"""The scenario table format: loading, refusing mistakes, and telling what differs."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovsmgr.policy import load_policy
from ovsmgr.sim import SimulatedSwitch
from ovsmgr.sim.scenarios import ScenarioError, load_table, run_scenario

ROOT = Path(__file__).resolve().parents[2]
HEADER = "policy: ../../policies/seed-nat.yaml\nhosts: {inside: 10.0.0.5/24, outside: 198.51.100.9/24}\n"


def _write(tmp_path: Path, body: str) -> Path:
    folder = tmp_path / "tests" / "scenarios"
    folder.mkdir(parents=True)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "seed-nat.yaml").write_text((ROOT / "policies" / "seed-nat.yaml").read_text())
    path = folder / "table.yaml"
    path.write_text(HEADER + body)
    return path


def test_a_table_loads_with_defaults(tmp_path: Path) -> None:
    table = load_table(_write(tmp_path, """scenarios:
  - name: out
    steps:
      - {in: inside, send: "tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=80", expect: drop}
      - {send: reply, expect: {verdict: allow, rule: null, packet: {nw_dst: 10.0.0.5}}}
"""))
    first, second = table.scenarios[0].steps
    assert (first.in_port, first.expect.verdict, first.expect.output, first.expect.check_rule) == (
        "inside", "drop", (), False)
    assert (second.in_port, second.expect.check_rule, second.expect.rule, second.expect.output) == (
        None, True, None, None)
    assert table.policy_files == ((tmp_path / "policies" / "seed-nat.yaml").resolve(),)


@pytest.mark.parametrize(("body", "says"), [
    ("scenarios:\n  - name: x\n    steps:\n      - {send: 'tcp,nw_src=1.1.1.1', expect: drop}\n", "in: PORT"),
    ("scenarios:\n  - name: x\n    steps:\n      - {send: reply, expect: {verdict: maybe}}\n", "verdict"),
    ("scenarios:\n  - name: x\n    steps:\n      - {send: reply, expect: {verdict: allow, packet: {nw_bogus: 1}}}\n",
     "unknown field"),
    ("scenarios:\n  - name: x\n    steps:\n      - {send: reply, expect: drop, extra: 1}\n", "unknown keys"),
    ("scenarios:\n  - name: x\n", "name and steps"),
    ("scenarios: [\n", "not valid YAML"),
])
def test_mistakes_in_a_table_are_refused(tmp_path: Path, body: str, says: str) -> None:
    with pytest.raises(ScenarioError, match=says):
        load_table(_write(tmp_path, body))


def test_differences_are_spelled_out(tmp_path: Path) -> None:
    table = load_table(_write(tmp_path, """scenarios:
  - name: wrong on purpose
    steps:
      - in: inside
        send: tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=80
        expect: {verdict: drop, rule: other, output: [inside], packet: {nw_src: 10.0.0.5}, ct_state: +trk+est}
"""))
    switch = SimulatedSwitch.from_policy(load_policy(list(table.policy_files)), table.hosts)
    (outcome,) = run_scenario(switch, table.scenarios[0])
    assert outcome.problems == (
        "verdict allow, expected drop", "rule inside-out, expected other",
        "output ['outside'], expected ['inside']", "packet nw_src=200.200.200.200, expected 10.0.0.5",
        "ct_state +trk+new+snat, expected +trk+est")
