"""The simulator's engine on hand-built flow sets: lookup, actions, conntrack, NAT."""

from __future__ import annotations

import ipaddress

from ovsmgr.compiler.flows import (
    Action,
    Conjunction,
    Controller,
    Ct,
    Flow,
    FlowSet,
    GotoTable,
    InPort,
    LearnMacBinding,
    Match,
    MatchItem,
    Move,
    NatSpec,
    Normal,
    Output,
    Resubmit,
    SetField,
)
from ovsmgr.compiler.pipeline import CT_STATE_BITS, PacketInKind, Table, packet_in_userdata
from ovsmgr.sim import Conntrack, NormalForwarding, Packet, Trace, parse_packet, reply_of, simulate

PORTS = {1: "inside", 2: "outside", 3: "third"}
NUMBERS = {name: number for number, name in PORTS.items()}
IP = MatchItem("dl_type", 0x0800)


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def state(flags: str) -> MatchItem:
    value = mask = 0
    for token in flags.replace("+", " +").replace("-", " -").split():
        mask |= CT_STATE_BITS[token[1:]]
        value |= CT_STATE_BITS[token[1:]] if token[0] == "+" else 0
    return MatchItem("ct_state", value, mask)


def flow(table: int, priority: int, items: tuple[MatchItem, ...], actions: tuple[Action, ...],
         rule: str | None = None) -> Flow:
    return Flow(Table(table), priority, Match.of(*items), actions, 0, rule)


def flowset(*flows: Flow) -> FlowSet:
    """A flow set built without the pipeline's declarations, as tests of the engine need."""
    return FlowSet(flows={f.key: f for f in flows})


def run(flows: FlowSet, spec: str, port: str = "inside", conntrack: Conntrack | None = None,
        **kwargs: object) -> Trace:
    packet = parse_packet(spec, NUMBERS, port)
    return simulate(flows, packet, conntrack or Conntrack(), PORTS, **kwargs)  # type: ignore[arg-type]


TCP_OUT = "tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=443"


# --- lookup ----------------------------------------------------------------------------------
def test_highest_priority_match_wins_and_lower_ones_catch_the_rest() -> None:
    flows = flowset(
        flow(0, 10, (), (Output(3),)),
        flow(0, 20, (IP, MatchItem("nw_dst", ip("198.51.100.9"))), (Output(2),)),
    )
    assert run(flows, TCP_OUT).output == ("outside",)
    assert run(flows, "udp,nw_src=10.0.0.5,nw_dst=192.0.2.1,tp_dst=53").output == ("third",)


def test_masks_match_prefixes_and_port_ranges() -> None:
    flows = flowset(
        flow(0, 30, (IP, MatchItem("nw_src", ip("10.0.0.0"), 0xFFFFFF00), MatchItem("nw_proto", 6),
                     MatchItem("tp_dst", 0x400, 0xFC00)), (Output(2),)),
    )
    assert run(flows, "tcp,nw_src=10.0.0.77,nw_dst=1.2.3.4,tp_dst=1025").verdict == "allow"
    assert run(flows, "tcp,nw_src=10.0.1.77,nw_dst=1.2.3.4,tp_dst=1025").verdict == "drop"
    assert run(flows, "tcp,nw_src=10.0.0.77,nw_dst=1.2.3.4,tp_dst=2048").verdict == "drop"


def test_equal_priorities_are_broken_by_the_flow_key_not_insertion_order() -> None:
    a = flow(0, 5, (MatchItem("in_port", 1),), (Output(2),))
    b = flow(0, 5, (IP,), (Output(3),))
    assert run(flowset(a, b), TCP_OUT).output == run(flowset(b, a), TCP_OUT).output


def test_table_miss_drops() -> None:
    trace = run(flowset(flow(0, 1, (MatchItem("in_port", 2),), (Output(1),))), TCP_OUT)
    assert trace.verdict == "drop"
    assert trace.steps[0].priority is None


# --- conjunctions --------------------------------------------------------------------------
def _conjunctive(fallback: Action) -> FlowSet:
    """Allow (src in 10.0.0.5 or 10.0.0.6) and (tp_dst 22 or 443) as a conjunction, at priority 50."""
    clause = [
        flow(40, 50, (IP, MatchItem("nw_src", ip(a))), (Conjunction(7, 1, 2),)) for a in ("10.0.0.5", "10.0.0.6")
    ] + [
        flow(40, 50, (IP, MatchItem("nw_proto", 6), MatchItem("tp_dst", p)), (Conjunction(7, 2, 2),))
        for p in (22, 443)
    ]
    return flowset(
        flow(0, 1, (), (GotoTable(Table.FILTER),)),
        *clause,
        flow(40, 50, (MatchItem("conj_id", 7),), (Output(2),), rule="conjunctive"),
        flow(40, 10, (IP,), (fallback,), rule="lower"),
    )


