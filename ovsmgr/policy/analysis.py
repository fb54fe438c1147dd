"""Relations between rules: overlap and cover, and the checks built on them.

`covers` and `overlaps` are exact on the rule's match (zones, prefixes,
services). `RuleIndex` finds the earlier rules that could cover or overlap a
new one without comparing against every rule, so checking and compiling
policies of 100,000 rules stays linear in practice.

How the index narrows the search: for rule A to cover rule B, A's sources
must be "any" or hold a supernet of B's first source, and A's services must be
"any" or hold a service covering B's first service. So every rule is filed
under each (source key, service key) pair it has, and a lookup probes only the
pairs that could cover: B's first source at each prefix length the index holds
(a handful, in real policies) times the few service keys that could cover B's
first service. Rules that would need too many pairs are filed under a wildcard
in one dimension and always probed. Overlap lookups use one dimension at a time.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ovsmgr.policy.diagnostics import Collector
from ovsmgr.policy.ir import IPNetwork, NatRule, RuleMatch, Service

if TYPE_CHECKING:
    from ovsmgr.policy.ir import ResolvedPolicy
    from ovsmgr.policy.loader import SourceMap


def _prefixes_cover(outer: tuple[IPNetwork, ...], inner: tuple[IPNetwork, ...]) -> bool:
    if not outer:
        return True
    if not inner:
        return False
    return all(any(i.version == o.version and i.subnet_of(o) for o in outer) for i in inner)  # type: ignore[arg-type]


def _prefixes_overlap(a: tuple[IPNetwork, ...], b: tuple[IPNetwork, ...]) -> bool:
    if not a or not b:
        return True
    return any(x.version == y.version and x.overlaps(y) for x in a for y in b)


def _services_cover(outer: tuple[Service, ...], inner: tuple[Service, ...]) -> bool:
    if not outer:
        return True
    if not inner:
        return False
    return all(any(o.covers(i) for o in outer) for i in inner)


def _services_overlap(a: tuple[Service, ...], b: tuple[Service, ...]) -> bool:
    if not a or not b:
        return True
    return any(x.overlaps(y) for x in a for y in b)


def covers(a: RuleMatch, b: RuleMatch) -> bool:
    """Every packet `b` matches, `a` matches too."""
    return (
        a.from_zone == b.from_zone
        and (a.to_zone is None or a.to_zone == b.to_zone)
        and b.families() <= a.families()
        and _prefixes_cover(a.src, b.src)
        and _prefixes_cover(a.dst, b.dst)
        and _services_cover(a.services, b.services)
    )


def overlaps(a: RuleMatch, b: RuleMatch) -> bool:
    """Some packet could match both."""
    return (
        a.from_zone == b.from_zone
        and (a.to_zone is None or b.to_zone is None or a.to_zone == b.to_zone)
        and bool(a.families() & b.families())
        and _prefixes_overlap(a.src, b.src)
        and _prefixes_overlap(a.dst, b.dst)
        and _services_overlap(a.services, b.services)
    )


# --- the index -----------------------------------------------------------------------------------
PrefixKey = tuple[int, int, int]
"""(IP version, network as an integer, prefix length)."""
ANY = "any"
"""The key of a rule that does not restrict a dimension."""
WILD = "wild"
"""The key of a rule filed without this dimension (too many pairs): always a candidate."""
MAX_PAIRS = 64


def _prefix_key(prefix: IPNetwork) -> PrefixKey:
    return prefix.version, int(prefix.network_address), prefix.prefixlen


def _exact(service: Service) -> bool:
    return service.ports is None or service.ports[0] == service.ports[1]


def _service_keys(services: tuple[Service, ...]) -> list[object]:
    """A rule's service keys: each exact service, plus ("range", proto) for its port ranges."""
    keys: list[object] = [s if _exact(s) else ("range", s.proto) for s in services]
    return list(dict.fromkeys(keys))


def _covering_service_keys(service: Service) -> list[object]:
    """The keys under which a rule whose services could cover `service` is filed."""
    keys: list[object] = [service, Service(service.proto)]
    if service.icmp_code is not None:
        keys.append(Service(service.proto, None, service.icmp_type))
    if service.ports is not None:
        keys.append(("range", service.proto))
    return keys


