"""Tables NAT, OUTPUT and OUTPUT_TRANSLATED: commit allowed connections, translate, send out.

One conntrack zone holds one translation per connection (OVS ignores a second
`nat()` in the same zone), so in the policy's zone a connection is translated by
the first DNAT rule that matches it, else by the first SNAT rule, else committed
as is; an SNAT rule that also matches it after its DNAT translates it again in a
second zone (`twozones`). Static rules' halves come first in their kind. The
commit copies the allowing rule's fingerprint into ct_mark bits 0..30 and, for a
translating commit, sets bit 31 (TRANSLATED), so OUTPUT knows which connections
need `ct(nat)` without translating every packet. A load-balanced DNAT rule sends
the connection's first packet to a select group whose buckets are translating
commits, one per backend: conntrack then keeps the connection on the backend the
group chose.
"""

from __future__ import annotations

from dataclasses import dataclass

from ovsmgr.compiler.flows import (
    Action,
    Bucket,
    Ct,
    Flow,
    Group,
    Match,
    MatchItem,
    Move,
    NatSpec,
    Normal,
    Resubmit,
    SelectGroup,
    SetField,
)
from ovsmgr.compiler.ids import group_id, rule_id
from ovsmgr.compiler.matchbuild import ct_state, family, reg
from ovsmgr.compiler.pipeline import (
    CT_LABEL_NAT_RULE,
    CT_LABEL_NAT_RULE_MASK,
    CT_LABEL_NAT_RULE_SHIFT,
    CT_MARK_TRANSLATED,
    FLAG_REVALIDATE,
    FLAG_TRANSLATED,
    REG_FLAGS,
    REG_NAT_RULE,
    REG_OUT_PORT,
    REG_RULE,
    REG_TO_ZONE,
    CookieKind,
    Priority,
    Table,
    cookie,
)
from ovsmgr.compiler.stages.filter import _zone_match, expand_match, match_dimensions
from ovsmgr.compiler.stages.limits import metered
from ovsmgr.compiler.stages.vlans import out_action
from ovsmgr.policy.ir import Backend, IPAddress, NatRule, ResolvedPolicy, ZoneInfo

INFRA = cookie(CookieKind.INFRA)
MARK_RULE = Move(f"{REG_RULE.reg}[0..30]", "ct_mark[0..30]")
MARK_TRANSLATED = Move(f"{REG_FLAGS.reg}[1]", "ct_mark[31]")
LABEL_NAT_RULE = Move(REG_NAT_RULE.reg, f"ct_label[{CT_LABEL_NAT_RULE[0]}..{CT_LABEL_NAT_RULE[1]}]")
COUNT = Resubmit(Table.NAT_COUNT)
"""Count the packet for the NAT rule its connection names (NAT_COUNT); a lookup in OVS's translation
only: the datapath flow gets no action and no pass of its own."""


def _commit(policy: ResolvedPolicy) -> Ct:
    """Commit as is; ct_mark bit 31 is left alone, so a revalidated translated connection keeps it.

    The commit recirculates into OUTPUT instead of going on in the same pass, as every ct() of the
    pipeline does: OVS's userspace conntrack hands fragments it held until they expired, marked
    invalid, to whatever packets pass a ct() next, and they go where those go; a recirculation
    lets OUTPUT drop them (`compile_output`)."""
    return Ct(commit=True, table=Table.OUTPUT, zone=policy.ct_zone, exec=(MARK_RULE,))


def translating_commit(zone: int, nat: NatSpec, rule: str, table: Table = Table.OUTPUT_TRANSLATED
                       ) -> tuple[Action, ...]:
    """Translate and recirculate, so the next table sees the translated packet; the connection
    carries the NAT rule's id in ct_label, which NAT_COUNT counts its packets by."""
    return (SetField(REG_FLAGS.reg, FLAG_TRANSLATED), SetField(REG_NAT_RULE.reg, rule_id(rule)),
            Ct(commit=True, table=table, zone=zone, nat=nat, exec=(MARK_RULE, MARK_TRANSLATED, LABEL_NAT_RULE)))


