"""Bench-only variants of a pipeline's NAT rules, for what the policy language has no key for:
``nat()`` port-selection flags, and a meter on TCP SYNs before conntrack. (A meter on a NAT
rule's new connections is the language's own ``limit:`` on the rule: the bench measures it with a
policy that has one, compiled and applied by ovsmgr like any other, e.g.
bench/nat/seed-nat-limit.yaml.)

They are put on the switch after ovsmgr applied the policy (`apply_variant`):

- ``nat_flags``: each NAT rule's flows again, with the flags inside their ``nat(...)``;
- ``nat_meter`` (``packets: syn``): for each NAT rule's ``from`` zone, a flow above the
  conntrack table's IPv4 flow taking TCP SYNs (``tcp_flags=+syn-ack``) from the zone's ports
  through the meter, then the same ``ct()``: the meter drops before conntrack is consulted.

A NAT rule's rewritten flows keep ovsmgr's cookie: the next apply finds them changed and puts
them back, as for any drift. The SYN flows carry the bench's cookie (`BENCH_COOKIE`), which
the bench deletes at every pipeline switch.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ovsmgr.bench.spec import NatMeter
from ovsmgr.compiler import CompiledPolicy
from ovsmgr.compiler.pipeline import CookieKind, Table, cookie_parts
from ovsmgr.render.ofctl import actions_text, flow_text, match_text

METER_ID = 1
SYN_METER_PRIORITY_ABOVE = 1
"""The SYN-meter flows sit this far above the conntrack table's IP flow."""
_NAT_CALL = re.compile(r"nat\((src|dst)=([^)]*)\)")


def nat_rule_flows(compiled: CompiledPolicy) -> list[str]:
    """The flows the policy's NAT rules made (table NAT, NAT cookies), in add-flows syntax."""
    return [flow_text(f) for f in compiled.flowset
            if f.table == Table.NAT and cookie_parts(f.cookie)[1] == CookieKind.NAT]


def with_flags(flow: str, flags: tuple[str, ...]) -> str:
    """``nat(src=A)`` -> ``nat(src=A,random)``; a flow without ``nat(src|dst=...)`` as it is."""
    if not flags:
        return flow
    return _NAT_CALL.sub(lambda m: f"nat({m[1]}={m[2]},{','.join(flags)})", flow)


def syn_meter_flows(compiled: CompiledPolicy, bench_cookie: int, meter_id: int = METER_ID) -> list[str]:
    """Per port of each NAT rule's ``from`` zone: its IPv4 TCP SYNs through the meter, then on
    into conntrack as the conntrack table's own IPv4 flow sends them."""
    track = [f for f in compiled.flowset if f.table == Table.CONNTRACK and match_text(f.match) == "ip"]
    if not track:
        raise ValueError("the pipeline has no conntrack flow for IPv4: nothing to meter in front of")
    ip_flow = track[0]
    ct_actions = actions_text(ip_flow.actions)
    policy = compiled.policy
    ofports = sorted({policy.ports[name].ofport for rule in policy.nat
                      for name in policy.zones[rule.match.from_zone].ports})
    return [f"cookie={bench_cookie:#x},table={int(Table.CONNTRACK)},"
            f"priority={ip_flow.priority + SYN_METER_PRIORITY_ABOVE},tcp,in_port={port},tcp_flags=+syn-ack"
            f" actions=meter:{meter_id},{ct_actions}" for port in ofports]


def variant_flows(compiled: CompiledPolicy, meter: NatMeter | None, flags: tuple[str, ...],
                  bench_cookie: int) -> list[str]:
    """The flows to add on top of the applied policy for the variant (none without one)."""
    if meter is None and not flags:
        return []
    if not compiled.policy.nat:
        raise ValueError("nat_meter and nat_flags change NAT rules: the pipeline has none")
    flows = [with_flags(f, flags) for f in nat_rule_flows(compiled)] if flags else []
    if meter is not None:
        flows += syn_meter_flows(compiled, bench_cookie)
    return flows


METER_BURST_S = 0.1
"""A meter's burst: this many seconds of its rate."""


def meter_command(meter: NatMeter, meter_id: int = METER_ID) -> list[str]:
    """``ovs-ofctl add-meter`` arguments: a packet-rate meter that drops above ``meter.rate``,
    with a burst of `METER_BURST_S` of it."""
    rate = max(1, round(meter.rate))
    return ["add-meter", f"meter={meter_id},pktps,burst,band=type=drop,rate={rate},"
                         f"burst_size={max(1, round(rate * METER_BURST_S))}"]


def apply_variant(ofctl: Callable[..., str], compiled: CompiledPolicy, meter: NatMeter | None,
                  flags: tuple[str, ...], bench_cookie: int) -> int:
    """Put the variant on the switch (``ofctl(args, input=...)`` is the bed's ``ovs-ofctl``);
    returns the number of flows added or replaced."""
    flows = variant_flows(compiled, meter, flags, bench_cookie)
    if meter is not None:
        ofctl(["del-meters", f"meter={METER_ID}"])  # its own meter only: ovsmgr's (limit:) stay
        ofctl(meter_command(meter))
    if flows:
        ofctl(["add-flows", "-"], input="".join(f"{line}\n" for line in flows))
    return len(flows)
