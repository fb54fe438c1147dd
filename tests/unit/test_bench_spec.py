"""Bench specs: rates, sweeps, defaults, every mistake reported with its place, the built-in ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovsmgr.bench.spec import (
    NdrSettings,
    Rate,
    SpecError,
    only,
    parse_rate,
    rate_steps,
    with_overrides,
)
from ovsmgr.bench.specfile import (
    load_spec,
    parse_spec,
    shrink_for_smoke,
    smoke_spec,
    spec_from_flags,
)

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize(("text", "pps_at_64"), [
    ("20kpps", 20000.0), ("150000pps", 150000.0), ("1.5Mpps", 1.5e6), (20000, 20000.0),
    ("512Mbit", 1e6), ("512 Mbit/s", 1e6), ("0.512Gbit", 1e6),
])
def test_rates_in_pps_or_frame_bits(text: str | int, pps_at_64: float) -> None:
    assert parse_rate(text).pps(64) == pytest.approx(pps_at_64)


def test_bit_rates_count_whole_frames_like_the_seed() -> None:
    # seed 004: 9880 Mbit/s / 1518 bytes = 813,570 frames/s (frame incl. FCS, no inter-frame gap)
    assert parse_rate("9880Mbit").pps(1518) == pytest.approx(9880e6 / (1518 * 8))


@pytest.mark.parametrize("bad", ["fast", "-3kpps", "0", "10 furlongs", True])
def test_bad_rates_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_rate(bad)  # type: ignore[arg-type]


def test_sweeps_by_count_and_by_step() -> None:
    assert [r.value for r in rate_steps(Rate(20000), Rate(100000), steps=5)] == [20000, 40000, 60000, 80000, 100000]
    assert [r.value for r in rate_steps(Rate(10000), Rate(30000), step=Rate(10000))] == [10000, 20000, 30000]
    with pytest.raises(ValueError):
        rate_steps(Rate(1e6, "bps"), Rate(30000))


def test_defaults_and_per_experiment_overrides() -> None:
    spec = parse_spec("""
version: 1
name: mine
datapath: dpdk
duration: 3
ndr: {loss: 0, steps: 4}
experiments:
  - {name: a, method: ndr, pipelines: [seed-nat], flows: [100, 10000], sizes: [64, 1518]}
  - {name: b, method: sweep, duration: 1, rates: {from: 10kpps, to: 30kpps, step: 10kpps}}
""")
    a, b = spec.experiments
    assert spec.name == "mine"
    assert a.settings.datapath == "dpdk" and a.settings.duration == 3.0
    assert a.settings.ndr == NdrSettings(loss=0.0, steps=4)
    assert a.pipelines == ("seed-nat",) and a.baseline == "plain"
    assert a.flows == (100, 10000) and a.sizes == (64, 1518)
    assert b.settings.duration == 1.0 and b.pipelines == ("seed-firewall",)
    assert [r.value for r in b.rates] == [10000, 20000, 30000]


def test_every_mistake_is_reported_with_file_line_column() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec("""\
version: 1
datapath: kernel
experiments:
  - {method: sweep, flows: [0], bogus: 1, rates: [1x]}
  - {method: teleport}
  - {method: rules, systems: [pf], rule_kinds: [dport], pipelines: [nothere.yaml]}