@dataclass(frozen=True)
class NatStage:
    flows: list[Flow]
    groups: list[SelectGroup]


def nat_order(policy: ResolvedPolicy) -> list[NatRule]:
    """The NAT rules in the order they are tried within their kind: static rules' halves first."""
    return sorted(policy.nat, key=lambda rule: not rule.static)


def compile_nat(policy: ResolvedPolicy) -> NatStage:
    flows = [Flow(Table.NAT, Priority.DEFAULT, Match(), (), INFRA)]
    revalidate = Match.of(reg(REG_FLAGS, FLAG_REVALIDATE, FLAG_REVALIDATE))
    translated = Match.of(MatchItem("ct_mark", CT_MARK_TRANSLATED, CT_MARK_TRANSLATED))
    # A ct() that does not recirculate clears the ct fields for the rest of the pass, so a
    # revalidated translated connection is re-committed with its translation and recirculated.
    recommit_translated = Ct(commit=True, table=Table.OUTPUT_TRANSLATED, zone=policy.ct_zone, apply_nat=True,
                             exec=(MARK_RULE,))
    for version in (4, 6):
        flows += [
            Flow(Table.NAT, Priority.NAT_COMMIT, family(version), (_commit(policy),), INFRA),
            Flow(Table.NAT, Priority.NAT_REVALIDATE, family(version) + revalidate, (_commit(policy),), INFRA),
            Flow(Table.NAT, Priority.NAT_REVALIDATE, family(version) + revalidate + translated,
                 (recommit_translated,), INFRA),
        ]
    counters = {"dnat": 0, "snat": 0}
    conj_ids: set[int] = set()
    group_ids = select_group_ids(policy)
    groups: list[SelectGroup] = []
    for rule in nat_order(policy):
        top = Priority.NAT_DNAT_TOP if rule.kind == "dnat" else Priority.NAT_SNAT_TOP
        priority = top - counters[rule.kind]
        counters[rule.kind] += 1
        rid = rule_id(rule.name)
        for version in sorted(rule.match.families()):
            if version != rule.translate_lo.version:
                continue
            if rule.backends:
                group = _select_group(policy, rule, group_ids[rule.name, version, None])
                groups.append(group)
                actions: tuple[Action, ...] = metered(rule.name, rule.limit, (Group(group.group_id),))
            else:
                actions = metered(rule.name, rule.limit,
                                  _commit_actions(policy, rule, nat_spec(rule), (rule.translate_lo, rule.translate_hi)))
            base = _zone_match(policy, rule.match, version)
            conj = (rid ^ 0x4000_0000 ^ (0x8000_0000 if version == 6 else 0)) or 1
            while conj in conj_ids:
                conj += 1
            conj_ids.add(conj)
            flows.extend(expand_match(base, match_dimensions(rule.match, version), Table.NAT, priority,
                                      actions, cookie(CookieKind.NAT, rid), rule.name, conj))
    return NatStage(flows, groups)


def select_group_ids(policy: ResolvedPolicy, helpers: tuple[str, ...] = ()
                     ) -> dict[tuple[str, int, str | None], int]:
    """(rule name, IP version, helper) -> the id of a select group of a load-balanced DNAT rule:
    helper None for the group of connections without a helper, and one group per helper in
    `helpers` (whose buckets' commits attach it, `helpers.with_helper_commits`). The groups without
    a helper take their ids first, so a policy's ids do not change when a helper comes in."""
    used: set[int] = set()
    pools = [(rule.name, version) for rule in nat_order(policy) if rule.backends
             for version in sorted(rule.match.families()) if version == rule.translate_lo.version]
    ids: dict[tuple[str, int, str | None], int] = {
        (name, version, None): group_id(name, version, used) for name, version in pools}
    for helper in helpers:
        ids |= {(name, version, helper): group_id(f"{name}\0{helper}", version, used) for name, version in pools}
    return ids


