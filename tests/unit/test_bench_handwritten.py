"""The seed's hand-written flows as bench pipelines: they load into `ovs-ofctl` as they are, carry
the bench's cookie, replace ovsmgr's flows by cookie, and specs name them like the seed policies."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ovsmgr.bench.pipelines import BENCH_COOKIE, HANDWRITTEN, handwritten_flows, set_handwritten
from ovsmgr.bench.spec import SpecError
from ovsmgr.bench.specfile import load_spec, parse_spec
from ovsmgr.sim.ofproto_trace import parse_flow_fields, split_actions

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("pipeline", sorted(HANDWRITTEN))
def test_every_flow_has_the_bench_cookie_and_names_only_the_two_ports(pipeline: str) -> None:
    flows = handwritten_flows(pipeline)
    assert len(flows) == 7  # the seed's seven add-flow lines, one flow each
    for flow in flows:
        match, _, actions = flow.partition(",action=")
        fields = parse_flow_fields(match)
        assert fields["cookie"] == f"{BENCH_COOKIE:#x}" and fields["table"] in ("0", "1"), flow
        assert fields.get("in_port", "1") in ("1", "2"), flow
        assert split_actions(actions), flow


@pytest.mark.skipif(shutil.which("ovs-ofctl") is None, reason="needs ovs-ofctl")
@pytest.mark.parametrize("pipeline", sorted(HANDWRITTEN))
def test_ovs_ofctl_parses_every_hand_written_flow(pipeline: str, tmp_path: Path) -> None:
    path = tmp_path / "flows"
    path.write_text("".join(f"{flow}\n" for flow in handwritten_flows(pipeline)))
    proc = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "parse-flows", str(path)], capture_output=True,
                          text=True, timeout=10, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("ADD") == 7, proc.stdout
    if HANDWRITTEN[pipeline][1]:
        assert f"nat(src={HANDWRITTEN[pipeline][1]})" in proc.stdout


def test_the_hand_written_flows_replace_ovsmgrs_and_the_benchs_own_by_cookie() -> None:
    calls: list[tuple[list[str], str | None]] = []

    def ofctl(args: list[str], input: str | None = None) -> str:
        calls.append((args, input))
        return ""

    set_handwritten(ofctl, "seed-firewall-handwritten", (1, 2))
    assert [args for args, _ in calls] == [["del-flows", "cookie=0xbe0c/-1"],
                                           ["del-flows", "cookie=0xf5a000000000000/0xffff000000000000"],
                                           ["add-flows", "-"]]
    assert calls[-1][1] == "".join(f"{flow}\n" for flow in handwritten_flows("seed-firewall-handwritten"))
    calls.clear()
    with pytest.raises(ValueError, match="ofports"):
        set_handwritten(ofctl, "seed-nat-handwritten", (3, 4))
    assert calls == []  # nothing changed


def test_the_comparison_spec_loads_and_names_them() -> None:
    spec = load_spec(BENCH / "seed004-handwritten.yaml")
    named = {p for exp in spec.experiments for p in (*exp.pipelines, exp.baseline)}
    assert set(HANDWRITTEN) <= named and {"seed-firewall", "seed-nat", "plain"} <= named


def test_hand_written_flows_have_no_policy_to_update() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec("experiments:\n  - {method: updates, pipelines: [seed-nat-handwritten]}\n", "s.yaml")
    assert "s.yaml:2:" in str(caught.value) and "seed-nat-handwritten is fixed hand-written flows" in str(caught.value)
