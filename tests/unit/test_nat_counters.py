"""Per-NAT-rule counters: the NAT rule id in ct_label and the NAT_COUNT flows that count it.

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
from ovsmgr.compiler.pipeline import CT_LABEL_SECOND_ZONE, CookieKind, Table, cookie_parts
from ovsmgr.policy import load_policy
from ovsmgr.sim import Conversation, SimulatedSwitch
from ovsmgr.sim.trace import Trace

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


def test_a_policy_without_nat_rules_has_no_counting() -> None:
    microseg = _compiled("microseg")
    assert not microseg.policy.nat
    assert not [f for f in microseg.flowset if f.table == Table.NAT_COUNT]
    assert not any(a.__class__.__name__ == "Resubmit" and a.table == Table.NAT_COUNT  # type: ignore[attr-defined]
                   for f in microseg.flowset for a in f.actions)