def _commit_actions(policy: ResolvedPolicy, rule: NatRule, nat: NatSpec,
                    target: tuple[IPAddress, IPAddress]) -> tuple[Action, ...]:
    """The translating commit of `rule` to `target`; a DNAT that an SNAT rule may follow goes on to
    SNAT_AFTER_DNAT, with the zone the translated packet leaves by (forwarding: normal)."""
    if rule.kind != "dnat" or not is_followed(policy, rule):
        return translating_commit(policy.ct_zone, nat, rule.name)
    zone = post_dnat_zone(policy, rule, target)
    prefix = (SetField(REG_TO_ZONE.reg, zone),) if zone is not None else ()
    return prefix + translating_commit(policy.ct_zone, nat, rule.name, Table.SNAT_AFTER_DNAT)


def _select_group(policy: ResolvedPolicy, rule: NatRule, gid: int) -> SelectGroup:
    """One bucket per backend that is up, weighted: a translating commit to the backend. With no
    backend up the group has no bucket, and new connections are dropped."""
    buckets = tuple(
        Bucket(b.weight, _commit_actions(policy, rule, _backend_spec(b), (b.address, b.address)))
        for b in rule.backends if b.up)
    return SelectGroup(gid, Table.NAT, buckets, rule.name)


def _backend_spec(backend: Backend) -> NatSpec:
    return NatSpec("dst", int(backend.address), int(backend.address), backend.address.version,
                   backend.port, backend.port)


def counting(policy: ResolvedPolicy) -> tuple[Action, ...]:
    """The NAT_COUNT resubmit that flows sending translated packets on start with (none without NAT
    rules: then nothing is translated and the table is empty)."""
    return (COUNT,) if policy.nat else ()


def translated_families(policy: ResolvedPolicy) -> frozenset[int]:
    """The IP versions NAT translates to: only they need MAC bindings of the hosts that receive
    translated packets."""
    return frozenset(rule.translate_lo.version for rule in policy.nat)


def nat_spec(rule: NatRule) -> NatSpec:
    if rule.kind == "snat":
        lo, hi = rule.ports if rule.ports else (None, None)
        return NatSpec("src", int(rule.translate_lo), int(rule.translate_hi), rule.translate_lo.version, lo, hi)
    return NatSpec("dst", int(rule.translate_lo), int(rule.translate_hi), rule.translate_lo.version,
                   rule.port, rule.port)


def followers(policy: ResolvedPolicy) -> list[NatRule]:
    """The SNAT rules that may translate a connection a DNAT rule translated (same ingress zone and
    IP version), in the order they are tried."""
    dnat = {(r.match.from_zone, r.translate_lo.version) for r in policy.nat if r.kind == "dnat"}
    return [r for r in nat_order(policy)
            if r.kind == "snat" and (r.match.from_zone, r.translate_lo.version) in dnat]


def is_followed(policy: ResolvedPolicy, rule: NatRule) -> bool:
    return any(s.match.from_zone == rule.match.from_zone and s.translate_lo.version == rule.translate_lo.version
               for s in policy.nat if s.kind == "snat")


def post_dnat_zone(policy: ResolvedPolicy, rule: NatRule, target: tuple[IPAddress, IPAddress]) -> int | None:
    """The zone a packet leaves by once `rule` translated it to `target`, when it is not the one
    EGRESS found for the packet as it arrived: back to its own zone for a hairpin (`hairpin_zone`);
    with forwarding: normal, the zone whose networks hold the new destination. None: EGRESS's."""
    own = hairpin_zone(policy, rule.match.from_zone, target)
    if own is not None:
        return own.id
    if policy.forwarding != "normal":
        return None
    lo, hi = target
    best: tuple[int, int] | None = None
    for zone in policy.zones.values():
        for network in zone.networks:
            if lo in network and hi in network and (best is None or network.prefixlen > best[0]):
                best = (network.prefixlen, zone.id)
    return None if best is None else best[1]


def hairpin_zone(policy: ResolvedPolicy, from_zone: str, target: tuple[IPAddress, IPAddress]) -> ZoneInfo | None:
    """The zone a DNAT from `from_zone` to `target` hairpins in: `from_zone` itself when it has one
    port and its networks hold the target (the translated packet goes back out of the port it came
    in by, see `hairpin`)."""
    zone = policy.zones.get(from_zone)
    if zone is None or len(zone.ports) != 1:
        return None
    lo, hi = target
    return zone if any(lo in n and hi in n for n in zone.networks) else None


