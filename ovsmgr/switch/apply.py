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
from dataclasses import dataclass

from ovsmgr.compiler import CompiledPolicy
from ovsmgr.compiler.flows import Flow
from ovsmgr.compiler.pipeline import cookie_parts
from ovsmgr.southbound.openflow import FlowMod, FlowTable
from ovsmgr.southbound.ovsdb import SwitchDB
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch import record as rec
from ovsmgr.switch.connect import flow_table
from ovsmgr.switch.lockout import Endpoint, LiveSwitchView, LockoutError, check_lockout
from ovsmgr.switch.plan import (
    Desired,
    Plan,
    desired_flows,
    desired_mods,
    full_replacement,
    make_plan,
)
from ovsmgr.switch.rollback import arm_rollback
from ovsmgr.switch.settings import ApplyError, datapath_type, ensure_switch_settings

__all__ = ["ApplyError", "ApplyResult", "apply_policy", "plan_policy"]


@dataclass(frozen=True)
class ApplyResult:
    plan: Plan
    generation: int
    rollback_at: float | None = None
    warnings: tuple[str, ...] = ()
    models: dict[FlowMod, Flow] | None = None


def _desired(compiled: CompiledPolicy) -> tuple[Desired, dict[FlowMod, Flow]]:
    models: dict[FlowMod, Flow] = {}
    return desired_flows(compiled.flows, models), models


def plan_policy(compiled: CompiledPolicy, target: SwitchTarget) -> tuple[Plan, dict[FlowMod, Flow]]:
    """What applying would change (and the compiled flows by wire form, to print them)."""
    bridge = compiled.policy.bridge
    desired, models = _desired(compiled)
    with SwitchDB(target.db) as db:
        if bridge not in db.bridges():
            return make_plan([], desired), models
    with flow_table(target, bridge) as table:
        everything = table.read(ours_only=False)
    plan = make_plan([s for s in everything if _managed(s.cookie)], desired)
    plan.foreign = [s for s in everything if not cookie_parts(s.cookie)[0]]
    return plan, models


def _managed(cookie: int) -> bool:
    from ovsmgr.southbound.openflow import is_managed

    return is_managed(cookie)


def apply_policy(
    compiled: CompiledPolicy, target: SwitchTarget, *, full: bool = False, confirm: float | None = None,
    force: bool = False, mgmt: Sequence[Endpoint] = (),
) -> ApplyResult:
    """Apply atomically; refuse (LockoutError) a policy that cuts the switch's own connections
    unless `force`; if anything after the flow push fails, put the previous flows back."""
    policy = compiled.policy
    bridge = policy.bridge
    desired, models = _desired(compiled)
    with SwitchDB(target.db) as db:
        created = bridge not in db.bridges()
        if not force:
            cuts = check_lockout(compiled, LiveSwitchView(db, target, bridge, created), mgmt,
                                 os.environ.get("SSH_CONNECTION"))
            if cuts:
                raise LockoutError(cuts)
        if created:
            db.ensure_bridge(bridge, datapath_type=datapath_type(policy.datapath, target), fail_mode="secure")
        else:
            db.ensure_openflow14(bridge)
        with flow_table(target, bridge) as table:
            current = table.read()
            plan = full_replacement(current, desired) if full else make_plan(current, desired)
            previous = rec.read_record(target, bridge), rec.read_flows(target, bridge)
            try:
                table.push(plan.bundle(compiled.rule_ids))
                warnings = ensure_switch_settings(db, policy, target)
                generation = (previous[0].generation if previous[0] else 0) + 1
                mods = list(desired.values())
                record = rec.make_record(bridge, generation, policy.digest, mods,
                                         policy.ct_zone, policy.sources, compiled.rule_ids)
                rec.write_record(target, record, mods, db)
            except Exception as exc:
                _undo(db, table, target, bridge, created, [s.mod for s in current], previous, exc)
                raise
    rollback_at = None
    if confirm is not None:
        rollback_at = arm_rollback(target, bridge, [s.mod for s in current], previous[0], confirm)
    return ApplyResult(plan, generation, rollback_at, tuple(warnings), models)


def _undo(db: SwitchDB, table: FlowTable, target: SwitchTarget, bridge: str, created: bool,
          before: list[FlowMod], previous: tuple[rec.AppliedRecord | None, list[FlowMod] | None],
          exc: Exception) -> None:
    """After a failed apply: remove a bridge this apply created, else put the flows it found back
    (the push may have gone through before OVSDB or the disk refused) and the record it replaced.
    Failing that too is said in `exc`."""
    try:
        if created:
            db.delete_bridge(bridge)
        else:
            table.push(make_plan(table.read(), desired_mods(before)).bundle())
            if previous[0] is not None and previous[1] is not None:
                rec.write_files(target, previous[0], previous[1])
    except Exception as undo_exc:  # the original error is what the operator must see first
        exc.add_note(f"restoring the previous flows of {bridge} failed too: {undo_exc}")
    else:
        exc.add_note(f"{bridge} was left as it was before this apply"
                     + ("" if created else " (the previous flows are back)"))
