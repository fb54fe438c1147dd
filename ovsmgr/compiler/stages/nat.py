"""Tables NAT, OUTPUT: commit allowed connections (translating them), then send them out.

One conntrack zone holds one translation per connection (OVS ignores a second
`nat()` in the same zone), so a connection is translated by the first DNAT
rule that matches it, else by the first SNAT rule, else committed as is.
Connections are committed with the allowing rule's fingerprint in ct_mark.
"""

from __future__ import annotations

from ovsmgr.compiler.flows import (
    Action,
    Ct,
    Flow,
    GotoTable,
    Match,
    Move,
    NatSpec,
    Normal,
    Output,
    Resubmit,
)
from ovsmgr.compiler.ids import rule_id
from ovsmgr.compiler.matchbuild import ct_state, family, reg
from ovsmgr.compiler.pipeline import (
    FLAG_REVALIDATE,
    REG_FLAGS,
    REG_OUT_PORT,
    REG_RULE,
    CookieKind,
    Priority,
    Table,
    cookie,
)
from ovsmgr.compiler.stages.filter import _zone_match, expand_match, match_dimensions
from ovsmgr.policy.ir import NatRule, ResolvedPolicy

INFRA = cookie(CookieKind.INFRA)


def _commit(policy: ResolvedPolicy, nat: NatSpec | None = None) -> Ct:
    """Commit with the rule's mark; a translating commit recirculates into OUTPUT (see Table.NAT)."""
    return Ct(commit=True, table=Table.OUTPUT if nat else None, zone=policy.ct_zone, nat=nat,
              exec=(Move(REG_RULE.reg, "ct_mark"),))


def compile_nat(policy: ResolvedPolicy) -> list[Flow]:
    to_output = GotoTable(Table.OUTPUT)
    flows = [Flow(Table.NAT, Priority.DEFAULT, Match(), (), INFRA)]
    for version in (4, 6):
        flows += [
            Flow(Table.NAT, Priority.NAT_COMMIT, family(version), (_commit(policy), to_output), INFRA),
            Flow(Table.NAT, Priority.NAT_REVALIDATE,
                 family(version) + Match.of(reg(REG_FLAGS, FLAG_REVALIDATE, FLAG_REVALIDATE)),
                 (_commit(policy), to_output), INFRA),
        ]
    counters = {"dnat": 0, "snat": 0}
    conj_ids: set[int] = set()
    for rule in policy.nat:
        top = Priority.NAT_DNAT_TOP if rule.kind == "dnat" else Priority.NAT_SNAT_TOP
        priority = top - counters[rule.kind]
        counters[rule.kind] += 1
        actions: tuple[Action, ...] = (_commit(policy, nat_spec(rule)),)
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


def nat_spec(rule: NatRule) -> NatSpec:
    if rule.kind == "snat":
        lo, hi = rule.ports if rule.ports else (None, None)
        return NatSpec("src", int(rule.translate_lo), int(rule.translate_hi), rule.translate_lo.version, lo, hi)
    return NatSpec("dst", int(rule.translate_lo), int(rule.translate_hi), rule.translate_lo.version,
                   rule.port, rule.port)


def compile_output(policy: ResolvedPolicy) -> list[Flow]:
    """Out by REG_OUT_PORT (or NORMAL when 0); translated packets first get the receiver's MAC."""
    flows = [Flow(Table.OUTPUT, Priority.DEFAULT, Match(), (), INFRA)]
    if policy.forwarding == "normal":
        targets: list[tuple[int, Action]] = [(0, Normal())]
    else:
        targets = sorted({(p.ofport, Output(p.ofport)) for p in policy.ports.values() if p.name in policy.links},
                         key=lambda t: t[0])
    for port, out in targets:
        out_match = Match.of(reg(REG_OUT_PORT, port))
        flows.append(Flow(Table.OUTPUT, Priority.OUTPUT_PORT, out_match, (out,), INFRA))
        for flag in ("+snat", "+dnat"):
            for version in (4,):
                flows.append(Flow(
                    Table.OUTPUT, Priority.OUTPUT_NAT_MAC, out_match + Match.of(ct_state(f"+trk{flag}")) + family(version),
                    (Resubmit(Table.MAC_BINDING), out), INFRA,
                ))
    return flows