class RuleIndex:
    """Rules added so far, indexed to answer "which of them could cover/overlap this match?".

    The answer is a superset of the true one, in the order the rules were added
    (callers confirm with `covers` or `overlaps`); it is small whenever rules
    differ by prefixes or by exact services.
    """

    def __init__(self) -> None:
        self.items: list[tuple[RuleMatch, object]] = []
        self._pairs: dict[tuple[str, object, object], list[int]] = defaultdict(list)
        self._lengths: dict[tuple[str, int], set[int]] = defaultdict(set)
        self._by_zone: dict[str, list[int]] = defaultdict(list)
        self._src: dict[tuple[str, object], list[int]] = defaultdict(list)
        self._svc: dict[tuple[str, object], list[int]] = defaultdict(list)
        self._svc_proto: dict[tuple[str, str], list[int]] = defaultdict(list)
        self._sorted_src: dict[tuple[str, int], list[tuple[int, int, int]]] = defaultdict(list)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, match: RuleMatch, payload: object) -> None:
        i = len(self.items)
        self.items.append((match, payload))
        z = match.from_zone
        self._by_zone[z].append(i)
        src_keys: list[object] = [_prefix_key(p) for p in dict.fromkeys(match.src)] or [ANY]
        svc_keys = _service_keys(match.services) or [ANY]
        for p in match.src:
            self._lengths[(z, p.version)].add(p.prefixlen)
        self._file_single(z, i, src_keys, svc_keys, match)
        if len(src_keys) * len(svc_keys) > MAX_PAIRS:
            if len(src_keys) <= len(svc_keys):
                svc_keys = [WILD]
            else:
                src_keys = [WILD]
        for s in src_keys:
            for v in svc_keys:
                self._pairs[(z, s, v)].append(i)

    def _file_single(self, z: str, i: int, src_keys: list[object], svc_keys: list[object], match: RuleMatch) -> None:
        for key in src_keys:
            self._src[(z, key)].append(i)
            if isinstance(key, tuple):
                bisect.insort(self._sorted_src[(z, key[0])], (key[1], key[2], i))
        for key in svc_keys:
            self._svc[(z, key)].append(i)
        for proto in dict.fromkeys(s.proto for s in match.services):
            self._svc_proto[(z, proto)].append(i)

    def _supernet_keys(self, z: str, prefix: IPNetwork) -> list[object]:
        net, bits = int(prefix.network_address), prefix.max_prefixlen
        all_ones = (1 << bits) - 1
        return [(prefix.version, net & (all_ones ^ ((1 << (bits - n)) - 1)), n)
                for n in self._lengths.get((z, prefix.version), ()) if n <= prefix.prefixlen]

    def candidates(self, match: RuleMatch, overlap: bool = False) -> Iterable[tuple[RuleMatch, object]]:
        found = self._overlap_candidates(match) if overlap else self._cover_candidates(match)
        return [self.items[i] for i in sorted(set(found))]

    def _cover_candidates(self, match: RuleMatch) -> list[int]:
        z = match.from_zone
        src_keys: list[object] = [ANY, WILD]
        if match.src:
            src_keys += self._supernet_keys(z, match.src[0])
        svc_keys: list[object] = [ANY, WILD]
        if match.services:
            svc_keys += _covering_service_keys(match.services[0])
        found: list[int] = []
        for s in src_keys:
            for v in svc_keys:
                found.extend(self._pairs.get((z, s, v), ()))
        return found

    def _overlap_candidates(self, match: RuleMatch) -> list[int]:
        z = match.from_zone
        options = [c for c in (self._src_overlap(z, match), self._svc_overlap(z, match)) if c is not None]
        return min(options, key=len) if options else self._by_zone.get(z, [])

    def _src_overlap(self, z: str, match: RuleMatch) -> list[int] | None:
        if not match.src:
            return None
        found = list(self._src.get((z, ANY), ()))
        for prefix in match.src:
            for key in self._supernet_keys(z, prefix):
                found.extend(self._src.get((z, key), ()))
            found.extend(self._subnets(z, prefix))
        return found

    def _subnets(self, z: str, prefix: IPNetwork) -> Iterator[int]:
        """Rules filed under a prefix inside `prefix` (their networks lie in its address range)."""
        entries = self._sorted_src.get((z, prefix.version), [])
        start = int(prefix.network_address)
        end = int(prefix.broadcast_address)
        for net, length, i in entries[bisect.bisect_left(entries, (start, -1, -1)):]:
            if net > end:
                break
            if length >= prefix.prefixlen:
                yield i

    def _svc_overlap(self, z: str, match: RuleMatch) -> list[int] | None:
        if not match.services:
            return None
        found = list(self._svc.get((z, ANY), ()))
        for service in match.services:
            if service.ports is not None and _exact(service):
                for key in _covering_service_keys(service):
                    found.extend(self._svc.get((z, key), ()))
            else:
                found.extend(self._svc_proto.get((z, service.proto), ()))
        return found


