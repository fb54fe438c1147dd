"""Recompile only what a runtime change touches, with the full compile's exact output.

Controller mode changes address sets and rules while traffic flows. A full
`compile_policy` of 10,000 rules takes seconds; a change to one rule must not.
`IncrementalFlows` keeps the compiled flows *by owner*:

- ``BASE``: everything that does not depend on the firewall rules (CLASSIFY,
  CONNTRACK, EGRESS, the STATE skeleton, the default action, NAT, OUTPUT),
  made by `compile_policy` of the policy without firewall rules: cheap, and it
  follows whatever the stages do;
- one owner per firewall rule: its FILTER flows (`filter.compile_rule`) and,
  for a stateful allow, its STATE flow for its fingerprint.

An update names the rules it changed; only they are recompiled, plus the rules
whose *level* (priority) moved. Levels come from a greedy pass in rule order
(`filter.rule_levels`): a rule starts a new level when it overlaps one of the
current level. So a change at position p can only move levels from the start
of p's level on, and once the new pass starts a level at the same rule as the
old pass did, after the last change, every later level is the old one plus a
constant: the pass stops there. Flows that several owners make alike (clause
flows of conjunctions merged across rules) are recombined in compile order.

Conjunction ids are taken in rule order, the next free one on a collision
(32-bit hashes; rare). When a change could move another rule's id,
`prepare` raises `NeedsFullCompile` and the caller rebuilds everything.
Tests hold the result equal to `compile_policy` after every kind of change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ovsmgr.compiler import compile_policy
from ovsmgr.compiler.flows import Flow, FlowSet, Match
from ovsmgr.compiler.ids import rule_id
from ovsmgr.compiler.stages.filter import DEFAULT_RULE, compile_rule, conj_id_base, rule_levels
from ovsmgr.compiler.stages.track import compile_state
from ovsmgr.policy.analysis import RuleIndex, overlaps
from ovsmgr.policy.ir import NatRule, ResolvedPolicy, Rule

FlowKey = tuple[int, int, Match]
BASE = "\0base"
"""Owner of the flows that do not depend on firewall rules (not a valid rule name)."""


class NeedsFullCompile(Exception):
    """The change could renumber another rule's conjunction id: recompile everything."""


