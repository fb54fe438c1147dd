"""Relations between rules: overlap and cover, and the checks built on them.

`covers` and `overlaps` are exact on the rule's match (zones, prefixes,
services). `RuleIndex` (see `ruleindex`) finds the earlier rules that could
cover or overlap a new one without comparing against every rule, so checking
and compiling policies of 100,000 rules stays linear in practice.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from ovsmgr.policy.diagnostics import Collector
from ovsmgr.policy.ir import IPAddress, IPNetwork, RuleMatch, Service
from ovsmgr.policy.ruleindex import PrefixKey, RuleIndex
from ovsmgr.policy.ruleindex import prefix_key as _prefix_key

if TYPE_CHECKING:
    from ovsmgr.policy.ir import ResolvedPolicy
    from ovsmgr.policy.loader import SourceMap


def _within(inner: IPNetwork, outer: IPNetwork) -> bool:
    """`inner.subnet_of(outer)`, without ipaddress's general checks (a third of rule comparison time)."""
    return (inner.version == outer.version and inner.prefixlen >= outer.prefixlen
            and int(inner.network_address) & int(outer.netmask) == int(outer.network_address))


def _prefixes_cover(outer: tuple[IPNetwork, ...], inner: tuple[IPNetwork, ...]) -> bool:
    if not outer:
        return True
    if not inner:
        return False
    return all(any(_within(i, o) for o in outer) for i in inner)


def _prefixes_overlap(a: tuple[IPNetwork, ...], b: tuple[IPNetwork, ...]) -> bool:
    """Two prefixes share an address exactly when one holds the other."""
    if not a or not b:
        return True
    return any(_within(x, y) or _within(y, x) for x in a for y in b)


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


# --- the checks ------------------------------------------------------------------------------------
def check(policy: ResolvedPolicy, source: SourceMap, diag: Collector) -> None:
    _check_shadowed(policy, diag)
    _check_nat_overlaps(policy, diag)
    _check_nat_blocked(policy, diag)


def _check_shadowed(policy: ResolvedPolicy, diag: Collector) -> None:
    """Rules an earlier rule covers. A `shadow: true` rule decides nothing, so it covers nothing."""
    index = RuleIndex()
    for rule in policy.rules:
        for match, earlier in index.candidates(rule.match):
            if covers(match, rule.match):
                other: Any = earlier
                diag.warning(rule.span, f'rule "{rule.name}" can never match: the earlier rule "{other.name}" '
                                        f"({other.span}) matches every packet it does")
                break
        if not rule.shadow:
            index.add(rule.match, rule)


def _check_nat_overlaps(policy: ResolvedPolicy, diag: Collector) -> None:
    """Two snat (or two dnat) rules that could match one connection: the second would not apply to
    it. Static rules are compared with each other (by their halves) and take precedence over snat
    and dnat rules, which then apply to the rest."""
    for kind in ("snat", "dnat"):
        for static in (True, False):
            index = RuleIndex()
            for rule in (r for r in policy.nat if r.kind == kind and r.static == static):
                for match, earlier in index.candidates(rule.match, overlap=True):
                    if overlaps(match, rule.match):
                        other: Any = earlier
                        word = "static" if static else kind
                        diag.error(rule.span, f'{word} rule "{rule.name}" overlaps {word} rule "{other.name}" '
                                              f"({other.span}): a connection matching both would be translated "
                                              "by the first only")
                        break
                index.add(rule.match, rule)


def _check_nat_blocked(policy: ResolvedPolicy, diag: Collector) -> None:
    """NAT that translates to an address a drop or reject rule names as its src or dst."""
    if not policy.nat:
        return
    blocked: dict[PrefixKey, tuple[str, Any]] = {}
    lengths: dict[int, set[int]] = defaultdict(set)
    for rule in policy.rules:
        if rule.action == "allow" or rule.shadow:
            continue
        for field, prefixes in (("src", rule.match.src), ("dst", rule.match.dst)):
            for prefix in prefixes:
                blocked.setdefault(_prefix_key(prefix), (field, rule))
                lengths[prefix.version].add(prefix.prefixlen)
    if not blocked:
        return
    for nat in policy.nat:
        for lo, hi in nat.targets():
            hit = _blocking_rule(lo, hi, blocked, lengths)
            if hit is not None:
                field, fw = hit
                kind = "static" if nat.static else nat.kind
                diag.error(nat.span, f'{kind} rule "{nat.name}" translates to {_target(lo, hi)}, which rule '
                                     f'"{fw.name}" ({fw.span}) blocks as {field}')
                break


def _target(lo: IPAddress, hi: IPAddress) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _blocking_rule(translate_lo: IPAddress, translate_hi: IPAddress, blocked: dict[PrefixKey, tuple[str, Any]],
                   lengths: dict[int, set[int]]) -> tuple[str, Any] | None:
    lo, hi = int(translate_lo), int(translate_hi)
    version = translate_lo.version
    bits = translate_lo.max_prefixlen
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
