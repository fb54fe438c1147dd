"""What a policy sets on a switch besides flows: the bridge, its ports, the conntrack zone's limit
and timeout policy.

Shared by `apply` and the controller, so both treat ports and limits the same way.
"""

from __future__ import annotations

from ovsmgr.policy import ResolvedPolicy
from ovsmgr.policy.ir import NatRule
from ovsmgr.southbound.conntrack import set_zone_limit
from ovsmgr.southbound.ovsdb import SwitchDB
from ovsmgr.southbound.target import SwitchTarget


class ApplyError(Exception):
    pass


def datapath_type(policy_datapath: str, target: SwitchTarget) -> str:
    """A lab switch is userspace whatever the policy says (its DPDK lab too uses netdev bridges)."""
    if target.lab is not None or policy_datapath == "dpdk":
        return "netdev"
    return policy_datapath


def check_switch_support(db: SwitchDB, policy: ResolvedPolicy, target: SwitchTarget) -> None:
    """Refuse, before anything is pushed, a policy that needs what the switch's datapath lacks:
    `conntrack.timeouts` needs the `ct_timeout` capability (OVS reports it in the Datapath row)."""
    if not policy.ct_timeouts:
        return
    dp_type = datapath_type(policy.datapath, target)
    caps = db.datapath_capabilities(dp_type, policy.bridge)
    if caps.get("ct_timeout") != "true":
        # Nothing of this bridge's can be set on such a datapath: removing what it owns there takes
        # back only the Datapath row the check itself may have created.
        db.set_zone_timeouts(dp_type, None, {}, policy.bridge)
        raise ApplyError(f"conntrack.timeouts: the {dp_type} datapath of this switch cannot apply conntrack timeout "
                         f"policies (its capability ct_timeout is {caps.get('ct_timeout', 'not reported')})")


def sync_zone_timeouts(db: SwitchDB, policy: ResolvedPolicy, target: SwitchTarget) -> None:
    """The zone's CT_Timeout_Policy as the policy says; removed (with every other one this bridge set)
    when the policy has none. Checked against the datapath here too: the controller writes settings
    without apply's check before the push."""
    check_switch_support(db, policy, target)
    dp_type = datapath_type(policy.datapath, target)
    zone = policy.ct_zone if policy.ct_timeouts else None
    db.set_zone_timeouts(dp_type, zone, dict(policy.ct_timeouts), policy.bridge)


def ensure_switch_settings(db: SwitchDB, policy: ResolvedPolicy, target: SwitchTarget) -> list[str]:
    """Bridge settings, ports, the conntrack zone's limit and timeout policy; returns warnings for the
    operator."""
    db.ensure_bridge(policy.bridge, datapath_type=datapath_type(policy.datapath, target), fail_mode=policy.fail_mode)
    have = db.ofports(policy.bridge)
    for port in policy.ports.values():
        if port.interface is not None or port.type == "dpdk":
            options = {"dpdk-devargs": port.devargs} if port.devargs else None
            # The OVSDB Port and Interface are named after the Linux interface OVS must open.
            db.ensure_port(policy.bridge, port.interface or port.name, port.ofport, port.type or "", options)
        elif port.name in have and have[port.name] != port.ofport:
            raise ApplyError(f"port {port.name} is ofport {have[port.name]} on {policy.bridge}, "
                             f"the policy says {port.ofport}")
    sync_zone_timeouts(db, policy, target)
    return [*sync_zone_limit(target, policy.ct_zone, policy.max_connections), *snat_exhaustion_warnings(policy)]


FIRST_EPHEMERAL_PORT = 1024
"""An SNAT without a port range keeps a source port of 1024 or above, or picks one in 1024-65535."""


def snat_source_ports(rule: NatRule) -> int:
    """Source ports an SNAT rule can give connections to one destination (address and port): its
    addresses x its port range. The reply direction of each translation must be unique, so this
    many connections to one destination exhaust it."""
    lo, hi = rule.ports if rule.ports else (FIRST_EPHEMERAL_PORT, 65535)
    return (int(rule.translate_hi) - int(rule.translate_lo) + 1) * (hi - lo + 1)


SYN_SENT_SECONDS = {"system": 120, "netdev": 30, "dpdk": 30}
"""How long a connection whose SYN was never answered stays in conntrack, by datapath, unless the
zone's `tcp_syn_sent` timeout says otherwise (Linux's nf_conntrack default; OVS's userspace one)."""


PORT_SHARE = 0.5
"""The share of an SNAT rule's source ports per destination a zone may fill and still never see a
failed search: at most half. OVS 3.1's userspace NAT (like Linux's) tries 128 ports from a hashed
start, then 64, 32 and 16 from random ones, and gives up after those 240 lookups; its picks cluster,
so a zone nearly as large as the ports still ends in searches that fail
(tests/integration/test_reliability_nat_flood.py: a limit at 90 % of the ports did, at half it
never did)."""


def snat_exhaustion_warnings(policy: ResolvedPolicy) -> list[str]:
    """SNAT rules whose source ports a flood to one destination can exhaust before the zone is full.

    Once they are nearly used up, ovs-vswitchd's userspace conntrack searches the port range (up to
    240 lookups) for every new connection and fails: a flood of SYNs to one destination then
    starves the established traffic through the switch (docs/bench.md, "NAT under connection
    floods"). A zone limit of at most `PORT_SHARE` of the rule's ports refuses new connections
    before any search fails; a `limit:` on the rule keeps a flood from filling them, if its rate
    over the time an unanswered SYN stays in conntrack is below them."""
    limit = policy.max_connections
    syn_sent = dict(policy.ct_timeouts).get("tcp_syn_sent", SYN_SENT_SECONDS.get(policy.datapath, 120))
    out = []
    for rule in policy.nat:
        ports = snat_source_ports(rule) if rule.kind == "snat" else 0
        safe = int(ports * PORT_SHARE)
        capped = rule.limit is not None and rule.limit.rate * syn_sent < ports
        if ports and not capped and (limit is None or limit > safe):
            have = "is not set" if limit is None else f"{limit:,} is too close to that"
            out.append(f"SNAT rule {rule.name} has {ports:,} source ports per destination and "
                       f"conntrack.max_connections {have}: a flood of new connections to one destination "
                       f"fills them, and OVS's NAT searches a bounded number of ports and gives up before "
                       f"they are all taken, so every new connection then costs a failed search of the port "
                       f"range that starves established traffic; keep max_connections well below the ports, "
                       f"at most {safe:,} (half), so the zone refuses them first, or put a limit: on the rule "
                       f"below {ports // syn_sent:,}/s new connections to keep them from filling "
                       f"({syn_sent} s of unanswered SYNs)")
    return out


def sync_zone_limit(target: SwitchTarget, zone: int, limit: int | None) -> list[str]:
    """Set the zone's conntrack limit, or remove it when the policy no longer sets one."""
    ctl = target.appctl()
    if ctl is None:
        if limit is None:
            return []
        return [f"conntrack.max_connections {limit} is NOT enforced: ovs-vswitchd's control socket "
                f"is not reachable from here (a remote --db), and OVS 3.1 has no OVSDB column for it"]
    set_zone_limit(ctl, zone, limit)
    return []
