"""The resolved policy: what the compiler and simulator consume.

Names are gone (sets expanded, services parsed, zones numbered); what is left
is plain, hashable data with the source span of each rule kept for messages.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from ovsmgr.policy.diagnostics import Diagnostic, Span
from ovsmgr.policy.model import Policy, Switch

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Family = Literal[4, 6]
Proto = Literal["tcp", "udp", "sctp", "icmp", "icmpv6"]

IP_PROTO_NUMBERS: dict[str, int] = {"icmp": 1, "tcp": 6, "udp": 17, "sctp": 132, "icmpv6": 58}
_BOTH_FAMILIES = frozenset({4, 6})
_FAMILY = {4: frozenset({4}), 6: frozenset({6})}
_PROTO_FAMILIES = {"icmp": _FAMILY[4], "icmpv6": _FAMILY[6]}


@dataclass(frozen=True, order=True)
class Service:
    """One protocol item: a port range for tcp/udp/sctp, a type (and code) for ICMP; None is any."""

    proto: Proto
    ports: tuple[int, int] | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None

    @property
    def families(self) -> frozenset[int]:
        return _PROTO_FAMILIES.get(self.proto, _BOTH_FAMILIES)

    def covers(self, other: Service) -> bool:
        if self.proto != other.proto:
            return False
        if self.ports is not None:
            return other.ports is not None and self.ports[0] <= other.ports[0] and other.ports[1] <= self.ports[1]
        if self.icmp_type is not None and self.icmp_type != other.icmp_type:
            return False
        return self.icmp_code is None or self.icmp_code == other.icmp_code

    def overlaps(self, other: Service) -> bool:
        if self.proto != other.proto:
            return False
        if self.ports is not None and other.ports is not None:
            return self.ports[0] <= other.ports[1] and other.ports[0] <= self.ports[1]
        if None not in (self.icmp_type, other.icmp_type) and self.icmp_type != other.icmp_type:
            return False
        return None in (self.icmp_code, other.icmp_code) or self.icmp_code == other.icmp_code

    def __str__(self) -> str:
        if self.ports is not None:
            lo, hi = self.ports
            return f"{self.proto}/{lo}" if lo == hi else f"{self.proto}/{lo}-{hi}"
        if self.icmp_type is not None:
            code = f"/{self.icmp_code}" if self.icmp_code is not None else ""
            return f"{self.proto}/{self.icmp_type}{code}"
        return self.proto


@dataclass(frozen=True)
class RuleMatch:
    """What a firewall or NAT rule matches; an empty tuple means any."""

    from_zone: str
    to_zone: str | None = None
    src: tuple[IPNetwork, ...] = ()
    dst: tuple[IPNetwork, ...] = ()
    services: tuple[Service, ...] = ()
    _families: frozenset[int] = field(init=False, repr=False, compare=False)
    _uniform: bool = field(init=False, repr=False, compare=False)
    """Whether every prefix and service applies to each of the families (then `for_family` has
    nothing to leave out: the usual case)."""

    def __post_init__(self) -> None:
        """Work the families out once: the analysis and the compiler ask for them, rule by rule,
        several times each."""
        fams = _BOTH_FAMILIES
        versions: frozenset[int] = frozenset()
        for prefixes in (self.src, self.dst):
            if prefixes:
                mine = _FAMILY[prefixes[0].version] if len(prefixes) == 1 else frozenset(p.version for p in prefixes)
                fams &= mine
                versions |= mine
        uniform = True
        if len(self.services) == 1:
            fams &= self.services[0].families
        elif self.services:
            each = [s.families for s in self.services]
            fams &= frozenset().union(*each)
            uniform = all(fams <= f for f in each)
        if versions:
            uniform = uniform and len(fams) == 1 and versions == fams
        object.__setattr__(self, "_families", fams)
        object.__setattr__(self, "_uniform", uniform)

    def families(self) -> frozenset[int]:
        """The IP versions this match can apply to (empty: it can never match)."""
        return self._families

    def for_family(self, family: int) -> RuleMatch:
        if self._uniform and family in self._families:
            return self
        return RuleMatch(
            self.from_zone,
            self.to_zone,
            tuple(p for p in self.src if p.version == family),
            tuple(p for p in self.dst if p.version == family),
            tuple(s for s in self.services if family in s.families),
        )


MAX_SHADOW_RULES = 32
"""Shadow rules a policy may have: the compiled pipeline gives each one bit of a 32-bit register."""


@dataclass(frozen=True)
class Limit:
    """A rule's `limit:`: a rate in packets per second (`pktps`) or kilobits per second (`kbps`),
    as an OpenFlow meter counts; `text` as written."""

    unit: Literal["pktps", "kbps"]
    rate: int
    text: str


@dataclass(frozen=True)
class Rule:
    name: str
    index: int
    match: RuleMatch
    action: Literal["allow", "drop", "reject"]
    stateful: bool
    log: bool
    span: Span
    helper: Literal["ftp", "tftp"] | None = None
    """Conntrack helper (ALG) its connections are committed with; related data connections pass."""
    limit: Limit | None = None
    shadow: bool = False
    """Compiled and evaluated where it stands, counted and logged, but never the verdict."""


@dataclass(frozen=True)
class Backend:
    """A server of a load-balanced dnat rule; `up` is False while controller mode's health check has
    it out (a policy as written has every backend up)."""

    address: IPAddress
    port: int | None
    weight: int
    up: bool = True


@dataclass(frozen=True)
class HealthCheck:
    interval: int
    timeout: int
    failures: int


@dataclass(frozen=True)
class NatRule:
    """One translation. A `type: static` rule is two of these with its name, `static` set: an snat
    of its inside address and a dnat of its public one. A load-balanced dnat rule has `backends`
    (its translate_lo/hi are the first backend's address)."""

    name: str
    index: int
    kind: Literal["snat", "dnat"]
    match: RuleMatch
    translate_lo: IPAddress
    translate_hi: IPAddress
    ports: tuple[int, int] | None
    port: int | None
    span: Span
    limit: Limit | None = None
    """New connections per second the rule translates (packets only)."""
    backends: tuple[Backend, ...] = ()
    static: bool = False
    health_check: HealthCheck | None = None

    def targets(self) -> tuple[tuple[IPAddress, IPAddress], ...]:
        """The address ranges the rule translates to (each backend's address alone)."""
        if self.backends:
            return tuple((b.address, b.address) for b in self.backends)
        return ((self.translate_lo, self.translate_hi),)


@dataclass(frozen=True)
class PortInfo:
    name: str
    ofport: int
    zone: str
    """The port's untagged zone ("" when it has none)."""
    interface: str | None = None
    type: str | None = None
    devargs: str | None = None


@dataclass(frozen=True)
class ZoneInfo:
    name: str
    id: int
    ports: tuple[str, ...]
    networks: tuple[IPNetwork, ...]
    vlan: int | None = None
    """The 802.1Q VLAN id the zone is on its ports; None: untagged frames."""


@dataclass(frozen=True)
class ResolvedPolicy:
    model: Policy
    bridge: str
    datapath: str
    fail_mode: str
    forwarding: Literal["ports", "normal"]
    mac: str
    ports: dict[str, PortInfo]
    links: dict[str, str]
    zones: dict[str, ZoneInfo]
    rules: tuple[Rule, ...]
    nat: tuple[NatRule, ...]
    default_action: Literal["allow", "drop", "reject"]
    ct_zone: int
    max_connections: int | None
    invalid: Literal["drop", "allow"]
    cut_on_rule_removal: bool
    sources: tuple[str, ...] = field(default=())
    nat_zone: int = 0
    """The second conntrack zone: a connection a dnat rule translated is translated there again by an
    snat rule (0: the policy's zone + 1, see `second_zone`)."""
    ct_timeouts: tuple[tuple[str, int], ...] = ()
    """The zone's conntrack timeout policy (key, seconds), in OVS's key order; empty: the datapath's
    defaults. Set through OVSDB, not by flows."""
    diagnostics: tuple[Diagnostic, ...] = field(default=(), compare=False)
    digest: str = field(default="", compare=False)
    """What the policy is, for the applied-state record: sha256 over its files' texts in order (over
    canonical JSON for policy data that has no text, such as the controller's runtime changes)."""

    @property
    def switch(self) -> Switch:
        return self.model.switch

    @property
    def second_zone(self) -> int:
        """Where an snat rule translates a connection a dnat rule translated already (OVS applies one
        translation per connection and zone)."""
        if self.nat_zone:
            return self.nat_zone
        return self.ct_zone + 1 if self.ct_zone < 65535 else self.ct_zone - 1

    @property
    def has_vlans(self) -> bool:
        """Whether any zone is a VLAN: then every port tells its zones apart by the tag."""
        return any(zone.vlan is not None for zone in self.zones.values())

    def port_zones(self, port: str) -> tuple[ZoneInfo, ...]:
        """The zones a port is in (one per VLAN, the untagged one included), by zone id."""
        return tuple(zone for zone in self.zones.values() if port in zone.ports)

    def host_vlan(self, port: str, address: IPAddress) -> int | None:
        """The VLAN a host on `port` with `address` is on: that of the port's VLAN zone whose networks
        hold the address (the most specific), else None (untagged)."""
        best: tuple[int, int] | None = None
        for zone in self.port_zones(port):
            vlan = zone.vlan
            if vlan is None:
                continue
            for network in zone.networks:
                if address in network and (best is None or network.prefixlen > best[0]):
                    best = (network.prefixlen, vlan)
        return None if best is None else best[1]

    def nat_owned_addresses(self) -> tuple[IPAddress, ...]:
        """Addresses the switch answers ARP/ND for: snat targets and dnat public addresses."""
        owned: set[IPAddress] = set()
        for rule in self.nat:
            if rule.kind == "snat":
                owned.update(address_range(rule.translate_lo, rule.translate_hi))
            else:
                for prefix in rule.match.dst:
                    if prefix.num_addresses <= 256:
                        owned.update(prefix)
        return tuple(sorted(owned, key=lambda a: (a.version, int(a))))


def address_range(lo: IPAddress, hi: IPAddress, limit: int = 256) -> list[IPAddress]:
    count = int(hi) - int(lo) + 1
    return [ipaddress.ip_address(int(lo) + i) if lo.version == 4 else ipaddress.IPv6Address(int(lo) + i)
            for i in range(min(count, limit))]
