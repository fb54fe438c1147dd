"""Tables NAT, OUTPUT and OUTPUT_TRANSLATED: commit allowed connections, translate, send out.

One conntrack zone holds one translation per connection (OVS ignores a second
`nat()` in the same zone), so a connection is translated by the first DNAT rule
that matches it, else by the first SNAT rule, else committed as is. The commit
copies the allowing rule's fingerprint into ct_mark bits 0..30 and, for a
translating commit, sets bit 31 (TRANSLATED), so OUTPUT knows which
connections need `ct(nat)` without translating every packet.
"""

from __future__ import annotations

from ovsmgr.compiler.flows import (
    Action,
    Ct,
    Flow,
    Match,
    MatchItem,
    Move,
    NatSpec,
    Normal,
    Output,
    Resubmit,
    SetField,
)
from ovsmgr.compiler.ids import rule_id
from ovsmgr.compiler.matchbuild import ct_state, family, reg
from ovsmgr.compiler.pipeline import (
    CT_MARK_TRANSLATED,
    FLAG_REVALIDATE,
    FLAG_TRANSLATED,
    REG_FLAGS,
    REG_OUT_PORT,
    REG_RULE,
    CookieKind,
    Priority,
    Table,
    cookie,
)
from ovsmgr.compiler.stages.filter import _zone_match, expand_match, match_dimensions
from ovsmgr.compiler.stages.limits import metered
from ovsmgr.policy.ir import NatRule, ResolvedPolicy

INFRA = cookie(CookieKind.INFRA)
MARK_RULE = Move(f"{REG_RULE.reg}[0..30]", "ct_mark[0..30]")
MARK_TRANSLATED = Move(f"{REG_FLAGS.reg}[1]", "ct_mark[31]")


def _commit(policy: ResolvedPolicy) -> Ct:
    """Commit as is; ct_mark bit 31 is left alone, so a revalidated translated connection keeps it.

    The commit recirculates into OUTPUT instead of going on in the same pass, as every ct() of the
    pipeline does: OVS's userspace conntrack hands fragments it held until they expired, marked
    invalid, to whatever packets pass a ct() next, and they go where those go; a recirculation
    lets OUTPUT drop them (`compile_output`)."""
    return Ct(commit=True, table=Table.OUTPUT, zone=policy.ct_zone, exec=(MARK_RULE,))


def _translating_commit(policy: ResolvedPolicy, nat: NatSpec) -> tuple[Action, ...]:
    """Translate and recirculate, so OUTPUT_TRANSLATED sees the translated packet."""
    return (SetField(REG_FLAGS.reg, FLAG_TRANSLATED),
            Ct(commit=True, table=Table.OUTPUT_TRANSLATED, zone=policy.ct_zone, nat=nat,
               exec=(MARK_RULE, MARK_TRANSLATED)))


def compile_nat(policy: ResolvedPolicy) -> list[Flow]:
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
    for rule in policy.nat:
        top = Priority.NAT_DNAT_TOP if rule.kind == "dnat" else Priority.NAT_SNAT_TOP
        priority = top - counters[rule.kind]
        counters[rule.kind] += 1
        actions = metered(rule.name, rule.limit, _translating_commit(policy, nat_spec(rule)))
        rid = rule_id(rule.name)
        for version in sorted(rule.match.families()):
            if version != rule.translate_lo.version:
                continue
            base = _zone_match(policy, rule.match, version)
            conj = (rid ^ 0x4000_0000 ^ (0x8000_0000 if version == 6 else 0)) or 1
            while conj in conj_ids:
                conj += 1
            conj_ids.add(conj)
            flows.extend(expand_match(base, match_dimensions(rule.match, version), Table.NAT, priority,
                                      actions, cookie(CookieKind.NAT, rid), rule.name, conj))
    return flows


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


def _out_targets(policy: ResolvedPolicy) -> list[tuple[int, Action]]:
    if policy.forwarding == "normal":
        return [(0, Normal())]
    return sorted({(p.ofport, Output(p.ofport)) for p in policy.ports.values() if p.name in policy.links},
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
    for port, out in _out_targets(policy):
        out_match = Match.of(reg(REG_OUT_PORT, port))
        flows.append(Flow(Table.OUTPUT, Priority.OUTPUT_PORT, out_match, (out,), INFRA))
        flows.append(Flow(Table.OUTPUT_TRANSLATED, Priority.OUTPUT_PORT, out_match, (out,), INFRA))
        flows += [Flow(Table.OUTPUT_TRANSLATED, Priority.OUTPUT_TRANSLATED_CONN, out_match + family(version),
                       (Resubmit(Table.MAC_BINDING), out), INFRA) for version in bound]
    return flows
