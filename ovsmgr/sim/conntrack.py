"""A model of the OVS connection tracker, enough to decide what a conntrack pipeline does.

Per zone, connections are keyed by their original-direction tuple and found by
their reply tuple too. A lookup gives the packet its ct_state (new, est, rel, rpl,
inv, trk, snat, dnat as in `pipeline.CT_STATE_BITS`), `commit` creates the
connection with its NAT translation and ct_mark, and `nat` applies an existing
connection's translation, forward or reverse. `Conntrack` is immutable: `run_ct`
returns the state after the packet.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from ovsmgr.compiler.flows import NatSpec
from ovsmgr.compiler.pipeline import CT_STATE_BITS
from ovsmgr.sim.fields import (
    ICMP_PROTOS,
    PORT_PROTOS,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    format_value,
)
from ovsmgr.sim.helpers import Expected, expectations, related_translation
from ovsmgr.sim.packet import ACK, SYN, Inner, Packet

NEW, EST, REL, RPL, INV, TRK, SNAT, DNAT = (CT_STATE_BITS[n] for n in (
    "new", "est", "rel", "rpl", "inv", "trk", "snat", "dnat"))
RST, FIN, PSH, URG = 0x04, 0x01, 0x08, 0x20

_QUERIES = {PROTO_ICMP: {8: 0, 13: 14, 15: 16}, PROTO_ICMPV6: {128: 129}}
_ERRORS = {PROTO_ICMP: frozenset({3, 4, 5, 11, 12}), PROTO_ICMPV6: frozenset({1, 2, 3, 4})}


def format_ct_state(state: int) -> str:
    """`+trk+est+rpl`, in the order OVS prints the flags; `-trk` for an untracked packet."""
    names = [f"+{name}" for name, bit in CT_STATE_BITS.items() if state & bit and name != "trk"]
    return ("+trk" + "".join(names)) if state & TRK else "-trk"


@dataclass(frozen=True, order=True)
class ConnKey:
    """One direction of a connection. For ICMP queries sport/dport are the type and its answer's type."""

    version: int
    proto: int
    src: int
    dst: int
    sport: int
    dport: int

    def reversed(self) -> ConnKey:
        return ConnKey(self.version, self.proto, self.dst, self.src, self.dport, self.sport)

    def describe(self) -> str:
        field = "nw" if self.version == 4 else "ipv6"
        src, dst = format_value(f"{field}_src", self.src), format_value(f"{field}_dst", self.dst)
        return f"{src}:{self.sport} > {dst}:{self.dport}" if self.proto in PORT_PROTOS else f"{src} > {dst}"


@dataclass(frozen=True)
class Connection:
    zone: int
    original: ConnKey
    reply: ConnKey
    """What a reply looks like on the wire: the reverse of the translated original."""
    mark: int = 0
    nat: frozenset[str] = frozenset()
    """The translations the connection makes: "src", "dst" or both."""
    label: int = 0
    seen_reply: bool = False
    originals: int = 0
    """Original-direction packets seen after the one that committed it."""
    helper: str | None = None
    """The conntrack helper committed with it (`ct(alg=...)`)."""
    related: bool = False
    """A connection a helper expected: userspace conntrack calls all its packets `+rel`."""

    def describe(self) -> str:
        nat = f",nat={'+'.join(sorted(self.nat))}" if self.nat else ""
        helper = f",helper={self.helper}" if self.helper else ""
        label = f",labels={self.label:#x}" if self.label else ""
        return (f"proto={self.original.proto},orig=({self.original.describe()}),"
                f"reply=({self.reply.describe()}),zone={self.zone},mark={self.mark:#x}{label}{nat}{helper}")


