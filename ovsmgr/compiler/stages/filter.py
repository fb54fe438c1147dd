"""Table FILTER: first-match firewall rules, compact.

First match is kept with as few priorities as possible: rules are placed in
levels, a new level starting only when a rule overlaps one already in the
current level (found through `analysis.RuleIndex`, so this is not quadratic).
Disjoint rules share a priority, which keeps 100,000-rule policies inside
OpenFlow's 16-bit priority space. A rule whose src, dst and service lists
would multiply out becomes a conjunctive match: one flow per list item plus
one `conj_id` flow, so flows grow with the sum of the list sizes.

A shadow rule (`shadow: true`) takes its level like any rule, but its flows
count the packet (their own flow statistics, cookie kind SHADOW), log it if it
logs, and resubmit to FILTER with the rule's REG_SHADOW bit set: that lookup
finds the highest flow below it, so the verdict is the one the policy without
the shadow rule gives. The k-th shadow rule matches only with bit k clear and
sets bits 0..k, so the resubmit skips it and every shadow rule above it (those
did not match the first lookup either: nothing else in the packet changed).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from itertools import product

from ovsmgr.compiler.flows import (
    Action,
    Conjunction,
    Controller,
    Flow,
    FlowError,
    GotoTable,
    Match,
    MatchItem,
    Resubmit,
    SetField,
)
from ovsmgr.compiler.ids import fingerprint, rule_id
from ovsmgr.compiler.matchbuild import TRACKED_VALID, family, prefix, reg, service_matches
from ovsmgr.compiler.pipeline import (
    HELPER_ALGS,
    REG_FROM_ZONE,
    REG_HELPER,
    REG_RULE,
    REG_SHADOW,
    REG_TO_ZONE,
    CookieKind,
    PacketInKind,
    Priority,
    Table,
    cookie,
    packet_in_userdata,
)
from ovsmgr.compiler.stages.limits import metered
from ovsmgr.policy.analysis import RuleIndex, overlaps
from ovsmgr.policy.ir import MAX_SHADOW_RULES, ResolvedPolicy, Rule, RuleMatch

DEFAULT_RULE = "(default)"
"""Not a valid rule name, so it cannot collide with one."""


@dataclass(frozen=True)
class FilterResult:
    flows: list[Flow]
    stateful_fingerprints: dict[int, str]


def rule_levels(rules: tuple[Rule, ...]) -> list[int]:
    """Level (0 = highest priority) of each rule, keeping first-match order among overlapping ones."""
    levels: list[int] = []
    level, index = 0, RuleIndex()
    for rule in rules:
        if any(overlaps(m, rule.match) for m, _ in index.candidates(rule.match, overlap=True)):
            level, index = level + 1, RuleIndex()
        index.add(rule.match, rule)
        levels.append(level)
    return levels


def compile_filter(policy: ResolvedPolicy) -> FilterResult:
    flows: list[Flow] = []
    marks: dict[int, str] = {}
    conj_ids: set[int] = set()
    bits = shadow_bits(policy.rules)
    for rule, level in zip(policy.rules, rule_levels(policy.rules), strict=True):
        flows.extend(compile_rule(policy, rule, level, marks, conj_ids, bits.get(rule.name)))
    flows.append(compile_default(policy, marks))
    return FilterResult(flows, marks)


def shadow_bits(rules: tuple[Rule, ...] | list[Rule]) -> dict[str, int]:
    """REG_SHADOW bit of each shadow rule: its place among the shadow rules, in written order."""
    bits = {rule.name: k for k, rule in enumerate(r for r in rules if r.shadow)}
    if len(bits) > MAX_SHADOW_RULES:
        raise FlowError(f"more than {MAX_SHADOW_RULES} shadow rules")
    return bits


def compile_rule(
    policy: ResolvedPolicy, rule: Rule, level: int, marks: dict[int, str], conj_ids: set[int],
    shadow_bit: int | None = None,
) -> list[Flow]:
    """The FILTER flows of one rule at one level; records its fingerprint in `marks` and the
    conjunction ids it takes in `conj_ids`; a shadow rule needs its `shadow_bit`. Public so
    controller mode can recompile one rule."""
    priority = Priority.FILTER_TOP - level
    if priority <= Priority.DEFAULT:
        raise FlowError("more than 60,000 levels of overlapping firewall rules")
    if rule.shadow:
        if shadow_bit is None:
            raise FlowError(f"shadow rule {rule.name} compiled without its REG_SHADOW bit")
        return _shadow_flows(policy, rule, priority, shadow_bit, conj_ids)
    actions = metered(rule.name, rule.limit, _rule_actions(rule.name, rule.action, rule.stateful, rule.log,
                                                           rule.match, marks, rule.helper))
    flow_cookie = cookie(CookieKind.FIREWALL, rule_id(rule.name))
    flows: list[Flow] = []
    for version in sorted(rule.match.families()):
        flows.extend(_rule_flows(policy, rule, version, priority, actions, flow_cookie, conj_ids))
        if rule.action == "allow" and rule.stateful and rule.match.services:
            flows.extend(_fragment_followers(policy, rule, version, priority, actions, flow_cookie))
    return flows


def _shadow_flows(policy: ResolvedPolicy, rule: Rule, priority: int, bit: int, conj_ids: set[int]) -> list[Flow]:
    """Count (and log), mark bits 0..`bit` passed, look FILTER up again: the rules below decide.
    Only the first packet of a connection meets FILTER, so that is what a shadow rule counts."""
    unpassed = Match.of(MatchItem(REG_SHADOW.reg, 0, 1 << bit))
    actions: tuple[Action, ...] = (SetField(REG_SHADOW.reg, (2 << bit) - 1), Resubmit(Table.FILTER))
    if rule.log:
        actions = (Controller(packet_in_userdata(PacketInKind.LOG, rule_id(rule.name))), *actions)
    flow_cookie = cookie(CookieKind.SHADOW, rule_id(rule.name))
    flows: list[Flow] = []
    for version in sorted(rule.match.families()):
        base = _zone_match(policy, rule.match, version) + unpassed
        flows.extend(expand_match(base, match_dimensions(rule.match, version), Table.FILTER, priority, actions,
                                  flow_cookie, rule.name, _conj_id(rule.name, version, conj_ids)))
    return flows


LATER_FRAGMENT = MatchItem("nw_frag", 3)
"""`nw_frag=later`; OVS writes the full two-bit mask as no mask."""


def _fragment_followers(
    policy: ResolvedPolicy, rule: Rule, version: int, priority: int, actions: tuple[Action, ...], flow_cookie: int,
) -> list[Flow]:
    """Flows that take the later fragments of a datagram to NAT's commit with this rule's mark.

    Open vSwitch before 3.6 puts no conntrack ports (`ct_tp_*`) in a later fragment's flow key on
    the userspace datapath (its first fragment and the kernel's reassembled datagram have them),
    so a later fragment meets the rule by zones and protocol only. That passes nothing by itself:
    the commit's ct() reassembles the datagram, and it is whole only if its first fragment, judged
    by the full rule, reached the same ct(); else the fragments are held there and expire as
    invalid, which NAT's and OUTPUT's flows drop. Rules of one level are disjoint, so several may
    make the same follower: the first rule's stands (`FlowSet.add`)."""
    base = _zone_match(policy, rule.match, version) + Match.of(LATER_FRAGMENT)
    protos = dict.fromkeys(service_matches(service)[0].items[0] for service in rule.match.for_family(version).services)
    return [Flow(Table.FILTER, priority, base + Match.of(proto), actions, flow_cookie, rule.name) for proto in protos]


def compile_default(policy: ResolvedPolicy, marks: dict[int, str]) -> Flow:
    """The firewall's default action, below every rule; records its fingerprint in `marks`."""
    default_actions = _rule_actions(DEFAULT_RULE, policy.default_action, True, False, None, marks)
    return Flow(Table.FILTER, Priority.DEFAULT, Match(), default_actions, cookie(CookieKind.DEFAULT), rule=None)


def _rule_actions(
    name: str, action: str, stateful: bool, log: bool, match: RuleMatch | None, marks: dict[int, str],
    helper: str | None = None,
) -> tuple[Action, ...]:
    rid = rule_id(name)
    out: list[Action] = []
    if log:
        out.append(Controller(packet_in_userdata(PacketInKind.LOG, rid)))
    if action == "allow" and stateful:
        mark = fingerprint(name, match)
        marks[mark] = name
        out.append(SetField(REG_RULE.reg, mark))
        if helper is not None:  # NAT's commit attaches it (`helpers`)
            out.append(SetField(REG_HELPER.reg, HELPER_ALGS[helper]))
        out.append(GotoTable(Table.NAT))
    elif action == "allow":
        out.append(GotoTable(Table.OUTPUT))
    elif action == "reject":
        out.append(Controller(packet_in_userdata(PacketInKind.REJECT, rid)))
    return tuple(out)


def _zone_match(policy: ResolvedPolicy, match: RuleMatch, version: int) -> Match:
    to_id = None if match.to_zone is None else policy.zones[match.to_zone].id
    return _zones_and_family(policy.zones[match.from_zone].id, to_id, version, bool(match.services))


@functools.cache
def _zones_and_family(from_id: int, to_id: int | None, version: int, services: bool = False) -> Match:
    """Every flow of a rule starts with these; a policy has few zones, so they are made once. A rule
    with services matches them on the conntrack tuple, which needs `TRACKED_VALID`."""
    items = [reg(REG_FROM_ZONE, from_id)]
    if to_id is not None:
        items.append(reg(REG_TO_ZONE, to_id))
    if services:
        items.append(TRACKED_VALID)
    return Match.of(*items) + family(version)


def match_dimensions(match: RuleMatch, version: int) -> list[list[Match]]:
    """The rule's src, dst and service alternatives in one family; an empty list is 'any'.
    They add to the rule's zone-and-family match (see `service_matches`)."""
    m = match.for_family(version)
    dims = []
    if m.src:
        dims.append([Match((prefix("nw_src", p),)) for p in m.src])
    if m.dst:
        dims.append([Match((prefix("nw_dst", p),)) for p in m.dst])
    if m.services:
        dims.append([frag for s in m.services for frag in service_matches(s)])
    return dims


def _rule_flows(
    policy: ResolvedPolicy, rule: Rule, version: int, priority: int, actions: tuple[Action, ...],
    flow_cookie: int, conj_ids: set[int],
) -> list[Flow]:
    base = _zone_match(policy, rule.match, version)
    return expand_match(base, match_dimensions(rule.match, version), Table.FILTER, priority, actions,
                        flow_cookie, rule.name, _conj_id(rule.name, version, conj_ids))


def expand_match(
    base: Match, dims: list[list[Match]], table: Table, priority: int, actions: tuple[Action, ...],
    flow_cookie: int, rule: str, conj_id: int,
) -> list[Flow]:
    """Cross product when it is no larger than the lists' sum, else a conjunctive match."""
    multi = [d for d in dims if len(d) > 1]
    common = base
    for d in dims:
        if len(d) == 1:
            common = common + d[0]
    if not multi:  # one flow: most rules name one source, destination or service
        return [Flow(table, priority, common, actions, flow_cookie, rule)]
    size = 1
    for d in multi:
        size *= len(d)
    if len(multi) < 2 or size <= sum(len(d) for d in multi) + 1:
        return [Flow(table, priority, _combine(common, combo), actions, flow_cookie, rule)
                for combo in product(*multi)]
    flows = [Flow(table, priority, Match.of(MatchItem("conj_id", conj_id)), actions, flow_cookie, rule)]
    for clause, alternatives in enumerate(multi, start=1):
        for alt in alternatives:
            flows.append(Flow(table, priority, common + alt, (Conjunction(conj_id, clause, len(multi)),),
                              flow_cookie, rule))
    return flows


def _combine(common: Match, parts: tuple[Match, ...]) -> Match:
    out = common
    for part in parts:
        out = out + part
    return out


def conj_id_base(name: str, version: int) -> int:
    """The conjunction id a rule takes in one family unless an earlier rule already took it."""
    return (rule_id(name) ^ (0x8000_0000 if version == 6 else 0)) or 1


def _conj_id(name: str, version: int, used: set[int]) -> int:
    value = conj_id_base(name, version)
    while value in used:
        value = (value + 1) & 0xFFFF_FFFF or 1
    used.add(value)
    return value
