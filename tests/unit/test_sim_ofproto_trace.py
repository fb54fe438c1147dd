"""ofproto/trace cross-checks (ovsmgr.sim.ofproto_trace): reading the trace, asking for it, comparing."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from ovsmgr.policy import load_policy
from ovsmgr.sim.ofproto_trace import (
    compare_walks,
    flow_string,
    parse_trace,
    sim_passes,
    split_actions,
    trace_request,
)
from ovsmgr.sim.packet import parse_packet
from ovsmgr.sim.session import Conversation, SimulatedSwitch
from ovsmgr.sim.trace import Trace

POLICIES = Path(__file__).resolve().parents[2] / "policies"

# OVS 3.1, seed-nat applied, the outside host's SYN+ACK to 200.200.200.200 (a reply of a
# masqueraded connection): the last pass follows a plain `nat`, which the trace cannot apply.
REPLY_TRACE = """\
Flow: ct_mark=0xad3a29cd,tcp,in_port=2,vlan_tci=0x0000,dl_src=02:00:00:00:00:02,dl_dst=0a:0f:15:75:ab:17,nw_src=198.51.100.9,nw_dst=200.200.200.200,nw_tos=0,nw_ecn=0,nw_ttl=0,nw_frag=no,tp_src=443,tp_dst=40000,tcp_flags=syn|ack

bridge("br0")
-------------
 0. in_port=2, priority 100, cookie 0xf5a000000000000
    set_field:0x2->reg0
    goto_table:10
10. ip, priority 100, cookie 0xf5a000000000000
    ct(table=20,zone=1)
    drop
     -> A clone of the packet is forked to recirculate. The forked pipeline will be resumed at table 20.
     -> Sets the packet to an untracked state, and clears all the conntrack fields.

Final flow: tcp,reg0=0x2,in_port=2,vlan_tci=0x0000,dl_src=02:00:00:00:00:02,dl_dst=0a:0f:15:75:ab:17,nw_src=198.51.100.9,nw_dst=200.200.200.200,nw_tos=0,nw_ecn=0,nw_ttl=0,nw_frag=no,tp_src=443,tp_dst=40000,tcp_flags=syn|ack
Megaflow: recirc_id=0,eth,ip,in_port=2,nw_frag=no
Datapath actions: ct(zone=1),recirc(0x4)

===============================================================================
recirc(0x4) - resume conntrack with ct_state=est|rpl|trk
===============================================================================

Flow: recirc_id=0x4,ct_state=est|rpl|trk,ct_zone=1,ct_mark=0xad3a29cd,eth,tcp,reg0=0x2,in_port=2,vlan_tci=0x0000,dl_src=02:00:00:00:00:02,dl_dst=0a:0f:15:75:ab:17,nw_src=198.51.100.9,nw_dst=200.200.200.200,nw_tos=0,nw_ecn=0,nw_ttl=0,nw_frag=no,tp_src=443,tp_dst=40000,tcp_flags=syn|ack

bridge("br0")
-------------
    thaw
        Resuming from table 20
20. in_port=2, priority 100, cookie 0xf5a000000000000
    set_field:0x1->reg2
    set_field:0x1->reg1
    goto_table:30
30. ct_state=+trk,ct_mark=0x2d3a29cd/0x7fffffff, priority 300, cookie 0xf5a000000000000
    goto_table:60
60. ct_mark=0x80000000/0x80000000,ip, priority 200, cookie 0xf5a000000000000
    ct(table=65,zone=1,nat)
    nat
     -> A clone of the packet is forked to recirculate. The forked pipeline will be resumed at table 65.
     -> Sets the packet to an untracked state, and clears all the conntrack fields.

Final flow: recirc_id=0x4,eth,tcp,reg0=0x2,reg1=0x1,reg2=0x1,in_port=2,vlan_tci=0x0000,dl_src=02:00:00:00:00:02,dl_dst=0a:0f:15:75:ab:17,nw_src=198.51.100.9,nw_dst=200.200.200.200,nw_tos=0,nw_ecn=0,nw_ttl=0,nw_frag=no,tp_src=443,tp_dst=40000,tcp_flags=syn|ack
Megaflow: recirc_id=0x4,ct_state=-inv+trk,ct_mark=0xad3a29cd,eth,ip,in_port=2,nw_frag=no
Datapath actions: ct(zone=1,nat),recirc(0x5)

===============================================================================
recirc(0x5) - resume conntrack with ct_state=est|rpl|trk|dnat
Replacing src/dst IP/ports to simulate NAT:
 Initial flow:
 Modified flow:
===============================================================================

