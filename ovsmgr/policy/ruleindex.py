"""`RuleIndex`: which earlier rules could cover, or overlap, a new one, without looking at all of them.

The shadowing check asks "does an earlier rule cover this one?" and the
compiler asks "does this rule overlap one already in this priority level?",
once per rule. Comparing with every earlier rule would make both quadratic,
so the index answers with a small superset of the true answer, which the
caller confirms with `covers` or `overlaps`.

Each match dimension has a sub-index that names the rules that *could* relate
to a new match in that dimension alone:

- addresses (src, dst): rules without the dimension, rules filed under a
  supernet of the new prefix (probed at each prefix length the index holds,
  a handful in real policies), and for overlap also rules with a prefix inside
  it (a sorted list, bisected);
- services: rules without services, rules with a service that could cover the
  new one (exact keys; port ranges in a sorted interval list scanned only over
  the window the widest narrow range allows), and for overlap any rule with a
  service of the same protocol whose ports can meet.

A lookup sizes the options of every dimension and builds only the smallest.
A dimension alone is not enough when rules differ in different dimensions
(half by source, half by port: each dimension's "unrestricted" list is half
the policy), so cover lookups also have a pair index on (source, service).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from ovsmgr.policy.ir import IPNetwork, RuleMatch, Service
from ovsmgr.policy.terms import PORT_PROTOS

T = TypeVar("T")
PrefixKey = tuple[int, int, int]
"""(IP version, network as an integer, prefix length)."""
ANY = "any"
"""The key of a rule that does not restrict a dimension."""
WILD = "wild"
"""The pair key of a rule filed without one dimension (it would need too many pairs)."""
MAX_PAIRS = 64
NARROW_PORTS = 1024
"""Port ranges up to this width go in the interval list; wider ones are always candidates."""
SMALL_INDEX = 16
"""Up to this many rules, a lookup answers with every rule of the zone and no sub-index is kept:
confirming a few candidates costs less than building the sub-indexes, and the compiler starts a
new index at every priority level, most of which hold a rule or two."""



Entry = tuple[int, int, int]
"""(network, prefix length, rule) or (low port, high port, rule)."""
BUCKET = 512
"""Entries per bucket of a `_SortedEntries` (a bucket splits in two past twice this)."""


class _SortedEntries:
    """Entries in sorted order, kept in buckets, so that adding one moves the entries of one
    bucket: `bisect.insort` into one list of 50,000 entries moved 200 kB per rule, which made
    the shadowing check quadratic (its per-rule time at 100,000 rules twice that at 10,000).

    Entries are sorted in only when a lookup needs them: the shadowing check asks for port
    ranges only when a rule could be covered, and never for prefixes in order, so in most
    policies they are never sorted at all."""

    def __init__(self) -> None:
        self.buckets: list[list[Entry]] = []
        self.maxes: list[Entry] = []
        """The last entry of each bucket."""
        self.pending: list[Entry] = []

    def add(self, entry: Entry) -> None:
        self.pending.append(entry)

    def _sort_in(self, entry: Entry) -> None:
        buckets, maxes = self.buckets, self.maxes
        if not buckets:
            buckets.append([entry])
            maxes.append(entry)
            return
        k = min(bisect.bisect_left(maxes, entry), len(buckets) - 1)
        bucket = buckets[k]
        bisect.insort(bucket, entry)
        maxes[k] = bucket[-1]
        if len(bucket) > 2 * BUCKET:
            buckets[k : k + 1] = [bucket[:BUCKET], bucket[BUCKET:]]
            maxes[k : k + 1] = [bucket[BUCKET - 1], bucket[-1]]

    def between(self, low: Entry, high: Entry, keep: Callable[[int, int], bool]) -> _Window:
        """The entries from `low` to `high` (as the bisect module compares them) that `keep`."""
        for entry in self.pending:
            self._sort_in(entry)
        self.pending.clear()
        parts: list[tuple[list[Entry], int, int]] = []
        size = 0
        k = bisect.bisect_left(self.maxes, low)
        while k < len(self.buckets):
            bucket = self.buckets[k]
            start = bisect.bisect_left(bucket, low) if not parts else 0
            end = bisect.bisect_right(bucket, high)
            if end > start:
                parts.append((bucket, start, end))
                size += end - start
            if end < len(bucket):
                break
            k += 1
        return _Window(parts, size, keep)


class _Window:
    """Entries of a `_SortedEntries` between two bounds: sized by their count, filtered when read."""

    def __init__(self, parts: list[tuple[list[Entry], int, int]], size: int, keep: Callable[[int, int], bool]):
        self.parts, self.size, self.keep = parts, size, keep

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        for bucket, start, end in self.parts:
            for k in range(start, end):
                a, b, i = bucket[k]
                if self.keep(a, b):
                    yield i


_NOTHING = _SortedEntries()


Buckets = list[list[int] | _Window]


def _second_at_least(bound: int) -> Callable[[int, int], bool]:
    """The window test: an entry's second field (prefix length, or high port) reaches `bound`."""
    return lambda _first, second: second >= bound