@dataclass
class FlowChanges:
    """What an update does to the flow table, by flow key (old flow, new flow)."""

    added: list[Flow] = field(default_factory=list)
    removed: list[Flow] = field(default_factory=list)
    changed: list[tuple[Flow, Flow]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


@dataclass
class Pending:
    """A prepared update: applied to `IncrementalFlows` only by `commit` (after the switch took it)."""

    policy: ResolvedPolicy
    rules: list[Rule]
    levels: list[int]
    owners: dict[str, tuple[Flow, ...] | None]
    """Owner -> its new flows; None: the owner is gone."""
    contrib: dict[FlowKey, list[Contribution]]
    """Touched keys -> every owner's flow at the key, in compile order."""
    flows: dict[FlowKey, Flow | None]
    """Touched keys -> the effective flow, None when no flow is left at the key."""
    conj: dict[str, tuple[int, ...] | None]
    changes: FlowChanges
    rules_recompiled: int
    positions: dict[str, int] | None = None
    """Rule name -> index in `rules`; None when unchanged."""


Contribution = tuple[str, Flow]


def nat_signature(nat: Iterable[NatRule]) -> tuple[object, ...]:
    """What of the NAT rules the flows depend on (not their index or source span)."""
    return tuple((n.name, n.kind, n.match, n.translate_lo, n.translate_hi, n.ports, n.port) for n in nat)


class IncrementalFlows:
    """The compiled flows of a policy, kept by owner so one rule can be recompiled alone."""

    def __init__(self, policy: ResolvedPolicy) -> None:
        self.policy = policy
        self.rules: list[Rule] = list(policy.rules)
        self.levels: list[int] = rule_levels(policy.rules)
        self.positions = {r.name: i for i, r in enumerate(self.rules)}
        self.owners: dict[str, tuple[Flow, ...]] = {BASE: _base_flows(policy)}
        self.conj: dict[str, tuple[int, ...]] = {}
        self.collisions = 0
        used = _TakenIds()
        for rule, level in zip(self.rules, self.levels, strict=True):
            before = len(used.log)
            self.owners[rule.name] = _rule_flows(policy, rule, level, used)
            taken = tuple(sorted(used.log[before:]))
            self.conj[rule.name] = taken
            if set(taken) != set(_conj_bases(rule)):
                self.collisions += 1
        self.conj_owner = {v: n for n, values in self.conj.items() for v in values}
        self.contrib: dict[FlowKey, list[Contribution]] = {}
        for owner, flows in self.owners.items():
            for flow in flows:
                self.contrib.setdefault(flow.key, []).append((owner, flow))
        self.flows: dict[FlowKey, Flow] = {}
        for key, pairs in self.contrib.items():
            merged = _merge(key, pairs)
            if merged is not None:
                self.flows[key] = merged

    def sorted_flows(self) -> list[Flow]:
        fs = FlowSet()
        fs.flows = dict(self.flows)
        return fs.sorted()

    def rule_names(self) -> dict[int, str]:
        """Cookie rule id -> name, for every rule and NAT rule that has flows, and the default."""
        names = [r.name for r in self.rules] + [n.name for n in self.policy.nat] + [DEFAULT_RULE]
        return {rule_id(n): n for n in names}

    # --- preparing an update ------------------------------------------------------------------
    def prepare(self, rules: Sequence[Rule], changed: set[str], nat: tuple[NatRule, ...] | None = None,
                same_order: bool = False) -> Pending:
        """The update to `rules` (the whole new compiled rule list, in order), where only the
        rules named in `changed` differ (added, removed or edited); `nat`: new NAT rules, if any.
        `same_order`: the rules are the same names in the same order (edits only), which saves
        re-indexing them. Nothing changes here until `commit`."""
        rules = list(rules)
        policy = dataclasses.replace(self.policy, rules=tuple(rules), nat=self.policy.nat if nat is None else nat)
        positions = self.positions if same_order else {r.name: i for i, r in enumerate(rules)}
        levels, first, stop = self._levels(rules, positions, changed)
        owners: dict[str, tuple[Flow, ...] | None] = {}
        if nat is not None and nat_signature(nat) != nat_signature(self.policy.nat):
            owners[BASE] = _base_flows(policy)
        recompile = [rules[i] for i in range(first, stop)
                     if rules[i].name in changed or levels[i] != self._old_level(rules[i].name)]
        removed = {n for n in changed if n not in positions and n in self.owners}
        conj = self._check_conj(recompile, removed)
        for rule in recompile:
            owners[rule.name] = _rule_flows(policy, rule, levels[positions[rule.name]], set())
        for name in removed:
            owners[name] = None
        contrib, flows, changes = self._touched(owners, positions)
        return Pending(policy, rules, levels, owners, contrib, flows, conj, changes, len(recompile),
                       None if same_order else positions)

    def commit(self, pending: Pending) -> None:
        """Make a prepared update current (after the switch accepted its flows)."""
        for owner, flows in pending.owners.items():
            if flows is None:
                self.owners.pop(owner, None)
            else:
                self.owners[owner] = flows
        for key, pairs in pending.contrib.items():
            if pairs:
                self.contrib[key] = pairs
            else:
                self.contrib.pop(key, None)
        for key, flow in pending.flows.items():
            if flow is None:
                self.flows.pop(key, None)
            else:
                self.flows[key] = flow
        for name, taken in pending.conj.items():
            for value in self.conj.pop(name, ()):
                if self.conj_owner.get(value) == name:
                    del self.conj_owner[value]
            if taken is not None:
                self.conj[name] = taken
                self.conj_owner.update(dict.fromkeys(taken, name))
        self.policy, self.rules, self.levels = pending.policy, pending.rules, pending.levels
        if pending.positions is not None:
            self.positions = pending.positions

    # --- levels ---------------------------------------------------------------------------------
    def _old_level(self, name: str) -> int | None:
        index = self.positions.get(name)
        return None if index is None else self.levels[index]

    def _levels(self, rules: list[Rule], positions: dict[str, int], changed: set[str]) -> tuple[list[int], int, int]:
        """New levels, recomputed from the level of the first change until they line up again;
        with the range [first, stop) of rules whose level or content may differ."""
        firsts = [positions[n] for n in changed if n in positions]
        firsts += [min(self.positions[n], len(rules)) for n in changed if n in self.positions]
        if not firsts:
            return list(self.levels), 0, 0
        first = min(firsts)
        last_new = max((positions[n] for n in changed if n in positions), default=-1)
        last_old = max((self.positions[n] for n in changed if n in self.positions), default=-1)
        start = _level_start(self.levels, first)
        levels = self.levels[:start]
        level = self.levels[start] if start < len(self.levels) else (self.levels[-1] + 1 if self.levels else 0)
        index = RuleIndex()
        for j in range(start, len(rules)):
            rule = rules[j]
            if j > start and any(overlaps(m, rule.match) for m, _ in index.candidates(rule.match, overlap=True)):
                level, index = level + 1, RuleIndex()
                k = self.positions.get(rule.name, -1)
                if j > last_new and k > last_old and (k == 0 or self.levels[k] != self.levels[k - 1]):
                    shift = level - self.levels[k]
                    tail = self.levels[k:] if shift == 0 else [lv + shift for lv in self.levels[k:]]
                    return levels + tail, first, j if shift == 0 else len(rules)
            index.add(rule.match, rule)
            levels.append(level)
        return levels, first, len(rules)

    # --- conjunction ids --------------------------------------------------------------------------
    def _check_conj(self, recompile: list[Rule], removed: set[str]) -> dict[str, tuple[int, ...] | None]:
        """New conjunction ids of recompiled rules; raise when another rule's could move."""
        if self.collisions:
            raise NeedsFullCompile("the policy has conjunction id collisions")
        out: dict[str, tuple[int, ...] | None] = dict.fromkeys(removed)
        claimed: dict[int, str] = {}
        for rule in recompile:
            bases = _conj_bases(rule)
            for value in bases:
                holder = claimed.get(value) or self.conj_owner.get(value)
                if holder is not None and holder != rule.name and holder not in removed:
                    raise NeedsFullCompile(f"conjunction id {value:#x} of {rule.name} is taken by {holder}")
                claimed[value] = rule.name
            out[rule.name] = bases
        return out

    # --- effective flows ----------------------------------------------------------------------------
    def _touched(self, owners: dict[str, tuple[Flow, ...] | None], positions: dict[str, int],
                 ) -> tuple[dict[FlowKey, list[Contribution]], dict[FlowKey, Flow | None], FlowChanges]:
        added: dict[FlowKey, list[Contribution]] = {}
        keys: dict[FlowKey, None] = {}
        for owner, flows in owners.items():
            for flow in self.owners.get(owner, ()):
                keys[flow.key] = None
            for flow in flows or ():
                keys[flow.key] = None
                added.setdefault(flow.key, []).append((owner, flow))
        contrib: dict[FlowKey, list[Contribution]] = {}
        flows_at: dict[FlowKey, Flow | None] = {}
        changes = FlowChanges()
        for key in keys:
            pairs = [p for p in self.contrib.get(key, ()) if p[0] not in owners] + added.get(key, [])
            if len(pairs) > 1:
                pairs.sort(key=lambda p: -1 if p[0] == BASE else positions[p[0]])
            contrib[key] = pairs
            new, old = _merge(key, pairs), self.flows.get(key)
            flows_at[key] = new
            if old is None and new is not None:
                changes.added.append(new)
            elif new is None and old is not None:
                changes.removed.append(old)
            elif old is not None and new is not None and (old.actions, old.cookie) != (new.actions, new.cookie):
                changes.changed.append((old, new))
        return contrib, flows_at, changes


class _TakenIds(set[int]):
    """The conjunction ids taken so far, remembering which rule took which (in order)."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[int] = []

    def add(self, value: int) -> None:
        super().add(value)
        self.log.append(value)


def _merge(key: FlowKey, pairs: list[Contribution]) -> Flow | None:
    """The flow at `key` as the full compile makes it: its owners' flows merged in compile order."""
    if not pairs:
        return None
    if len(pairs) == 1:
        return pairs[0][1]
    merged = FlowSet()
    merged.extend(f for _, f in pairs)
    return merged.flows[key]


def _level_start(levels: list[int], index: int) -> int:
    """Index of the first rule of the level holding rule `index - 1` (the level `index` may join)."""
    if index == 0 or not levels:
        return 0
    j = min(index, len(levels)) - 1
    while j > 0 and levels[j - 1] == levels[j]:
        j -= 1
    return j


def _conj_bases(rule: Rule) -> tuple[int, ...]:
    return tuple(sorted(conj_id_base(rule.name, v) for v in rule.match.families()))


def _base_flows(policy: ResolvedPolicy) -> tuple[Flow, ...]:
    """Every flow that does not come from a firewall rule: the policy compiled without its rules."""
    return tuple(compile_policy(dataclasses.replace(policy, rules=())).flowset.flows.values())


def _rule_flows(policy: ResolvedPolicy, rule: Rule, level: int, conj_ids: set[int]) -> tuple[Flow, ...]:
    """One rule's FILTER flows and, for a stateful allow, its STATE flow."""
    marks: dict[int, str] = {}
    flows = compile_rule(policy, rule, level, marks, conj_ids)
    if marks:
        flows += [f for f in compile_state(policy, marks) if f.rule == rule.name]
    return tuple(flows)
