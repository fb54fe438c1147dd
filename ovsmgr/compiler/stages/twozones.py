"""DNAT and SNAT on one connection: the second conntrack zone.

OVS applies one translation per connection and zone, so a connection a DNAT rule
translated in the policy's zone is translated by an SNAT rule in a second zone
(`ResolvedPolicy.second_zone`), as netfilter's PREROUTING and POSTROUTING do: the
SNAT rules see it as the DNAT left it. Only SNAT rules that may follow a DNAT
rule (`nat.followers`: the same ingress zone and IP version) take part, and a
policy without such a pair gets none of these flows.

- SNAT_AFTER_DNAT, on the first packet: the first follower that matches the
  translated packet sets ct_label's SECOND_ZONE bit on the connection (a commit in
  the policy's zone, which finds it through the translation) and commits it in
  the second zone with its SNAT.
- OUTPUT_TRANSLATED, on later packets in the original direction: once OUTPUT's
  `ct(nat)` has applied the DNAT, a connection with the bit gets its SNAT from the
  second zone.
- CONNTRACK, on replies: they are addressed to the SNAT's address, which only the
  second zone knows; a packet to such an address meets the second zone with `nat`
  first (while it is in no zone yet: ct_zone 0, which no policy uses), so the
  policy's zone sees the reply of the connection it translated (a packet of no
  such connection passes it unchanged).
"""

from __future__ import annotations

import ipaddress

from ovsmgr.compiler.flows import Ct, Flow, GotoTable, Match, MatchItem, SetField
from ovsmgr.compiler.ids import rule_id
from ovsmgr.compiler.matchbuild import ct_state, family, prefix
from ovsmgr.compiler.pipeline import (
    CT_LABEL_SECOND_ZONE,
    REG_NAT_RULE,
    CookieKind,
    Priority,
    Table,
    cookie,
)
from ovsmgr.compiler.stages.filter import _zone_match, expand_match, match_dimensions
from ovsmgr.compiler.stages.nat import (
    COUNT,
    LABEL_NAT_RULE,
    MARK_RULE,
    MARK_TRANSLATED,
    followers,
    nat_spec,
)
from ovsmgr.policy.ir import IPNetwork, NatRule, ResolvedPolicy

INFRA = cookie(CookieKind.INFRA)
SECOND_ZONE = MatchItem("ct_label", CT_LABEL_SECOND_ZONE, CT_LABEL_SECOND_ZONE)


def compile_second_zone(policy: ResolvedPolicy) -> list[Flow]:
    rules = followers(policy)
    if not rules:
        return []
    zone, second = policy.ct_zone, policy.second_zone
    flows = [Flow(Table.SNAT_AFTER_DNAT, Priority.DEFAULT, Match(), (GotoTable(Table.OUTPUT_TRANSLATED),), INFRA)]
    for priority, rule in enumerate(rules):
        flows += _snat_after_dnat(policy, rule, Priority.SNAT_AFTER_DNAT_TOP - priority)
    for version in sorted({r.translate_lo.version for r in rules}):
        flows.append(Flow(Table.OUTPUT_TRANSLATED, Priority.OUTPUT_SECOND_ZONE,
                          family(version) + Match.of(ct_state("+trk-rpl"), MatchItem("ct_zone", zone), SECOND_ZONE),
                          (COUNT, Ct(table=Table.OUTPUT_TRANSLATED, zone=second, apply_nat=True)), INFRA))
        # A reply back from the second zone: counted for its SNAT rule before the policy's zone.
        flows.append(Flow(Table.CONNTRACK, Priority.TRACK_SECOND_ZONE_REPLY,
                          family(version) + Match.of(MatchItem("ct_zone", second)),
                          (COUNT, Ct(table=Table.EGRESS, zone=zone)), INFRA))
    for network in sorted({n for r in rules for n in _networks(r)}, key=lambda n: (n.version, n)):
        flows.append(Flow(Table.CONNTRACK, Priority.TRACK_SECOND_ZONE,
                          family(network.version) + Match.of(MatchItem("ct_zone", 0), prefix("nw_dst", network)),
                          (Ct(table=Table.CONNTRACK, zone=second, apply_nat=True),), INFRA))
    return flows


def _snat_after_dnat(policy: ResolvedPolicy, rule: NatRule, priority: int) -> list[Flow]:
    """The SNAT rule's flows on the translated packet: mark the connection in the policy's zone,
    translate it in the second."""
    rid = rule_id(rule.name)
    # The packet still has the DNAT's commit's ct fields (counted for the DNAT rule) and REG_NAT_RULE
    # its id: the label keeps it beside the bit, and the second zone's names this SNAT rule.
    actions = (COUNT,
               Ct(commit=True, zone=policy.ct_zone,
                  exec=(SetField("ct_label", CT_LABEL_SECOND_ZONE), LABEL_NAT_RULE)),
               SetField(REG_NAT_RULE.reg, rid),
               Ct(commit=True, table=Table.OUTPUT_TRANSLATED, zone=policy.second_zone, nat=nat_spec(rule),
                  exec=(MARK_RULE, MARK_TRANSLATED, LABEL_NAT_RULE)))
    version = rule.translate_lo.version
    conj = (rid ^ 0x2000_0000 ^ (0x8000_0000 if version == 6 else 0)) or 1
    return expand_match(_zone_match(policy, rule.match, version), match_dimensions(rule.match, version),
                        Table.SNAT_AFTER_DNAT, priority, actions, cookie(CookieKind.NAT, rid), rule.name, conj)


def _networks(rule: NatRule) -> list[IPNetwork]:
    """The SNAT rule's address range as the fewest prefixes."""
    lo, hi = rule.translate_lo, rule.translate_hi
    return list(ipaddress.summarize_address_range(lo, hi))