Flow: recirc_id=0x5,ct_state=est|rpl|trk|dnat,ct_zone=1,ct_mark=0xad3a29cd,eth,tcp,reg0=0x2,reg1=0x1,reg2=0x1,in_port=2,vlan_tci=0x0000,dl_src=02:00:00:00:00:02,dl_dst=0a:0f:15:75:ab:17,nw_src=198.51.100.9,nw_dst=200.200.200.200,nw_tos=0,nw_ecn=0,nw_ttl=0,nw_frag=no,tp_src=443,tp_dst=40000,tcp_flags=syn|ack

bridge("br0")
-------------
    thaw
        Resuming from table 65
65. ip,reg2=0x1, priority 200, cookie 0xf5a000000000000
    resubmit(,70)
    70. No match.
            drop
    output:1

Final flow: unchanged
Megaflow: recirc_id=0x5,eth,ip,in_port=2,nw_dst=200.0.0.0/5,nw_frag=no
Datapath actions: 2
"""

# The same last pass traced alone with trace-packet-out from the simulator's state.
RETRACE = """\
Flow: ct_state=est|rpl|trk|dnat,ct_zone=1,ct_mark=0xad3a29cd,tcp,reg0=0x2,reg1=0x1,reg2=0x1,in_port=2,vlan_tci=0x0000,dl_src=02:00:00:00:00:02,dl_dst=0a:0f:15:75:ab:17,nw_src=198.51.100.9,nw_dst=10.0.0.5,nw_tos=0,nw_ecn=0,nw_ttl=0,nw_frag=no,tp_src=443,tp_dst=40000,tcp_flags=syn|ack

bridge("br0")
-------------
    resubmit(,65)
65. ip,reg2=0x1, priority 200, cookie 0xf5a000000000000
    resubmit(,70)
    70. ip,nw_dst=10.0.0.5, priority 100, cookie 0xf5a000400000000
            load:0x20000000001->NXM_OF_ETH_DST[]
    output:1

