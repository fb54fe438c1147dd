"""Recompile only what a change touches, with the full compile's exact output, in wire form.

Controller mode changes address sets and rules while traffic flows, and `apply`
of a policy file with one rule edited should cost about what the edit does. A
full `compile_policy` of 10,000 rules takes about a second; a change to one rule
must not. `IncrementalFlows` keeps the compiled flows *by owner*, each in its
OpenFlow wire form (`FlowMod`: what is pushed and what the switch reports), so an
unchanged rule is neither recompiled nor encoded again; `switch.cache` keeps it on
disk between two `apply` runs:

- ``BASE``: everything that does not depend on the firewall rules (CLASSIFY,
  CONNTRACK, EGRESS, the STATE skeleton, the default action, NAT and its select
  groups, OUTPUT),
  made by `compile_policy` of the policy without firewall rules: cheap, and it
  follows whatever the stages do;
- one owner per firewall rule: its FILTER flows (`filter.compile_rule`) and,
  for a stateful allow, its STATE flow for its fingerprint; with a `limit:`, its
  meter (an entry of the table, `southbound.openflow.meters`).

An update names the rules it changed; only they are recompiled, plus the rules
whose *level* (priority) moved. Levels come from a greedy pass in rule order
(`filter.rule_levels`): a rule starts a new level when it overlaps one of the
current level. So a change at position p can only move levels from the start
of p's level on, and once the new pass starts a level at the same rule as the
old pass did, after the last change, every later level is the old one plus a
constant: the pass stops there. Flows that several owners make alike (clause
flows of conjunctions merged across rules) are recombined in compile order (decoded, merged as `FlowSet` merges them, encoded).

Conjunction ids are taken in rule order, the next free one on a collision
(32-bit hashes: about one pair in a policy of 65,000 rules, two at 100,000).
The ids a rule found taken and moved past are remembered: a change that
would free one of them (its holder removed, or no longer using it), or that
wants an id another rule holds (as a rule that moved on would, recompiled
alone), makes `prepare` raise `NeedsFullCompile`, and the caller rebuilds
everything. Any other change leaves every other rule's ids where they are.
Tests hold the result equal to `compile_policy` after every kind of change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ovsmgr.compiler import compile_policy
from ovsmgr.compiler.flows import Flow, FlowSet
from ovsmgr.compiler.ids import meter_id, rule_id
from ovsmgr.compiler.stages.filter import (
    DEFAULT_RULE,
    compile_rule,
    conj_id_base,
    rule_levels,
    shadow_bits,
)
from ovsmgr.compiler.stages.helpers import rule_helpers, used_helpers
from ovsmgr.compiler.stages.limits import meter_config
from ovsmgr.compiler.stages.nat import select_group_ids
from ovsmgr.compiler.stages.track import compile_state
from ovsmgr.policy.analysis import RuleIndex, overlaps
from ovsmgr.policy.ir import NatRule, ResolvedPolicy, Rule
from ovsmgr.southbound.openflow import FlowMod, decode_flow, encode_flow, encode_group
from ovsmgr.southbound.openflow.messages import pack_flows, unpack_flows
from ovsmgr.southbound.openflow.meters import meter_entry

FlowKey = bytes
"""A flow's wire key (table, priority, match: `FlowMod.key`)."""
BASE = "\0base"
"""Owner of the flows that do not depend on firewall rules (not a valid rule name)."""


class NeedsFullCompile(Exception):
    """The change could renumber another rule's conjunction id: recompile everything."""


