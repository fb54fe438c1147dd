"""Tables CONNTRACK, EGRESS and STATE: track, decide where the packet goes, sort by state."""

from __future__ import annotations

from collections.abc import Mapping

from ovsmgr.compiler.flows import Ct, Flow, GotoTable, Match, MatchItem, SetField
from ovsmgr.compiler.matchbuild import ct_state, family, prefix
from ovsmgr.compiler.pipeline import (
    CT_MARK_RULE_MASK,
    FLAG_REVALIDATE,
    REG_FLAGS,
    REG_OUT_PORT,
    REG_TO_ZONE,
    TCP_FLAG_BITS,
    CookieKind,
    Priority,
    Table,
    cookie,
)
from ovsmgr.compiler.stages.helpers import related_commits
from ovsmgr.compiler.stages.limits import metered
from ovsmgr.compiler.stages.vlans import egress_to_vlans
from ovsmgr.policy.ir import Limit, ResolvedPolicy

INFRA = cookie(CookieKind.INFRA)


def compile_conntrack(policy: ResolvedPolicy) -> list[Flow]:
    """All IP goes through conntrack once, without `nat`: rules judge packets as they arrived
    (also when a changed policy revalidates a translated connection); OUTPUT translates."""
    flows = [Flow(Table.CONNTRACK, Priority.DEFAULT, Match(), (), INFRA)]
    for version in (4, 6):
        flows.append(Flow(
            Table.CONNTRACK, Priority.TRACK, family(version),
            (Ct(table=Table.EGRESS, zone=policy.ct_zone),), INFRA,
        ))
    return flows


def compile_egress(policy: ResolvedPolicy) -> list[Flow]:
    flows = [Flow(Table.EGRESS, Priority.DEFAULT, Match(), (GotoTable(Table.STATE),), INFRA)]
    if policy.forwarding == "ports":
        for name, peer in sorted(policy.links.items()):
            port, out = policy.ports[name], policy.ports[peer]
            zone_id = policy.zones[out.zone].id if out.zone else 0
            flows.append(Flow(
                Table.EGRESS, Priority.EGRESS_LINK, Match.of(MatchItem("in_port", port.ofport)),
                (SetField(REG_OUT_PORT.reg, out.ofport), SetField(REG_TO_ZONE.reg, zone_id),
                 GotoTable(Table.STATE)), INFRA,
            ))
            flows.extend(egress_to_vlans(policy, port.ofport, peer))
        return flows
    for zone in policy.zones.values():
        for network in zone.networks:
            flows.append(Flow(
                Table.EGRESS, Priority.EGRESS_PREFIX_BASE + network.prefixlen,
                family(network.version) + Match.of(prefix("nw_dst", network)),
                (SetField(REG_TO_ZONE.reg, zone.id), GotoTable(Table.STATE)), INFRA,
            ))
    return flows


def compile_state(policy: ResolvedPolicy, stateful_fingerprints: dict[int, str],
                  helpers: Mapping[str, str] | None = None, limits: Mapping[str, Limit] | None = None,
                  ) -> list[Flow]:
    """Traffic of a committed connection passes on the mark of a rule the current policy still has.

    Every committed connection carries a non-zero mark, so `+new` with mark 0 is a
    packet nobody committed yet (a new connection, or stateless traffic) and goes to
    FILTER; a `+new` packet with a mark is a retransmission of a connection that is
    committed but not yet established (its translation is already applied), and
    passes like established traffic. With cut_on_rule_removal, a connection whose
    mark names no current rule is revalidated: its original-direction packets go
    through FILTER again (re-marked if a rule still allows them, else dropped); its
    reply and related packets are dropped until then. A rule with a limit (`limits`, by name)
    meters its connections' packets here (see `limits`).
    """
    to_output = (GotoTable(Table.OUTPUT),)
    flows = [
        Flow(Table.STATE, Priority.DEFAULT, Match(), (), INFRA),
        Flow(Table.STATE, Priority.STATE_NEW, Match.of(ct_state("+trk+new"), MatchItem("ct_mark", 0)),
             (GotoTable(Table.FILTER),), INFRA),
        Flow(Table.STATE, Priority.STATE_INVALID, Match.of(ct_state("+trk+inv")),
             () if policy.invalid == "drop" else to_output, INFRA),
    ]
    if policy.invalid == "drop":
        flows.extend(_not_syn_flows())
    flows.extend(_tcp_fragment_flows())
    if helpers:  # `helpers`: rule name -> helper; their expected connections are committed first
        flows.extend(related_commits(policy.ct_zone, stateful_fingerprints, helpers, INFRA))
    if not policy.cut_on_rule_removal:
        flows.append(Flow(Table.STATE, Priority.STATE_STALE, Match.of(ct_state("+trk")), to_output, INFRA))
        return flows
    limits = limits or {}
    for mark, name in sorted(stateful_fingerprints.items()):
        flows.append(Flow(
            Table.STATE, Priority.STATE_ESTABLISHED,
            Match.of(ct_state("+trk"), MatchItem("ct_mark", mark, CT_MARK_RULE_MASK)),
            metered(name, limits.get(name), to_output), INFRA, rule=name,
        ))
    revalidate = (SetField(REG_FLAGS.reg, FLAG_REVALIDATE), GotoTable(Table.FILTER))
    flows += [
        Flow(Table.STATE, Priority.STATE_STALE_REPLY, Match.of(ct_state("+trk+rpl")), (), INFRA),
        Flow(Table.STATE, Priority.STATE_STALE_REPLY, Match.of(ct_state("+trk+rel")), (), INFRA),
        Flow(Table.STATE, Priority.STATE_STALE, Match.of(ct_state("+trk-rpl")), revalidate, INFRA),
    ]
    return flows


def _tcp_fragment_flows() -> list[Flow]:
    """A fragmented TCP segment never opens a connection (stacks fragment nothing with a SYN; TCP
    sizes its segments to the path): drop every fragment of one, alike. Only the first fragment
    has TCP flags, so the not-SYN check below would part them, and a datagram whose fragments take
    different ways through the pipeline is reassembled at no later ct() and cannot pass whole."""
    return [
        Flow(Table.STATE, Priority.STATE_TCP_FRAGMENT,
             Match.of(ct_state("+trk+new"), MatchItem("ct_mark", 0), MatchItem("nw_proto", 6),
                      MatchItem("nw_frag", 1, 1)) + family(version), (), INFRA)
        for version in (4, 6)
    ]


def _not_syn_flows() -> list[Flow]:
    """A TCP connection starts with a SYN: refuse mid-stream pickup like an invalid packet.

    OVS conntrack calls a stray ACK +new (as Linux with nf_conntrack_tcp_loose=1 does);
    a firewall that drops invalid traffic should not let it open a connection.
    """
    return [
        Flow(Table.STATE, Priority.STATE_NOT_SYN,
             Match.of(ct_state("+trk+new"), MatchItem("ct_mark", 0), MatchItem("nw_proto", 6),
                      MatchItem("tcp_flags", 0, TCP_FLAG_BITS["syn"])) + family(version), (), INFRA)
        for version in (4, 6)
    ]