@dataclass(frozen=True)
class Conntrack:
    """The connection table of every zone; immutable, replaced by each `run_ct`."""

    connections: tuple[Connection, ...] = ()
    limits: tuple[tuple[int, int], ...] = ()
    """(zone, max_connections): commits beyond the limit fail, like `dpctl/ct-set-limits`."""
    expected: tuple[Expected, ...] = ()
    """Connections helpers expect (`sim.helpers`)."""

    @cached_property
    def _index(self) -> dict[tuple[int, ConnKey], tuple[int, bool]]:
        index: dict[tuple[int, ConnKey], tuple[int, bool]] = {}
        for i, conn in enumerate(self.connections):
            index[(conn.zone, conn.original)] = (i, False)
            index.setdefault((conn.zone, conn.reply), (i, True))
        return index

    def find(self, zone: int, key: ConnKey) -> tuple[Connection, bool] | None:
        """The connection `key` belongs to, and whether it travels in the reply direction."""
        hit = self._index.get((zone, key))
        return None if hit is None else (self.connections[hit[0]], hit[1])

    def in_zone(self, zone: int) -> tuple[Connection, ...]:
        return tuple(c for c in self.connections if c.zone == zone)

    def limit(self, zone: int) -> int | None:
        return dict(self.limits).get(zone)

    def with_limit(self, zone: int, limit: int) -> Conntrack:
        return dataclasses.replace(self, limits=(*(z for z in self.limits if z[0] != zone), (zone, limit)))

    def expectation(self, zone: int, key: ConnKey) -> tuple[Expected, Connection] | None:
        """The expectation a new connection `key` meets, with its control connection."""
        for expected in self.expected:
            if expected.matches(zone, key.proto, key.src, key.dst, key.dport):
                found = self.find(zone, expected.master)
                if found is not None:
                    return expected, found[0]
        return None

    def updated(self, old: Connection | None, new: Connection) -> Conntrack:
        kept = tuple(new if c is old else c for c in self.connections)
        return dataclasses.replace(self, connections=kept if old is not None else (*kept, new))

    def describe(self) -> list[str]:
        """One line per connection, like `ovs-appctl dpctl/dump-conntrack`."""
        return [c.describe() for c in self.connections]


@dataclass(frozen=True)
class CtRequest:
    """What a `ct()` action asks: zone, commit, NAT (a new translation or the existing one), mark."""

    zone: int = 0
    commit: bool = False
    nat: NatSpec | None = None
    apply_nat: bool = False
    mark: int | None = None
    alg: str | None = None
    label: int | None = None
    """With commit: the ct_label to write (None: leave it)."""


@dataclass(frozen=True)
class CtCache:
    """The connection a packet was last tracked to, kept in its metadata (userspace `md.conn`).

    A later `ct()` in the same zone uses it instead of a lookup, so a packet already
    translated by `ct(nat)` still finds its connection (and is not translated twice).
    """

    zone: int
    original: ConnKey
    state: int


@dataclass(frozen=True)
class CtResult:
    conntrack: Conntrack
    packet: Packet
    state: int
    mark: int
    events: tuple[str, ...]
    cache: CtCache | None = None
    label: int = 0

    @property
    def tuple(self) -> tuple[int, int, int]:
        """(ct_nw_proto, ct_tp_src, ct_tp_dst): the original direction of the packet's connection,
        or of the packet itself when it starts one (what OVS writes for every tracked, valid packet,
        and copies to each fragment of a datagram); zeros for an invalid one."""
        if self.state & INV or not self.state & TRK:
            return (0, 0, 0)
        key = self.cache.original if self.cache is not None else packet_key(self.packet)
        if key is None:
            return (0, 0, 0)
        if key.proto in ICMP_PROTOS:  # type and code; the model keeps no code, and queries have 0
            code = self.packet.icmp_code or 0 if self.cache is None else 0
            return (key.proto, key.sport, code)
        return (key.proto, key.sport, key.dport)


def packet_key(packet: Packet) -> ConnKey | None:
    """The tuple conntrack files the packet under (None: not IP, so never tracked)."""
    if packet.version is None or packet.src is None or packet.dst is None or packet.nw_proto is None:
        return None
    proto = packet.nw_proto
    ports = (packet.tp_src or 0, packet.tp_dst or 0)
    if proto in ICMP_PROTOS:
        ports = _icmp_ports(proto, packet.icmp_type or 0, packet.icmp_code or 0)
    elif proto not in PORT_PROTOS:
        ports = (0, 0)
    return ConnKey(packet.version, proto, packet.src, packet.dst, *ports)


def _icmp_ports(proto: int, icmp_type: int, icmp_code: int) -> tuple[int, int]:
    queries = _QUERIES[proto]
    answers = {v: k for k, v in queries.items()}
    if icmp_type in queries:
        return icmp_type, queries[icmp_type]
    if icmp_type in answers:
        return icmp_type, answers[icmp_type]
    return icmp_type, icmp_code


def inner_key(inner: Inner) -> ConnKey:
    ports = (inner.tp_src, inner.tp_dst)
    if inner.nw_proto in ICMP_PROTOS:
        ports = _icmp_ports(inner.nw_proto, inner.tp_src, inner.tp_dst)
    return ConnKey(inner.version, inner.nw_proto, inner.src, inner.dst, *ports)


