"""`plan --connections`: conntrack entries of the switch judged against a new policy in the simulator."""

from __future__ import annotations

from pathlib import Path

from ovsmgr.compiler import compile_policy
from ovsmgr.compiler.ids import fingerprint
from ovsmgr.compiler.pipeline import CT_MARK_TRANSLATED
from ovsmgr.policy import ResolvedPolicy, load_policy_text
from ovsmgr.southbound.conntrack import CtEntry, parse_entry
from ovsmgr.southbound.openflow import InstalledFlow, encode_flow
from ovsmgr.switch.connections import connections_cut, established, ingress_port, rule_marks

POLICIES = Path(__file__).resolve().parents[2] / "policies"
GATEWAY = (POLICIES / "gateway.yaml").read_text()
LAN_OUT = "      services: [web, dns, ping, udp/123]\n"


def _policy(text: str = GATEWAY) -> ResolvedPolicy:
    return load_policy_text(text)


def _mark(policy: ResolvedPolicy, rule: str) -> int:
    match = next(r.match for r in policy.rules if r.name == rule)
    return fingerprint(rule, match)


def _entry(policy: ResolvedPolicy, rule: str, proto: str, dport: int, translated: bool = True) -> CtEntry:
    line = (f"{proto},orig=(src=10.0.0.5,dst=198.51.100.9,sport=40000,dport={dport}),"
            f"reply=(src=198.51.100.9,dst={'200.200.200.200' if translated else '10.0.0.5'},sport={dport},"
            f"dport=40000),zone=10,mark={_mark(policy, rule) | (CT_MARK_TRANSLATED if translated else 0)}"
            + (",protoinfo=(state=ESTABLISHED)" if proto == "tcp" else ""))
    entry = parse_entry(line)
    assert entry is not None
    return entry


def _marks(policy: ResolvedPolicy) -> dict[int, str]:
    compiled = compile_policy(policy)
    return rule_marks([InstalledFlow(encode_flow(f), 0, 0) for f in compiled.flows], compiled.rule_ids)


def test_dump_conntrack_lines_are_read() -> None:
    entry = parse_entry("icmp,orig=(src=10.0.0.5,dst=198.51.100.9,id=7,type=8,code=0),reply=(src=198.51.100.9,"
                        "dst=200.200.200.200,id=7,type=0,code=0),zone=10,mark=2147483653")
    assert entry is not None and (entry.proto, entry.orig["type"], entry.zone, entry.mark) == ("icmp", "8", 10, 2147483653)
    assert parse_entry("not a connection") is None
    syn = parse_entry("tcp,orig=(src=1.1.1.1,dst=2.2.2.2,sport=1,dport=2),reply=(src=2.2.2.2,dst=1.1.1.1,sport=2,"
                      "dport=1),zone=10,protoinfo=(state=SYN_SENT)")
    assert syn is not None and established([syn]) == []


def test_the_applied_rules_are_named_from_the_switch_flows() -> None:
    old = _policy()
    marks = _marks(old)
    assert marks[_mark(old, "lan-out")] == "lan-out"
    assert "try-no-plain-http" not in marks.values()  # a shadow rule commits nothing


def test_a_narrowed_rule_cuts_what_it_no_longer_allows_and_keeps_the_rest() -> None:
    old = _policy()
    new = _policy(GATEWAY.replace(LAN_OUT, "      services: [dns, ping, udp/123]\n"))
    entries = [_entry(old, "lan-out", "tcp", 443), _entry(old, "lan-out", "udp", 53),
               _entry(old, "lan-to-dmz", "tcp", 80, translated=False)]
    cut = connections_cut(new, lambda: compile_policy(new), entries, _marks(old))
    assert [c.to_json() for c in cut] == [{
        "proto": "tcp", "src": "10.0.0.5", "sport": 40000, "dst": "198.51.100.9", "dport": 443,
        "rule_before": "lan-out", "verdict_after": "drop", "rule_after": None}]
    assert cut[0].describe() == "tcp 10.0.0.5:40000 > 198.51.100.9:443: allowed by lan-out, now drop (firewall default)"


def test_unchanged_rules_cut_nothing_and_need_no_simulation() -> None:
    old = _policy()

    def no_compile():  # type: ignore[no-untyped-def]
        raise AssertionError("compiled although every connection's rule is unchanged")

    assert connections_cut(old, no_compile, [_entry(old, "lan-out", "tcp", 443)], _marks(old)) == []


def test_without_cut_on_rule_removal_nothing_is_cut() -> None:
    old = _policy()
    new = _policy(GATEWAY.replace(LAN_OUT, "      services: [dns]\n").replace(
        "cut_on_rule_removal: true", "cut_on_rule_removal: false"))
    assert connections_cut(new, lambda: compile_policy(new), [_entry(old, "lan-out", "tcp", 443)], _marks(old)) == []


def test_a_connection_enters_by_the_port_of_the_zone_that_holds_its_source() -> None:
    policy = _policy()
    assert ingress_port(policy, "10.0.0.5", None) == "lan0"
    assert ingress_port(policy, "10.0.1.10", None) == "dmz0"
    assert ingress_port(policy, "198.51.100.9", None) == "wan0"  # the only zone without networks