@dataclass
class FlowChanges:
    """What an update does to the flow table, by flow key (old flow, new flow)."""

    added: list[FlowMod] = field(default_factory=list)
    removed: list[FlowMod] = field(default_factory=list)
    changed: list[tuple[FlowMod, FlowMod]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


@dataclass
class Pending:
    """A prepared update: applied to `IncrementalFlows` only by `commit` (after the switch took it)."""

    policy: ResolvedPolicy
    rules: list[Rule]
    levels: list[int]
    owners: dict[str, tuple[FlowMod, ...] | None]
    """Owner -> its new flows; None: the owner is gone."""
    index: dict[FlowKey, tuple[str, ...]]
    """Touched keys -> the owners with a flow at the key, in compile order (empty: none left)."""
    flows: dict[FlowKey, FlowMod | None]
    """Touched keys -> the effective flow, None when no flow is left at the key."""
    conj: dict[str, tuple[int, ...] | None]
    changes: FlowChanges
    rules_recompiled: int
    positions: dict[str, int] | None = None
    """Rule name -> index in `rules`; None when unchanged."""


Contribution = tuple[str, FlowMod]


class Owners:
    """Owner -> its flows. Owners restored from the compile cache stay in their packed form
    (`messages.pack_flows`) until one is looked at: an apply that changes one rule of 10,000
    decodes one rule's flows, not every rule's, and saves the others' packed bytes unread."""

    def __init__(self, packed: dict[str, bytes] | None = None) -> None:
        self._flows: dict[str, tuple[FlowMod, ...] | bytes] = dict(packed or {})
        self._by_key: dict[str, dict[FlowKey, list[FlowMod]]] = {}

    def __contains__(self, owner: str) -> bool:
        return owner in self._flows

    def __len__(self) -> int:
        return len(self._flows)

    def get(self, owner: str, default: tuple[FlowMod, ...] = ()) -> tuple[FlowMod, ...]:
        flows = self._flows.get(owner)
        if flows is None:
            return default
        if isinstance(flows, bytes):
            flows = self._flows[owner] = tuple(unpack_flows(flows))
        return flows

    def __getitem__(self, owner: str) -> tuple[FlowMod, ...]:
        if owner not in self._flows:
            raise KeyError(owner)
        return self.get(owner)

    def __setitem__(self, owner: str, flows: tuple[FlowMod, ...]) -> None:
        self._flows[owner] = flows
        self._by_key.pop(owner, None)

    def pop(self, owner: str) -> None:
        self._flows.pop(owner, None)
        self._by_key.pop(owner, None)

    def names(self) -> list[str]:
        return list(self._flows)

    def at(self, owner: str, key: FlowKey) -> list[FlowMod]:
        """The owner's flows at one key (usually one)."""
        by_key = self._by_key.get(owner)
        if by_key is None:
            by_key = self._by_key[owner] = {}
            for mod in self.get(owner):
                by_key.setdefault(mod.key, []).append(mod)
        return by_key.get(key, [])

    def packed(self) -> dict[str, bytes]:
        """Every owner's flows packed, in compile order (unread ones as they came)."""
        return {owner: flows if isinstance(flows, bytes) else pack_flows(flows)
                for owner, flows in self._flows.items()}


def nat_signature(nat: Iterable[NatRule]) -> tuple[object, ...]:
    """What of the NAT rules the flows depend on (not their index or source span)."""
    return tuple((n.name, n.kind, n.match, n.translate_lo, n.translate_hi, n.ports, n.port, n.limit, n.backends,
                  n.static) for n in nat)


class IncrementalFlows:
    """The compiled flows of a policy, kept by owner so one rule can be recompiled alone."""

    def __init__(self, policy: ResolvedPolicy) -> None:
        self.policy = policy
        self._names: dict[int, str] | None = None
        self.rules: list[Rule] = list(policy.rules)
        self.levels: list[int] = rule_levels(policy.rules)
        self.positions = {r.name: i for i, r in enumerate(self.rules)}
        self.owners = Owners()
        self.owners[BASE] = _base_flows(policy)
        self.conj: dict[str, tuple[int, ...]] = {}
        moved: list[tuple[str, tuple[int, ...]]] = []
        self.shadow = shadow_bits(self.rules)
        used = _TakenIds()
        for rule, level in zip(self.rules, self.levels, strict=True):
            before = len(used.log)
            self.owners[rule.name] = _rule_flows(policy, rule, level, used, self.shadow.get(rule.name))
            taken = tuple(sorted(used.log[before:]))
            self.conj[rule.name] = taken
            if set(taken) != set(bases := _conj_bases(rule)):
                moved.append((rule.name, bases))
        self.conj_owner = {v: n for n, values in self.conj.items() for v in values}
        self.passed_over: set[int] = self._passed_over(moved)
        """Conjunction ids a rule found taken, on its way to a free one (a collision)."""
        self.index: dict[FlowKey, tuple[str, ...]] = {}
        for owner in self.owners.names():
            for flow in self.owners[owner]:
                at = self.index.get(flow.key, ())
                if owner not in at:
                    self.index[flow.key] = (*at, owner)
        self.flows: dict[FlowKey, FlowMod] = {}
        for key in self.index:
            merged = _merge(key, self._pairs(key))
            if merged is not None:
                self.flows[key] = merged

    def _passed_over(self, moved: list[tuple[str, tuple[int, ...]]]) -> set[int]:
        out: set[int] = set()
        for name, bases in moved:
            own = set(self.conj[name])
            for value in bases:
                for _ in range(len(self.conj_owner)):
                    if value in own:
                        break
                    out.add(value)
                    value = (value + 1) & 0xFFFF_FFFF or 1
        return out

    def _pairs(self, key: FlowKey) -> list[Contribution]:
        """Every owner's flow at `key`, in compile order."""
        return [(owner, mod) for owner in self.index.get(key, ()) for mod in self.owners.at(owner, key)]

    def sorted_flows(self) -> list[FlowMod]:
        return sorted(self.flows.values())

    def rule_names(self) -> dict[int, str]:
        """Cookie rule id -> name, for every rule and NAT rule that has flows, and the default; group
        id -> the NAT rule of the group. Made again only when rules come or go (shared: callers must
        not change it)."""
        cached = self._names
        if cached is None:
            names = [r.name for r in self.rules] + [n.name for n in self.policy.nat] + [DEFAULT_RULE]
            limited = [r.name for r in self.rules if r.limit] + [n.name for n in self.policy.nat if n.limit]
            groups = {gid: name for (name, _, _), gid
                      in select_group_ids(self.policy, used_helpers(self.rules)).items()}
            cached = self._names = {rule_id(n): n for n in names} | {meter_id(n): n for n in limited} | groups
        return cached

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
        owners: dict[str, tuple[FlowMod, ...] | None] = {}
        if (nat is not None and nat_signature(nat) != nat_signature(self.policy.nat)) \
                or used_helpers(rules) != used_helpers(self.rules):
            owners[BASE] = _base_flows(policy)
        recompile = [rules[i] for i in range(first, stop)
                     if rules[i].name in changed or levels[i] != self._old_level(rules[i].name)]
        removed = {n for n in changed if n not in positions and n in self.owners}
        conj = self._check_conj(recompile, removed)
        if any(n in self.shadow or (n in positions and rules[positions[n]].shadow) for n in changed) \
                and shadow_bits(rules) != self.shadow:
            raise NeedsFullCompile("the shadow rules changed (each one's flows depend on its place among them)")
        for rule in recompile:
            owners[rule.name] = _rule_flows(policy, rule, levels[positions[rule.name]], set(),
                                            self.shadow.get(rule.name))
        for name in removed:
            owners[name] = None
        index, flows, changes = self._touched(owners, positions)
        return Pending(policy, rules, levels, owners, index, flows, conj, changes, len(recompile),
                       None if same_order else positions)

    def commit(self, pending: Pending) -> None:
        """Make a prepared update current (after the switch accepted its flows)."""
        for owner, flows in pending.owners.items():
            if flows is None:
                self.owners.pop(owner)
            else:
                self.owners[owner] = flows
        for key, at in pending.index.items():
            if at:
                self.index[key] = at
            else:
                self.index.pop(key, None)
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
        if pending.positions is not None or pending.policy.nat is not self.policy.nat:
            self._names = None
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
        for name in removed:
            if self.passed_over.intersection(self.conj.get(name, ())):
                raise NeedsFullCompile(f"removing {name} frees a conjunction id another rule moved past")
        out: dict[str, tuple[int, ...] | None] = dict.fromkeys(removed)
        claimed: dict[int, str] = {}
        for rule in recompile:
            bases = _conj_bases(rule)
            if not self.passed_over.intersection(self.conj.get(rule.name, ())) <= set(bases):
                raise NeedsFullCompile(f"{rule.name} frees a conjunction id another rule moved past")
            for value in bases:
                holder = claimed.get(value) or self.conj_owner.get(value)
                if holder is not None and holder != rule.name and holder not in removed:
                    raise NeedsFullCompile(f"conjunction id {value:#x} of {rule.name} is taken by {holder}")
                claimed[value] = rule.name
            out[rule.name] = bases
        return out

    # --- effective flows ----------------------------------------------------------------------------
    def _touched(self, owners: dict[str, tuple[FlowMod, ...] | None], positions: dict[str, int],
                 ) -> tuple[dict[FlowKey, tuple[str, ...]], dict[FlowKey, FlowMod | None], FlowChanges]:
        added: dict[FlowKey, list[Contribution]] = {}
        keys: dict[FlowKey, None] = {}
        for owner, flows in owners.items():
            for flow in self.owners.get(owner, ()):
                keys[flow.key] = None
            for flow in flows or ():
                keys[flow.key] = None
                added.setdefault(flow.key, []).append((owner, flow))
        index: dict[FlowKey, tuple[str, ...]] = {}
        flows_at: dict[FlowKey, FlowMod | None] = {}
        changes = FlowChanges()
        for key in keys:
            pairs = [p for p in self._pairs(key) if p[0] not in owners] + added.get(key, [])
            if len(pairs) > 1:
                pairs.sort(key=lambda p: -1 if p[0] == BASE else positions[p[0]])
            index[key] = tuple(dict.fromkeys(owner for owner, _ in pairs))
            new, old = _merge(key, pairs), self.flows.get(key)
            flows_at[key] = new
            if old is None and new is not None:
                changes.added.append(new)
            elif new is None and old is not None:
                changes.removed.append(old)
            elif old is not None and new is not None and old.body != new.body:
                changes.changed.append((old, new))
        return index, flows_at, changes


class _TakenIds(set[int]):
    """The conjunction ids taken so far, remembering which rule took which (in order)."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[int] = []

    def add(self, value: int) -> None:
        super().add(value)
        self.log.append(value)


def _merge(key: FlowKey, pairs: list[Contribution]) -> FlowMod | None:
    """The flow at `key` as the full compile makes it: its owners' flows merged in compile order
    (several owners at one key: clause flows of conjunctions, merged into one)."""
    if not pairs:
        return None
    if len(pairs) == 1:
        return pairs[0][1]
    merged = FlowSet()
    flows = [decode_flow(mod) for _, mod in pairs]
    merged.extend(f for f in flows if f is not None)
    if len(merged) != 1:
        raise ValueError(f"owners' flows at one key do not decode to one flow: {pairs}")
    return encode_flow(next(iter(merged)))


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


def _base_flows(policy: ResolvedPolicy) -> tuple[FlowMod, ...]:
    """Every flow that does not come from a firewall rule: the policy compiled without its rules
    (and the NAT rules' meters and select groups)."""
    compiled = compile_policy(dataclasses.replace(policy, rules=()), used_helpers(policy.rules))
    return (*(encode_flow(f) for f in compiled.flowset.flows.values()), *map(meter_entry, compiled.meters),
            *map(encode_group, compiled.groups))


def _rule_flows(policy: ResolvedPolicy, rule: Rule, level: int, conj_ids: set[int],
               shadow_bit: int | None) -> tuple[FlowMod, ...]:
    """One rule's FILTER flows and, for a stateful allow, its STATE flow; its meter, if it has a limit."""
    marks: dict[int, str] = {}
    flows: list[Flow] = compile_rule(policy, rule, level, marks, conj_ids, shadow_bit)
    limits = {rule.name: rule.limit} if rule.limit else {}
    if marks:
        flows += [f for f in compile_state(policy, marks, rule_helpers([rule]), limits) if f.rule == rule.name]
    meter = (meter_entry(meter_config(rule.name, rule.limit)),) if rule.limit else ()
    return (*(encode_flow(f) for f in flows), *meter)