""", "x.yaml")
    messages = [str(d) for d in caught.value.diagnostics]
    assert any(m.startswith("x.yaml:2:11: error: datapath must be netdev or dpdk") for m in messages)
    assert any("x.yaml:4:" in m and "integer in 1..1000000" in m for m in messages)
    assert any("unknown key 'bogus'" in m for m in messages)
    assert any("'1x' is not a rate" in m for m in messages)
    assert any("method must be one of" in m for m in messages)
    assert any("'pf' is not one of" in m for m in messages)
    assert any("unknown key 'pipelines'" in m for m in messages)  # rules take systems, not pipelines


def test_a_sweep_needs_rates_and_names_are_unique() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec("experiments:\n  - {name: x, method: sweep}\n  - {name: x, method: ndr}\n", "s.yaml")
    text = str(caught.value)
    assert "a sweep needs rates" in text and "used twice" in text


def test_policy_pipelines_resolve_next_to_the_spec(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("version: 1\n")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("experiments:\n  - {method: ndr, pipelines: [mine.yaml], policy_ports: [a, b]}\n")
    exp = load_spec(spec_file).experiments[0]
    assert exp.pipelines == (str(tmp_path / "mine.yaml"),)
    assert exp.policy_ports == ("a", "b")


def test_command_line_overrides_only_and_smoke() -> None:
    spec = with_overrides(smoke_spec(), datapath="dpdk", repetitions=3, duration=None)
    assert {e.settings.datapath for e in spec.experiments} == {"dpdk"}
    assert {e.settings.repetitions for e in spec.experiments} == {3}
    assert [e.name for e in only(spec, ("ndr",)).experiments] == ["ndr"]
    with pytest.raises(ValueError, match="no experiment named nope"):
        only(spec, ("nope",))


def test_smoke_shrinks_any_spec_to_seconds() -> None:
    spec = shrink_for_smoke(load_spec(BENCH / "seed004.yaml"))
    for exp in spec.experiments:
        assert exp.settings.duration < 1 and exp.settings.repetitions == 1
        assert max(exp.flows) <= 100 and len(exp.sizes) == 1 and len(exp.rates) <= 2


def test_the_example_specs_parse() -> None:
    names = {path.stem: load_spec(path) for path in BENCH.glob("*.yaml")}
    assert {"seed004", "rules", "flows", "control", "smoke", "updates"} <= set(names)
    assert names["smoke"].experiments == smoke_spec().experiments


def test_flags_make_a_spec_for_ones_own_policy(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\n")
    spec = spec_from_flags(str(policy), "sweep", (100,), (64, 1518), ("10kpps", "20kpps"))
    exp = spec.experiments[0]
    assert spec.name == "p" and exp.method == "sweep" and exp.baseline == "plain"
    assert exp.pipelines == (str(policy),) and exp.sizes == (64, 1518) and len(exp.rates) == 2


def test_updates_experiments_take_a_rate_and_a_kind() -> None:
    exp = parse_spec("experiments:\n  - {name: u, method: updates}\n").experiments[0]
    assert (exp.update_rate, exp.update_kind, exp.pipelines) == (100.0, "mixed", ("seed-firewall",))
    assert exp.flows == (1000,) and exp.sizes == (64,)
    exp = parse_spec("experiments:\n  - {method: updates, update_rate: 250, update_kind: rule, "
                     "flows: [100, 10000], sizes: [64, 1518]}\n").experiments[0]
    assert (exp.update_rate, exp.update_kind, exp.flows, exp.sizes) == (250.0, "rule", (100, 10000), (64, 1518))
    with pytest.raises(SpecError) as caught:
        parse_spec("""\
experiments:
  - {method: updates, update_rate: 0, update_kind: all}
  - {method: updates, baseline: plain}
  - {method: ndr, update_rate: 100}
  - {method: updates, pipelines: [seed-nat, plain]}
""", "u.yaml")
    messages = [str(d) for d in caught.value.diagnostics]
    assert any(m.startswith("u.yaml:2:") and "number in 0.1..10000" in m for m in messages)
    assert any("update_kind must be one of set, rule, mixed" in m for m in messages)
    assert any(m.startswith("u.yaml:3:") and "unknown key 'baseline'" in m for m in messages)
    assert any(m.startswith("u.yaml:4:") and "unknown key 'update_rate'" in m for m in messages)
    assert any(m.startswith("u.yaml:5:") and "plain forwarding has no firewall" in m for m in messages)


def test_the_updates_spec_runs_on_dpdk_and_the_smoke_run_has_a_tiny_one() -> None:
    spec = load_spec(BENCH / "updates.yaml")
    exp = spec.experiments[0]
    assert exp.method == "updates" and exp.settings.datapath == "dpdk" and exp.update_rate == 100
    smoke = [e for e in smoke_spec().experiments if e.method == "updates"]
    assert len(smoke) == 1 and smoke[0].flows == (10,) and smoke[0].settings.datapath == "netdev"
    shrunk = shrink_for_smoke(spec).experiments[0]
    assert shrunk.update_rate == exp.update_rate and shrunk.settings.duration < 1
