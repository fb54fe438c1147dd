"""Properties: the simulator agrees with the policy's meaning, and lookup agrees with brute force.

For random small policies (2-3 zones, linked ports or NORMAL forwarding with
networks, 1-6 rules, a random default), compiled by the real compiler, every
random first packet gets the verdict and rule that a direct first-match evaluation
of the policy (`ovsmgr.sim.reference`) gives, and the reply of every connection a
stateful rule allowed comes back under the same rule.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from ovsmgr.compiler.flows import Conjunction, Flow, FlowSet, GotoTable, Match, MatchItem, Output
from ovsmgr.compiler.pipeline import Table
from ovsmgr.policy import PolicyError, ResolvedPolicy, load_policy_text
from ovsmgr.policy.ir import IPNetwork
from ovsmgr.sim import Conversation, FlowTables, Packet, SimulatedSwitch, parse_packet
from ovsmgr.sim.flowtable import flow_matches
from ovsmgr.sim.reference import decide, egress_zone

PREFIXES = ["10.0.0.0/16", "10.0.5.0/24", "10.1.0.0/16", "10.2.0.0/16", "198.51.100.0/24", "10.0.5.7",
            "10.1.0.9", "198.51.100.9", "0.0.0.0/0", "fd00::/16", "fd00:1::/64", "fd00:1::5"]
HOSTS = {4: ["10.0.0.5", "10.0.5.7", "10.1.0.9", "10.1.2.3", "10.2.0.3", "198.51.100.9", "203.0.113.1"],
         6: ["fd00::5", "fd00:1::5", "fd00:1:0:1::9", "fd00:2::7", "2001:db8::9"]}
SERVICES = ["tcp/80", "tcp/1000-2000", "udp/53", "icmp/echo-request", "icmp", "tcp/22", "udp/1-65535",
            "icmpv6/echo-request"]
PROTOCOLS = {4: ("tcp", "udp", "icmp"), 6: ("tcp6", "udp6", "icmp6")}
PORTS_NUMBERS = [22, 53, 80, 443, 1500, 2001]
SETTINGS = settings(max_examples=int(os.environ.get("OVSMGR_PROPERTY_EXAMPLES", "80")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
"""A few seconds by default; OVSMGR_PROPERTY_EXAMPLES=5000 for a deeper search."""


def _layout(forwarding: str, zones: int) -> dict[str, Any]:
    """Ports, zones and links (or networks) of a switch with 2 or 3 zones."""
    if forwarding == "ports":
        members = [["p0"], ["p1"]] if zones == 2 else [["p0"], ["p1", "p2"], ["p3"]]
        links = [["p0", "p1"]] if zones == 2 else [["p0", "p1"], ["p2", "p3"]]
        return {"switch": {"bridge": "br0", "forwarding": "ports",
                           "ports": {p: {"ofport": i + 1} for i, p in enumerate(p for m in members for p in m)},
                           "links": links},
                "zones": {f"z{i}": {"ports": m} for i, m in enumerate(members)}}
    networks = [["10.0.0.0/16", "fd00::/32"], ["10.1.0.0/16", "fd00:1::/32"],
                ["10.2.0.0/16", "10.0.5.0/24", "fd00:2::/32"]][:zones]
    return {"switch": {"bridge": "br0", "forwarding": "normal",
                       "ports": {f"p{i}": {"ofport": i + 1} for i in range(zones)}},
            "zones": {f"z{i}": {"ports": [f"p{i}"], "networks": n} for i, n in enumerate(networks)}}


@st.composite
def _rule(draw: st.DrawFn, index: int, zones: int) -> dict[str, Any]:
    zone = st.sampled_from([f"z{i}" for i in range(zones)])
    rule: dict[str, Any] = {"name": f"r{index}", "from": draw(zone)}
    if draw(st.booleans()):
        rule["to"] = draw(zone)
    for key in ("src", "dst"):
        if draw(st.booleans()):
            rule[key] = draw(st.lists(st.sampled_from(PREFIXES), min_size=1, max_size=2, unique=True))
    if draw(st.booleans()):
        rule["services"] = draw(st.lists(st.sampled_from(SERVICES), min_size=1, max_size=3, unique=True))
    rule["action"] = draw(st.sampled_from(["allow", "allow", "drop", "reject"]))
    if rule["action"] == "allow" and draw(st.integers(0, 3)) == 0:
        rule["stateful"] = False
    if draw(st.integers(0, 7)) == 0:
        rule["enabled"] = False
    if draw(st.integers(0, 4)) == 0:
        rule["shadow"] = True
    return rule


@st.composite
def policies(draw: st.DrawFn) -> ResolvedPolicy:
    forwarding = draw(st.sampled_from(["ports", "normal"]))
    zones = draw(st.integers(2, 3))
    count = draw(st.integers(1, 6))
    document = {"version": 1, **_layout(forwarding, zones),
                "firewall": {"default": draw(st.sampled_from(["drop", "allow", "reject"])),
                             "rules": [draw(_rule(i, zones)) for i in range(count)]},
                "conntrack": {"zone": 7}}
    try:
        return load_policy_text(yaml.safe_dump(document, sort_keys=False))
    except PolicyError:
        assume(False)
        raise


@st.composite
def first_packets(draw: st.DrawFn) -> tuple[str, str]:
    version = draw(st.sampled_from([4, 4, 6]))
    proto = draw(st.sampled_from(PROTOCOLS[version]))
    src, dst = draw(st.sampled_from(HOSTS[version])), draw(st.sampled_from(HOSTS[version]))
    spec = f"{proto},nw_src={src},nw_dst={dst}"
    if not proto.startswith("icmp"):
        spec += f",tp_dst={draw(st.sampled_from(PORTS_NUMBERS))}"
    return draw(st.sampled_from(["p0", "p1", "p2", "p3"])), spec


def _zone_of(policy: ResolvedPolicy, packet: Packet, field: str) -> str | None:
    """The zone whose networks hold the packet's source or destination address."""
    value = (packet.src if field == "src" else packet.dst) or 0
    address = ipaddress.IPv4Address(value) if packet.version == 4 else ipaddress.IPv6Address(value)
    proto = "udp" if address.version == 4 else "udp6"
    return egress_zone(policy, "", parse_packet(f"{proto},nw_src={address},nw_dst={address},tp_dst=1"))[0]