Final flow: ct_state=est|rpl|trk|dnat,ct_zone=1,ct_mark=0xad3a29cd,tcp,reg0=0x2,reg1=0x1,reg2=0x1,in_port=2,vlan_tci=0x0000,dl_src=02:00:00:00:00:02,dl_dst=02:00:00:00:00:01,nw_src=198.51.100.9,nw_dst=10.0.0.5,nw_tos=0,nw_ecn=0,nw_ttl=0,nw_frag=no,tp_src=443,tp_dst=40000,tcp_flags=syn|ack
Megaflow: recirc_id=0,eth,ip,in_port=2,dl_dst=0a:0f:15:75:ab:17,nw_dst=10.0.0.5,nw_frag=no
Datapath actions: set(eth(dst=02:00:00:00:00:01)),2
"""


def test_a_trace_reads_as_passes_with_hits_and_datapath_actions() -> None:
    passes = parse_trace(REPLY_TRACE)
    assert [p.hits for p in passes] == [[(0, 100), (10, 100)], [(20, 100), (30, 300), (60, 200)],
                                        [(65, 200), (70, None)]]
    assert [p.recirc_id for p in passes] == [None, "0x4", "0x5"]
    assert passes[0].datapath_actions == "ct(zone=1),recirc(0x4)"
    assert (passes[1].flow["ct_state"], passes[1].flow["ct_mark"], passes[1].flow["ct_zone"]) == (
        "est|rpl|trk", "0xad3a29cd", "1")
    assert [p.nat_simulated for p in passes] == [None, None, False]
    assert [p.outputs for p in passes] == [[], [], [2]]
    assert passes[0].cookies == [0xF5A000000000000, 0xF5A000000000000]


def test_a_pass_traced_alone_reads_as_one_pass() -> None:
    (alone,) = parse_trace(RETRACE)
    assert alone.hits == [(65, 200), (70, 100)]
    assert alone.datapath_actions == "set(eth(dst=02:00:00:00:00:01)),2"
    assert alone.outputs == [2]


def test_datapath_actions_split_at_the_top_level() -> None:
    text = "ct(commit,zone=10,mark=0x1/0xffffffff,nat(src=200.200.200.200)),recirc(0x3),set(eth(dst=02:00:00:00:00:01)),2"
    assert split_actions(text) == ["ct(commit,zone=10,mark=0x1/0xffffffff,nat(src=200.200.200.200))",
                                   "recirc(0x3)", "set(eth(dst=02:00:00:00:00:01))", "2"]
    passes = parse_trace("Datapath actions: userspace(pid=0,controller(reason=1,dont_send=1))")
    assert passes[0].to_controller and passes[0].outputs == []


def test_flows_are_spelled_the_way_ofproto_trace_reads_them() -> None:
    udp = parse_packet("udp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=53", in_port=1)
    assert "udp_src=40000,udp_dst=53" in flow_string(udp)
    icmp6 = parse_packet("icmp6,ipv6_src=2001:db8::5,ipv6_dst=2001:db8::9", in_port=1)
    assert "icmpv6_type=128,icmpv6_code=0" in flow_string(icmp6)
    tcp = parse_packet("tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=22,tcp_flags=syn|ack", in_port=1)
    text = flow_string(tcp, {"reg2": 1, "ct_state": 0x2A, "ct_zone": 1, "ct_mark": 0, "conj_id": 5})
    assert text.endswith("tcp_src=40000,tcp_dst=22,tcp_flags=0x012,reg2=0x1,ct_state=est|rpl|trk,ct_zone=0x1")


@cache
def _seed_nat() -> SimulatedSwitch:
    return SimulatedSwitch.from_policy(load_policy([POLICIES / "seed-nat.yaml"]),
                                       {"inside": ("10.0.0.5/24",), "outside": ("198.51.100.9/24",)})


def _reply() -> Trace:
    conversation = Conversation(_seed_nat())
    conversation.announce_hosts()
    conversation.send("inside", "tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=443")
    return conversation.reply()


def test_the_request_carries_the_connections_mark_and_one_state_per_recirculation() -> None:
    reply = _reply()
    request = trace_request(reply)
    assert request.ct_next == ("est,rpl,trk", "est,rpl,trk,dnat")
    mark = int(request.flow.split("ct_mark=")[1].split(",")[0], 16)
    assert "ct_nw_proto=0x6" in request.flow  # the first ct()'s tuple: ofproto/trace keeps it
    assert _seed_nat().pipeline.fingerprints[mark & 0x7FFFFFFF] == "inside-out"
    assert request.argv("br0")[:3] == ["ofproto/trace", "br0", request.flow]
    assert [p.start.table for p in sim_passes(reply)] == [0, 20, 65]


def _render(trace: Trace, translated: bool = True, change: int | None = None) -> str:
    """A trace text as ofproto/trace would print the simulator's walk (`translated=False`: the
    last pass starts from the untranslated addresses, as after a plain `nat`)."""
    lines = []
    first = trace.packet_in
    for number, sim_pass in enumerate(sim_passes(trace)):
        if number:
            lines.append(f"recirc(0x{number}) - resume conntrack with ct_state=trk")
        packet = sim_pass.start.packet if translated or not number else first
        meta = {k: v for k, v in (sim_pass.start.metadata or {}).items() if k != "conj_id"}
        lines.append("Flow: " + flow_string(packet, meta).replace("tcp_src", "tp_src").replace("tcp_dst", "tp_dst"))
        for step in sim_pass.steps:
            priority = step.priority if step.table != change else (step.priority or 0) + 1
            lines.append(f"{step.table}. No match." if priority is None else
                         f"{step.table}. any, priority {priority}, cookie 0x0")
        out = [name for name in trace.output] if number == len(sim_passes(trace)) - 1 else []
        lines.append("Datapath actions: " + (",".join("2" if n == "inside" else "3" for n in out) or "drop"))
    return "\n".join(lines)


def test_walks_that_agree_compare_clean() -> None:
    reply = _reply()
    result = compare_walks(reply, _render(reply), lambda f, a: "", {2: "inside", 3: "outside"})
    assert (result.problems, result.retraced, result.output) == ((), (), ("inside",))


def test_a_different_priority_is_a_problem_of_its_pass() -> None:
    reply = _reply()
    result = compare_walks(reply, _render(reply, change=30), lambda f, a: "", {2: "inside", 3: "outside"})
    assert len(result.problems) == 1 and result.problems[0].startswith("pass 1: simulator 20/100 30/300")


def test_a_pass_the_trace_cannot_translate_is_traced_alone() -> None:
    reply = _reply()
    asked = []

    def retrace(flow: str, actions: str) -> str:
        asked.append((flow, actions))
        last = sim_passes(reply)[-1]
        hits = "\n".join(f"{s.table}. any, priority {s.priority}, cookie 0x0" for s in last.steps)
        return f"{hits}\nDatapath actions: 2"

    result = compare_walks(reply, _render(reply, translated=False), retrace, {2: "inside", 3: "outside"})
    assert result.problems == () and result.retraced == (2,)
    assert "nw_dst=10.0.0.5" in asked[0][0] and "ct_state=est|rpl|trk|dnat" in asked[0][0]
    assert asked[0][1] == "resubmit(,65)"
    assert "nw_dst: simulator 10.0.0.5, trace 200.200.200.200" in result.notes[0]
