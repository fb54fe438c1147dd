"""Fragmented datagrams through the simulator, as Open vSwitch's userspace conntrack handles them.

A datagram larger than the MTU is sent as its first fragment (`nw_frag=first`, with the L4
header) and its later fragments (`nw_frag=later`: the flows see their ports, ICMP type and TCP
flags as 0; conntrack sees the whole datagram, which it reassembles). `ipf` reassembles at every
ct() and hands the fragments on only when all of them reached that same ct(), each with the
datagram's conntrack state. So a datagram passes whole when its first and later fragments take
the same ct() actions (zone, commit) and both leave; otherwise none of it leaves: the fragments
that came wait at a ct() until they expire as invalid, which the pipeline drops. On the kernel
datapath ct() forwards the reassembled datagram itself, which the simulator's plain packets model.
"""

from __future__ import annotations

from dataclasses import dataclass

from ovsmgr.compiler.flows import Ct
from ovsmgr.sim.fields import FRAG_ANY, FRAG_LATER
from ovsmgr.sim.packet import Packet
from ovsmgr.sim.session import SimulatedSwitch, SwitchState
from ovsmgr.sim.trace import Trace, Verdict


@dataclass(frozen=True)
class DatagramTrace:
    first: Trace
    later: Trace
    verdict: Verdict
    why: str
    state: SwitchState
    """The switch after the datagram: unchanged unless the datagram passed whole."""


def ct_actions(trace: Trace) -> tuple[tuple[int | None, bool, int | None], ...]:
    """The ct() actions the packet met, in order: (zone, commit, table)."""
    return tuple((a.zone, a.commit, None if a.table is None else int(a.table))
                 for step in trace.steps if not step.continued
                 for a in step.actions if isinstance(a, Ct))


def run_datagram(switch: SimulatedSwitch, packet: Packet, state: SwitchState) -> DatagramTrace:
    """`packet` standing for a datagram larger than the MTU: its first and its later fragments."""
    # All fragments meet each ct() together, so both see the switch as it was before the datagram.
    first = switch.run(packet.replace(nw_frag=FRAG_ANY), state)
    later = switch.run(packet.replace(nw_frag=FRAG_ANY | FRAG_LATER), state)
    if first.verdict != "allow" or later.verdict != "allow":
        why = f"first fragment: {first.verdict}, later fragments: {later.verdict}"
        return DatagramTrace(first, later, "reject" if first.verdict == "reject" else "drop", why, state)
    if ct_actions(first) != ct_actions(later) or first.output != later.output:
        why = "the fragments took different ways: no ct() saw the whole datagram, so none of it leaves"
        return DatagramTrace(first, later, "drop", why, state)
    return DatagramTrace(first, later, "allow", "every fragment passed the same ct() actions",
                         SwitchState(first.conntrack, first.learned))
