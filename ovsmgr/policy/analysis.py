"""Relations between rules: overlap and cover, and the checks built on them.

`covers` and `overlaps` are exact on the rule's match (zones, prefixes,
services). `RuleIndex` finds the earlier rules that could cover or overlap a
new one without comparing against every rule, so checking and compiling
policies of 100,000 rules stays linear in practice: rules are indexed by their
prefixes (looked up through every supernet of a prefix) and by their exact
service items, and only rules that cannot be indexed are scanned.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from ovsmgr.policy.diagnostics import Collector
from ovsmgr.policy.ir import IPNetwork, RuleMatch, Service

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
    return any(x.version == y.version and x.overlaps(y) for x in a for y in b)  # type: ignore[arg-type]


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


def _supernets(prefix: IPNetwork) -> Iterator[IPNetwork]:
    for length in range(prefix.prefixlen, -1, -1):
        yield prefix.supernet(new_prefix=length) if length != prefix.prefixlen else prefix


class RuleIndex:
    """Rules added so far, indexed to answer "which of them could cover/overlap this match?".

    The answer is a superset of the true one (callers confirm with `covers` or
    `overlaps`); it is small whenever rules differ by prefixes or exact services.
    """

    def __init__(self) -> None:
        self.items: list[tuple[RuleMatch, object]] = []
        self._by_src: dict[tuple[str, IPNetwork], list[int]] = defaultdict(list)
        self._by_src_sub: dict[tuple[str, IPNetwork], list[int]] = defaultdict(list)
        self._any_src: dict[str, list[int]] = defaultdict(list)
        self._by_svc: dict[tuple[str, Service], list[int]] = defaultdict(list)
        self._other_svc: dict[str, list[int]] = defaultdict(list)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, match: RuleMatch, payload: object) -> None:
        i = len(self.items)
        self.items.append((match, payload))
        z = match.from_zone
        if match.src:
            for p in match.src:
                self._by_src[(z, p)].append(i)
                for sup in _supernets(p):
                    self._by_src_sub[(z, sup)].append(i) if len(match.src) <= 4 else None
        else:
            self._any_src[z].append(i)
        if match.services and all(s.ports is None or s.ports[0] == s.ports[1] for s in match.services):
            for s in match.services:
                self._by_svc[(z, s)].append(i)
        else:
            self._other_svc[z].append(i)

    def _src_candidates(self, match: RuleMatch, overlap: bool) -> list[int] | None:
        z = match.from_zone
        if not match.src:
            return None
        p = match.src[0]
        found = list(self._any_src[z])
        for sup in _supernets(p):
            found.extend(self._by_src.get((z, sup), ()))
        if overlap:
            if any(len(m.src) > 4 for m, _ in self.items):
                return None
            found.extend(self._by_src_sub.get((z, p), ()))
        return found

    def _svc_candidates(self, match: RuleMatch) -> list[int] | None:
        z = match.from_zone
        if not match.services:
            return None
        s = match.services[0]
        if s.ports is not None and s.ports[0] != s.ports[1]:
            return None
        generic = [Service(s.proto)]
        if s.icmp_code is not None:
            generic.append(Service(s.proto, None, s.icmp_type))
        found = list(self._other_svc[z])
        for key in (s, *generic):
            found.extend(self._by_svc.get((z, key), ()))
        return found

    def candidates(self, match: RuleMatch, overlap: bool = False) -> Iterable[tuple[RuleMatch, object]]:
        options = [c for c in (self._src_candidates(match, overlap), self._svc_candidates(match)) if c is not None]
        if not options:
            return list(self.items)
        best = min(options, key=len)
        return [self.items[i] for i in sorted(set(best))]


def check(policy: ResolvedPolicy, source: SourceMap, diag: Collector) -> None:
    _check_shadowed(policy, diag)
    _check_nat(policy, diag)


def _check_shadowed(policy: ResolvedPolicy, diag: Collector) -> None:
    index = RuleIndex()
    for rule in policy.rules:
        for match, earlier in index.candidates(rule.match):
            if covers(match, rule.match):
                diag.warning(rule.span, f'rule "{rule.name}" can never match: rule "{earlier.name}" ({earlier.span}) matches everything it does')  # type: ignore[attr-defined]
                break
        index.add(rule.match, rule)


def _check_nat(policy: ResolvedPolicy, diag: Collector) -> None:
    for kind in ("snat", "dnat"):
        rules = [r for r in policy.nat if r.kind == kind]
        for i, rule in enumerate(rules):
            for earlier in rules[:i]:
                if overlaps(earlier.match, rule.match):
                    diag.error(rule.span, f'{kind} rule "{rule.name}" overlaps {kind} rule "{earlier.name}" ({earlier.span}): a connection matching both would be translated by the first only')
                    break
    for rule in policy.nat:
        target = ipaddress.ip_network(rule.translate_lo)
        for fw in policy.rules:
            if fw.action == "allow":
                continue
            for field, prefixes in (("src", fw.match.src), ("dst", fw.match.dst)):
                if any(p.version == target.version and target.subnet_of(p) for p in prefixes):  # type: ignore[arg-type]
                    diag.error(rule.span, f'{rule.kind} rule "{rule.name}" translates to {rule.translate_lo}, which rule "{fw.name}" ({fw.span}) blocks as {field}')
                    return