def _inside(data: st.DataObject, prefixes: tuple[IPNetwork, ...], fallback: str) -> str:
    if not prefixes:
        return fallback
    network = data.draw(st.sampled_from(prefixes))
    return str(network.network_address + min(5, network.num_addresses - 1))


def _aimed(data: st.DataObject, policy: ResolvedPolicy) -> tuple[str, str]:
    """A first packet that the chosen rule's match covers (later rules and the default may still decide)."""
    rule = data.draw(st.sampled_from(policy.rules))
    port = data.draw(st.sampled_from(policy.zones[rule.match.from_zone].ports))
    version = data.draw(st.sampled_from(sorted(rule.match.families())))
    match = rule.match.for_family(version)
    to_networks = tuple(n for n in policy.zones[rule.match.to_zone].networks if n.version == version) \
        if rule.match.to_zone else ()
    src = _inside(data, match.src, data.draw(st.sampled_from(HOSTS[version])))
    dst = _inside(data, match.dst or to_networks, data.draw(st.sampled_from(HOSTS[version])))
    tcp, udp, icmp = PROTOCOLS[version]
    service = data.draw(st.sampled_from(match.services)) if match.services else None
    if service is None:
        return port, f"{udp},nw_src={src},nw_dst={dst},tp_dst=53"
    if service.proto.startswith("icmp"):
        return port, f"{icmp},nw_src={src},nw_dst={dst}"
    low = service.ports[0] if service.ports else 1
    return port, f"{dict(tcp=tcp, udp=udp).get(service.proto, service.proto)},nw_src={src},nw_dst={dst},tp_dst={low}"


@SETTINGS
@given(policies(), st.lists(first_packets(), min_size=1, max_size=4), st.data())
def test_the_simulator_decides_first_packets_as_the_policy_says(
        policy: ResolvedPolicy, random_packets: list[tuple[str, str]], data: st.DataObject) -> None:
    switch = SimulatedSwitch.from_policy(policy)
    if any(isinstance(a, Conjunction) for f in switch.compiled.flowset.flows.values() for a in f.actions):
        event("the policy compiles to conjunctive matches")
    aimed = [_aimed(data, policy) for _ in range(4)] if policy.rules else []
    checked = 0
    for port, spec in random_packets + aimed:
        if port not in policy.ports or not _plausible(policy, port, spec):
            continue
        conversation = Conversation(switch)
        trace = conversation.send(port, spec)
        expected = decide(policy, port, trace.packet_in)
        assert (trace.verdict, trace.rule, trace.shadow) == (expected.verdict, expected.rule, expected.shadow), (
            f"{port} {spec}: simulator {trace.verdict}/{trace.rule}/{trace.shadow}, policy {expected}")
        if expected.shadow:
            event("shadow rules counted the packet")
        event(f"IPv{trace.packet_in.version}: verdict {expected.verdict} by {'a rule' if expected.rule else 'default'}")
        checked += 1
        if expected.verdict == "allow" and expected.stateful and trace.output != ("NORMAL",):
            reply = conversation.reply()
            assert (reply.verdict, reply.rule) == ("allow", expected.rule), f"reply of {port} {spec}"
            event("reply checked")
    assume(checked > 0)


