"""Rate limits (`limit:`): one OpenFlow meter per rule that has one, and the meter action its flows
start with.

A firewall rule's meter is first in every flow of the rule: its FILTER flows (packets of new
connections, and every packet of a stateless rule) and, for a stateful allow, its STATE flow for
the rule's fingerprint (every later packet of the connections it allowed, both directions). Each
packet of the rule passes exactly one of those flows, so the meter counts each once. A NAT rule's
meter is first in its NAT flows, which only the first packet of each new connection reaches: it
caps the new connections the rule translates per second, and a packet it drops is never committed
(no conntrack entry, no search of the NAT's port range).
"""

from __future__ import annotations

from ovsmgr.compiler.flows import Action, FlowError, Meter, MeterConfig
from ovsmgr.compiler.ids import meter_id
from ovsmgr.compiler.pipeline import METER_BURST_SECONDS, METER_MIN_BURST_KBIT
from ovsmgr.policy.ir import Limit, ResolvedPolicy


def meter_config(name: str, limit: Limit) -> MeterConfig:
    """The meter of rule `name`: a drop band at the limit's rate, with a burst of
    `METER_BURST_SECONDS` of it."""
    floor = 1 if limit.unit == "pktps" else METER_MIN_BURST_KBIT
    burst = max(floor, round(limit.rate * METER_BURST_SECONDS))
    return MeterConfig(meter_id(name), limit.unit, limit.rate, burst, name)


def metered(name: str, limit: Limit | None, actions: tuple[Action, ...]) -> tuple[Action, ...]:
    """`actions` behind the rule's meter, if it has a limit."""
    return actions if limit is None else (Meter(meter_id(name)), *actions)


def compile_meters(policy: ResolvedPolicy) -> tuple[MeterConfig, ...]:
    """The meters of every rule and NAT rule with a limit, in the policy's order."""
    limited = [(r.name, r.limit) for r in policy.rules if r.limit] + [(n.name, n.limit) for n in policy.nat if n.limit]
    meters = tuple(meter_config(name, limit) for name, limit in limited if limit is not None)
    seen: dict[int, str] = {}
    for meter in meters:
        other = seen.setdefault(meter.id, meter.rule)
        if other != meter.rule:
            raise FlowError(f"rules {other} and {meter.rule} hash to one meter id ({meter.id:#x}): rename one")
    return meters
