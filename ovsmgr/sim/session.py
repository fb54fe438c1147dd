"""A compiled policy on a simulated switch, and conversations through it.

`SimulatedSwitch.from_policy(policy)` compiles the policy and knows its ports, rule
fingerprints and NAT addresses. A `Conversation` sends packets one after another so
that conntrack state and learned MAC bindings carry from packet to packet:
`send("inside", "tcp,...")`, then `reply()` (the far end answers, entering by the
port the packet left by) or `icmp_error()` (it answers with port unreachable).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from ovsmgr.compiler import CompiledPolicy, compile_policy
from ovsmgr.compiler.flows import Flow
from ovsmgr.policy import ResolvedPolicy
from ovsmgr.sim.conntrack import Conntrack
from ovsmgr.sim.engine import Pipeline, run_packet
from ovsmgr.sim.flowtable import FlowTables
from ovsmgr.sim.forwarding import UNRESOLVED, normal_forwarding
from ovsmgr.sim.packet import (
    Packet,
    PacketSpecError,
    announcement,
    host_mac,
    icmp_error_for,
    parse_packet,
    reply_of,
)
from ovsmgr.sim.trace import Trace

REPLY = "reply"
ICMP_ERROR = "error"


@dataclass(frozen=True)
class SwitchState:
    """What the switch remembers between packets."""

    conntrack: Conntrack = field(default_factory=Conntrack)
    learned: tuple[Flow, ...] = ()


@dataclass(frozen=True)
class SimulatedSwitch:
    policy: ResolvedPolicy
    compiled: CompiledPolicy
    pipeline: Pipeline
    hosts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Port name -> addresses of the lab host on it (`10.0.0.5/24`); they route NORMAL."""

    @staticmethod
    def from_policy(policy: ResolvedPolicy, hosts: Mapping[str, tuple[str, ...]] | None = None,
                    compiled: CompiledPolicy | None = None) -> SimulatedSwitch:
        compiled = compiled or compile_policy(policy)
        names = {p.ofport: p.name for p in policy.ports.values()}
        rules = {r.name for r in policy.rules}
        fingerprints = {mark: name for mark, name in compiled.fingerprints.items() if name in rules}
        pipeline = Pipeline(FlowTables.of(compiled.flowset.flows.values()), names, fingerprints,
                            compiled.rule_ids, normal_forwarding(policy, hosts), own_mac=_mac(policy.mac),
                            groups=dict(compiled.flowset.groups))
        return SimulatedSwitch(policy, compiled, pipeline, dict(hosts or {}))

    @property
    def port_numbers(self) -> dict[str, int]:
        return {p.name: p.ofport for p in self.policy.ports.values()}

    @property
    def port_names(self) -> dict[int, str]:
        return dict(self.pipeline.ports)

    def initial_state(self) -> SwitchState:
        conntrack = Conntrack()
        if self.policy.max_connections is not None:
            conntrack = conntrack.with_limit(self.policy.ct_zone, self.policy.max_connections)
        return SwitchState(conntrack)

    def packet(self, port: str, spec: str) -> Packet:
        """Parse a spec entering by `port`, addressed the way a real host would address it."""
        if port not in self.port_numbers:
            raise PacketSpecError(f"unknown port {port!r} (ports: {', '.join(sorted(self.port_numbers))})")
        packet = parse_packet(spec, self.port_numbers, port)
        return packet if "dl_dst=" in spec else self.addressed(packet)

    def addressed(self, packet: Packet) -> Packet:
        """A host sends to a NAT-owned address with the MAC the switch answered its ARP with."""
        if packet.dst is None or self.pipeline.own_mac is None:
            return packet
        owned = self.policy.nat_owned_addresses()
        if ipaddress.ip_address(packet.dst) in owned:
            return packet.replace(dl_dst=self.pipeline.own_mac)
        return packet

    def run(self, packet: Packet, state: SwitchState) -> Trace:
        return run_packet(self.pipeline, packet, state.conntrack, state.learned)