def prefix_key(prefix: IPNetwork) -> PrefixKey:
    return prefix.version, int(prefix.network_address), prefix.prefixlen


def _distinct(items: tuple[T, ...]) -> Iterable[T]:
    """`items` without repeats, in order (rules have one prefix or service more often than not)."""
    return items if len(items) < 2 else dict.fromkeys(items)


def _single_port(service: Service) -> bool:
    return service.ports is None or service.ports[0] == service.ports[1]


_ANY_OF: dict[str, Service] = {proto: Service(proto) for proto in (*PORT_PROTOS, "icmp", "icmpv6")}  # type: ignore[arg-type]
"""`Service(proto)`, the service that covers every other of its protocol, made once."""


class _Prefixes:
    """One address dimension (src or dst) of the indexed rules."""

    def __init__(self) -> None:
        self.unrestricted: dict[str, list[int]] = defaultdict(list)
        self.by_prefix: dict[tuple[str, PrefixKey], list[int]] = defaultdict(list)
        self.lengths: dict[tuple[str, int], set[int]] = defaultdict(set)
        self.ordered: dict[tuple[str, int], _SortedEntries] = defaultdict(_SortedEntries)

    def add(self, zone: str, i: int, prefixes: tuple[IPNetwork, ...]) -> list[PrefixKey]:
        """Index rule `i`; the keys of its prefixes, each once."""
        if not prefixes:
            self.unrestricted[zone].append(i)
            return []
        keys = [prefix_key(p) for p in _distinct(prefixes)]
        for key in keys:
            version, net, length = key
            self.by_prefix[(zone, key)].append(i)
            self.lengths[(zone, version)].add(length)
            self.ordered[(zone, version)].add((net, length, i))
        return keys

    def supernet_keys(self, zone: str, prefix: IPNetwork) -> list[PrefixKey]:
        """Keys of `prefix` and its supernets, at the prefix lengths the index holds."""
        net, bits = int(prefix.network_address), prefix.max_prefixlen
        ones = (1 << bits) - 1
        return [(prefix.version, net & (ones ^ ((1 << (bits - n)) - 1)), n)
                for n in self.lengths.get((zone, prefix.version), ()) if n <= prefix.prefixlen]

    def cover(self, zone: str, prefixes: tuple[IPNetwork, ...]) -> Buckets:
        buckets: Buckets = [self.unrestricted.get(zone, [])]
        if prefixes:
            buckets += [self.by_prefix.get((zone, k), []) for k in self.supernet_keys(zone, prefixes[0])]
        return buckets

    def overlap(self, zone: str, prefixes: tuple[IPNetwork, ...]) -> Buckets | None:
        if not prefixes:
            return None  # overlaps rules with any value here: no help in narrowing
        buckets: Buckets = [self.unrestricted.get(zone, [])]
        for prefix in prefixes:
            buckets += [self.by_prefix.get((zone, k), []) for k in self.supernet_keys(zone, prefix)]
            entries = self.ordered.get((zone, prefix.version), _NOTHING)
            start, end = int(prefix.network_address), int(prefix.broadcast_address)
            buckets.append(entries.between((start, -1, -1), (end, 1 << 8, 1 << 62),
                                           _second_at_least(prefix.prefixlen)))
        return buckets


class _Services:
    """The service dimension of the indexed rules."""

    def __init__(self) -> None:
        self.unrestricted: dict[str, list[int]] = defaultdict(list)
        self.by_key: dict[tuple[str, Service], list[int]] = defaultdict(list)
        self.by_proto: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.ranges: dict[tuple[str, str], _SortedEntries] = defaultdict(_SortedEntries)
        self.width: dict[tuple[str, str], int] = defaultdict(int)
        self.wide: dict[tuple[str, str], list[int]] = defaultdict(list)

    def add(self, zone: str, i: int, services: tuple[Service, ...]) -> None:
        if not services:
            self.unrestricted[zone].append(i)
            return
        for proto in _distinct(tuple(s.proto for s in services)):
            self.by_proto[(zone, proto)].append(i)
        for service in _distinct(services):
            key = (zone, service.proto)
            if _single_port(service):
                self.by_key[(zone, service)].append(i)
            if service.ports is None:
                if service.proto in PORT_PROTOS:
                    self.wide[key].append(i)
            elif service.ports[1] - service.ports[0] < NARROW_PORTS:
                self.ranges[key].add((*service.ports, i))
                self.width[key] = max(self.width[key], service.ports[1] - service.ports[0])
            else:
                self.wide[key].append(i)

    def _meeting(self, zone: str, service: Service, *, cover: bool) -> Buckets:
        """Rules with a port range that meets (or, for `cover`, contains) `service`'s ports."""
        assert service.ports is not None
        key = (zone, service.proto)
        lo, hi = service.ports
        entries = self.ranges.get(key, _NOTHING)
        window = entries.between((lo - self.width.get(key, 0), -1, -1), (lo if cover else hi, 1 << 17, 1 << 62),
                                 _second_at_least(hi if cover else lo))
        return [self.wide.get(key, []), window]

    def cover(self, zone: str, services: tuple[Service, ...]) -> Buckets:
        buckets: Buckets = [self.unrestricted.get(zone, [])]
        if not services:
            return buckets
        s = services[0]
        keys = {s, _ANY_OF[s.proto]}
        if s.icmp_code is not None:
            keys.add(Service(s.proto, None, s.icmp_type))
        buckets += [self.by_key.get((zone, k), []) for k in keys]
        if s.ports is not None:
            buckets += self._meeting(zone, s, cover=True)
        return buckets

    def overlap(self, zone: str, services: tuple[Service, ...]) -> Buckets | None:
        if not services:
            return None
        buckets: Buckets = [self.unrestricted.get(zone, [])]
        for s in services:
            if s.ports is None:
                buckets.append(self.by_proto.get((zone, s.proto), []))
            else:
                buckets += self._meeting(zone, s, cover=False)
        return buckets


