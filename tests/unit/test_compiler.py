"""The compiler: golden files, declarations enforced, compact matches, determinism."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovsmgr.compiler import compile_policy
from ovsmgr.compiler.flows import Ct, Flow, FlowError, FlowSet, GotoTable, Match, MatchItem
from ovsmgr.compiler.matchbuild import port_masks
from ovsmgr.compiler.pipeline import CookieKind, Table, cookie, cookie_parts
from ovsmgr.compiler.stages.filter import rule_levels
from ovsmgr.policy import load_policy, load_policy_text
from ovsmgr.render.text import render_flows, render_pipeline_doc

ROOT = Path(__file__).resolve().parents[2]
POLICIES = sorted((ROOT / "policies").glob("*.yaml"))


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.stem)
def test_golden_flows(path: Path) -> None:
    """flows/NAME.flows is what policies/NAME.yaml compiles to; regenerate with `make flows`."""
    golden = ROOT / "flows" / f"{path.stem}.flows"
    actual = render_flows(compile_policy(load_policy([path])))
    if not golden.exists() or golden.read_text() != actual:
        golden.with_suffix(".flows.actual").write_text(actual)
        pytest.fail(f"{golden.name} differs from the compiler's output: see {golden.name}.actual "
                    "(if the change is intended: make flows, and review the diff)")


def test_pipeline_doc_is_generated_from_the_declarations() -> None:
    assert (ROOT / "docs" / "pipeline.md").read_text() == render_pipeline_doc(), "run make docs"


def test_compile_is_deterministic() -> None:
    policy = load_policy([ROOT / "policies" / "gateway.yaml"])
    assert render_flows(compile_policy(policy)) == render_flows(compile_policy(policy))


def test_a_flow_breaking_its_table_declaration_is_refused() -> None:
    flows = FlowSet()
    with pytest.raises(FlowError, match="may not match"):
        flows.add(Flow(Table.CONNTRACK, 1, Match.of(MatchItem("reg0", 1)), (), 0))
    with pytest.raises(FlowError, match="may not go to"):
        flows.add(Flow(Table.OUTPUT, 1, Match(), (GotoTable(Table.FILTER),), 0))
    with pytest.raises(FlowError, match="may not go to"):
        flows.add(Flow(Table.FILTER, 1, Match(), (Ct(table=Table.CLASSIFY),), 0))


def test_cookies_lead_back_to_rules() -> None:
    compiled = compile_policy(load_policy([ROOT / "policies" / "gateway.yaml"]))
    for flow in compiled.flows:
        ours, kind, rule_id = cookie_parts(flow.cookie)
        assert ours
        if kind in (CookieKind.FIREWALL, CookieKind.NAT):
            assert compiled.rule_ids[rule_id] == flow.rule
    assert cookie_parts(cookie(CookieKind.NAT, 7)) == (True, CookieKind.NAT, 7)
    assert not cookie_parts(0x1234)[0]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 65535), st.integers(0, 65535))
def test_port_masks_match_exactly_the_range(a: int, b: int) -> None:
    """Checked against all 65,536 ports: a value/mask pair matches port p iff p & mask == value."""
    lo, hi = min(a, b), max(a, b)
    masks = port_masks(lo, hi)
    hits = bytearray(65536)
    for value, mask in masks:
        mask = 0xFFFF if mask is None else mask
        block = (~mask & 0xFFFF) + 1
        assert value & ~mask & 0xFFFF == 0, "value must be aligned to its mask"
        hits[value:value + block] = bytes(x + 1 for x in hits[value:value + block])
    assert hits[lo:hi + 1] == b"\x01" * (hi - lo + 1), "every port in the range matches exactly once"
    assert not any(hits[:lo]) and not any(hits[hi + 1:]), "no port outside the range matches"
    assert len(masks) <= 2 * 16


POLICY = """
version: 1
switch: {{bridge: br0, ports: {{a: {{ofport: 1}}, b: {{ofport: 2}}}}, links: [[a, b]]}}
zones: {{za: {{ports: [a]}}, zb: {{ports: [b]}}}}
addresses: {{srcs: [{srcs}], dsts: [{dsts}]}}
services: {{svc: [{svcs}]}}
firewall:
  rules:
{rules}
"""


def _policy(rules: str, srcs: int = 1, dsts: int = 1, svcs: int = 1) -> str:
    return POLICY.format(
        srcs=", ".join(f"10.1.{i // 250}.{i % 250 + 1}" for i in range(srcs)),
        dsts=", ".join(f"10.2.{i // 250}.{i % 250 + 1}" for i in range(dsts)),
        svcs=", ".join(f"tcp/{1000 + i}" for i in range(svcs)), rules=rules)


def _filter_flows(text: str) -> list[Flow]:
    return [f for f in compile_policy(load_policy_text(text)).flows if f.table == Table.FILTER and f.rule]


def test_list_products_become_conjunctions_that_grow_with_the_sum() -> None:
    rule = "    - {name: r, from: za, src: '@srcs', dst: '@dsts', services: [svc], action: allow}"
    flows = _filter_flows(_policy(rule, srcs=30, dsts=20, svcs=10))
    followers = [f for f in flows if f.match.get("nw_frag") is not None]  # later fragments, by protocol
    assert len(followers) == 1
    assert len(flows) == 30 + 20 + 10 + 1 + 1
    assert sum(1 for f in flows if f.match.get("conj_id")) == 1
    small = _filter_flows(_policy(rule, srcs=2, dsts=1, svcs=1))
    assert len(small) == 2 + 1 and not any(f.match.get("conj_id") for f in small)


def test_disjoint_rules_share_a_priority_overlapping_ones_keep_their_order() -> None:
    text = _policy("\n".join([
        "    - {name: p1, from: za, services: [tcp/1], action: drop}",
        "    - {name: p2, from: za, services: [tcp/2], action: drop}",
        "    - {name: any, from: za, action: allow}",
        "    - {name: p3, from: zb, services: [tcp/3], action: drop}",
    ]))
    policy = load_policy_text(text)
    assert rule_levels(policy.rules) == [0, 0, 1, 1]
    prio = {f.rule: f.priority for f in _filter_flows(text)}
    assert prio["p1"] == prio["p2"] > prio["any"] == prio["p3"]


def test_generated_policies_compile_to_one_level() -> None:
    rules = "\n".join(f"    - {{name: r{i}, from: za, services: [tcp/{2000 + i}], action: drop}}" for i in range(500))
    policy = load_policy_text(_policy(rules))
    assert set(rule_levels(policy.rules)) == {0}
