"""`ovs-appctl ofproto/trace` against the simulator's walk, step by step, on a real switch.

For every step of every scenario the simulator's trace gives the packet, the
ct_mark of its connection and the ct_state at each recirculation; the same
packet (with the MACs a lab host would use) is traced on the switch with one
`--ct-next` per recirculation, and the (table, priority) of every lookup, pass by
pass, and the ports it leaves by must be the simulator's. ofproto/trace runs no
conntrack: it cannot apply an existing connection's translation (plain `nat`), so
a pass after such a recirculation is traced alone from the simulator's state
with `ofproto/trace-packet-out` (see `ovsmgr.sim.ofproto_trace`).

The ct_state the simulator hands to `--ct-next` comes from its conntrack model;
`test_conntrack_model_matches_ovs` checks that model against the real
conntrack with a counting pipeline of its own.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from ovsmgr.compiler import compile_policy
from ovsmgr.lab.ovs import Lab
from ovsmgr.lab.scenarios import ScenarioLab, TcpBook, add_host_addresses, datapath_ports, lab_ports
from ovsmgr.lab.taps import HostTaps, guarded_hosts
from ovsmgr.policy import load_policy
from ovsmgr.sim.conntrack import Conntrack, CtRequest, format_ct_state, run_ct
from ovsmgr.sim.ofproto_trace import compare_walks, sim_passes, trace_request
from ovsmgr.sim.packet import Packet, parse_packet, reply_of
from ovsmgr.sim.scenarios import load_table, run_scenario
from ovsmgr.sim.session import ICMP_ERROR, REPLY
from ovsmgr.sim.wire import Frame, WireExtras, encode

from .switch import apply

pytestmark = pytest.mark.integration

TABLES = sorted((Path(__file__).resolve().parents[1] / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", TABLES, ids=[p.stem for p in TABLES])
def test_ofproto_trace_agrees_with_the_simulator(lab_factory, path: Path) -> None:
    table = load_table(path)
    compiled = compile_policy(load_policy(list(table.policy_files)))
    bridge = compiled.policy.bridge
    lab = lab_factory(lab_ports(table, compiled.policy), bridge=bridge)
    add_host_addresses(lab, table, compiled.policy)
    apply(lab, compiled)
    scenario_lab = ScenarioLab(lab, table, compiled)
    with scenario_lab.running():
        scenario_lab.reset()  # hosts announce: MAC bindings learned, NORMAL knows every MAC
    ports = datapath_ports(lab)

    def retrace(flow: str, actions: str) -> str:
        return lab.appctl(["ofproto/trace-packet-out", bridge, flow, actions])

    problems, compared, retraced, passes = [], 0, 0, 0
    for scenario in table.scenarios:
        for number, outcome in enumerate(run_scenario(scenario_lab.switch, scenario), 1):
            trace, step = outcome.trace, outcome.step
            port = scenario_lab.switch.port_names[trace.packet_in.in_port]
            spec = "" if step.send in (REPLY, ICMP_ERROR) else step.send
            request = trace_request(trace, scenario_lab.addressing.address(trace.packet_in, port, spec))
            text = lab.appctl(request.argv(bridge))
            result = compare_walks(trace, text, retrace, ports)
            compared += 1
            passes += len(sim_passes(trace))
            retraced += len(result.retraced)
            if result.problems:
                problems.append("\n".join([
                    f"{scenario.name} / step {number}: {step.send}",
                    f"  ofproto/trace {bridge} '{request.flow}' "
                    + " ".join(f"--ct-next '{s}'" for s in request.ct_next),
                    *(f"  ! {p}" for p in result.problems), *(f"  note: {n}" for n in result.notes)]))
    assert not problems, f"{len(problems)} of {compared} steps disagree:\n" + "\n".join(problems)
    assert compared == sum(len(s.steps) for s in table.scenarios)
    print(f"{path.name}: {compared} steps, {passes} passes, {retraced} traced alone (plain nat)")


# --- the conntrack model under --ct-next ---------------------------------------------------------
COUNTING_FLOWS = """\
table=0,priority=10,ip,actions=ct(table=1,zone=9)
table=0,priority=0,actions=drop
table=1,priority=50,ip,ct_state=+inv+trk,actions=drop
table=1,priority=40,ip,ct_state=+rel+trk,actions=drop
table=1,priority=30,ip,ct_state=+new+trk,actions=ct(commit,zone=9)
table=1,priority=20,ip,ct_state=+est+rpl+trk,actions=drop
table=1,priority=10,ip,ct_state=+est-rpl+trk,actions=drop
"""
"""Count what conntrack says of each packet; commit what is new, as the compiled pipeline does."""
STATES = {50: "+trk+inv", 40: "+trk+rel", 30: "+trk+new", 20: "+trk+est+rpl", 10: "+trk+est"}
OUT = "tcp,nw_src=10.0.0.10,nw_dst=192.168.1.10,tp_dst=443"
UDP = "udp,nw_src=10.0.0.10,nw_dst=192.168.1.10,tp_dst=53"
PING = "icmp,nw_src=10.0.0.10,nw_dst=192.168.1.10"
CONVERSATION = [
    ("lan0", OUT), ("lan0", OUT), ("wan0", REPLY), ("lan0", REPLY), ("lan0", OUT + ",tcp_flags=ack"),
    ("lan0", UDP), ("lan0", UDP), ("lan0", UDP), ("lan0", UDP), ("wan0", REPLY), ("lan0", REPLY),
    ("lan0", PING), ("lan0", PING), ("wan0", REPLY),
    *(("wan0", f"tcp,nw_src=192.168.1.10,nw_dst=10.0.0.10,tp_src={5000 + i},tp_dst=22,tcp_flags={flags}")
      for i, flags in enumerate(["ack", "rst", "rst|ack", "fin|ack", "psh|ack", "syn|ack", "fin", "psh",
                                 "syn|fin", "none"])),
]
"""Two ports of the default lab (lan0 10.0.0.10, wan0 192.168.1.10) talking; `reply` answers the
last packet."""


def test_conntrack_model_matches_ovs(lab_factory) -> None:
    lab = lab_factory()
    lab.ofctl(["replace-flows", "-"], input=COUNTING_FLOWS)
    ports = {"lan0": 1, "wan0": 2}
    macs = {1: 0x020000000001, 2: 0x020000000002}
    conntrack, last, tcp = Conntrack(), None, TcpBook()
    mismatches = []
    with guarded_hosts(lab), HostTaps.of_lab(lab) as taps:
        for ident, (port, spec) in enumerate(CONVERSATION, 1):
            packet = _packet(spec, port, ports, last)
            simulated, conntrack = _simulate(conntrack, packet)
            extras = WireExtras(ident=ident)
            if packet.nw_proto == 6:  # in-window sequence numbers, as if the peer had received it
                seq, ack = tcp.sending(port, packet)
                extras = WireExtras(ident=ident, seq=seq, ack=ack)
                tcp.received("wan0" if port == "lan0" else "lan0", Frame(packet, extras))
            wire = packet.replace(dl_src=macs[packet.in_port], dl_dst=macs[3 - packet.in_port])
            real = _real_state(lab, taps, port, wire, extras)
            if real != simulated:
                mismatches.append(f"{port} {spec}: simulator {simulated}, OVS {real}")
            last = packet
    assert not mismatches, "\n".join(mismatches)


def _packet(spec: str, port: str, ports: dict[str, int], last: Packet | None) -> Packet:
    if spec == REPLY:
        assert last is not None
        return reply_of(last).replace(in_port=ports[port])
    return parse_packet(spec, ports, port)


def _simulate(conntrack: Conntrack, packet: Packet) -> tuple[str, Conntrack]:
    looked = run_ct(conntrack, packet, CtRequest(zone=9))
    state = format_ct_state(looked.state)
    if state == "+trk+new":
        looked = run_ct(looked.conntrack, looked.packet, CtRequest(zone=9, commit=True), looked.cache)
    return state, looked.conntrack


def _real_state(lab: Lab, taps: HostTaps, port: str, packet: Packet, extras: WireExtras) -> str:
    """The ct_state the counting flows saw for one packet (datapath flows are deleted first, so the
    packet is a miss upcall and its flow statistics are counted at once)."""
    before = _counts(lab)
    lab.appctl(["dpctl/del-flows"])
    taps.send(port, encode(packet, extras))
    deadline = time.monotonic() + 2
    while (after := _counts(lab)) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    hit = [priority for priority, n in after.items() if n > before.get(priority, 0)]
    return STATES[hit[0]] if len(hit) == 1 else f"flows hit: {hit}"


def _counts(lab: Lab) -> dict[int, int]:
    counts = {}
    for line in lab.ofctl(["dump-flows", "table=1"]).splitlines():
        found = re.search(r"n_packets=(\d+),.*priority=(\d+)", line)
        if found:
            counts[int(found[2])] = int(found[1])
    return counts
