"""What a lab host puts on the wire, for the scenario runner (`ovsmgr.lab.scenarios`).

`LabAddressing` gives a frame the MACs a real host would: its own as source; as
destination the MAC of the host that owns the destination address, or the
switch's NAT MAC for an address the switch answers ARP for (a host learns both
by ARP); broadcast for an ARP request. `TcpBook` numbers TCP segments the way
the two endpoints of each connection would, since OVS conntrack checks
sequence numbers and a segment out of the window is +inv.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ovsmgr.lab.compare import Picked
from ovsmgr.lab.ovs import LabPort
from ovsmgr.policy import ResolvedPolicy
from ovsmgr.sim.fields import DL_TYPE_ARP
from ovsmgr.sim.packet import BROADCAST_MAC, Packet, host_mac
from ovsmgr.sim.wire import Frame

SYN, FIN, ACK = 0x02, 0x01, 0x10


def _mac(text: str) -> int:
    return int(text.replace(":", ""), 16)


def picked_by_nat(policy: ResolvedPolicy) -> tuple[Picked, ...]:
    """The translations of `policy` that OVS picks by a hash: SNAT rules with a port range or more
    than one address, the backends of load-balanced DNAT rules."""
    snat = tuple(Picked("src", ((int(r.translate_lo), int(r.translate_hi), *(r.ports or (1, 65535))),))
                 for r in policy.nat
                 if r.kind == "snat" and (r.ports is not None or r.translate_lo != r.translate_hi))
    pools = tuple(Picked("dst", tuple((int(b.address), int(b.address), *((b.port, b.port) if b.port else (1, 65535)))
                                      for b in r.backends)) for r in policy.nat if r.backends)
    return snat + pools


@dataclass(frozen=True)
class LabAddressing:
    """Which MAC a lab host puts on a frame (see the module docstring)."""

    port_macs: Mapping[str, int]
    owners: Mapping[ipaddress.IPv4Address | ipaddress.IPv6Address, str]
    nat_mac: int
    nat_owned: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]
    picked: tuple[Picked, ...] = ()
    """What OVS picks by a hash (SNAT address and port ranges): not compared with the simulator."""

    @staticmethod
    def of(policy: ResolvedPolicy, hosts: Mapping[str, Sequence[str]]) -> LabAddressing:
        macs = {name: _mac(LabPort(name, port.ofport).mac) for name, port in policy.ports.items()}
        owners = {ipaddress.ip_interface(a).ip: port for port, addresses in hosts.items() for a in addresses}
        return LabAddressing(macs, owners, _mac(policy.mac), frozenset(policy.nat_owned_addresses()),
                             picked_by_nat(policy))

    def mac_for(self, address: int, version: int) -> int:
        """The MAC a host on the segment learns by ARP/ND for `address` (a multicast address maps to
        its Ethernet multicast address)."""
        ip = ipaddress.IPv4Address(address) if version == 4 else ipaddress.IPv6Address(address)
        if ip in self.nat_owned:
            return self.nat_mac
        if ip.is_multicast:
            return host_mac(address, version)
        owner = self.owners.get(ip)
        # nobody has it: a MAC no switch has learned (a real host would not even send)
        return self.port_macs[owner] if owner is not None else (0x02 << 40) | (address & 0xFFFF_FFFF)

    def address(self, packet: Packet, port: str, spec: str = "") -> Packet:
        """`packet` with the MACs the host on `port` would give it (a spec's own dl_src/dl_dst stay)."""
        src = packet.dl_src if "dl_src=" in spec else self.port_macs[port]
        if packet.dl_type == DL_TYPE_ARP:
            request = packet.arp_op == 1
            tha = packet.arp_tha if request else self.mac_for(packet.arp_tpa or 0, 4)
            dst = packet.dl_dst if "dl_dst=" in spec else (BROADCAST_MAC if request else tha)
            return packet.replace(dl_src=src, dl_dst=dst, arp_sha=src, arp_tha=tha)
        dst = packet.dl_dst if "dl_dst=" in spec else self.mac_for(packet.dst or 0, packet.version or 4)
        return packet.replace(dl_src=src, dl_dst=dst)

    def accepts(self, port: str, mac: int) -> bool:
        """Whether the host on `port` takes a frame sent to `mac` (its own, or broadcast/multicast)."""
        return mac == self.port_macs.get(port) or bool((mac >> 40) & 1)


# --- TCP sequence numbers ----------------------------------------------------------------------
@dataclass
class _Endpoint:
    iss: int
    snd_nxt: int
    rcv_nxt: int = 0


class TcpBook:
    """Sequence numbers of the TCP endpoints lab hosts play, so conntrack sees in-window segments."""

    def __init__(self) -> None:
        self._ends: dict[tuple[str, int, int, int, int], _Endpoint] = {}

    def _end(self, port: str, local: tuple[int, int], remote: tuple[int, int]) -> _Endpoint:
        key = (port, *local, *remote)
        if key not in self._ends:
            iss = 100_000 * (len(self._ends) + 1)
            self._ends[key] = _Endpoint(iss, iss)
        return self._ends[key]

    def sending(self, port: str, packet: Packet) -> tuple[int, int]:
        """(seq, ack) for a segment the host on `port` sends."""
        flags = packet.tcp_flags or 0
        end = self._end(port, (packet.src or 0, packet.tp_src or 0), (packet.dst or 0, packet.tp_dst or 0))
        seq = end.iss if flags & SYN else end.snd_nxt
        end.snd_nxt = seq + bool(flags & SYN) + bool(flags & FIN)
        return seq, end.rcv_nxt if flags & ACK else 0

    def received(self, port: str, frame: Frame) -> None:
        packet = frame.packet
        flags = packet.tcp_flags or 0
        end = self._end(port, (packet.dst or 0, packet.tp_dst or 0), (packet.src or 0, packet.tp_src or 0))
        end.rcv_nxt = (frame.extras.seq + len(frame.extras.payload) + bool(flags & SYN) + bool(flags & FIN)) \
            & 0xFFFFFFFF