def run_ct(conntrack: Conntrack, packet: Packet, request: CtRequest, cache: CtCache | None = None) -> CtResult:
    """Send `packet` through conntrack: look up, translate, commit; return the new state."""
    key = packet_key(packet)
    if key is None:
        return CtResult(conntrack, packet, TRK | INV, 0, ("not an IP packet: +trk+inv",))
    if cache is not None and cache.zone == request.zone:
        found = conntrack.find(request.zone, cache.original)
        if found is not None:
            return _cached(conntrack, packet, request, found[0], cache)
    if _is_icmp_error(packet):
        return _related(conntrack, packet, request)
    found = conntrack.find(request.zone, key)
    if found is not None:
        return _existing(conntrack, packet, request, *found)
    return _new(conntrack, packet, request, key)


def _cached(conntrack: Conntrack, packet: Packet, request: CtRequest, conn: Connection,
            cache: CtCache) -> CtResult:
    """The packet was tracked in this zone already: no lookup, no second translation."""
    state = cache.state
    reply = bool(state & RPL)
    events = [f"zone {request.zone}: connection {conn.original.describe()} (already tracked in this zone)"]
    if (request.nat is not None or request.apply_nat) and conn.nat and not state & (SNAT | DNAT):
        if state & REL:
            packet = _rewrite_related(packet, conn, reply)
        else:
            packet = _rewrite(packet, (conn.original if reply else conn.reply).reversed())
        state |= _nat_bits(conn.nat, reply)
        events.append("nat applied")
    updated = _committed(conn, request, events)
    cache = CtCache(request.zone, conn.original, state)
    return CtResult(conntrack.updated(conn, updated), packet, state, updated.mark, tuple(events), cache,
                    updated.label)


def _committed(conn: Connection, request: CtRequest, events: list[str]) -> Connection:
    """The connection with what a commit writes (its mark, its label)."""
    if not request.commit:
        return conn
    if request.mark is not None and request.mark != conn.mark:
        events.append(f"ct_mark {conn.mark:#x} -> {request.mark:#x}")
        conn = dataclasses.replace(conn, mark=request.mark)
    if request.label is not None and request.label != conn.label:
        events.append(f"ct_label {conn.label:#x} -> {request.label:#x}")
        conn = dataclasses.replace(conn, label=request.label)
    return conn


def _is_icmp_error(packet: Packet) -> bool:
    return packet.nw_proto in _ERRORS and (packet.icmp_type or 0) in _ERRORS[packet.nw_proto or 0]


def _existing(conntrack: Conntrack, packet: Packet, request: CtRequest, conn: Connection,
              reply: bool) -> CtResult:
    if packet.nw_proto == PROTO_TCP and (why := invalid_tcp_flags(packet.tcp_flags or 0)):
        return CtResult(conntrack, packet, TRK | INV, 0, (f"zone {request.zone}: {why}: +inv",))
    still_new = not reply and _still_new(conn, packet)
    state = TRK | (NEW if still_new else EST) | (RPL if reply else 0) | (REL if conn.related else 0)
    events = [f"zone {request.zone}: {'reply of' if reply else 'packet of'} {conn.original.describe()}"]
    if still_new:
        events.append("committed, but nothing came back yet: still +new")
    updated = _committed(dataclasses.replace(conn, seen_reply=conn.seen_reply or reply,
                                             originals=conn.originals + (0 if reply else 1)), request, events)
    if (request.nat is not None or request.apply_nat) and conn.nat:
        target = (conn.original if reply else conn.reply).reversed()
        packet = _rewrite(packet, target)
        state |= _nat_bits(conn.nat, reply)
        events.append(f"{'reverse ' if reply else ''}nat: now {target.describe()}")
    cache = CtCache(request.zone, conn.original, state)
    return CtResult(conntrack.updated(conn, updated), packet, state, updated.mark, tuple(events), cache,
                    updated.label)


def _still_new(conn: Connection, packet: Packet) -> bool:
    """Whether an original-direction packet of a committed connection is +new, as OVS 3.1 says.

    Until the other side answers, userspace conntrack keeps a retransmitted SYN
    +new (any other TCP segment is +est: the TCP state machine moved on), and
    every ICMP request, UDP datagram and packet of other protocols +new (seen on
    a real OVS 3.1 switch: the fourth unanswered UDP datagram is still +new).
    """
    if conn.seen_reply:
        return False
    if packet.nw_proto == PROTO_TCP:
        return (packet.tcp_flags or 0) & (SYN | ACK) == SYN
    return True


