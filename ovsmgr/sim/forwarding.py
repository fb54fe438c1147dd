"""Where OVS NORMAL would send a packet, approximated from addresses.

The real NORMAL action learns MACs; the simulator has no hosts to learn from, so it
decides by address instead: a broadcast or multicast frame floods every other port,
a unicast frame goes to the port whose route (a lab host's address, or the networks
of a zone with one port) holds the destination, longest prefix first. NORMAL never
sends a frame back by the port it came in by. Unknown destinations stay "NORMAL".
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ovsmgr.policy import ResolvedPolicy
from ovsmgr.policy.ir import IPNetwork
from ovsmgr.sim.fields import DL_TYPE_ARP
from ovsmgr.sim.packet import Packet

UNRESOLVED = "NORMAL"


@dataclass(frozen=True)
class NormalForwarding:
    routes: tuple[tuple[IPNetwork, str], ...] = ()
    """(prefix, port name) pairs; the longest prefix holding the destination wins."""

    def resolve(self, packet: Packet, in_port: str, all_ports: Sequence[str]) -> tuple[tuple[str, ...], str]:
        """The ports NORMAL sends the packet to, and why."""
        if (packet.dl_dst >> 40) & 1:
            return tuple(p for p in all_ports if p != in_port), "broadcast/multicast: flooded"
        address = _destination(packet)
        port = self._route(address) if address is not None else None
        if port is None:
            return (UNRESOLVED,), "unicast to an address no port is known for"
        if port == in_port:
            return (), f"destination is behind {port}, the port it came in by: NORMAL drops it"
        return (port,), f"destination {address} is behind {port}"

    def _route(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        best: tuple[int, str] | None = None
        for prefix, port in self.routes:
            if prefix.version == address.version and address in prefix and (
                    best is None or prefix.prefixlen > best[0]):
                best = (prefix.prefixlen, port)
        return None if best is None else best[1]


def _destination(packet: Packet) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if packet.dl_type == DL_TYPE_ARP and packet.arp_tpa is not None:
        return ipaddress.IPv4Address(packet.arp_tpa)
    if packet.version == 4 and packet.nw_dst is not None:
        return ipaddress.IPv4Address(packet.nw_dst)
    if packet.version == 6 and packet.ipv6_dst is not None:
        return ipaddress.IPv6Address(packet.ipv6_dst)
    return None


def normal_forwarding(policy: ResolvedPolicy, hosts: Mapping[str, Iterable[str]] | None = None) -> NormalForwarding:
    """Routes from the lab hosts' addresses (port -> addresses) and the networks of one-port zones."""
    routes: list[tuple[IPNetwork, str]] = []
    for port, addresses in (hosts or {}).items():
        for text in addresses:
            address = ipaddress.ip_interface(text).ip
            routes.append((ipaddress.ip_network(address), port))
    for zone in policy.zones.values():
        if len(zone.ports) == 1:
            routes.extend((network, zone.ports[0]) for network in zone.networks)
    return NormalForwarding(tuple(routes))