def _mac(text: str) -> int:
    return int(text.replace(":", ""), 16)


class Conversation:
    """Packets in order through one switch; each sees the state the ones before it left."""

    def __init__(self, switch: SimulatedSwitch, state: SwitchState | None = None, announce: bool = True):
        self.switch = switch
        self.state = state or switch.initial_state()
        self.announce = announce
        """Before a host's first IPv4 packet, let it ARP (as real hosts do), so the switch learns it."""
        self.traces: list[Trace] = []
        self.ports: list[str] = []
        self.background: list[Trace] = []
        self._announced: set[tuple[str, int]] = set()

    def send(self, port: str, packet: str | Packet) -> Trace:
        if isinstance(packet, str):
            packet = self.switch.packet(port, packet)
        else:
            packet = packet.replace(in_port=self.switch.port_numbers[port])
        if self.announce and packet.version is not None and packet.src:  # not from :: or 0.0.0.0
            self.announce_from(port, packet.src, packet.version)
        trace = self._run(packet)
        self.traces.append(trace)
        self.ports.append(port)
        return trace

    def announce_from(self, port: str, address: int, version: int = 4) -> None:
        """A gratuitous ARP (IPv6: an unsolicited neighbour advertisement) from `address` on `port`,
        once; its trace goes to `background`."""
        if (port, address) in self._announced:
            return
        self._announced.add((port, address))
        packet = announcement(address, version, host_mac(address))
        ip = ipaddress.IPv4Address(address) if version == 4 else ipaddress.IPv6Address(address)
        vlan = self.switch.policy.host_vlan(port, ip)
        packet = packet.replace(in_port=self.switch.port_numbers[port], vlan_vid=None if vlan is None else 0x1000 | vlan)
        self.background.append(self._run(packet))

    def _run(self, packet: Packet) -> Trace:
        trace = self.switch.run(packet, self.state)
        self.state = SwitchState(trace.conntrack, trace.learned)
        return trace

    def reply(self, port: str | None = None) -> Trace:
        """The far end of the last packet answers it (SYN -> SYN+ACK, echo -> echo reply, ...)."""
        last = self._last("reply")
        return self.send(self._answering_port(port, "reply"), self.switch.addressed(reply_of(last.packet)))

    def icmp_error(self, port: str | None = None) -> Trace:
        """The far end of the last packet answers it with an ICMP port unreachable quoting it."""
        last = self._last("answer with an ICMP error")
        error = self.switch.addressed(icmp_error_for(last.packet))
        return self.send(self._answering_port(port, "error"), error)

    def step(self, port: str | None, what: str) -> Trace:
        """One line of a conversation: `reply`, `error`, or a packet spec entering by `port`."""
        if what == REPLY:
            return self.reply(port)
        if what == ICMP_ERROR:
            return self.icmp_error(port)
        if port is None:
            raise PacketSpecError(f"{what!r}: say which port the packet enters by")
        return self.send(port, what)

    def announce_hosts(self) -> None:
        """Every lab host announces each address, as the lab runner does (gratuitous ARP, unsolicited
        neighbour advertisement)."""
        for port, addresses in sorted(self.switch.hosts.items()):
            for text in addresses:
                address = ipaddress.ip_interface(text).ip
                self.announce_from(port, int(address), address.version)

    def _last(self, doing: str) -> Trace:
        if not self.traces:
            raise PacketSpecError(f"nothing to {doing}: send a packet first")
        return self.traces[-1]

    def _answering_port(self, port: str | None, what: str) -> str:
        if port is not None:
            return port
        real = [p for p in self.traces[-1].output if p != UNRESOLVED]
        if len(real) != 1:
            left = ", ".join(self.traces[-1].output) or "nowhere (it was dropped)"
            raise PacketSpecError(f"{what}: the last packet left by {left}; say which port answers (PORT:{what})")
        return real[0]