def _related(conntrack: Conntrack, packet: Packet, request: CtRequest) -> CtResult:
    found = None if packet.inner is None else conntrack.find(request.zone, inner_key(packet.inner).reversed())
    if found is None:
        return CtResult(conntrack, packet, TRK | INV, 0,
                        (f"zone {request.zone}: ICMP error about no known connection: +inv",))
    conn, reply = found
    state = TRK | REL | (RPL if reply else 0)
    events = [f"zone {request.zone}: ICMP error about {conn.original.describe()}"]
    if (request.nat is not None or request.apply_nat) and conn.nat:
        packet = _rewrite_related(packet, conn, reply)
        state |= _nat_bits(conn.nat, reply)
        events.append("nat of the error and the packet it quotes")
    return CtResult(conntrack, packet, state, conn.mark, tuple(events), CtCache(request.zone, conn.original, state),
                    conn.label)


def _new(conntrack: Conntrack, packet: Packet, request: CtRequest, key: ConnKey) -> CtResult:
    why_invalid = why_invalid_new(packet)
    if why_invalid:
        return CtResult(conntrack, packet, TRK | INV, 0, (f"zone {request.zone}: {why_invalid}: +inv",))
    events = [f"zone {request.zone}: new connection {key.describe()}"]
    expected = conntrack.expectation(request.zone, key)
    new, mark = (TRK | NEW, 0) if expected is None else (TRK | NEW | REL, expected[1].mark)
    if expected is not None:
        events.append(f"expected by the {expected[1].helper} helper of {expected[1].original.describe()}")
    if not request.commit:
        return CtResult(conntrack, packet, new, mark, tuple(events))
    limit = conntrack.limit(request.zone)
    if limit is not None and len(conntrack.in_zone(request.zone)) >= limit:
        events.append(f"zone {request.zone} holds {limit} connections: not committed")
        return CtResult(conntrack, packet, new, mark, tuple(events))
    if expected is not None:
        return _commit_related(conntrack, packet, request, key, *expected, events)
    translated, nat = key, frozenset[str]()
    if request.nat is not None:
        chosen = _choose_translation(conntrack, request.zone, key, request.nat)
        if chosen is None:
            events.append(f"nat({request.nat.kind}=...): no free tuple left")
            return CtResult(conntrack, packet, TRK | INV, 0, tuple(events))
        translated, nat = chosen, frozenset({request.nat.kind})
        packet = _rewrite(packet, translated)
        events.append(f"nat: now {translated.describe()}")
    mark, label = request.mark or 0, request.label or 0
    conn = Connection(request.zone, key, translated.reversed(), mark, nat, label, helper=request.alg)
    events.append(f"commit, ct_mark={mark:#x}" + (f", ct_label={label:#x}" if label else "")
                  + (f", helper {request.alg}" if request.alg else ""))
    state = TRK | NEW | _nat_bits(nat, False)
    cache = CtCache(request.zone, key, state)
    conntrack = conntrack.updated(None, conn)
    if request.alg:
        conntrack = dataclasses.replace(
            conntrack, expected=(*conntrack.expected, *expectations(request.alg, request.zone, conn)))
    return CtResult(conntrack, packet, state, mark, tuple(events), cache, label)


def _commit_related(conntrack: Conntrack, packet: Packet, request: CtRequest, key: ConnKey,
                    expected: Expected, master: Connection, events: list[str]) -> CtResult:
    """Commit a connection a helper expected: the control connection's mark (unless the commit sets
    one) and, with `nat`, its translation; the expectation is used up."""
    translated, nat = key, frozenset[str]()
    if request.nat is not None or request.apply_nat:
        translated, nat = related_translation(expected, master, key)
        packet = _rewrite(packet, translated)
        events.append(f"nat as the control connection: now {translated.describe()}")
    mark = request.mark or master.mark
    conn = Connection(request.zone, key, translated.reversed(), mark, nat, related=True)
    events.append(f"commit, ct_mark={mark:#x}")
    state = TRK | NEW | REL | _nat_bits(nat, False)
    conntrack = dataclasses.replace(conntrack.updated(None, conn),
                                    expected=tuple(e for e in conntrack.expected if e != expected))
    return CtResult(conntrack, packet, state, mark, tuple(events), CtCache(request.zone, key, state))


