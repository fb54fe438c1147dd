"""Shadow rules (`shadow: true`): evaluated where they stand, counted and logged, never the verdict."""

from __future__ import annotations

from pathlib import Path

from ovsmgr.compiler.ids import rule_id
from ovsmgr.compiler.pipeline import CookieKind, Table, cookie
from ovsmgr.controller.metrics import rule_totals
from ovsmgr.controller.packetin import log_record
from ovsmgr.policy import load_policy_text
from ovsmgr.sim import Conversation, SimulatedSwitch

POLICIES = Path(__file__).resolve().parents[2] / "policies"
SHADOW_RULE = """    - name: try-no-plain-http
      description: Who still browses without TLS? Counted and logged; lan-out still decides.
      from: lan
      to: wan
      services: [tcp/80]
      action: drop
      log: true
      shadow: true
"""
HTTP = "tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=80"
HTTPS = "tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=443"


def _gateway(old: str = "", new: str = "") -> SimulatedSwitch:
    text = (POLICIES / "gateway.yaml").read_text()
    assert SHADOW_RULE in text
    return SimulatedSwitch.from_policy(load_policy_text(text.replace(old, new)))


def _send(switch: SimulatedSwitch, spec: str):  # type: ignore[no-untyped-def]
    conversation = Conversation(switch)
    conversation.announce_hosts()
    return conversation, conversation.send("lan0", spec)


def test_a_shadow_rule_counts_the_packet_and_the_rules_below_decide() -> None:
    conversation, trace = _send(_gateway(), HTTP)
    assert (trace.verdict, trace.rule, trace.shadow) == ("allow", "lan-out", ("try-no-plain-http",))
    assert trace.as_dict()["shadow"] == ["try-no-plain-http"]
    reply = conversation.reply()
    assert (reply.verdict, reply.shadow) == ("allow", ())  # established traffic never meets FILTER


def test_the_verdict_is_the_one_of_the_policy_without_the_shadow_rule() -> None:
    with_shadow, without = _gateway(), _gateway(SHADOW_RULE, "")
    for spec in (HTTP, HTTPS, "udp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=53",
                 "tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=25"):
        a, b = _send(with_shadow, spec)[1], _send(without, spec)[1]
        assert (a.verdict, a.rule, a.output) == (b.verdict, b.rule, b.output), spec
        assert a.packet == b.packet, spec


def test_flipping_the_key_enforces_the_rule() -> None:
    _, trace = _send(_gateway("      shadow: true\n", ""), HTTP)
    assert (trace.verdict, trace.rule, trace.shadow) == ("drop", "try-no-plain-http", ())


def test_a_packet_no_shadow_rule_matches_pays_nothing_and_a_match_costs_one_filter_lookup() -> None:
    """The per-packet cost of a shadow rule: one more FILTER lookup (the resubmit) for the first packet
    of a connection it matches; nothing for other packets or for established traffic."""
    with_shadow, without = _gateway(), _gateway(SHADOW_RULE, "")

    def lookups(switch: SimulatedSwitch, spec: str) -> int:
        return sum(1 for s in _send(switch, spec)[1].steps if not s.continued)

    assert lookups(with_shadow, HTTPS) == lookups(without, HTTPS)
    assert lookups(with_shadow, HTTP) == lookups(without, HTTP) + 1


def test_shadow_flows_have_their_own_cookie_kind_and_never_commit() -> None:
    compiled = _gateway().compiled
    shadow = [f for f in compiled.flows if f.rule == "try-no-plain-http"]
    assert shadow and all(f.cookie == cookie(CookieKind.SHADOW, rule_id("try-no-plain-http")) for f in shadow)
    assert all(f.table == Table.FILTER for f in shadow)
    assert "try-no-plain-http" not in compiled.fingerprints.values()


def test_a_shadow_rule_covers_no_later_rule() -> None:
    text = (POLICIES / "gateway.yaml").read_text().replace(SHADOW_RULE, SHADOW_RULE + SHADOW_RULE.replace(
        "try-no-plain-http", "enforced-http").replace("      shadow: true\n", ""))
    policy = load_policy_text(text)
    assert not [d for d in policy.diagnostics if "can never match" in d.message]
    enforced = load_policy_text(text.replace("      shadow: true\n", ""))
    assert [d for d in enforced.diagnostics if "can never match" in d.message]


def test_metrics_and_the_match_log_say_shadow() -> None:
    rid = rule_id("try-no-plain-http")
    totals = rule_totals({cookie(CookieKind.SHADOW, rid): [3, 180]}, {rid: "try-no-plain-http"})
    assert totals == {("try-no-plain-http", "shadow"): [3, 180]}
    frame = bytes.fromhex("ffffffffffff020000000001080045000014000100004006000000000000000000000000")
    assert log_record(frame, "try-no-plain-http", "drop", 1, shadow=True)["shadow"] is True
    assert "shadow" not in log_record(frame, "lan-out", "allow", 1)
