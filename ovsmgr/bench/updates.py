"""Control and data at once: runtime changes applied through the controller's engine while the
load runs (the ``updates`` method).

A group of the method is one pipeline with the bench's blocklist (`testbed.with_blocklist`:
an address set and, first in the firewall, a rule dropping traffic from the generator's zone
to it; the load is tested against the rule and never matches it). Its baseline is the NDR of
that pipeline; its subject is the NDR of the same pipeline while an `Updater` applies
``update_rate`` changes per second. The changes come in cycles after which the policy is the
file's again (`update_steps`): ``RUNTIME_MEMBERS`` members added to the set one by one and
removed again (``set``), the rule disabled and enabled again (``rule``), or both (``mixed``:
the adds, the rule disabled and enabled, the removes). Each one changes flows on the switch. The engine commits the changes queued together as one group and pushes their net
difference, so a change and its inverse in one group would push nothing: the members are
distinct and at least as many as the changes that may be unanswered, and a change is not
queued while its inverse is (only the rule's enable ever waits for that).

**The controller runs in the bench's process.** The updater drives an
`ovsmgr.controller.engine.Engine` (the object ``ovsmgr controller`` keeps, whose methods the
API's ``POST /v1/sets/NAME/add``, ``/remove``, ``/v1/rules/NAME/enable`` and ``/disable``
call) on the test bed's `SwitchTarget`: the same incremental compile, the same atomic
OpenFlow bundle over the switch connection, the same runtime-changes file written (fsync'd) before a change
counts, the same background recorder. It is not a separate ``ovsmgr controller`` process,
because that process takes the bridge over (a controller connection, ``fail_mode=secure``,
which empties the flow table when it is first set; its own state file), which the bench's
in-place pipeline switching and its plain-forwarding baseline flows would then fight with, and
because os-ken's start-up costs seconds per point. What this leaves out is the API's HTTP
round trip on a unix socket (well under a millisecond of the tens a change takes) and the
process boundary: the updater thread is unpinned and runs at the default priority, as the
controller would, so its CPU time competes with trafgen and the switch just as the
controller's would.

The updater keeps an open-loop schedule: change ``i`` is due ``i / update_rate`` seconds
after it starts, and is queued then without waiting for the ones before (in order, as
independent API clients would send them; at most 64 unanswered). The engine commits what is
queued in groups: one push and one write of the runtime-changes file per group, so a change's
latency is its wait for the group in progress plus its own group's commit. When the engine
cannot keep up, the queue (and then the updater) falls behind and the figures say so
(``updates_per_s`` below ``update_rate``, ``updates_kept_up: false``) rather than dropping
changes. A change counts as applied only when it changed flows and the engine's generation
moved (a group whose changes cancel out, such as an add and its remove, is a generation with
nothing to push);
before the load starts one full cycle is checked on the switch itself (its flow table read
back after each step), and after the run the switch's table is compared with the engine's.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from ovsmgr.bench.measure import percentile
from ovsmgr.bench.netns import thread_cpu_ticks
from ovsmgr.bench.spec import KEPT_UP
from ovsmgr.bench.testbed import BLOCKLIST, Config, OvsTestbed, policy_text
from ovsmgr.southbound.openflow import SwitchConnection, SwitchFlowTable
from ovsmgr.switch.plan import desired_mods, make_plan

if TYPE_CHECKING:  # imported when an updater starts: the rest of the bench needs no controller code
    from ovsmgr.controller.engine import ChangeResult, Engine
    from ovsmgr.controller.queue import Ticket

IN_FLIGHT = 64
"""Changes the updater leaves unanswered at most (then it waits, and falls behind)."""
RUNTIME_MEMBERS = tuple(f"203.0.113.{64 + i}" for i in range(IN_FLIGHT))
"""The members the updater adds and removes (TEST-NET-3, like the set's own): as many as the
changes in flight, so that no member's add and remove are ever queued together."""
MAX_ERRORS = 5
"""Error messages kept per run (all failures are counted)."""

Action = Literal["add", "remove", "disable", "enable"]


@dataclass(frozen=True)
class Step:
    action: Action
    member: str = ""
    """The member added or removed (set changes)."""

    @property
    def target(self) -> str:
        """What the change and its inverse both change (a member, or the rule)."""
        return self.member or BLOCKLIST

    def apply(self, engine: Engine) -> ChangeResult:
        """Make the change through the engine (as the API does); returns its ChangeResult."""
        return self.queue(engine).wait()

    def queue(self, engine: Engine) -> Ticket:
        """Queue the change (in order, as concurrent API clients would); ``wait()`` answers."""
        if self.action == "add":
            return engine.queue("set_members", BLOCKLIST, [self.member], [])
        if self.action == "remove":
            return engine.queue("set_members", BLOCKLIST, [], [self.member])
        return engine.queue("set_rule_enabled", BLOCKLIST, self.action == "enable")


def update_steps(kind: str, members: int = len(RUNTIME_MEMBERS)) -> tuple[Step, ...]:
    """One cycle of changes with the first `members` of `RUNTIME_MEMBERS`; after a whole cycle
    the policy is the file's again."""
    if not 1 <= members <= len(RUNTIME_MEMBERS):
        raise ValueError(f"members must be 1 to {len(RUNTIME_MEMBERS)}")
    adds = tuple(Step("add", m) for m in RUNTIME_MEMBERS[:members])
    removes = tuple(Step("remove", m) for m in RUNTIME_MEMBERS[:members])
    if kind == "set":
        return (*adds, *removes)
    if kind == "rule":
        return (Step("disable"), Step("enable"))
    if kind == "mixed":
        return (*adds, Step("disable"), Step("enable"), *removes)  # disabled, the set changes nothing
    raise ValueError(f"unknown update kind {kind!r}")


@dataclass
class UpdateLog:
    """What the update loop did; `update_figures` turns it into results."""

    rate: float
    started: float = math.nan
    stopped: float = math.nan
    latencies: list[float] = field(default_factory=list)
    """Seconds each applied change took (the engine call: compile, push, persist)."""
    lags: list[float] = field(default_factory=list)
    """Seconds from each applied change's due time to its completion."""
    applied: int = 0
    failed: int = 0
    flow_mods: int = 0
    errors: list[str] = field(default_factory=list)
    cpu_s: float = 0.0
    """CPU time of the updater thread (the engine's Python side; not ovs-ofctl's)."""


def change_size(result: ChangeResult, generation_before: int) -> int:
    """Flows the change added, changed and removed; ValueError when it did not reach the switch
    (nothing pushed, or the engine's generation did not move)."""
    mods = sum(int(v) for v in (result.counts or {}).values())
    if mods <= 0 or result.generation <= generation_before:
        raise ValueError(f"the change reached no flow (changes {result.counts}, generation "
                         f"{generation_before} -> {result.generation})")
    return mods


ChangeStep = Callable[[int], "int | Callable[[], int]"]
"""Change ``i``: made at once (returns the flows it changed) or queued (returns a callable that
waits for it and returns them); raises when refused."""


def run_updates(step: ChangeStep, log: UpdateLog, stop: Callable[[float], bool],
                clock: Callable[[], float] = time.monotonic, in_flight: int = IN_FLIGHT) -> None:
    """Make change ``i`` when it is due, ``i / log.rate`` s after the start, until
    ``stop(timeout)`` (which waits up to ``timeout`` seconds) says to stop. A change made at once
    holds the loop (late changes then run back to back); a queued change is waited for on
    another thread, so the next one is submitted on time, in order, as independent API clients
    would, with at most ``in_flight`` unanswered (then the loop waits: it falls behind)."""
    period = 1.0 / log.rate
    cpu = time.thread_time()
    start = log.started = clock()
    guard = threading.Lock()
    slots = threading.BoundedSemaphore(in_flight)
    waiters: list[threading.Thread] = []

    def failed(i: int, exc: Exception) -> None:
        with guard:
            log.failed += 1
            if len(log.errors) < MAX_ERRORS:
                log.errors.append(f"change {i}: {type(exc).__name__}: {exc}"[:300])

    def finished(mods: int, began: float, due: float) -> None:
        done = clock()
        with guard:
            log.applied += 1
            log.flow_mods += mods
            log.latencies.append(done - began)
            log.lags.append(done - due)

    def await_change(i: int, wait: Callable[[], int], began: float, due: float) -> None:
        try:
            finished(wait(), began, due)
        except Exception as exc:
            failed(i, exc)
        finally:
            slots.release()

    i = 0
    while True:
        due = start + i * period
        if stop(max(0.0, due - clock())):
            break
        slots.acquire()
        began = clock()
        try:
            made = step(i)
        except Exception as exc:  # counted and reported; the next change still comes
            slots.release()
            failed(i, exc)
        else:
            if callable(made):
                waiter = threading.Thread(target=await_change, args=(i, made, began, due), daemon=True)
                waiter.start()
                waiters = [w for w in waiters if w.is_alive()] + [waiter]
            else:
                slots.release()
                finished(made, began, due)
        i += 1
    for waiter in waiters:
        waiter.join(60)
    log.stopped = clock()
    log.cpu_s = time.thread_time() - cpu


def update_figures(log: UpdateLog) -> dict[str, Any]:
    """Requested, applied and achieved changes, their latency, and whether the updater kept up."""
    elapsed = log.stopped - log.started
    if not elapsed > 0:
        return {"update_rate": log.rate, "updates_applied": 0, "updates_failed": log.failed}
    latencies = sorted(v * 1000 for v in log.latencies)
    achieved = log.applied / elapsed
    figures: dict[str, Any] = {
        "update_rate": log.rate,
        "updates_requested": int(elapsed * log.rate) + 1,
        "updates_applied": log.applied,
        "updates_failed": log.failed,
        "updates_per_s": round(achieved, 2),
        "updates_kept_up": achieved >= KEPT_UP * log.rate and log.failed == 0,
        "update_latency_p50_ms": round(percentile(latencies, 50), 2),
        "update_latency_p99_ms": round(percentile(latencies, 99), 2),
        "update_latency_max_ms": round(latencies[-1], 2) if latencies else math.nan,
        "update_lag_max_ms": round(max(log.lags) * 1000, 1) if log.lags else math.nan,
        "update_flow_mods": log.flow_mods,
        "updates_window_s": round(elapsed, 3),
        "updater_cpu_s": round(log.cpu_s, 3),
    }
    if log.errors:
        figures["update_errors"] = list(log.errors)
    return figures


class Updater:
    """The engine on a test bed's switch and the thread applying changes (a context manager).

    Entering builds the engine from the pipeline's YAML (the same policy the bed applied),
    reconciles it with the switch, checks one cycle on the switch, then starts the thread;
    leaving stops it and checks the switch against the engine. `figures` is the result.
    """

    def __init__(self, bed: OvsTestbed, config: Config, rate: float, kind: str, workdir: Path) -> None:
        self.bed, self.config, self.rate, self.kind, self.workdir = bed, config, rate, kind, workdir
        self.steps = update_steps(kind)
        self._unanswered: dict[str, Ticket] = {}
        self.log = UpdateLog(rate)
        self.checks: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._engine: Engine | None = None
        self._connection: SwitchConnection | None = None
        self._vswitchd: tuple[int, int] | None = None

    # -- the engine ----------------------------------------------------------------------------
    def _build_engine(self) -> Engine:
        from ovsmgr.controller.engine import Engine
        from ovsmgr.controller.paths import ControllerPaths

        policy = self.workdir / f"{self.config.label}.yaml"
        policy.write_text(policy_text(self.config))
        ControllerPaths(self.bed.target.state_dir, self.bed.bridge).runtime.unlink(missing_ok=True)
        engine = Engine([str(policy)], self.bed.target, table=self._table())
        engine.load()
        plan = engine.reconcile()  # the bed applied the same policy: normally nothing to push
        self.checks["reconcile_flow_mods"] = sum(plan.counts().values())
        return engine

    def _table(self) -> SwitchFlowTable:
        """The bridge's flow table over a connection of the updater's own (closed with the process)."""
        if self._connection is None:
            self._connection = SwitchConnection(self.bed.target.openflow(self.bed.bridge))
        return SwitchFlowTable(self._connection)

    @property
    def engine(self) -> Engine:
        assert self._engine is not None, "the updater has not started"
        return self._engine

    def _agrees(self) -> bool:
        return make_plan(self._table().read(), desired_mods(self.engine.entries.values())).empty

    def _verify_cycle(self) -> None:
        """Each step of a one-member cycle, with the switch's table read back after it: it must differ
        from the one before and equal the engine's. Untimed, before the load starts."""
        table = self._table()
        before = {s.mod for s in table.read()}
        counts = [len(before)]
        for step in update_steps(self.kind, members=1):
            generation = self.engine.status.generation
            change_size(step.apply(self.engine), generation)
            after = {s.mod for s in table.read()}
            if after == before:
                raise RuntimeError(f"{step.action}: the switch's flow table did not change")
            if not self._agrees():
                raise RuntimeError(f"{step.action}: the switch's flow table is not the engine's")
            counts.append(len(after))
            before = after
        self.checks["verified_cycle"] = {"steps": [s.action for s in update_steps(self.kind, members=1)],
                                         "switch_flows": counts}

    # -- running ---------------------------------------------------------------------------------
    def _step(self, i: int) -> Callable[[], int]:
        step = self.steps[i % len(self.steps)]
        inverse = self._unanswered.get(step.target)
        if inverse is not None and not inverse.done():  # queued together, the two would push nothing
            with contextlib.suppress(Exception):  # its own failure is counted by its own waiter
                inverse.wait(60)
        generation = self.engine.status.generation
        ticket = self._unanswered[step.target] = step.queue(self.engine)
        return lambda: change_size(ticket.wait(), generation)

    def _run(self) -> None:
        run_updates(self._step, self.log, self._stop.wait)

    def __enter__(self) -> Updater:
        self._engine = self._build_engine()
        self._verify_cycle()
        pid = self.bed.vswitchd_pid()
        self._vswitchd = (pid, thread_cpu_ticks(pid) - thread_cpu_ticks(pid, "pmd"))
        self._thread = threading.Thread(target=self._run, name="ovsmgr-bench-updates", daemon=True)
        self._thread.start()
        return self

    def progress(self) -> tuple[float, int]:
        """(now, changes applied so far): two of these give the rate in between (a trial's)."""
        return time.monotonic(), self.log.applied

    @staticmethod
    def rate_between(a: tuple[float, int], b: tuple[float, int]) -> float:
        return round((b[1] - a[1]) / (b[0] - a[0]), 2) if b[0] > a[0] else math.nan

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if self._vswitchd is not None:
            pid, ticks = self._vswitchd
            other = thread_cpu_ticks(pid) - thread_cpu_ticks(pid, "pmd") - ticks
            elapsed = self.log.stopped - self.log.started
            if elapsed > 0:
                self.checks["vswitchd_other_cpu_share"] = round(other / os.sysconf("SC_CLK_TCK") / elapsed, 3)
        if self._engine is not None and kind is None:
            self.checks["switch_agrees"] = self._agrees()
            if self._engine.recorder is not None:
                self._engine.recorder.flush()  # its state file write is done before the next point
        if self._connection is not None:
            self._connection.close()

    def figures(self) -> dict[str, Any]:
        out = update_figures(self.log)
        out["update_kind"] = self.kind
        out.update(self.checks)
        return out