def why_invalid_new(packet: Packet) -> str:
    """Why a packet cannot start a connection ('' when it can).

    TCP as OVS conntrack's `tcp_valid_new` decides: flags no TCP stack sends are
    invalid, and so is a SYN+ACK; anything else may start a connection, a segment
    without SYN too (an ACK, RST or FIN+ACK: OVS picks connections up mid-stream,
    as Linux does with nf_conntrack_tcp_loose), and is +new.
    """
    if packet.nw_proto == PROTO_TCP:
        flags = packet.tcp_flags or 0
        if why := invalid_tcp_flags(flags):
            return why
        if flags & SYN and flags & ACK:
            return "a SYN+ACK for no known connection"
    if packet.nw_proto in ICMP_PROTOS and (packet.icmp_type or 0) not in _QUERIES[packet.nw_proto or 0]:
        return f"ICMP type {packet.icmp_type} cannot start a connection"
    return ""


def invalid_tcp_flags(flags: int) -> str:
    """Why TCP flags are invalid in any state ('' when they are not), as OVS's `tcp_invalid_flags`."""
    if flags & SYN and flags & (RST | FIN):
        return "TCP SYN with RST or FIN"
    if not flags & (SYN | ACK | RST):
        return "TCP segment with none of SYN, ACK and RST"
    if not flags & ACK and flags & (FIN | PSH | URG):
        return "TCP FIN, PSH or URG without ACK"
    return ""


def _nat_bits(nat: frozenset[str], reply: bool) -> int:
    bits = 0
    if "src" in nat:
        bits |= DNAT if reply else SNAT
    if "dst" in nat:
        bits |= SNAT if reply else DNAT
    return bits


def _choose_translation(conntrack: Conntrack, zone: int, key: ConnKey, nat: NatSpec) -> ConnKey | None:
    """The lowest address of the range, and the first port that leaves the reply tuple unique."""
    for candidate in _candidates(key, nat):
        if conntrack.find(zone, candidate.reversed()) is None:
            return candidate
    return None


def _candidates(key: ConnKey, nat: NatSpec) -> Iterator[ConnKey]:
    addresses = range(nat.addr_lo, min(nat.addr_hi, nat.addr_lo + 65535) + 1)
    if nat.kind == "dst":
        ports = [key.dport] if nat.port_lo is None or key.proto not in PORT_PROTOS else \
            range(nat.port_lo, (nat.port_hi or nat.port_lo) + 1)
        for addr, port in itertools.product(addresses, ports):
            yield dataclasses.replace(key, dst=addr, dport=port)
        return
    for addr, port in itertools.product(addresses, _snat_ports(key, nat)):
        yield dataclasses.replace(key, src=addr, sport=port)


def _snat_ports(key: ConnKey, nat: NatSpec) -> Iterator[int]:
    if key.proto not in PORT_PROTOS:
        yield key.sport
        return
    if nat.port_lo is not None:
        yield from range(nat.port_lo, (nat.port_hi or nat.port_lo) + 1)
        return
    yield key.sport  # OVS keeps the source port when it can, else searches its class of ports
    lo, hi = (1, 511) if key.sport < 512 else (600, 1023) if key.sport < 1024 else (1024, 65535)
    yield from (p for p in range(lo, hi + 1) if p != key.sport)


def _rewrite(packet: Packet, target: ConnKey) -> Packet:
    """Give the packet the addresses (and ports) of `target`."""
    if target.version == 4:
        packet = packet.replace(nw_src=target.src, nw_dst=target.dst)
    else:
        packet = packet.replace(ipv6_src=target.src, ipv6_dst=target.dst)
    if target.proto in PORT_PROTOS:
        packet = packet.replace(tp_src=target.sport, tp_dst=target.dport)
    return packet


def _rewrite_related(packet: Packet, conn: Connection, reply: bool) -> Packet:
    """Translate an ICMP error's outer addresses and the packet it quotes, as OVS does."""
    src, dst = packet.src or 0, packet.dst or 0
    if reply:
        dst = conn.original.src if "src" in conn.nat else dst
        src = conn.original.dst if "dst" in conn.nat else src
        quoted = conn.original
    else:
        src = conn.reply.dst if "src" in conn.nat else src
        dst = conn.reply.src if "dst" in conn.nat else dst
        quoted = conn.reply
    outer = _rewrite(packet, ConnKey(conn.original.version, 0, src, dst, 0, 0))
    inner = packet.inner
    if inner is not None:
        ports = (quoted.sport, quoted.dport) if quoted.proto in PORT_PROTOS else (inner.tp_src, inner.tp_dst)
        inner = Inner(inner.version, inner.nw_proto, quoted.src, quoted.dst, *ports)
    return outer.replace(inner=inner)
