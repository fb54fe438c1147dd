"""The policy's meaning evaluated directly, without flows: the oracle for the simulator.

For the first packet of a connection entering by a port: the `from` zone is the
port's zone; the `to` zone is the linked port's zone (forwarding: ports) or the
zone whose networks hold the destination, longest prefix first (forwarding:
normal); the first enabled rule whose zones, src, dst and services match decides
(a `shadow: true` rule never does), else `firewall.default`. An allowed packet with nowhere to go (a port in no link)
is dropped. NAT is not modelled: firewall rules see packets as they arrive.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ovsmgr.policy import ResolvedPolicy
from ovsmgr.policy.ir import IP_PROTO_NUMBERS, RuleMatch, Service
from ovsmgr.sim.conntrack import why_invalid_new
from ovsmgr.sim.packet import Packet
from ovsmgr.sim.trace import Verdict

ND_TYPES = frozenset({133, 134, 135, 136, 137})


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    rule: str | None
    """The rule that decided; None for the default action and for the pipeline's own decisions."""
    stateful: bool
    reason: str
    shadow: tuple[str, ...] = ()
    """The shadow rules that match before the deciding rule: they count the packet, nothing more."""


def decide(policy: ResolvedPolicy, in_port: str, packet: Packet) -> Decision:
    """What the policy says about `packet` (the first packet of a connection) entering by `in_port`."""
    port = policy.ports.get(in_port)
    from_zone = ingress_zone(policy, in_port, packet)
    if port is None or not from_zone:
        return Decision("drop", None, False, f"port {in_port} is in no zone" if not policy.has_vlans
                        else f"port {in_port} has no zone for {_frame(packet)}")
    if packet.version is None or packet.src is None or packet.dst is None:
        raise ValueError("the reference evaluates IP packets only (ARP is switched normally)")
    if packet.version == 6 and packet.nw_proto == 58 and packet.icmp_type in ND_TYPES:
        return Decision("allow", None, False, "neighbour discovery is always allowed")
    invalid = why_invalid_new(packet)
    if invalid and policy.invalid == "drop":
        return Decision("drop", None, False, f"conntrack calls it invalid: {invalid}")
    to_zone, can_leave = egress_zone(policy, in_port, packet)
    if invalid:
        return Decision("allow" if can_leave else "drop", None, False, "invalid, and invalid: allow")
    shadow: list[str] = []
    for rule in policy.rules:
        if rule_matches(rule.match, from_zone, to_zone, packet):
            if rule.shadow:
                shadow.append(rule.name)
                continue
            return _decision(rule.action, rule.name, rule.stateful, can_leave, f"rule {rule.name}", shadow)
    return _decision(policy.default_action, None, True, can_leave, "firewall default", shadow)


def _decision(action: Verdict, rule: str | None, stateful: bool, can_leave: bool, why: str,
              shadow: list[str]) -> Decision:
    if action == "allow" and not can_leave:
        return Decision("drop", rule, stateful, f"{why} allows it, but it has nowhere to go", tuple(shadow))
    return Decision(action, rule, stateful, why, tuple(shadow))


def ingress_zone(policy: ResolvedPolicy, in_port: str, packet: Packet) -> str:
    """The zone of (port, VLAN) a packet comes in by ("": none); without VLAN zones, the port's."""
    port = policy.ports.get(in_port)
    if port is None or not policy.has_vlans:
        return port.zone if port is not None else ""
    vlan = packet.vlan_vid & 0xFFF if packet.vlan_vid else None
    return next((z.name for z in policy.port_zones(in_port) if z.vlan == vlan), "")


def _frame(packet: Packet) -> str:
    return f"VLAN {packet.vlan_vid & 0xFFF}" if packet.vlan_vid else "untagged frames"


def egress_zone(policy: ResolvedPolicy, in_port: str, packet: Packet) -> tuple[str | None, bool]:
    """The zone the packet leaves by (None: unknown) and whether it can leave at all: toward a port
    with VLAN zones, the one whose networks hold the destination, else the port's untagged zone."""
    if policy.forwarding == "ports":
        peer = policy.links.get(in_port)
        if peer is None:
            return None, False
        address = _address(packet.dst or 0, packet.version)
        tagged = [(n.prefixlen, z.name) for z in policy.port_zones(peer) if z.vlan is not None
                  for n in z.networks if n.version == address.version and address in n]
        return max(tagged)[1] if tagged else (policy.ports[peer].zone or None), True
    address = ipaddress.ip_address(packet.dst or 0) if packet.version == 4 else \
        ipaddress.IPv6Address(packet.dst or 0)
    best: tuple[int, str] | None = None
    for zone in policy.zones.values():
        for network in zone.networks:
            if network.version == address.version and address in network and (
                    best is None or network.prefixlen > best[0]):
                best = (network.prefixlen, zone.name)
    return (None if best is None else best[1]), True


def rule_matches(match: RuleMatch, from_zone: str, to_zone: str | None, packet: Packet) -> bool:
    if match.from_zone != from_zone or (match.to_zone is not None and match.to_zone != to_zone):
        return False
    version = packet.version
    src = _address(packet.src or 0, version)
    dst = _address(packet.dst or 0, version)
    if match.src and not any(p.version == version and src in p for p in match.src):
        return False
    if match.dst and not any(p.version == version and dst in p for p in match.dst):
        return False
    return not match.services or any(service_matches(s, packet) for s in match.services)


def service_matches(service: Service, packet: Packet) -> bool:
    if packet.nw_proto != IP_PROTO_NUMBERS[service.proto] or packet.version not in service.families:
        return False
    if service.ports is not None:
        return service.ports[0] <= (packet.tp_dst or 0) <= service.ports[1]
    if service.icmp_type is not None and service.icmp_type != packet.icmp_type:
        return False
    return service.icmp_code is None or service.icmp_code == packet.icmp_code


def _address(value: int, version: int | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)