def test_a_conjunction_applies_when_every_clause_matches() -> None:
    trace = run(_conjunctive(Output(3)), TCP_OUT)
    assert (trace.output, trace.rule, trace.steps[-1].conjunction) == (("outside",), "conjunctive", 7)


def test_an_incomplete_conjunction_falls_through_to_lower_priorities() -> None:
    only_first_clause = run(_conjunctive(Output(3)), "tcp,nw_src=10.0.0.5,nw_dst=1.2.3.4,tp_dst=80")
    assert (only_first_clause.output, only_first_clause.rule) == (("third",), "lower")
    only_second = run(_conjunctive(Output(3)), "tcp,nw_src=10.0.0.9,nw_dst=1.2.3.4,tp_dst=22")
    assert only_second.rule == "lower"


def test_an_ordinary_flow_at_the_clauses_priority_wins_over_them() -> None:
    flows = _conjunctive(Output(3))
    flows.add(flow(40, 50, (IP, MatchItem("nw_dst", ip("198.51.100.9"))), (Output(1),), rule="plain"))
    # Output(1) is the in_port, so nothing leaves: the point is which flow applied.
    assert run(flows, TCP_OUT).rule == "plain"


def test_two_flows_with_one_match_merge_their_conjunctions() -> None:
    flows = FlowSet()
    clause = (IP, MatchItem("nw_src", ip("10.0.0.5")))
    flows.add(flow(40, 50, clause, (Conjunction(1, 1, 2),)))
    flows.add(flow(40, 50, clause, (Conjunction(2, 1, 2),)))
    flows.add(flow(40, 50, (IP, MatchItem("nw_proto", 6), MatchItem("tp_dst", 443)), (Conjunction(2, 2, 2),)))
    flows.add(flow(40, 50, (MatchItem("conj_id", 2),), (GotoTable(Table.NAT),), rule="two"))
    flows.flows.update({f.key: f for f in (flow(0, 1, (), (GotoTable(Table.FILTER),)),
                                            flow(50, 1, (), (Output(2),)))})
    trace = run(flows, TCP_OUT)
    assert (trace.rule, trace.output) == ("two", ("outside",))


# --- actions -------------------------------------------------------------------------------
def test_resubmit_returns_and_goto_continues_after_the_list() -> None:
    flows = flowset(
        flow(0, 1, (), (GotoTable(Table.OUTPUT), Resubmit(Table.EGRESS), SetField("reg1", 5))),
        flow(20, 1, (), (SetField("reg2", 2),)),
        flow(60, 1, (MatchItem("reg1", 5), MatchItem("reg2", 2)), (Output(2),)),
    )
    trace = run(flows, TCP_OUT)
    assert trace.output == ("outside",)
    assert [s.table for s in trace.steps if not s.continued] == [0, 20, 60]


def test_move_copies_register_slices() -> None:
    flows = flowset(
        flow(0, 1, (), (SetField("reg0", 0xAB), Move("NXM_NX_REG0[0..7]", "reg1[8..15]"), GotoTable(Table.OUTPUT))),
        flow(60, 1, (MatchItem("reg1", 0xAB00),), (Output(2),)),
    )
    assert run(flows, TCP_OUT).verdict == "allow"


def test_output_to_the_in_port_needs_in_port() -> None:
    assert run(flowset(flow(0, 1, (), (Output(1),))), TCP_OUT).verdict == "drop"
    assert run(flowset(flow(0, 1, (), (InPort(),))), TCP_OUT).output == ("inside",)


def test_normal_routes_by_address_and_floods_broadcasts() -> None:
    routes = NormalForwarding(((ipaddress.ip_network("198.51.100.0/24"), "outside"),))
    flows = flowset(flow(0, 1, (), (Normal(),)))
    assert run(flows, TCP_OUT, normal=routes).output == ("outside",)
    assert run(flows, "tcp,nw_src=10.0.0.5,nw_dst=192.0.2.1,tp_dst=1").output == ("NORMAL",)
    arp = run(flows, "arp,arp_spa=10.0.0.5,arp_tpa=10.0.0.1", normal=routes)
    assert arp.output == ("outside", "third")


