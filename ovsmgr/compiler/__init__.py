"""The compiler: a pure function from a resolved policy to the flows that enforce it."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ovsmgr.compiler.flows import Flow, FlowSet, MeterConfig, SelectGroup
from ovsmgr.compiler.ids import rule_id
from ovsmgr.compiler.stages.classify import compile_classify
from ovsmgr.compiler.stages.filter import DEFAULT_RULE, compile_filter
from ovsmgr.compiler.stages.hairpin import compile_hairpin
from ovsmgr.compiler.stages.helpers import rule_helpers, used_helpers, with_helper_commits
from ovsmgr.compiler.stages.limits import compile_meters
from ovsmgr.compiler.stages.nat import compile_nat, compile_nat_count, compile_output
from ovsmgr.compiler.stages.track import compile_conntrack, compile_egress, compile_state
from ovsmgr.compiler.stages.twozones import compile_second_zone
from ovsmgr.compiler.stages.vlans import compile_vlan_out
from ovsmgr.policy.gcpause import gc_paused
from ovsmgr.policy.ir import ResolvedPolicy


@dataclass(frozen=True)
class CompiledPolicy:
    policy: ResolvedPolicy
    flowset: FlowSet
    fingerprints: dict[int, str]
    """ct_mark value -> the stateful allow rule whose connections carry it."""
    rule_ids: dict[int, str]
    """Cookie low 32 bits -> rule name, to name the rule behind a flow read back from a switch
    (and meter id -> rule name, for the meters of rules with a `limit:`; group id -> the rule of
    a select group)."""
    meters: tuple[MeterConfig, ...] = ()
    """The meters the flows use (`limit:`), which must be on the switch before the flows."""

    @functools.cached_property
    def flows(self) -> list[Flow]:
        """In deterministic order; sorted once (a FlowSet is not changed after compile)."""
        return self.flowset.sorted()

    @functools.cached_property
    def groups(self) -> list[SelectGroup]:
        """The select groups the flows use, by id."""
        return self.flowset.sorted_groups()


def compile_policy(policy: ResolvedPolicy, helpers: tuple[str, ...] | None = None) -> CompiledPolicy:
    """Compile; no I/O, no clock, the same policy always gives the same flows in the same order.
    `helpers`: the conntrack helpers NAT's commits come in variants for (default: those the
    policy's rules use; the incremental compile gives them for a policy without its rules)."""
    with gc_paused():  # compiling makes no reference cycles (see gcpause)
        return _compile(policy, helpers)


def _compile(policy: ResolvedPolicy, helpers: tuple[str, ...] | None) -> CompiledPolicy:
    flowset = FlowSet()
    filtered = compile_filter(policy)
    nat = with_helper_commits(policy, compile_nat(policy),
                              used_helpers(policy.rules) if helpers is None else helpers)
    for flows in (
        compile_classify(policy),
        compile_conntrack(policy),
        compile_egress(policy),
        compile_state(policy, filtered.stateful_fingerprints, rule_helpers(policy.rules),
                      {r.name: r.limit for r in policy.rules if r.limit}),
        filtered.flows,
        nat.flows,
        compile_second_zone(policy),
        compile_output(policy),
        compile_hairpin(policy),
        compile_nat_count(policy),
        compile_vlan_out(policy),
    ):
        flowset.extend(flows)
    for group in nat.groups:
        flowset.add_group(group)
    names = [r.name for r in policy.rules] + [r.name for r in policy.nat] + [DEFAULT_RULE]
    meters = compile_meters(policy)
    ids = {rule_id(n): n for n in names} | {m.id: m.rule for m in meters} | {g.group_id: g.rule for g in nat.groups
                                                                               if g.rule}
    return CompiledPolicy(policy, flowset, dict(filtered.stateful_fingerprints), ids, meters)


__all__ = ["CompiledPolicy", "Flow", "FlowSet", "MeterConfig", "SelectGroup", "compile_policy"]