class _SubIndexes:
    """The per-dimension indexes of a `RuleIndex`, over rule numbers (positions in its items)."""

    def __init__(self) -> None:
        self.src = _Prefixes()
        self.dst = _Prefixes()
        self.services = _Services()
        self.pairs: dict[tuple[str, object], dict[object, list[int]]] = defaultdict(dict)
        """(zone, source key) -> service key -> rules."""
        self.by_zone: dict[str, list[int]] = defaultdict(list)

    def add(self, i: int, match: RuleMatch) -> None:
        zone = match.from_zone
        self.by_zone[zone].append(i)
        src_keys: list[object] = [*self.src.add(zone, i, match.src)] or [ANY]
        self.dst.add(zone, i, match.dst)
        self.services.add(zone, i, match.services)
        svc_keys: list[object] = list(_distinct(tuple(
            s if _single_port(s) else ("range", s.proto) for s in match.services))) or [ANY]
        if len(src_keys) * len(svc_keys) > MAX_PAIRS:
            if len(src_keys) <= len(svc_keys):
                svc_keys = [WILD]
            else:
                src_keys = [WILD]
        for s in src_keys:
            by_service = self.pairs[(zone, s)]
            for v in svc_keys:
                by_service.setdefault(v, []).append(i)

    def _pair_cover(self, match: RuleMatch) -> Buckets:
        zone = match.from_zone
        src_keys: list[object] = [ANY, WILD]
        if match.src:
            src_keys += self.src.supernet_keys(zone, match.src[0])
        svc_keys: list[object] = [ANY, WILD]
        if match.services:
            s = match.services[0]
            svc_keys += [s, _ANY_OF[s.proto], ("range", s.proto)]
            if s.icmp_code is not None:
                svc_keys.append(Service(s.proto, None, s.icmp_type))
        buckets: Buckets = []
        for a in src_keys:
            by_service = self.pairs.get((zone, a))
            if by_service:
                buckets += [by_service[b] for b in svc_keys if b in by_service]
        return buckets

    def _plans(self, match: RuleMatch, overlap: bool) -> Iterator[Buckets | None]:
        """Each dimension's candidates (None: the dimension cannot narrow), made one at a time."""
        zone = match.from_zone
        if overlap:
            yield self.src.overlap(zone, match.src)
            yield self.dst.overlap(zone, match.dst)
            yield self.services.overlap(zone, match.services)
        else:
            yield self._pair_cover(match)
            yield self.dst.cover(zone, match.dst)
            yield self.services.cover(zone, match.services)

    def candidates(self, match: RuleMatch, overlap: bool) -> list[int]:
        """Numbers of the rules that could relate to `match`, ascending: from the dimension that
        names the fewest. One that names none ends the search (most rules relate to no other)."""
        best: Buckets | None = None
        best_size = 0
        for plan in self._plans(match, overlap):
            if plan is None:
                continue
            size = sum(map(len, plan))
            if size == 0:
                return []
            if best is None or size < best_size:
                best, best_size = plan, size
        if best is None:
            return self.by_zone.get(match.from_zone, [])
        return sorted({i for bucket in best for i in bucket})


class RuleIndex:
    """Rules added so far, indexed to answer "which of them could cover/overlap this match?".

    The answer is a superset of the true one, without repeats, in the order
    the rules were added (so the first confirmed one is the earliest).
    """

    def __init__(self) -> None:
        self.items: list[tuple[RuleMatch, object]] = []
        self._index: _SubIndexes | None = None

    def __len__(self) -> int:
        return len(self.items)

    def add(self, match: RuleMatch, payload: object) -> None:
        self.items.append((match, payload))
        if self._index is not None:
            self._index.add(len(self.items) - 1, match)
        elif len(self.items) > SMALL_INDEX:
            self._index = _SubIndexes()
            for i, (indexed, _) in enumerate(self.items):
                self._index.add(i, indexed)

    def candidates(self, match: RuleMatch, overlap: bool = False) -> Iterable[tuple[RuleMatch, object]]:
        if self._index is None:
            zone = match.from_zone
            return [item for item in self.items if item[0].from_zone == zone]
        return [self.items[i] for i in self._index.candidates(match, overlap)]