def test_reject_and_log_reach_the_controller() -> None:
    log = Controller(packet_in_userdata(PacketInKind.LOG, 9))
    reject = Controller(packet_in_userdata(PacketInKind.REJECT, 9))
    trace = run(flowset(flow(0, 1, (), (log, reject))), TCP_OUT, rule_ids={9: "no-ssh"})
    assert trace.verdict == "reject"
    assert any("REJECT (rule no-ssh)" in e for e in trace.steps[0].events)


def test_a_resubmit_loop_stops() -> None:
    trace = run(flowset(flow(0, 1, (), (Resubmit(Table.CLASSIFY), Output(2)))), TCP_OUT)
    assert trace.notes and "loop" in trace.notes[0]


def test_learn_adds_a_mac_binding() -> None:
    flows = flowset(
        flow(0, 10, (MatchItem("dl_type", 0x0806),), (LearnMacBinding(Table.MAC_BINDING),)),
        flow(0, 1, (), (Resubmit(Table.MAC_BINDING), Output(2))),
    )
    arp = run(flows, "arp,arp_spa=10.0.0.9,arp_tpa=10.0.0.1,dl_src=02:aa:bb:cc:dd:ee")
    later = simulate(flows, parse_packet("udp,nw_src=10.0.0.5,nw_dst=10.0.0.9,tp_dst=53", NUMBERS, "inside"),
                     Conntrack(), PORTS, learned=arp.learned)
    assert later.packet.dl_dst == 0x02AABBCCDDEE


# --- conntrack -----------------------------------------------------------------------------
def _seed_firewall() -> FlowSet:
    """The seed's stateful firewall (shared/seeds/004, 4.1), table 1 as STATE."""
    return flowset(
        flow(0, 1, (), ()),
        flow(0, 10, (MatchItem("dl_type", 0x0806),), (Normal(),)),
        flow(0, 100, (IP, state("-trk")), (Ct(table=Table.STATE),)),
        flow(30, 32768, (MatchItem("in_port", 1), IP, state("+trk+new")), (Ct(commit=True), Output(2))),
        flow(30, 32768, (MatchItem("in_port", 1), IP, state("+trk+est")), (Output(2),)),
        flow(30, 32768, (MatchItem("in_port", 2), IP, state("+trk+new")), ()),
        flow(30, 32768, (MatchItem("in_port", 2), IP, state("+trk+est")), (Output(1),)),
    )


def test_seed_firewall_inside_opens_and_replies_pass() -> None:
    first = run(_seed_firewall(), TCP_OUT)
    assert first.output == ("outside",)
    reply = simulate(_seed_firewall(), reply_of(first.packet).replace(in_port=2), first.conntrack, PORTS)
    assert (reply.output, reply.ct_state & CT_STATE_BITS["rpl"]) == (("inside",), CT_STATE_BITS["rpl"])


def test_seed_firewall_outside_cannot_open_and_strays_are_invalid() -> None:
    assert run(_seed_firewall(), "tcp,nw_src=198.51.100.9,nw_dst=10.0.0.5,tp_dst=22", "outside").verdict == "drop"
    stray = run(_seed_firewall(), "tcp,nw_src=198.51.100.9,nw_dst=10.0.0.5,tp_dst=22,tcp_flags=syn|ack", "outside")
    assert stray.ct_state & CT_STATE_BITS["inv"]
    pickup = run(_seed_firewall(), "tcp,nw_src=198.51.100.9,nw_dst=10.0.0.5,tp_dst=22,tcp_flags=ack", "outside")
    assert (pickup.ct_state & CT_STATE_BITS["new"], pickup.verdict) == (CT_STATE_BITS["new"], "drop")


def test_ct_table_forks_the_rest_of_the_actions_run_untracked() -> None:
    flows = flowset(
        flow(0, 1, (), (Ct(table=Table.STATE), GotoTable(Table.OUTPUT))),
        flow(30, 1, (state("+trk+new"),), (Output(2),)),
        flow(60, 1, (state("-trk"),), (Output(3),)),
    )
    assert sorted(run(flows, TCP_OUT).output) == ["outside", "third"]


