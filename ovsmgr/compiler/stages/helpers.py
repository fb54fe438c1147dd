"""Conntrack helpers (ALGs): commits that attach them, and the related connections they expect.

A stateful allow rule with `helper: ftp|tftp` puts the helper's number in REG_HELPER (FILTER).
OVS attaches a helper only when it creates a connection, in the commit that creates it, so
every committing flow of NAT comes in one variant per helper the policy uses, told apart by
REG_HELPER, its commits with `alg=` (the plain one matches REG_HELPER 0). NAT's own logic is
left as it is: this stage only copies its commits.

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

from ovsmgr.compiler.flows import Ct, Flow, Match, MatchItem
from ovsmgr.compiler.matchbuild import ct_state, family, reg
from ovsmgr.compiler.pipeline import CT_MARK_TRANSLATED, HELPER_ALGS, REG_HELPER, Priority, Table
from ovsmgr.policy.ir import Rule

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


def with_helper_commits(flows: list[Flow], helpers: tuple[str, ...]) -> list[Flow]:
    """NAT's flows, each committing flow once per helper (and once without)."""
    if not helpers:
        return flows
    out: list[Flow] = []
    for flow in flows:
        if flow.table != Table.NAT or not any(isinstance(a, Ct) and a.commit for a in flow.actions):
            out.append(flow)
            continue
        out.append(dataclasses.replace(flow, match=flow.match + Match.of(reg(REG_HELPER, 0))))
        for helper in helpers:
            proto = flow.match.get("nw_proto")
            if proto is not None and proto.value != HELPER_PROTOS[helper]:
                continue  # never meets a connection of this helper
            actions = tuple(dataclasses.replace(a, alg=helper) if isinstance(a, Ct) and a.commit else a
                            for a in flow.actions)
            # OVS takes alg= only on a flow that matches the helper's protocol.
            match = flow.match + Match.of(reg(REG_HELPER, HELPER_ALGS[helper]),
                                          MatchItem("nw_proto", HELPER_PROTOS[helper]))
            out.append(dataclasses.replace(flow, match=match, actions=actions))
    return out


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

