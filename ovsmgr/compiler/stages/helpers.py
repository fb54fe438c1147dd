"""Conntrack helpers (ALGs): commits that attach them, and the related connections they expect.

A stateful allow rule with `helper: ftp|tftp` puts the helper's number in REG_HELPER (FILTER).
OVS attaches a helper only when it creates a connection, in the commit that creates it, so
every committing flow of NAT comes in one variant per helper the policy uses, told apart by
REG_HELPER, its commits with `alg=` (the plain one matches REG_HELPER 0). NAT's own logic is
left as it is: this stage only copies its commits.

A load-balanced DNAT commits in its select group's buckets, and a bucket cannot tell the rules
that reach it apart: a pool gets one group per helper (`nat.select_group_ids`), the same buckets
with `alg=` on their commits, and each helper's variant of the flow that sends connections to
the pool sends them to that helper's group. Only the groups some flow uses are made.

The helper reads the control connection (FTP's PORT/PASV and their extended forms, a TFTP
request) and expects the data connection it announces. That connection's packets are
`+rel` and carry the control connection's ct_mark (conntrack copies it from the expectation),
so STATE commits them under the allowing rule's mark before anything else: without a commit
conntrack would forget the connection after each packet. A related connection of a translated
control connection (the mark's TRANSLATED bit) is committed with `nat`, which gives it the
translation the helper worked out (and rewrote into the announcement), and recirculates to
OUTPUT_TRANSLATED as NAT's translating commits do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from ovsmgr.compiler.flows import Action, Ct, Flow, Group, Match, MatchItem, SelectGroup
from ovsmgr.compiler.matchbuild import ct_state, family, reg
from ovsmgr.compiler.pipeline import CT_MARK_TRANSLATED, HELPER_ALGS, REG_HELPER, Priority, Table
from ovsmgr.compiler.stages.nat import NatStage, select_group_ids
from ovsmgr.policy.ir import ResolvedPolicy, Rule

HELPER_PROTOS = {"ftp": 6, "tftp": 17}
"""The IP protocol of each helper's control connection."""
RELATED_NOT_ESTABLISHED = ct_state("+trk+rel-est")
"""A packet of an expected connection that is not yet established: its first (kernel: `+rel`;
userspace: `+new+rel`), or a later one before the other end answered (kernel: still `+rel`)."""


def used_helpers(rules: Iterable[Rule]) -> tuple[str, ...]:
    """The helpers the rules ask for, in a fixed order."""
    return tuple(sorted({rule.helper for rule in rules if rule.helper}))


def rule_helpers(rules: Iterable[Rule]) -> dict[str, str]:
    """Rule name -> helper, for the rules that have one."""
    return {rule.name: rule.helper for rule in rules if rule.helper}


def with_helper_commits(policy: ResolvedPolicy, nat: NatStage, helpers: tuple[str, ...]) -> NatStage:
    """NAT's flows, each committing flow (and each flow to a pool's select group) once per helper
    (and once without), with the pools' groups for the helpers."""
    if not helpers:
        return nat
    ids = select_group_ids(policy, helpers)
    variants = {(ids[name, version, None], helper): gid
                for (name, version, helper), gid in ids.items() if helper is not None}
    plain = {group.group_id: group for group in nat.groups}
    made: dict[int, SelectGroup] = {}

    def with_alg(actions: tuple[Action, ...], helper: str) -> tuple[Action, ...]:
        out: list[Action] = []
        for action in actions:
            if isinstance(action, Ct) and action.commit:
                action = dataclasses.replace(action, alg=helper)
            elif isinstance(action, Group) and action.group_id in plain:
                gid = variants[action.group_id, helper]
                if gid not in made:
                    group = plain[action.group_id]
                    made[gid] = dataclasses.replace(group, group_id=gid, buckets=tuple(
                        dataclasses.replace(b, actions=with_alg(b.actions, helper)) for b in group.buckets))
                action = Group(gid)
            out.append(action)
        return tuple(out)

    out: list[Flow] = []
    for flow in nat.flows:
        if flow.table != Table.NAT or not any((isinstance(a, Ct) and a.commit) or isinstance(a, Group)
                                              for a in flow.actions):
            out.append(flow)
            continue
        out.append(dataclasses.replace(flow, match=flow.match + Match.of(reg(REG_HELPER, 0))))
        for helper in helpers:
            protos = {item.value for item in (flow.match.get("nw_proto"), flow.match.get("ct_nw_proto")) if item}
            if protos - {HELPER_PROTOS[helper]}:
                continue  # never meets a connection of this helper
            # OVS takes alg= only on a flow that matches the helper's protocol.
            match = flow.match + Match.of(reg(REG_HELPER, HELPER_ALGS[helper]),
                                          MatchItem("nw_proto", HELPER_PROTOS[helper]))
            out.append(dataclasses.replace(flow, match=match, actions=with_alg(flow.actions, helper)))
    return NatStage(out, [*nat.groups, *(made[gid] for gid in sorted(made))])


def related_commits(zone: int, fingerprints: Mapping[int, str], helpers: Mapping[str, str],
                    cookie: int) -> list[Flow]:
    """STATE: commit the expected connections of the helper rules' connections, by their mark."""
    flows = []
    for mark, name in sorted(fingerprints.items()):
        if name not in helpers:
            continue
        for version in (4, 6):  # ct() needs a flow that matches IP
            flows += [
                Flow(Table.STATE, Priority.STATE_RELATED_COMMIT,
                     Match.of(RELATED_NOT_ESTABLISHED, MatchItem("ct_mark", mark)) + family(version),
                     (Ct(commit=True, table=Table.OUTPUT, zone=zone),), cookie, rule=name),
                Flow(Table.STATE, Priority.STATE_RELATED_COMMIT,
                     Match.of(RELATED_NOT_ESTABLISHED, MatchItem("ct_mark", mark | CT_MARK_TRANSLATED))
                     + family(version),
                     (Ct(commit=True, table=Table.OUTPUT_TRANSLATED, zone=zone, apply_nat=True),), cookie,
                     rule=name),
            ]
    return flows