def test_ct_without_table_commits_and_translates_but_hides_the_state() -> None:
    snat = NatSpec("src", ip("200.200.200.200"), ip("200.200.200.200"), 4)
    flows = flowset(
        flow(0, 1, (), (Ct(table=Table.STATE, zone=1, apply_nat=True),)),
        flow(30, 1, (state("+trk+new"),), (Ct(commit=True, zone=1, nat=snat), GotoTable(Table.OUTPUT))),
        flow(60, 2, (state("+trk"),), (Output(3),)),
        flow(60, 1, (), (Output(2),)),
    )
    trace = run(flows, TCP_OUT)
    assert trace.output == ("outside",)
    assert trace.packet.nw_src == ip("200.200.200.200")
    assert len(trace.conntrack.connections) == 1


def _seed_nat(snat: NatSpec) -> FlowSet:
    """The seed's SNAT (4.2) as the testbed notes fix it: ct(table=1,zone=1,nat) in table 0."""
    return flowset(
        flow(0, 1, (), ()),
        flow(0, 100, (IP, state("-trk")), (Ct(table=Table.STATE, zone=1, apply_nat=True),)),
        flow(30, 32768, (MatchItem("in_port", 1), IP, state("+trk+new")),
             (Ct(commit=True, zone=1, nat=snat, exec=(SetField("ct_mark", 0x42),)), Output(2))),
        flow(30, 32768, (MatchItem("in_port", 2), IP, state("+trk+new")), ()),
        flow(30, 32768, (MatchItem("in_port", 2), IP, state("+trk+est")), (Output(1),)),
        flow(30, 32768, (MatchItem("in_port", 1), IP, state("+trk+est")), (Output(2),)),
    )


def test_snat_translates_and_the_reply_is_translated_back() -> None:
    flows = _seed_nat(NatSpec("src", ip("200.200.200.200"), ip("200.200.200.200"), 4))
    out = run(flows, TCP_OUT)
    assert (out.packet.nw_src, out.packet.tp_src) == (ip("200.200.200.200"), 40000)
    back = simulate(flows, reply_of(out.packet).replace(in_port=2), out.conntrack, PORTS, fingerprints={0x42: "r"})
    assert (back.output, back.packet.nw_dst, back.packet.tp_dst) == (("inside",), ip("10.0.0.5"), 40000)
    assert (back.ct_mark, back.rule) == (0x42, "r")


def test_snat_with_a_port_range_takes_the_lowest_free_port() -> None:
    flows = _seed_nat(NatSpec("src", ip("200.200.200.200"), ip("200.200.200.201"), 4, 1024, 1025))
    first = run(flows, TCP_OUT)
    second = run(flows, TCP_OUT.replace("10.0.0.5", "10.0.0.6"), conntrack=first.conntrack)
    third = run(flows, TCP_OUT.replace("10.0.0.5", "10.0.0.7"), conntrack=second.conntrack)
    assert [(t.packet.nw_src, t.packet.tp_src) for t in (first, second, third)] == [
        (ip("200.200.200.200"), 1024), (ip("200.200.200.200"), 1025), (ip("200.200.200.201"), 1024)]


def test_dnat_translates_destination_and_port_and_back() -> None:
    dnat = NatSpec("dst", ip("10.0.1.10"), ip("10.0.1.10"), 4, 80, 80)
    flows = _seed_nat(dnat)
    out = run(flows, "tcp,nw_src=10.0.0.5,nw_dst=200.200.200.200,tp_dst=8080")
    assert (out.packet.nw_dst, out.packet.tp_dst) == (ip("10.0.1.10"), 80)
    back = simulate(flows, reply_of(out.packet).replace(in_port=2), out.conntrack, PORTS)
    assert (back.packet.nw_src, back.packet.tp_src) == (ip("200.200.200.200"), 8080)


def test_zones_keep_connections_apart() -> None:
    flows = flowset(
        flow(0, 1, (MatchItem("in_port", 1),), (Ct(commit=True, zone=1), Output(2))),
        flow(0, 1, (MatchItem("in_port", 2),), (Ct(table=Table.STATE, zone=2),)),
        flow(30, 1, (state("+trk+est"),), (Output(1),)),
    )
    out = run(flows, TCP_OUT)
    back = simulate(flows, reply_of(out.packet).replace(in_port=2), out.conntrack, PORTS)
    assert back.verdict == "drop"


def test_a_packet_is_a_packet_and_nothing_else() -> None:
    assert isinstance(run(_seed_firewall(), TCP_OUT).packet, Packet)