# --- the checks ------------------------------------------------------------------------------------
def check(policy: ResolvedPolicy, source: SourceMap, diag: Collector) -> None:
    _check_shadowed(policy, diag)
    _check_nat_overlaps(policy, diag)
    _check_nat_blocked(policy, diag)


def _check_shadowed(policy: ResolvedPolicy, diag: Collector) -> None:
    index = RuleIndex()
    for rule in policy.rules:
        for match, earlier in index.candidates(rule.match):
            if covers(match, rule.match):
                other: Any = earlier
                diag.warning(rule.span, f'rule "{rule.name}" can never match: the earlier rule "{other.name}" '
                                        f"({other.span}) matches every packet it does")
                break
        index.add(rule.match, rule)


def _check_nat_overlaps(policy: ResolvedPolicy, diag: Collector) -> None:
    for kind in ("snat", "dnat"):
        index = RuleIndex()
        for rule in (r for r in policy.nat if r.kind == kind):
            for match, earlier in index.candidates(rule.match, overlap=True):
                if overlaps(match, rule.match):
                    other: Any = earlier
                    diag.error(rule.span, f'{kind} rule "{rule.name}" overlaps {kind} rule "{other.name}" '
                                          f"({other.span}): a connection matching both would be translated "
                                          "by the first only")
                    break
            index.add(rule.match, rule)


def _check_nat_blocked(policy: ResolvedPolicy, diag: Collector) -> None:
    """NAT that translates to an address a drop or reject rule names as its src or dst."""
    blocked: dict[PrefixKey, tuple[str, Any]] = {}
    lengths: dict[int, set[int]] = defaultdict(set)
    for rule in policy.rules:
        if rule.action == "allow":
            continue
        for field, prefixes in (("src", rule.match.src), ("dst", rule.match.dst)):
            for prefix in prefixes:
                blocked.setdefault(_prefix_key(prefix), (field, rule))
                lengths[prefix.version].add(prefix.prefixlen)
    if not blocked:
        return
    for nat in policy.nat:
        hit = _blocking_rule(nat, blocked, lengths)
        if hit is not None:
            field, fw = hit
            diag.error(nat.span, f'{nat.kind} rule "{nat.name}" translates to {_target(nat)}, which rule '
                                 f'"{fw.name}" ({fw.span}) blocks as {field}')


def _target(nat: NatRule) -> str:
    if nat.translate_lo == nat.translate_hi:
        return str(nat.translate_lo)
    return f"{nat.translate_lo}-{nat.translate_hi}"


def _blocking_rule(nat: NatRule, blocked: dict[PrefixKey, tuple[str, Any]],
                   lengths: dict[int, set[int]]) -> tuple[str, Any] | None:
    lo, hi = int(nat.translate_lo), int(nat.translate_hi)
    version = nat.translate_lo.version
    bits = nat.translate_lo.max_prefixlen
    hits: list[tuple[int, str, Any]] = []
    for n in lengths.get(version, ()):
        host_bits = bits - n
        first, last = lo >> host_bits, hi >> host_bits
        for block in range(first, min(last, first + 256) + 1):
            found = blocked.get((version, block << host_bits, n))
            if found is not None:
                hits.append((found[1].index, *found))
    return min(hits, key=lambda h: h[0])[1:] if hits else None


__all__ = ["RuleIndex", "check", "covers", "overlaps"]
