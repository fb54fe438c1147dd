"""`ovsmgr fleet plan` and `ovsmgr fleet apply`: every switch's plan, and a staged rollout.

A rollout writes a new generation to the store (every switch's validated policy, in one
transaction, under the store's rollout lock), then releases it switch by switch: the canaries one
at a time, then batches of `rollout.batch` switches applied side by side. Each switch is applied
by `ovsmgr.switch.apply.apply_policy`, as `ovsmgr apply` does (one bundle, its previous flows put
back if anything after the push fails); with `rollout.confirm` it is applied as `apply --confirm`
and confirmed only once the switch answers with exactly the flows wanted, so a switch that the new
policy cuts off rolls back by itself. What happened to each switch is written to its row
(`applied_generation`, `error`, ...). A failure stops the rollout (`stop_on_failure`, the default):
switches not reached keep their generation and their row says why; else the failed switch is
skipped and the rollout goes on.

A switch with controllers (`controllers:` in the fleet file) is not pushed to: released, it is applied
by the active `ovsmgr controller --fleet`, and the rollout waits (up to `rollout.timeout`) until that
controller wrote the generation, or its error, to the switch's row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from ovsmgr.fleet.fleetfile import Fleet
from ovsmgr.fleet.runtime import with_runtime
from ovsmgr.fleet.state import StoreError, StoreState
from ovsmgr.fleet.store import ROLLOUT_LOCK, FleetStore
from ovsmgr.fleet.storecmds import now
from ovsmgr.fleet.targets import FleetError, desired_switches, switch_target
from ovsmgr.policy import ResolvedPolicy
from ovsmgr.switch.apply import apply_policy, plan_policy
from ovsmgr.switch.plan import Plan
from ovsmgr.switch.record import applied_by
from ovsmgr.switch.rollback import confirm_apply

LOCK_TIMEOUT = 10.0
"""Seconds a rollout waits for another rollout to let go of the store's rollout lock (`ROLLOUT_LOCK`)."""


@dataclass(frozen=True)
class SwitchPlan:
    name: str
    plan: Plan | None
    names: dict[int, str]
    error: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What applying one switch came to."""

    name: str
    error: str | None = None
    switch_generation: int | None = None
    """The switch's own apply generation (its record's), when it applied."""
    flows: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class RolloutResult:
    generation: int
    outcomes: list[Outcome]
    stopped_at: str | None = None
    """The switch whose failure stopped the rollout."""
    not_reached: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(o.error is None for o in self.outcomes) and not self.not_reached


def _error_text(exc: BaseException) -> str:
    return "; ".join([str(exc) or type(exc).__name__, *getattr(exc, "__notes__", ())])


def plan_fleet(fleet: Fleet, policies: dict[str, ResolvedPolicy]) -> list[SwitchPlan]:
    """What applying would change on each switch; a switch that cannot be read says why."""
    plans = []
    for name, policy in policies.items():
        try:
            plan, names = plan_policy(policy, switch_target(fleet.switches[name]))
            plans.append(SwitchPlan(name, plan, names))
        except Exception as exc:  # any switch's failure is reported with its name, the others still planned
            plans.append(SwitchPlan(name, None, {}, _error_text(exc)))
    return plans


def batches(fleet: Fleet, names: list[str]) -> list[list[str]]:
    """The canaries one by one, then the others in the file's order, `rollout.batch` at a time."""
    canaries = [n for n in fleet.rollout.canary if n in names]
    rest = [n for n in names if n not in canaries]
    size = fleet.rollout.batch
    return [[n] for n in canaries] + [rest[i:i + size] for i in range(0, len(rest), size)]


def apply_switch(fleet: Fleet, name: str, policy: ResolvedPolicy) -> Outcome:
    """Apply one switch's policy as `ovsmgr apply [--confirm]` does; the outcome, never an exception."""
    started = time.monotonic()
    try:
        target = switch_target(fleet.switches[name])
        result = apply_policy(policy, target, confirm=fleet.rollout.confirm)
        if fleet.rollout.confirm is not None:
            check, _ = plan_policy(policy, target)
            if not check.empty:
                raise FleetError(f"switch {name} does not hold the flows just applied; not confirmed, it rolls "
                                 f"back within {fleet.rollout.confirm} s")
            confirm_apply(target, policy.bridge)
    except Exception as exc:  # the switch failed: its row says why, the rollout decides what follows
        return Outcome(name, _error_text(exc), seconds=time.monotonic() - started)
    return Outcome(name, None, result.generation, result.flow_count, time.monotonic() - started)