def _plausible(policy: ResolvedPolicy, port: str, spec: str) -> bool:
    """With NORMAL forwarding a host sends from its own zone (or outside all), to another zone or outside."""
    if policy.forwarding != "normal":
        return True
    packet = parse_packet(spec)
    zone = policy.ports[port].zone
    return _zone_of(policy, packet, "src") in (zone, None) and _zone_of(policy, packet, "dst") != zone


# --- the flow table itself ---------------------------------------------------------------------
FIELDS = {"nw_src": 32, "tp_dst": 16, "reg0": 32}


@st.composite
def _items(draw: st.DrawFn) -> tuple[MatchItem, ...]:
    items = []
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=3, unique=True)):
        width = FIELDS[name]
        prefix = draw(st.integers(0, 4))
        mask = ((1 << width) - 1) ^ ((1 << prefix) - 1)
        items.append(MatchItem(name, draw(st.integers(0, 15)) & mask, None if prefix == 0 else mask))
    return tuple(items)


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 4), _items()), min_size=1, max_size=12),
       st.integers(0, 15), st.integers(0, 15), st.integers(0, 15))
def test_lookup_finds_a_highest_priority_match(flows: list[tuple[int, tuple[MatchItem, ...]]],
                                                src: int, port: int, reg0: int) -> None:
    built = [Flow(Table.FILTER, priority, Match.of(*items), (Output(i),), 0) for i, (priority, items) in
             enumerate(flows)]
    unique = {f.key: f for f in built}
    values = {"nw_src": src, "tp_dst": port, "reg0": reg0}
    hit = FlowTables.of(unique.values()).lookup(Table.FILTER, lambda n: values.get(n, 0))
    matching = [f for f in unique.values() if flow_matches(f, lambda n: values.get(n, 0))]
    if not matching:
        assert hit is None
        return
    assert hit is not None and hit.flow in matching
    assert hit.flow.priority == max(f.priority for f in matching)


@SETTINGS
@given(st.lists(st.lists(_items(), min_size=1, max_size=3), min_size=2, max_size=3),
       st.integers(0, 15), st.integers(0, 15), st.integers(0, 15))
def test_a_conjunction_decides_like_the_cross_product_it_replaces(
        dims: list[list[tuple[MatchItem, ...]]], src: int, port: int, reg0: int) -> None:
    values = {"nw_src": src, "tp_dst": port, "reg0": reg0}
    lower = Flow(Table.FILTER, 1, Match(), (Output(99),), 0, rule="lower")
    conj = FlowSet(flows={lower.key: lower})
    conj.add(Flow(Table.FILTER, 10, Match.of(MatchItem("conj_id", 5)), (GotoTable(Table.OUTPUT),), 0, rule="rule"))
    for clause, alternatives in enumerate(dims, 1):
        for items in alternatives:
            conj.add(Flow(Table.FILTER, 10, Match.of(*items), (Conjunction(5, clause, len(dims)),), 0))
    expected = "lower"
    for combo in _product(dims):
        merged = _merge(combo)
        if merged is not None and all(i.matches(values.get(i.field, 0)) for i in merged):
            expected = "rule"
    hit = FlowTables.of(conj.flows.values()).lookup(Table.FILTER, lambda n: values.get(n, 0))
    assert hit is not None and hit.flow.rule == expected


def _product(dims: list[list[tuple[MatchItem, ...]]]) -> list[tuple[tuple[MatchItem, ...], ...]]:
    combos: list[tuple[tuple[MatchItem, ...], ...]] = [()]
    for alternatives in dims:
        combos = [(*c, a) for c in combos for a in alternatives]
    return combos


def _merge(parts: tuple[tuple[MatchItem, ...], ...]) -> list[MatchItem] | None:
    """All items of a combination (a field constrained twice must satisfy both)."""
    return [item for part in parts for item in part]