def compile_nat_count(policy: ResolvedPolicy) -> list[Flow]:
    """NAT_COUNT: one flow per NAT rule and zone it translates in (a static rule's halves share
    one), matching the rule's id in ct_label; its cookie (kind NAT_COUNT) names the rule."""
    if not policy.nat:
        return []
    flows = [Flow(Table.NAT_COUNT, Priority.DEFAULT, Match(), (), INFRA)]
    second = {rule.name for rule in followers(policy)}
    seen: set[tuple[int, str]] = set()
    for rule in nat_order(policy):
        zones = [policy.ct_zone] + ([policy.second_zone] if rule.name in second else [])
        for zone in zones:
            if (zone, rule.name) in seen:
                continue
            seen.add((zone, rule.name))
            rid = rule_id(rule.name)
            match = Match.of(MatchItem("ct_zone", zone),
                             MatchItem("ct_label", rid << CT_LABEL_NAT_RULE_SHIFT, CT_LABEL_NAT_RULE_MASK))
            flows.append(Flow(Table.NAT_COUNT, Priority.NAT_COUNT_RULE, match, (), cookie(CookieKind.NAT_COUNT, rid),
                              rule=rule.name))
    return flows


def _out_targets(policy: ResolvedPolicy) -> list[tuple[int, Action]]:
    """REG_OUT_PORT values and how a packet leaves for each (a port with VLAN zones: by VLAN_OUT)."""
    if policy.forwarding == "normal":
        return [(0, Normal())]
    return sorted({(p.ofport, out_action(policy, p.name)) for p in policy.ports.values() if p.name in policy.links},
                  key=lambda t: t[0])


def compile_output(policy: ResolvedPolicy) -> list[Flow]:
    """Out by REG_OUT_PORT (NORMAL when 0); translated connections are translated first."""
    translated = MatchItem("ct_mark", CT_MARK_TRANSLATED, CT_MARK_TRANSLATED)
    flows = [Flow(Table.OUTPUT, Priority.DEFAULT, Match(), (), INFRA),
             Flow(Table.OUTPUT_TRANSLATED, Priority.DEFAULT, Match(), (), INFRA),
             # Every packet here belongs to a translated connection (bit 31). One without it
             # is a translating commit conntrack refused (zone full): it must not leave
             # untranslated, with its private address.
             Flow(Table.OUTPUT_TRANSLATED, Priority.OUTPUT_UNTRANSLATED,
                  Match.of(MatchItem("ct_mark", 0, CT_MARK_TRANSLATED)), (), INFRA)]
    if policy.invalid == "drop":  # what conntrack let through invalid: expired fragments (see `_commit`)
        flows += [Flow(table, Priority.OUTPUT_INVALID, Match.of(ct_state("+inv")), (), INFRA)
                  for table in (Table.OUTPUT, Table.OUTPUT_TRANSLATED)]
    for version in (4, 6):
        flows.append(Flow(
            Table.OUTPUT, Priority.OUTPUT_TRANSLATED_CONN, family(version) + Match.of(translated),
            (Ct(table=Table.OUTPUT_TRANSLATED, zone=policy.ct_zone, apply_nat=True),), INFRA,
        ))
    bound = sorted({4} | translated_families(policy))
    count = counting(policy)
    for port, out in _out_targets(policy):
        out_match = Match.of(reg(REG_OUT_PORT, port))
        flows.append(Flow(Table.OUTPUT, Priority.OUTPUT_PORT, out_match, (out,), INFRA))
        flows.append(Flow(Table.OUTPUT_TRANSLATED, Priority.OUTPUT_PORT, out_match, (*count, out), INFRA))
        flows += [Flow(Table.OUTPUT_TRANSLATED, Priority.OUTPUT_TRANSLATED_CONN, out_match + family(version),
                       (*count, Resubmit(Table.MAC_BINDING), out), INFRA) for version in bound]
    return flows
