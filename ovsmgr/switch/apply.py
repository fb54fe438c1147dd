"""plan and apply against one switch.

The order of an apply keeps the promise "a failed push leaves the switch as it
was": the policy is compiled and the switch read before anything is written;
flows go in one atomic OpenFlow bundle; only after the switch accepted it are
OVSDB settings (ports, external_ids) and the applied-state record written, and
if any of that fails the previous flows and record are put back.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from ovsmgr.compiler import CompiledPolicy, compile_policy
from ovsmgr.compiler.pipeline import cookie_parts
from ovsmgr.policy import ResolvedPolicy
from ovsmgr.southbound.openflow import FlowMod, FlowTable, is_managed
from ovsmgr.southbound.ovsdb import SwitchDB
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch import record as rec
from ovsmgr.switch.cache import Compiled, cache_path, compile_with_cache
from ovsmgr.switch.cache import save as save_cache
from ovsmgr.switch.connect import flow_table
from ovsmgr.switch.lockout import Endpoint, LiveSwitchView, LockoutError, check_lockout
from ovsmgr.switch.plan import (
    Desired,
    Plan,
    desired_mods,
    desired_of,
    full_replacement,
    make_plan,
)
from ovsmgr.switch.rollback import arm_rollback
from ovsmgr.switch.settings import (
    ApplyError,
    check_switch_support,
    datapath_type,
    ensure_switch_settings,
)

__all__ = ["ApplyError", "ApplyResult", "Desire", "apply_policy", "desire", "plan_policy"]


@dataclass(frozen=True)
class ApplyResult:
    plan: Plan
    generation: int
    rollback_at: float | None = None
    warnings: tuple[str, ...] = ()
    flow_count: int = 0
    rules_compiled: int = 0
    """Rules compiled for this apply (the others' flows came from the compile cache)."""
    names: dict[int, str] = field(default_factory=dict)
    """Rule names by cookie rule id, of the policy applied."""


@dataclass(frozen=True)
class Desire:
    """The flows a policy wants on its bridge, how they were made, and the rule names behind them."""

    policy: ResolvedPolicy
    flows: Desired
    names: dict[int, str]
    compiled: Compiled | None
    """None: given as a `CompiledPolicy` (its flows exactly, no cache)."""
    full: CompiledPolicy | None = None

    def compiled_policy(self) -> CompiledPolicy:
        """The full compile (the simulator needs it): made only when asked for."""
        return self.full if self.full is not None else compile_policy(self.policy)


def desire(source: ResolvedPolicy | CompiledPolicy, target: SwitchTarget) -> Desire:
    """A policy's flows, through the compile cache; a `CompiledPolicy`'s flows as they are."""
    if isinstance(source, CompiledPolicy):
        return Desire(source.policy, desired_of(source), source.rule_ids, None, source)
    compiled = compile_with_cache(source, cache_path(target, source.bridge))
    return Desire(source, dict(compiled.flows.flows), compiled.flows.rule_names(), compiled)


def plan_policy(source: ResolvedPolicy | CompiledPolicy, target: SwitchTarget) -> tuple[Plan, dict[int, str]]:
    """What applying would change (and the names of the rules behind the flows)."""
    wanted = desire(source, target)
    bridge = wanted.policy.bridge
    with SwitchDB(target.db) as db:
        if bridge not in db.bridges():
            return make_plan([], wanted.flows), wanted.names
    with flow_table(target, bridge) as table:
        everything = table.read(ours_only=False)
    plan = make_plan([s for s in everything if is_managed(s.cookie)], wanted.flows)
    plan.foreign = [s for s in everything if not cookie_parts(s.cookie)[0]]
    return plan, wanted.names


def apply_policy(
    source: ResolvedPolicy | CompiledPolicy, target: SwitchTarget, *, full: bool = False,
    confirm: float | None = None, force: bool = False, mgmt: Sequence[Endpoint] = (),
) -> ApplyResult:
    """Apply atomically; refuse (LockoutError) a policy that cuts the switch's own connections
    unless `force`; if anything after the flow push fails, put the previous flows back."""
    wanted = desire(source, target)
    policy, desired = wanted.policy, wanted.flows
    bridge = policy.bridge
    with SwitchDB(target.db) as db:
        created = bridge not in db.bridges()
        if not force:
            cuts = check_lockout(wanted.compiled_policy, LiveSwitchView(db, target, bridge, created), mgmt,
                                 os.environ.get("SSH_CONNECTION"), policy)
            if cuts:
                raise LockoutError(cuts)
        if created:
            db.ensure_bridge(bridge, datapath_type=datapath_type(policy.datapath, target), fail_mode="secure")
        else:
            db.ensure_openflow14(bridge)
        with flow_table(target, bridge) as table:
            current = table.read()
            plan = full_replacement(current, desired) if full else make_plan(current, desired)
            previous, files = rec.read_record(target, bridge), rec.RecordFiles.read(target, bridge)
            try:
                check_switch_support(db, policy, target)
                table.push(plan.bundle(wanted.names))
                warnings = ensure_switch_settings(db, policy, target)
                generation = (previous.generation if previous else 0) + 1
                mods = list(desired.values())
                record = rec.make_record(bridge, generation, policy.digest, mods,
                                         policy.ct_zone, policy.sources, wanted.names)
                rec.write_record(target, record, mods, db)
                _keep_cache(target, wanted)
            except Exception as exc:
                _undo(db, table, bridge, created, [s.mod for s in current], files, exc)
                raise
    rollback_at = None
    if confirm is not None:
        rollback_at = arm_rollback(target, bridge, [s.mod for s in current], previous, confirm)
    compiled = wanted.compiled
    return ApplyResult(plan, generation, rollback_at, tuple(warnings), len(desired),
                       compiled.rules_compiled if compiled else len(policy.rules), wanted.names)


def _keep_cache(target: SwitchTarget, wanted: Desire) -> None:
    """The compile cache for the next run, or none when the flows did not come from the policy."""
    path = cache_path(target, wanted.policy.bridge)
    if wanted.compiled is None:
        path.unlink(missing_ok=True)
    else:
        save_cache(path, wanted.policy, wanted.compiled)


def _undo(db: SwitchDB, table: FlowTable, bridge: str, created: bool, before: list[FlowMod],
          files: rec.RecordFiles, exc: Exception) -> None:
    """After a failed apply: remove a bridge this apply created, else put the flows it found back
    (the push may have gone through before OVSDB or the disk refused) and the record it replaced.
    Failing that too is said in `exc`."""
    try:
        if created:
            db.delete_bridge(bridge)
        else:
            table.push(make_plan(table.read(), desired_mods(before)).bundle())
            files.write_back()
    except Exception as undo_exc:  # the original error is what the operator must see first
        exc.add_note(f"restoring the previous flows of {bridge} failed too: {undo_exc}")
    else:
        exc.add_note(f"{bridge} was left as it was before this apply"
                     + ("" if created else " (the previous flows are back)"))
