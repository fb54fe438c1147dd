"""Per-NAT-rule counters: the NAT rule id in ct_label, the NAT_COUNT flows that count it, and the
tables `status` and the metrics make of flow statistics and conntrack entries.

The simulator runs every NAT rule type of the example policies (snat, dnat, dnat with backends,
static both ways, dnat then snat in two zones; IPv4 and IPv6) and each packet must meet exactly the
NAT_COUNT flows of the rules that translated its connection, in both directions.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from ovsmgr.compiler import compile_policy
from ovsmgr.compiler.ids import rule_id
from ovsmgr.compiler.pipeline import CT_LABEL_SECOND_ZONE, CookieKind, Table, cookie, cookie_parts
from ovsmgr.policy import load_policy
from ovsmgr.sim import Conversation, SimulatedSwitch
from ovsmgr.sim.trace import Trace
from ovsmgr.southbound.conntrack import parse_entry
from ovsmgr.switch.natrules import count_totals, group_connections, nat_rule_counts, policy_zones

ROOT = Path(__file__).resolve().parents[2]


def _compiled(name: str):  # type: ignore[no-untyped-def]
    return compile_policy(load_policy([ROOT / "policies" / f"{name}.yaml"]))


GATEWAY, HOSTING, IPV6 = _compiled("gateway"), _compiled("hosting"), _compiled("ipv6-nat")


def counted(trace: Trace) -> Counter[str]:
    """NAT rule -> how often the packet met its NAT_COUNT flow."""
    return Counter(step.rule or "?" for step in trace.steps
                   if step.table == Table.NAT_COUNT and step.cookie is not None
                   and cookie_parts(step.cookie)[1] is CookieKind.NAT_COUNT)


def _talk(compiled) -> Conversation:  # type: ignore[no-untyped-def]
    return Conversation(SimulatedSwitch.from_policy(compiled.policy, compiled=compiled))


@pytest.mark.parametrize(("compiled", "port", "packet", "rules"), [
    (GATEWAY, "lan0", "tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=443", {"masquerade"}),
    (GATEWAY, "wan0", "tcp,nw_src=198.51.100.9,nw_dst=200.200.200.200,tp_dst=8080", {"web-forward"}),
    (HOSTING, "wan0", "tcp,nw_src=198.51.100.9,nw_dst=200.200.200.200,tp_dst=443", {"web-pool"}),
    (HOSTING, "wan0", "tcp,nw_src=198.51.100.9,nw_dst=200.200.200.20,tp_dst=5432", {"db-static"}),
    (HOSTING, "office0", "udp,nw_src=10.0.1.20,nw_dst=198.51.100.9,tp_dst=53", {"db-static"}),
    (HOSTING, "office0", "tcp,nw_src=10.0.1.50,nw_dst=200.200.200.200,tp_dst=443",
     {"web-pool-office", "office-hairpin"}),
    (IPV6, "inside", "tcp6,ipv6_src=fd00:0:0:1::5,ipv6_dst=2001:db8:9::9,tp_dst=443", {"masquerade6"}),
    (IPV6, "outside", "tcp6,ipv6_src=2001:db8:9::9,ipv6_dst=2001:db8:0:80::80,tp_dst=8080", {"web-forward6"}),
])
def test_every_packet_of_a_translated_connection_is_counted_once_for_each_of_its_rules(
        compiled, port: str, packet: str, rules: set[str]) -> None:  # type: ignore[no-untyped-def]
    talk = _talk(compiled)
    first = talk.send(port, packet)
    assert first.deliveries, "the connection must pass"
    assert counted(first) == Counter(dict.fromkeys(rules, 1))
    reply = talk.reply()
    assert reply.deliveries
    assert counted(reply) == Counter(dict.fromkeys(rules, 1))
    again = talk.send(port, packet + ",tcp_flags=+ack" if packet.startswith("tcp") else packet)
    assert counted(again) == Counter(dict.fromkeys(rules, 1))


def test_an_untranslated_connection_meets_no_nat_counter() -> None:
    talk = _talk(HOSTING)
    out = talk.send("wan0", "tcp,nw_src=198.51.100.9,nw_dst=200.200.200.21,tp_dst=5432")
    assert not counted(out)
    plain = _talk(GATEWAY).send("lan0", "tcp,nw_src=10.0.0.5,nw_dst=10.0.1.10,tp_dst=22")
    assert not counted(plain)


def test_the_connection_names_its_nat_rule_in_ct_label_in_each_zone() -> None:
    talk = _talk(HOSTING)
    talk.send("office0", "tcp,nw_src=10.0.1.50,nw_dst=200.200.200.200,tp_dst=443")
    labels = {c.zone: c.label for c in talk.state.conntrack.connections}
    policy = HOSTING.policy
    assert labels == {policy.ct_zone: CT_LABEL_SECOND_ZONE | rule_id("web-pool-office") << 32,
                      policy.second_zone: rule_id("office-hairpin") << 32}


def test_nat_count_flows_one_per_rule_and_zone_it_translates_in() -> None:
    flows = [f for f in HOSTING.flowset if f.table == Table.NAT_COUNT and f.rule]
    zones = Counter((f.rule, f.match.get("ct_zone").value) for f in flows)  # type: ignore[union-attr]
    policy = HOSTING.policy
    first, second = policy.ct_zone, policy.second_zone
    assert zones == Counter({("web-pool", first): 1, ("web-pool-office", first): 1, ("db-static", first): 1,
                             ("db-static", second): 1, ("office-hairpin", first): 1,
                             ("office-hairpin", second): 1, ("office-masquerade", first): 1,
                             ("office-masquerade", second): 1})
    assert policy_zones(policy) == [first, second]
    assert policy_zones(GATEWAY.policy) == [GATEWAY.policy.ct_zone]


def test_a_policy_without_nat_rules_has_no_counting() -> None:
    microseg = _compiled("microseg")
    assert not microseg.policy.nat
    assert not [f for f in microseg.flowset if f.table == Table.NAT_COUNT]
    assert not any(a.__class__.__name__ == "Resubmit" and a.table == Table.NAT_COUNT  # type: ignore[attr-defined]
                   for f in microseg.flowset for a in f.actions)


def test_conntrack_entries_are_grouped_by_the_nat_rule_in_their_label() -> None:
    masq, fwd = rule_id("masquerade"), rule_id("web-forward")
    lines = [
        f"tcp,orig=(src=10.0.0.5,dst=198.51.100.9,sport=4000,dport=443),reply=(src=198.51.100.9,"
        f"dst=200.200.200.200,sport=443,dport=4000),zone=10,mark=2147483650,labels={masq << 32:#x},"
        f"protoinfo=(state=ESTABLISHED)",
        f"udp,orig=(src=10.0.0.6,dst=198.51.100.9,sport=5000,dport=53),reply=(src=198.51.100.9,"
        f"dst=200.200.200.200,sport=53,dport=5000),zone=10,mark=2147483650,labels={masq << 32:#x}",
        f"tcp,orig=(src=198.51.100.9,dst=200.200.200.200,sport=4001,dport=8080),reply=(src=10.0.1.10,"
        f"dst=198.51.100.9,sport=80,dport=4001),zone=10,mark=2147483651,labels={fwd << 32 | 1:#x},"
        f"protoinfo=(state=SYN_SENT)",
        "icmp,orig=(src=10.0.0.5,dst=10.0.1.10,id=1,type=8,code=0),reply=(src=10.0.1.10,dst=10.0.0.5,id=1,"
        "type=0,code=0),zone=10,mark=3",
    ]
    entries = [parse_entry(line) for line in lines]
    assert all(e is not None for e in entries)
    assert entries[3].label == 0  # type: ignore[union-attr]
    assert group_connections(e for e in entries if e) == {masq: 2, fwd: 1}


def test_rows_sum_a_rules_flows_and_take_connections_by_rule() -> None:
    masq, fwd = rule_id("masquerade"), rule_id("web-forward")
    stats = {cookie(CookieKind.NAT_COUNT, masq): [10, 1000], cookie(CookieKind.NAT_COUNT, fwd): [4, 400],
             cookie(CookieKind.NAT, masq): [99, 9900], cookie(CookieKind.INFRA): [5, 5]}
    totals = count_totals(stats)
    assert totals == {masq: [10, 1000], fwd: [4, 400]}
    names = {masq: "masquerade", fwd: "web-forward"}
    rows = nat_rule_counts(totals, {masq: 3}, names)
    assert [(r.rule, r.packets, r.bytes, r.connections) for r in rows] == [
        ("masquerade", 10, 1000, 3), ("web-forward", 4, 400, 0)]
    assert [r.connections for r in nat_rule_counts(totals, None, names)] == [None, None]
