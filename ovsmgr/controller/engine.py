"""The controller's state: load, start, reconcile, reload; runtime changes are in `updates`.

One lock serialises everything that changes the switch. Each change follows
apply's promise: compute first, then push one atomic bundle, and only when the
switch took it make the change current on disk and answer. The switch is
diffed against in memory (`IncrementalFlows` + the flows in wire form), never
dumped, except by `reconcile`, which runs when the switch (re)connects. Bundles
and dumps go over the controller's own OpenFlow connection (`attach`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ovsmgr.compiler.ids import rule_id
from ovsmgr.compiler.stages.filter import DEFAULT_RULE
from ovsmgr.controller import policydata
from ovsmgr.controller.health import BackendKey, apply_health
from ovsmgr.controller.metrics import Durations
from ovsmgr.controller.paths import ControllerPaths
from ovsmgr.controller.queue import ChangeQueue
from ovsmgr.controller.recorder import Recorder
from ovsmgr.controller.runtime import ChangeError, RuntimeChanges, load_changes
from ovsmgr.controller.switchdb import prepare_bridge
from ovsmgr.controller.updates import ChangeResult, RuntimeUpdates, _Batch, installed
from ovsmgr.policy import PolicyError, ResolvedPolicy
from ovsmgr.southbound.openflow import FlowMod, FlowTable, OpenFlowError
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch.incremental import FlowKey, IncrementalFlows
from ovsmgr.switch.plan import Plan, desired_mods, make_plan

log = logging.getLogger("ovsmgr.controller")


@dataclass
class EngineStatus:
    """What metrics and `status` report; written under the engine's lock."""

    generation: int = 0
    applied_at: float = 0.0
    last_change_seconds: float = 0.0
    reload_failures: int = 0
    update_failures: int = 0
    last_error: list[str] = field(default_factory=list)
    stale_changes: list[str] = field(default_factory=list)
    connected: bool = False
    reconciles: int = 0
    change_durations: Durations = field(default_factory=Durations)


