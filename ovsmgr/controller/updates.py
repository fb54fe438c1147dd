"""Runtime changes of the controller: queued, validated on the part they touch, committed in groups.

A change is queued (`queue.ChangeQueue`), and one committer thread takes every
change waiting, computes them one after the other in memory (each one validated
on its own: a refused change is answered alone and leaves no trace; set changes
that follow one another are made as one), then pushes the net difference of the
whole group in one bundle and writes the runtime-changes file once. Every change
of a group is answered only after that; if the push or the write fails, the
whole group is refused and the engine is rebuilt from the changes before it,
which is what the switch still has. Under a steady stream of changes this costs
one push and one fsync per group instead of per change.

`RuntimeUpdates` is the part of `engine.Engine` that does this; the engine holds
the state it works on (the flows by owner, the policy data, the switch).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ovsmgr.compiler.ids import rule_id
from ovsmgr.controller import policydata
from ovsmgr.controller.health import BackendKey, apply_health
from ovsmgr.controller.paths import ControllerPaths
from ovsmgr.controller.queue import Change, ChangeKind, ChangeQueue, Ticket
from ovsmgr.controller.runtime import ChangeError, RuntimeChanges, save_changes
from ovsmgr.policy import PolicyError, ResolvedPolicy
from ovsmgr.southbound.openflow import FlowMod, InstalledFlow
from ovsmgr.switch.incremental import FlowChanges, FlowKey, IncrementalFlows, NeedsFullCompile
from ovsmgr.switch.plan import Plan, desired_mods, make_plan

if TYPE_CHECKING:
    from ovsmgr.controller.engine import EngineStatus, _Built

log = logging.getLogger("ovsmgr.controller")


@dataclass(frozen=True)
class ChangeResult:
    generation: int
    counts: dict[str, int]
    rules_recompiled: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"generation": self.generation, "changes": self.counts, "rules_recompiled": self.rules_recompiled,
                "seconds": round(self.seconds, 4)}


def installed(mods: Iterable[FlowMod]) -> list[InstalledFlow]:
    """Flows the switch has (as far as the engine knows), as a plan compares them."""
    return [InstalledFlow(mod, 0, 0) for mod in mods]


class RuntimeUpdates:
    """Set members, rules added, removed, enabled and disabled while the controller runs."""

    # what the engine holds (see `engine.Engine`)
    lock: threading.RLock
    queued: ChangeQueue
    status: EngineStatus
    changes: RuntimeChanges
    data: dict[str, Any]
    file_data: dict[str, Any]
    inc: IncrementalFlows
    entries: dict[FlowKey, FlowMod]
    names: dict[int, str]
    refs: policydata.RuleRefs
    data_index: dict[str, int]
    paths: ControllerPaths
    file_digest: str
    _batch: _Batch | None
    down: frozenset[BackendKey]

    if TYPE_CHECKING:
        def _push(self, plan: Plan) -> None: ...

        def _record(self) -> None: ...

        def _index_data(self) -> None: ...

        def _build(self, changes: RuntimeChanges, loaded: Any = None) -> _Built: ...

        def _adopt(self, built: _Built) -> None: ...

        def _with_health(self, policy: ResolvedPolicy) -> ResolvedPolicy: ...

    def set_members(self, name: str, add: list[str], remove: list[str]) -> ChangeResult:
        """Add and remove members of an address set (queued, committed with its group)."""
        return self.queue("set_members", name, add, remove).wait()

    def add_rule(self, rule: dict[str, Any], before: str | None, after: str | None) -> ChangeResult:
        return self.queue("add_rule", rule, before, after).wait()

    def remove_rule(self, name: str) -> ChangeResult:
        return self.queue("remove_rule", name).wait()

    def set_rule_enabled(self, name: str, enabled: bool) -> ChangeResult:
        return self.queue("set_rule_enabled", name, enabled).wait()

    def queue(self, kind: ChangeKind, *args: Any) -> Ticket:
        """The asynchronous form of `set_members`, `add_rule`, `remove_rule` and
        `set_rule_enabled` (``kind`` names one): queued in call order, answered by the
        ticket's ``wait()``. Many callers at once (API clients, the bench's updater) share
        groups, and so pushes."""
        return self.queued.submit(Change(kind, args))

    def _compute(self, change: Change) -> ChangeResult:
        """One change in memory (inside a group: pushed and written with the group)."""
        methods: dict[str, Callable[..., ChangeResult]] = {
            "set_members": self._set_members, "add_rule": self._add_rule,
            "remove_rule": self._remove_rule, "set_rule_enabled": self._set_rule_enabled}
        return methods[change.kind](*change.args)

    def _set_members(self, name: str, add: list[str], remove: list[str]) -> ChangeResult:
        with self._counting():
            changes = self._member_change(self.changes, name, add, remove)
            data, _ = changes.apply_to(self.file_data)
            affected = self.refs.rules_using(data, name)
            return self._update(changes, data, affected, extra_sets=[name])

    def _member_change(self, changes: RuntimeChanges, name: str, add: list[str], remove: list[str],
                       ) -> RuntimeChanges:
        """`changes` with the members of set `name` changed; ChangeError for a set or member that
        cannot be (the policy's own checks come when the result is validated)."""
        if name not in policydata.address_sets(self.data):
            raise ChangeError(f"no address set {name!r}", 404)
        file_members = list(policydata.address_sets(self.file_data).get(name, []))
        return changes.set_members(name, file_members, add, remove)

    def _members_together(self, run: list[Ticket]) -> list[tuple[Ticket, ChangeResult]]:
        """Set changes queued one after the other, made as one: one validation and one recompile of
        the rules their sets reach, however many there are. A change that fails on its own terms (no
        such set, not an address) is refused alone first; if the rest does not validate together,
        they are made one by one, so that only the one at fault is refused."""
        changes, valid = self.changes, []
        for ticket in run:
            name, add, remove = ticket.change.args
            try:
                with self._counting():
                    changes = self._member_change(changes, name, add, remove)
            except ChangeError as exc:
                ticket.fail(exc)
                continue
            valid.append(ticket)
        if len(valid) < 2:
            return self._one_by_one(valid)
        data, _ = changes.apply_to(self.file_data)
        names = sorted({t.change.args[0] for t in valid})
        affected = set().union(*(self.refs.rules_using(data, n) for n in names))
        try:
            result = self._update(changes, data, affected, extra_sets=names)
        except ChangeError:
            return self._one_by_one(valid)
        return [(ticket, result) for ticket in valid]

    def _one_by_one(self, run: list[Ticket]) -> list[tuple[Ticket, ChangeResult]]:
        done = []
        for ticket in run:
            try:
                done.append((ticket, self._compute(ticket.change)))
            except Exception as exc:  # refused alone: it changed nothing in memory
                ticket.fail(exc)
        return done

    def _add_rule(self, rule: dict[str, Any], before: str | None, after: str | None) -> ChangeResult:
        with self._counting():
            name = rule.get("name") if isinstance(rule, dict) else None
            if not isinstance(name, str):
                raise ChangeError("a rule needs a name")
            if name in self._rule_names():
                raise ChangeError(f"a rule named {name!r} exists", 409)
            for anchor in (before, after):
                if anchor is not None and anchor not in self._fw_names():
                    raise ChangeError(f"no firewall rule {anchor!r} to place the rule by", 404)
            changes = self.changes.add_rule(rule, before, after)
            data, _ = changes.apply_to(self.file_data)
            return self._update(changes, data, {name}, structural=True)

    def _remove_rule(self, name: str) -> ChangeResult:
        with self._counting():
            self._require_rule(name)
            changes = self.changes.remove_rule(name)
            data, _ = changes.apply_to(self.file_data)
            return self._update(changes, data, {name} & self._fw_names(), structural=True)

    def _set_rule_enabled(self, name: str, enabled: bool) -> ChangeResult:
        with self._counting():
            self._require_rule(name)
            changes = self.changes.set_enabled(name, enabled)
            data, _ = changes.apply_to(self.file_data)
            return self._update(changes, data, {name} & self._fw_names())

    def _require_rule(self, name: str) -> None:
        if name not in self._rule_names():
            raise ChangeError(f"no rule {name!r}", 404)

    def _fw_names(self) -> set[str]:
        return {r["name"] for r in policydata.firewall_rules(self.data)}

    def _rule_names(self) -> set[str]:
        return self._fw_names() | {n["name"] for n in policydata.nat_rules(self.data)}

    def _update(self, changes: RuntimeChanges, data: dict[str, Any], affected: set[str],
                extra_sets: Sequence[str] = (), structural: bool = False) -> ChangeResult:
        """Validate the part of `data` the change touches, recompile the affected rules, push."""
        return self._update_locked(changes, data, affected, extra_sets, structural, time.monotonic())

    @contextlib.contextmanager
    def _counting(self) -> Iterator[None]:
        """Count refused runtime changes (a metric) and let the error through."""
        try:
            yield
        except ChangeError:
            self.status.update_failures += 1
            raise

    def _update_locked(self, changes: RuntimeChanges, data: dict[str, Any], affected: set[str],
                       extra_sets: Sequence[str], structural: bool, started: float) -> ChangeResult:
        try:
            part = policydata.resolve_part(data, self._rules_data(data, affected, structural), extra_sets,
                                           "<runtime change>")
        except PolicyError as exc:
            raise ChangeError("; ".join(policydata.errors_of(exc)) or "the change does not validate", 400,
                              policydata.diagnostics_text(exc.diagnostics)) from exc
        resolved = {r.name: r for r in part.rules}
        positions = self.inc.positions
        same_order = not structural and all(n in positions and n in resolved for n in affected)
        if same_order:
            rules = list(self.inc.rules)
            for name in affected:
                rules[positions[name]] = resolved[name]
        else:
            order = [r["name"] for r in policydata.firewall_rules(data)]
            current = {r.name: r for r in self.inc.rules}
            rules = [resolved[n] if n in affected else current[n] for n in order
                     if (n in resolved if n in affected else n in current)]
        try:
            pending = self.inc.prepare(rules, affected, apply_health(part.nat, self.down), same_order=same_order)
        except NeedsFullCompile as exc:
            log.info("full recompile: %s", exc)
            return self._full_update(changes, data, started)
        plan = self._plan(pending.changes)
        if self._batch is not None:
            changed = pending.changes
            self._batch.touch(self.entries, (f.key for f in changed.added), (f.key for f in changed.removed),
                              (new.key for _, new in changed.changed))
        else:
            if not plan.empty:
                self._push(plan)
            self._persist(changes, plan)
        self.inc.commit(pending)
        self._apply_entries(pending.changes)
        self.names.update({rule_id(n): n for n in affected})
        self._adopt_data(changes, data)
        return self._result(plan.counts(), pending.rules_recompiled, started)

    def _rules_data(self, data: dict[str, Any], affected: set[str], structural: bool) -> list[dict[str, Any]]:
        """The data of the affected firewall rules, in policy order."""
        rules: list[dict[str, Any]] = policydata.firewall_rules(data)
        if structural:
            return [r for r in rules if r["name"] in affected]
        where = sorted(self.data_index[n] for n in affected if n in self.data_index)
        return [rules[i] for i in where]

    def _full_update(self, changes: RuntimeChanges, data: dict[str, Any], started: float) -> ChangeResult:
        try:
            policy = policydata.resolve_data(data, "<runtime change>")
        except PolicyError as exc:
            raise ChangeError("; ".join(policydata.errors_of(exc)), 400,
                              policydata.diagnostics_text(exc.diagnostics)) from exc
        inc = IncrementalFlows(self._with_health(policy))
        entries = dict(inc.flows)
        plan = make_plan(installed(self.entries.values()), desired_mods(entries.values()))
        if self._batch is not None:
            self._batch.touch(self.entries, entries, self.entries)
        else:
            if not plan.empty:
                self._push(plan)
            self._persist(changes, plan)
        self.inc, self.entries = inc, entries
        self.names.update(inc.rule_names())
        self._adopt_data(changes, data)
        return self._result(plan.counts(), len(inc.rules), started)

    def _persist(self, changes: RuntimeChanges, plan: Plan) -> None:
        """Keep the change on disk before saying yes; if that fails, take it back from the switch."""
        try:
            save_changes(self.paths.runtime, changes)
        except OSError as exc:
            if not plan.empty:
                self._push(plan.inverse())
            raise ChangeError(f"cannot write {self.paths.runtime}: {exc}; the change was taken back", 500) from exc

    def _plan(self, changes: FlowChanges) -> Plan:
        plan = Plan(add=list(changes.added), delete=installed(self.entries[f.key] for f in changes.removed))
        for old, new in changes.changed:
            before = self.entries[old.key]
            if before.body != new.body:
                plan.change.append((InstalledFlow(before, 0, 0), new))
        return plan

    def _apply_entries(self, changes: FlowChanges) -> None:
        for flow in changes.removed:
            self.entries.pop(flow.key, None)
        for flow in changes.added:
            self.entries[flow.key] = flow
        for _, new in changes.changed:
            self.entries[new.key] = new

    def _adopt_data(self, changes: RuntimeChanges, data: dict[str, Any]) -> None:
        structural = len(policydata.firewall_rules(data)) != len(policydata.firewall_rules(self.data))
        self.changes, self.data = changes, data
        if structural:
            self._index_data()
        self._record()

    def _result(self, counts: dict[str, int], recompiled: int, started: float) -> ChangeResult:
        seconds = time.monotonic() - started
        self.status.last_change_seconds = seconds
        self.status.change_durations.observe(seconds)
        return ChangeResult(self.status.generation, counts, recompiled, seconds)

    # --- group commit ---------------------------------------------------------------------------
    def _commit_group(self, group: list[Ticket]) -> None:
        """Compute every change of the group in memory, then push the net difference once and
        write the runtime changes once; answer each change only then."""
        old_changes, generation = self.changes, self.status.generation
        self._batch = batch = _Batch()
        done: list[tuple[Ticket, ChangeResult]] = []
        try:
            for run in _runs(group):
                members = len(run) > 1  # runs of more than one are set changes
                done += self._members_together(run) if members else self._one_by_one(run)
        finally:
            self._batch = None
        if not done:
            return
        plan = make_plan(installed(e for e in batch.before.values() if e is not None),
                         desired_mods(self.entries[k] for k in batch.before if k in self.entries))
        try:
            self._push(plan)  # an empty plan contacts no switch but is a new generation
            self._persist(self.changes, plan)
        except Exception as exc:
            self.status.update_failures += len(done)
            log.error("a group of %d runtime changes was refused: %s", len(done), exc)
            self.status.generation = max(self.status.generation, generation)
            with contextlib.suppress(Exception):
                self._rebuild(old_changes)
            error = exc if isinstance(exc, ChangeError) else ChangeError(
                f"the switch refused the change: {exc}", 502)
            for ticket, _ in done:
                ticket.fail(error)
            return
        self._record()
        finished = time.monotonic()
        self.status.last_change_seconds = finished - group[0].submitted
        for ticket, result in done:
            ticket.succeed(ChangeResult(self.status.generation, result.counts, result.rules_recompiled,
                                        finished - ticket.submitted))

    def _rebuild(self, changes: RuntimeChanges) -> None:
        """Back to `changes` in memory (what the switch still has after a refused group)."""
        file_policy = policydata.resolve_data(self.file_data, "<policy files>")
        object.__setattr__(file_policy, "digest", self.file_digest)  # the files, not their data
        self._adopt(self._build(changes, (file_policy, self.file_data)))
        self.changes = changes
        self._record()



def _runs(group: list[Ticket]) -> list[list[Ticket]]:
    """The group cut into runs to compute together: set changes that follow one another, and every
    other change on its own."""
    runs: list[list[Ticket]] = []
    for ticket in group:
        if ticket.change.kind == "set_members" and runs and runs[-1][-1].change.kind == "set_members":
            runs[-1].append(ticket)
        else:
            runs.append([ticket])
    return runs


@dataclass
class _Batch:
    """The flows a group of changes touched, as they were before the group (None: absent)."""

    before: dict[FlowKey, FlowMod | None] = field(default_factory=dict)

    def touch(self, entries: dict[FlowKey, FlowMod], *keys: Any) -> None:
        for group in keys:
            for key in group:
                if key not in self.before:
                    self.before[key] = entries.get(key)