def _apply_batch(fleet: Fleet, batch: list[str], policies: dict[str, ResolvedPolicy]) -> list[Outcome]:
    """The batch's switches side by side; one that takes longer than `rollout.timeout` has failed."""
    pool = ThreadPoolExecutor(max_workers=len(batch), thread_name_prefix="ovsmgr-rollout")
    futures = {name: pool.submit(apply_switch, fleet, name, policies[name]) for name in batch}
    deadline = time.monotonic() + fleet.rollout.timeout
    outcomes = []
    for name, future in futures.items():
        try:
            outcomes.append(future.result(timeout=max(0.0, deadline - time.monotonic())))
        except FutureTimeout:
            outcomes.append(Outcome(name, f"switch {name} did not apply within {fleet.rollout.timeout} s"))
    pool.shutdown(wait=False, cancel_futures=True)
    return outcomes


def run_rollout(fleet: Fleet, policies: dict[str, ResolvedPolicy], store: FleetStore,
                report: Callable[[Outcome], None] = lambda _o: None) -> RolloutResult:
    """Write the next generation and roll it out (module docstring); StoreError if the store refuses."""
    store.wait_lock(LOCK_TIMEOUT)
    state = store.state()
    desired = with_runtime(desired_switches(policies, fleet.switches), state)
    generation = store.write_generation(state.generation, desired,
                                        {"state": "running", "started_at": now(), "by": applied_by()})
    outcomes: list[Outcome] = []
    order = batches(fleet, list(policies))
    for i, batch in enumerate(order):
        store.release(batch, generation)
        served = [n for n in batch if fleet.switches[n].controllers]
        pushed = [n for n in batch if n not in served]
        for outcome in _apply_batch(fleet, pushed, policies) if pushed else []:
            _observe(store, outcome, generation, policies[outcome.name].digest)
            outcomes.append(outcome)
            report(outcome)
        for outcome in await_controllers(store, served, generation, fleet.rollout.timeout) if served else []:
            outcomes.append(outcome)
            report(outcome)
        failed = [o.name for o in outcomes if o.error is not None]
        if failed and fleet.rollout.stop_on_failure:
            rest = tuple(n for b in order[i + 1:] for n in b)
            _stopped(store, generation, failed[0], rest)
            return RolloutResult(generation, outcomes, failed[0], rest)
    failed = [o.name for o in outcomes if o.error is not None]
    store.set_rollout({"state": "done" if not failed else "done with failures", "generation": str(generation),
                       "finished_at": now(), **({"failed": ",".join(failed)} if failed else {})})
    return RolloutResult(generation, outcomes)


def await_controllers(store: FleetStore, names: list[str], generation: int, timeout: float) -> list[Outcome]:
    """Switches served by controllers: released, they are applied by the active fleet controller,
    which writes `applied_generation` (or the `error` of this generation) to their rows."""
    started = time.monotonic()

    def outcome(state: StoreState, name: str) -> Outcome | None:
        row = state.switches.get(name)
        if row is not None and row.applied_generation >= generation:
            return Outcome(name, None, seconds=time.monotonic() - started)
        if row is not None and row.error and row.error.startswith(f"generation {generation}:"):
            return Outcome(name, row.error.removeprefix(f"generation {generation}: "),
                           seconds=time.monotonic() - started)
        return None

    try:
        state = store.wait(lambda s: all(outcome(s, n) is not None for n in names), timeout)
    except StoreError:
        state = store.state()
    out = []
    for name in names:
        found = outcome(state, name)
        if found is None:
            row = state.switches.get(name)
            why = (f"the switch is not connected to {row.served_by}, its active controller" if row is not None
                   and row.served_by and not row.connected else "is `ovsmgr controller --fleet` (or the switch's "
                   "agent) running, the switch connected to it?")
            found = Outcome(name, f"no controller applied generation {generation} to switch {name} within "
                                  f"{timeout:g} s ({why})", seconds=time.monotonic() - started)
            store.observe(name, error=f"generation {generation}: {found.error}")
        out.append(found)
    return out


def _observe(store: FleetStore, outcome: Outcome, generation: int, digest: str) -> None:
    if outcome.error is None:
        store.observe(outcome.name, applied_generation=generation, applied_digest=digest, applied_at=now(),
                      applied_by=applied_by(), connected=True, drifted=False, error=None)
    else:
        store.observe(outcome.name, error=f"generation {generation}: {outcome.error}")


def _stopped(store: FleetStore, generation: int, at: str, rest: tuple[str, ...]) -> None:
    reason = f"generation {generation} stopped before this switch: switch {at} failed (stop_on_failure)"
    for name in rest:
        store.observe(name, error=reason)
    store.set_rollout({"state": "stopped", "generation": str(generation), "stopped_at": at, "finished_at": now(),
                       **({"not_reached": ",".join(rest)} if rest else {})})


__all__ = ["ROLLOUT_LOCK", "FleetError", "Outcome", "RolloutResult", "StoreError", "SwitchPlan", "apply_switch", "batches",
           "plan_fleet", "run_rollout"]