class Engine(RuntimeUpdates):
    """Policy files + runtime changes -> flows on one bridge, kept there."""

    def __init__(self, files: Sequence[str], target: SwitchTarget, table: FlowTable | None = None,
                 record: bool = True) -> None:
        self.files = [str(f) for f in files]
        self.target = target
        self.table = table
        """The switch's flow table over the controller's connection; None while it is not connected."""
        self.record = record
        self.recorder: Recorder | None = None
        self.lock = threading.RLock()
        self.status = EngineStatus()
        self.changes = RuntimeChanges()
        self.on_generation: list[Callable[[int], None]] = []
        self.names: dict[int, str] = {}
        """Cookie rule id -> rule name, for every rule this controller ever had (late packet-ins, stats)."""
        self.queued = ChangeQueue(self.lock, self._commit_group)
        self._batch: _Batch | None = None
        self.down: frozenset[BackendKey] = frozenset()
        """Backends the health checks took out (`health`): left out of their rules' groups."""

    # --- building -------------------------------------------------------------------------------
    def load(self) -> None:
        """Load files and runtime changes and compile; raises PolicyError/ChangeError (nothing pushed)."""
        loaded = policydata.load_files(self.files)
        self.paths = ControllerPaths(self.target.state_dir, loaded[0].bridge)
        if self.record and self.recorder is None:
            self.recorder = Recorder(self.target, self.paths)
        self.changes = load_changes(self.paths.runtime)
        self._adopt(self._build(self.changes, loaded))
        self.status.generation = int(self.paths.read_applied().get("generation", 0))

    def _build(self, changes: RuntimeChanges, loaded: tuple[ResolvedPolicy, dict[str, Any]] | None = None) -> _Built:
        file_policy, file_data = loaded or policydata.load_files(self.files)
        if file_policy.bridge != self.paths.bridge:
            raise ChangeError(f"the policy is for bridge {file_policy.bridge}, this controller keeps {self.paths.bridge}")
        data, stale = changes.apply_to(file_data)
        policy = file_policy
        if not changes.empty:
            try:
                policy = policydata.resolve_data(data, "<runtime changes>")
            except PolicyError as exc:
                raise ChangeError("the runtime changes do not fit the policy files: "
                                  + "; ".join(policydata.errors_of(exc)), 409,
                                  policydata.diagnostics_text(exc.diagnostics)) from exc
        inc = IncrementalFlows(self._with_health(policy))
        return _Built(file_data, data, stale, inc, dict(inc.flows), file_policy.digest)

    def _adopt(self, built: _Built) -> None:
        self.file_data, self.data, self.inc, self.entries = built.file_data, built.data, built.inc, built.entries
        self.file_digest = built.file_digest
        self.names.update(self.inc.rule_names())
        self.status.stale_changes = built.stale
        self._index_data()
        for line in built.stale:
            log.warning("runtime change no longer applies, left out: %s", line)

    def _index_data(self) -> None:
        """Which rules use which sets, and where each rule's data is (rebuilt when rules come or go)."""
        self.refs = policydata.RuleRefs(self.data)
        self.data_index = {r["name"]: i for i, r in enumerate(policydata.firewall_rules(self.data))}

    @property
    def policy(self) -> ResolvedPolicy:
        return self.inc.policy

    @property
    def bridge(self) -> str:
        return self.inc.policy.bridge

    # --- the switch -------------------------------------------------------------------------------
    def prepare(self, controller_target: str | list[str] | None) -> None:
        """Create/prepare the bridge (secure) and point it at us; flows follow when it connects."""
        with self.lock:
            prepare_bridge(self.target, self.policy, before_flows=True, controller=controller_target)

    def settle(self) -> None:
        """Ports and the conntrack zone limit, once the flows are there."""
        with self.lock:
            prepare_bridge(self.target, self.policy, before_flows=False)

    def attach(self, table: FlowTable | None) -> None:
        """The switch connected (its flow table over the connection) or went (None)."""
        with self.lock:
            self.table = table
            self.status.connected = table is not None

    def reconcile(self) -> Plan:
        """Read our flows from the switch and push what differs (a switch (re)connected)."""
        with self.lock:
            return self._reconcile_locked()

    def _table(self) -> FlowTable:
        if self.table is None:
            raise OpenFlowError("the switch is not connected to the controller")
        return self.table

    def _reconcile_locked(self) -> Plan:
        plan = make_plan(self._table().read(), desired_mods(self.entries.values()))
        self.status.reconciles += 1
        if not plan.empty:
            self._push(plan)
            log.info("reconciled %s: %s", self.bridge, plan.counts())
        self._record()
        return plan

    def _push(self, plan: Plan) -> None:
        """One bundle, and a new generation (also for a group of changes that cancelled out:
        the policy changed and came back, and its callers are told it is on the switch)."""
        if not plan.empty:
            self._table().push(plan.bundle(self.names))
        self.status.generation += 1
        self.status.applied_at = time.time()
        for hook in self.on_generation:
            hook(self.status.generation)

    def _record(self) -> None:
        if self.recorder is not None and self._batch is None:  # a group records once, pushed
            self.recorder.submit(self.status.generation, list(self.entries.values()), self.data, self.files,
                                 self.inc.rule_names(), self.changes, self.policy.ct_zone, self._digest())

    def _digest(self) -> str:
        """The files' digest (the same as `apply` records for them), or with the runtime changes."""
        if self.changes.empty:
            return self.file_digest
        runtime = json.dumps(self.changes.describe())
        return hashlib.sha256(f"{self.file_digest}\n{runtime}".encode()).hexdigest()

    def _with_health(self, policy: ResolvedPolicy) -> ResolvedPolicy:
        """The policy with the backends the health checks took out marked down."""
        return dataclasses.replace(policy, nat=apply_health(policy.nat, self.down)) if self.down else policy

    # --- health checks --------------------------------------------------------------------------------
    def set_backends_down(self, down: frozenset[BackendKey]) -> ChangeResult:
        """Take the backends in `down` out of their select groups (and bring the others back), in one
        bundle; while the switch is not connected the change waits for the next reconcile."""
        started = time.monotonic()
        with self.lock:
            nat = apply_health(self.inc.policy.nat, down)
            pending = self.inc.prepare(self.inc.rules, set(), nat, same_order=True)
            plan = self._plan(pending.changes)
            if self.table is not None and not plan.empty:
                self._push(plan)
            self.down = down
            self.inc.commit(pending)
            self._apply_entries(pending.changes)
            self._record()
            return self._result(plan.counts(), 0, started)

    # --- reload ------------------------------------------------------------------------------------
    def reload(self) -> ChangeResult:
        """Recompile from the files (+ runtime changes) and push the difference; a policy that
        does not validate is refused (raised, counted) and the switch keeps the old one."""
        started = time.monotonic()
        with self.lock:
            try:
                built = self._build(self.changes)
            except (PolicyError, ChangeError) as exc:
                self.status.reload_failures += 1
                self.status.last_error = _messages(exc)
                raise
            plan = make_plan(installed(self.entries.values()), desired_mods(built.entries.values()))
            if not plan.empty:
                self._push(plan)
            self._adopt(built)
            self.status.last_error = []
            self._record()
            return self._result(plan.counts(), len(built.inc.rules), started)

    # --- reading ------------------------------------------------------------------------------------
    def limit_drops(self) -> dict[str, int]:
        """Packets each rule's `limit:` dropped, by rule name (its meter's band count); read over the
        switch connection under the lock, as every exchange on it is."""
        with self.lock:
            stats = self._table().meter_stats()
        return {self.names.get(meter, f"(meter {meter:#x})"): s.dropped_packets for meter, s in sorted(stats.items())}

    def rule_info(self, rid: int) -> tuple[str, str, bool]:
        """Name, action and shadow flag of the rule behind a cookie or packet-in (no lock: a read of dicts)."""
        name = DEFAULT_RULE if rid == 0 else self.names.get(rid, f"(rule {rid:#010x})")
        if name == DEFAULT_RULE:
            return name, self.inc.policy.default_action, False
        index = self.inc.positions.get(name)
        if index is None:
            return name, "?", False
        rule = self.inc.rules[index]
        return name, rule.action, rule.shadow

    def rule_actions(self) -> dict[int, str]:
        """Rule id -> action of every enforced firewall rule, 0 -> the default's (for metrics)."""
        actions: dict[int, str] = {rule_id(r.name): r.action for r in self.inc.rules if not r.shadow}
        actions[0] = self.inc.policy.default_action
        return actions

    def describe(self) -> dict[str, Any]:
        with self.lock:
            s = self.status
            return {
                "bridge": self.bridge, "files": self.files, "generation": s.generation,
                "applied_at": s.applied_at, "flows": len(self.entries), "rules": len(self.inc.rules),
                "connected": s.connected, "reload_failures": s.reload_failures,
                "update_failures": s.update_failures, "last_error": s.last_error,
                "runtime_changes": self.changes.describe(), "stale_changes": s.stale_changes,
            }

    def set_list(self, name: str | None) -> dict[str, Any]:
        with self.lock:
            sets: dict[str, list[str]] = policydata.address_sets(self.data)
            if name is not None and name not in sets:
                raise ChangeError(f"no address set {name!r}", 404)
            chosen = [name] if name is not None else sorted(sets)
            return {n: {"members": sets[n], "runtime": self.changes.sets[n].__dict__ if n in self.changes.sets else None}
                    for n in chosen}


@dataclass
class _Built:
    file_data: dict[str, Any]
    data: dict[str, Any]
    stale: list[str]
    inc: IncrementalFlows
    entries: dict[FlowKey, FlowMod]
    file_digest: str


def _messages(exc: Exception) -> list[str]:
    if isinstance(exc, PolicyError):
        return policydata.diagnostics_text(exc.diagnostics)
    if isinstance(exc, ChangeError):
        return exc.diagnostics or [str(exc)]
    return [str(exc)]
