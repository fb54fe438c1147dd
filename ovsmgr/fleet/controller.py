"""`ovsmgr controller --fleet FLEET.yaml`: one process serving every switch of a fleet that connects.

Which switch a connection is comes from its datapath id: the fleet file's `datapath_id`, or, for a
switch with a `db:`, the bridge's own (its OVSDB `datapath_id`). A datapath that is no switch of the
fleet gets nothing written: it is logged and left as it is (`fail_mode=secure`, so it keeps
dropping what its flows do not allow).

What each switch runs is what the store released to it (its row's `release`, from `fleet apply`
or `fleet set|rule`); the policy's files are written to a directory of the switch's own and loaded
as `ovsmgr controller` loads files, with the switch's runtime changes from the store on top
(written where a controller keeps them, so `ovsmgr status` shows them). Each switch has its own controller state (`Controller`: engine, counters, health
checks), and one worker thread that does everything that touches it, in order: a (re)connection
(reconciled: our flows read, what differs pushed in one bundle), a new release (recompiled, the
difference pushed), a change of role. What was applied is written to the switch's row
(`applied_generation`, `applied_digest`, `connected`, `served_by`); a release that does not load
writes its `error` and the switch keeps what it has. A switch the store released nothing to yet is
left as it is.

High availability: every fleet controller asks the store for its `ovsmgr_controller` lock (as
ovn-northd does with its own); the holder is the active one. On getting the lock it writes the next
`role_generation` and its name, asks every switch to make it OpenFlow master with that generation
(the switch makes any older master a slave and refuses a stale claim), and reconciles each switch:
the flows there are the ones it would push, so nothing changes on the switch. The others are
standbys: they load the released policies but ask the switches to be slaves (read-only), and write
nothing, neither to the switches nor to the store (every transaction asserts the lock). When the
active controller dies its store connection closes, the store gives the lock to a standby, and
that one takes over as above.

An agent (`ovsmgr agent --fleet FLEET.yaml --switch NAME`) is the same for one switch, on its host:
its store client watches only that switch's row and the policies it refers to (conditional
monitoring), and takes that switch's own lock (`agent_lock`), so each switch has one active agent.
The role generation stays the fleet's one counter (a switch never sees it go back); an active agent
says its role again with the newest value when another switch's agent takes over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ovsmgr.controller.ofchannel import DatapathChannel, request_role
from ovsmgr.controller.paths import ControllerPaths
from ovsmgr.controller.relay import UnixRelay
from ovsmgr.controller.runner import (
    Controller,
    Options,
    listen_problem,
    start_listener,
    start_osken,
)
from ovsmgr.controller.runtime import ChangeError, save_changes
from ovsmgr.controller.switchdb import ControllerDB
from ovsmgr.fleet.fleetfile import Fleet, SwitchSpec
from ovsmgr.fleet.runtime import changes_of
from ovsmgr.fleet.state import PolicySource, StoreError, StoreState
from ovsmgr.fleet.store import CONTROLLER_LOCK, FleetStore
from ovsmgr.fleet.storecmds import now
from ovsmgr.fleet.targets import FleetError, record_dir
from ovsmgr.lab import netns
from ovsmgr.policy import PolicyError
from ovsmgr.southbound.openflow import SwitchFlowTable
from ovsmgr.southbound.target import SwitchTarget, resolve_target
from ovsmgr.southbound.tls import TlsError
from ovsmgr.switch.record import applied_by

log = logging.getLogger("ovsmgr.controller")


@dataclass(frozen=True)
class FleetOptions:
    fleet: Fleet
    listen: tuple[str, ...] = ("tcp:127.0.0.1:6653",)
    """One `tcp:HOST:PORT` or `ssl:HOST:PORT` (TLS with the fleet file's `tls:`: a switch whose
    certificate its CA did not sign is refused), or `unix:PATH`s: a switch's OVS connects only to
    sockets in its own run directory, so each switch on this host has its own."""
    metrics: str | None = None
    stats_interval: float = 5.0
    log_rate: float = 10.0
    log_burst: int = 20
    match_log: str | None = None
    name: str | None = None
    """This controller's name in the store (`active_controller`, `served_by`); default HOST:PID."""
    switch: str | None = None
    """An agent (`ovsmgr agent --switch NAME`): serve this switch only, watch only its rows, and be
    one of its own controllers (its own lock), not one of the fleet's."""
    group: str | None = None
    """`--group GROUP`: serve the switches of this group (its own lock); None: those of no group."""


def agent_lock(switch: str) -> str:
    """The lock of one switch's agents (OVSDB lock names are letters, digits and underscores)."""
    return f"ovsmgr_agent_{switch.encode().hex()}"


def group_lock(group: str | None) -> str:
    """The lock of the fleet controllers of one group (`CONTROLLER_LOCK` for those of no group)."""
    return CONTROLLER_LOCK if group is None else f"{CONTROLLER_LOCK}_{group.encode().hex()}"


def served_switches(fleet: Fleet, group: str | None = None, agent: str | None = None) -> list[SwitchSpec]:
    """The switches a fleet controller of `group` serves (those with controllers in the fleet file, in
    that group, not served by agents; the others are pushed to by `fleet apply`), or the one switch
    `agent` (which must say `agent: true`). Each must be identifiable: a datapath_id, or a db to read it from."""
    with_controllers = [spec for spec in fleet.switches.values() if spec.controllers]
    if not with_controllers:
        raise FleetError(f"{fleet.path}: no switch has controllers (controllers: [...] in the fleet file or the "
                         "switch), so `fleet apply` pushes to every switch and no controller serves any")
    if agent is not None:
        specs = [spec for spec in with_controllers if spec.name == agent]
        if not specs:
            raise FleetError(f"{fleet.path}: {agent} is not a switch of the fleet with controllers: "
                             f"{', '.join(s.name for s in with_controllers)}")
        if not specs[0].agent:
            raise FleetError(f"{fleet.path}: switch {agent} is served by fleet controllers"
                             f"{f' of group {specs[0].group}' if specs[0].group else ''}; an agent serves only a "
                             "switch that says agent: true (one kind of controller per switch, one active)")
    else:
        specs = [spec for spec in with_controllers if not spec.agent and spec.group == group]
        if not specs:
            groups = sorted({s.group or "(no group)" for s in with_controllers if not s.agent})
            raise FleetError(f"{fleet.path}: no switch for fleet controllers "
                             f"{f'of group {group}' if group else 'without --group'}: groups "
                             f"{', '.join(groups) or 'none (every switch says agent: true)'}")
    for spec in specs:
        if spec.datapath_id is None and spec.db is None:
            raise FleetError(f"{fleet.path}: switch {spec.name} has neither datapath_id nor db, so a controller "
                             "cannot tell its connection from another's")
    return specs


def fleet_target(spec: SwitchSpec) -> SwitchTarget:
    """Where a served switch's OVSDB is (if the fleet file says) and where its state is kept."""
    if spec.db is None:
        return SwitchTarget("", None, record_dir(spec))
    target = resolve_target(spec.db)
    return target if target.lab is not None else dataclasses.replace(target, state_dir=record_dir(spec))


class ServedSwitch(Controller):
    """One switch of the fleet: the single-bridge controller's state, driven by the fleet controller."""

    def __init__(self, owner: FleetController, spec: SwitchSpec, options: FleetOptions, match_log: IO[str]) -> None:
        super().__init__(Options([], fleet_target(spec), stats_interval=options.stats_interval,
                                 log_rate=options.log_rate, log_burst=options.log_burst))
        self.owner = owner
        self.spec = spec
        self.name = spec.name
        self.dpid = spec.datapath_id
        self.match_log = match_log
        self.log_fields = {"switch": spec.name}  # one match log for every switch: each line names its own
        self.work: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.channel: DatapathChannel | None = None
        self.serving: tuple[str, int] | None = None
        """(digest, fleet generation) of the release loaded."""
        self.wanted: tuple[PolicySource, int] | None = None
        self.prepared = False
        self.settled = False
        self.told_empty = False
        self.policy_dir = self.options.target.state_dir / f"ovsmgr-fleet-{spec.name}"

    # --- called from other threads: queue the work --------------------------------------------------
    def switch_state(self, dpid: int, channel: DatapathChannel | None) -> None:
        self.work.put(("connection", channel))

    def offer(self, source: PolicySource, generation: int) -> None:
        """The store released this policy to the switch (queued once per digest and generation)."""
        if self.wanted is None or (self.wanted[0].digest, self.wanted[1]) != (source.digest, generation):
            self.wanted = (source, generation)
            if self.dpid is None and self.spec.db is not None:  # its row names the bridge now: read its id
                self.work.put(("identify", None))
            self.work.put(("release", (source, generation)))

    def role_changed(self) -> None:
        self.work.put(("role", None))

    def generation_changed(self) -> None:
        """Another switch's agent took over (the role generation is the fleet's): only the role again."""
        self.work.put(("generation", None))

    # --- the switch's worker ------------------------------------------------------------------------
    def serve_forever(self) -> None:
        while True:
            kind, value = self.work.get()
            try:
                if kind == "connection":
                    self.channel = value
                    log.info("switch %s %s", self.name, "connected" if value is not None else "disconnected")
                elif kind == "release":
                    self._load(*value)
                elif kind == "generation":
                    self._claim()
                    continue
                elif kind == "identify":
                    self._identify(wait=0)
                    continue
                self._sync()
            except Exception:  # logged; the next connection, release or role change tries again
                log.exception("switch %s: %s", self.name, kind)

    def _write_files(self, source: PolicySource) -> list[str]:
        """The policy's files as the store keeps them, numbered in merge order."""
        self.policy_dir.mkdir(parents=True, exist_ok=True)
        files = []
        for i, (name, text) in enumerate(source.files):
            path = self.policy_dir / f"{i:02d}-{Path(name).name}"
            path.write_text(text, encoding="utf-8")
            files.append(str(path))
        for old in self.policy_dir.iterdir():
            if str(old) not in files:
                old.unlink()
        return files

    def _load(self, source: PolicySource, generation: int) -> None:
        if self.serving == (source.digest, generation):
            return
        engine = self.engine
        changes = changes_of(source)
        with engine.lock:
            previous, previous_changes = list(engine.files), engine.changes
            engine.files = self._write_files(source)
            bridge = self.owner.bridge_of(self.name)
            if bridge:  # the changes where the engine reads them (load) and keeps them (status)
                save_changes(ControllerPaths(self.options.target.state_dir, bridge).runtime, changes)
            try:
                if self.serving is not None and engine.table is not None:
                    engine.changes = changes
                    result = engine.reload()
                    log.info("switch %s: generation %d of the fleet applied (%s)", self.name, generation,
                             result.counts)
                else:
                    engine.load()
            except (PolicyError, ChangeError) as exc:
                engine.files = previous
                engine.changes = previous_changes
                if bridge:
                    save_changes(ControllerPaths(self.options.target.state_dir, bridge).runtime, previous_changes)
                lines = ([str(d) for d in exc.diagnostics] if isinstance(exc, PolicyError)
                         else [str(exc), *exc.diagnostics])
                log.error("switch %s: generation %d of the fleet refused, it keeps what it has:\n%s",
                          self.name, generation, "\n".join(lines))
                self._observe(error=f"generation {generation}: " + "; ".join(lines))
                return
            first = self.serving is None
            self.serving = (source.digest, generation)
        if first:
            threading.Thread(target=self.health.run, args=(self.owner.stop,), name=f"health-{self.name}",
                             daemon=True).start()
        if engine.table is not None:
            self._applied()

    def _claim(self) -> None:
        """Say our role again, with the newest role generation (the switch refuses an older one)."""
        datapath = self.owner.datapath(self.dpid)
        if datapath is not None and self.channel is not None and (self.serving is not None or not self.owner.active):
            request_role(datapath, self.owner.active, self.owner.role_generation)

    def _sync(self) -> None:
        """Bring the switch in line with the role: the active controller prepares the bridge and
        reconciles; a standby asks to be a slave and writes nothing."""
        engine = self.engine
        datapath = self.owner.datapath(self.dpid)
        if not self.owner.active:
            engine.attach(None)
            if datapath is not None:
                request_role(datapath, False, self.owner.role_generation)
            return
        if self.serving is None:
            engine.attach(None)
            if self.channel is not None and not self.told_empty:
                self.told_empty = True
                log.warning("switch %s connected, but the store released no policy to it yet: nothing written "
                            "(it keeps what it has, fail_mode=secure)", self.name)
            return
        if not self.prepared and self.spec.db is not None:
            engine.prepare(list(self.spec.controllers))
            self.prepared = True
            self._identify(wait=10)
        if self.channel is None:
            engine.attach(None)
            self._observe(connected=False)
            return
        if datapath is not None:
            request_role(datapath, True, self.owner.role_generation)
        engine.attach(SwitchFlowTable(self.channel))
        plan = engine.reconcile()
        if not plan.empty:
            log.info("switch %s reconciled: %s", self.name, plan.counts())
        if not self.settled and self.spec.db is not None:
            engine.settle()
            self.settled = True
        self._applied()

    def _identify(self, wait: float) -> None:
        """Which connection is this switch's, from its bridge's datapath id in its OVSDB (waiting up to
        `wait` seconds for ovs-vswitchd to set it): at start, once the active controller has set the
        bridge up, and when the store first names the bridge (so a standby, which sets nothing up, learns
        it too). A connection that came before the id was known is handed over (`FleetController.known`)."""
        bridge = self.owner.bridge_of(self.name)
        if self.dpid is not None or not bridge or self.spec.db is None:
            return
        deadline = time.monotonic() + wait
        try:
            with ControllerDB(self.spec.db) as db:
                if bridge not in db.bridges():  # not made yet: the active controller makes it, then reads it
                    return
                while (dpid := db.datapath_id(bridge)) is None and time.monotonic() < deadline:
                    time.sleep(0.05)
        except Exception as exc:  # unreachable now: the next release, or the active one's set-up, tries again
            log.info("switch %s: its datapath id cannot be read yet: %s", self.name, exc)
            return
        if dpid is not None:
            self.dpid = dpid
            self.owner.known(self, dpid)

    def _applied(self) -> None:
        assert self.serving is not None
        if self.engine.recorder is not None:  # the record `fleet status` compares the switch with is
            self.engine.recorder.flush()        # written before the store says applied (status may look at once)
        self._observe(applied_generation=self.serving[1], applied_digest=self.engine._digest(), applied_at=now(),
                      applied_by=applied_by(), connected=True, drifted=False, error=None)

    def _observe(self, **columns: Any) -> None:
        """Write to the switch's row, as the active controller only."""
        if not self.owner.active:
            return
        try:
            self.owner.store.observe(self.name, served_by=self.owner.name, **columns)
        except StoreError as exc:
            log.warning("switch %s: %s", self.name, exc)

    def snapshot(self) -> dict[str, Any] | None:
        if self.serving is None:
            return None
        snap = self.metrics_snapshot()
        # a standby's engine has no table, but the switch is connected to it (as a slave)
        snap.update(switch=self.name, fleet_generation=self.serving[1], connected=self.channel is not None,
                    active=self.owner.active)
        return snap


class FleetController:
    """The os-ken app's hooks for many switches: each connection goes to its switch by datapath id."""

    def __init__(self, options: FleetOptions) -> None:
        self.options = options
        self.name = options.name or f"{socket.gethostname()}:{os.getpid()}"
        self.app: Any = None
        self.relays: list[UnixRelay] = []
        self.tls_listener = False
        self.store: FleetStore = None  # type: ignore[assignment]  # set by run()
        self.switches: dict[str, ServedSwitch] = {}
        self.by_dpid: dict[int, ServedSwitch] = {}
        self.unknown: dict[int, DatapathChannel] = {}
        """Connections of datapaths that are no switch of the fleet (or not known yet)."""
        self.lock = threading.Lock()
        self.active = False
        self.role_generation = 0
        self.state = StoreState()
        self.store_changed = threading.Event()
        self.stop = threading.Event()
        self._closers: list[Any] = []

    # --- os-ken hooks ---------------------------------------------------------------------------------
    def attach(self, app: Any) -> None:
        self.app = app
        for sw in self.switches.values():
            sw.attach(app)

    def switch_allowed(self, address: Any) -> bool:
        return not self.relays or any(relay.is_relayed(address) for relay in self.relays)

    def switch_state(self, dpid: int, channel: DatapathChannel | None) -> None:
        with self.lock:
            sw = self.by_dpid.get(dpid)
            if sw is None:
                if channel is None:
                    self.unknown.pop(dpid, None)
                else:
                    self.unknown[dpid] = channel
                    log.warning("datapath %#018x is no switch of %s (no datapath_id, no bridge of a db: matches it): "
                                "nothing is written to it, it keeps what it has (fail_mode=secure)",
                                dpid, self.options.fleet.path)
                return
        sw.switch_state(dpid, channel)

    def packet_in(self, dpid: int, userdata: bytes | None, metadata: bytes | None,
                  frame: bytes) -> tuple[int, bytes] | None:
        sw = self.by_dpid.get(dpid)
        if sw is None or sw.serving is None or not self.active:
            return None
        return sw.packet_in(dpid, userdata, metadata, frame)

    def flow_stats(self, dpid: int, totals: dict[int, list[int]]) -> None:
        sw = self.by_dpid.get(dpid)
        if sw is not None:
            sw.flow_stats(dpid, totals)

    # --- for the switches -----------------------------------------------------------------------------
    def datapath(self, dpid: int | None) -> Any:
        return self.app.datapaths.get(dpid) if self.app is not None and dpid is not None else None

    def known(self, sw: ServedSwitch, dpid: int) -> None:
        """A switch's datapath id was read from its OVSDB: a connection already there is its."""
        with self.lock:
            other = self.by_dpid.setdefault(dpid, sw)
            channel = self.unknown.pop(dpid, None) if other is sw else None
        if other is not sw:
            log.error("switch %s has datapath id %#018x, as switch %s has: neither is served by it",
                      sw.name, dpid, other.name)
        elif channel is not None:
            sw.switch_state(dpid, channel)

    def bridge_of(self, name: str) -> str:
        row = self.state.switches.get(name)
        return row.bridge if row is not None else ""

    # --- running --------------------------------------------------------------------------------------
    def run(self) -> int:
        fleet = self.options.fleet
        agent, group = self.options.switch, self.options.group
        specs = served_switches(fleet, group, agent)
        if not fleet.store:
            raise FleetError(f"{fleet.path}: no store: (the fleet's clustered OVSDB members)")
        self._check_listen()
        self.store = FleetStore(fleet.store, lock=group_lock(group) if agent is None else agent_lock(agent),
                                switch=agent, on_change=self.store_changed.set)
        self._closers.append(self.store)
        self.state = self.store.state()
        match_log: IO[str] = sys.stdout
        if self.options.match_log:
            match_log = open(self.options.match_log, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
        for spec in specs:
            sw = self.switches[spec.name] = ServedSwitch(self, spec, self.options, match_log)
            if sw.dpid is not None:  # the fleet file's datapath_id
                self.known(sw, sw.dpid)
            else:  # the bridge's own, if the store names it already
                sw._identify(wait=10)
        listen = self._start_openflow()
        for sw in self.switches.values():
            threading.Thread(target=sw.serve_forever, name=f"switch-{sw.name}", daemon=True).start()
        threading.Thread(target=self._follow_store, name="store", daemon=True).start()
        self._start_metrics()
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        serves = (f"switch {agent} (its rows only)" if agent is not None
                  else f"{len(self.switches)} switches" + (f" of group {group}" if group else ""))
        log.info("fleet %s %s for %s of %s: listening on %s", "controller" if agent is None else "agent",
                 self.name, serves, fleet.path, listen)
        while not self.stop.wait(0.5):
            pass
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):
                closer() if callable(closer) else closer.close()
        for sw in self.switches.values():
            if sw.engine.recorder is not None:
                sw.engine.recorder.flush()
        log.info("fleet controller %s stopped; the switches keep their flows (fail_mode=secure)", self.name)
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)  # os-ken's threads are not daemons and have no stop

    def _check_listen(self) -> None:
        """The --listen targets, checked before anything is contacted: FleetError."""
        listens = list(self.options.listen)
        unix = [p for p in listens if p.startswith("unix:")]
        if not unix and len(listens) != 1:
            raise FleetError("--listen: one tcp:HOST:PORT or ssl:HOST:PORT, or unix:PATH ones (one per switch "
                             "on this host)")
        if unix and len(unix) != len(listens):
            raise FleetError("--listen: unix:PATH listeners, or one tcp:HOST:PORT or ssl:HOST:PORT, not both")
        for listen in listens:
            if listen.startswith("ssl:") and self.options.fleet.tls is None:
                raise FleetError(f"--listen {listen} needs the fleet file's tls: (the listener's key and "
                                 f"certificate, and the CA that signed the switches'); {self.options.fleet.path} "
                                 "has none")
            problem = listen_problem(listen, self.options.fleet.tls)
            if problem:
                raise FleetError(problem)

    def _start_openflow(self) -> str:
        listens = list(self.options.listen)
        if not listens[0].startswith("unix:"):
            try:
                return start_listener(listens[0], self, self.options.fleet.tls)[0]
            except (TlsError, OSError) as exc:  # the TLS files, or the address (in use, not this host's)
                raise FleetError(f"--listen {listens[0]}: {exc}") from None
        port = netns.free_port()
        self.relays = [UnixRelay(Path(p.removeprefix("unix:")), port) for p in listens]  # before os-ken takes any
        self._closers += self.relays
        start_osken("127.0.0.1", port, self)
        for relay in self.relays:
            relay.start()
        return ", ".join(listens)

    def _start_metrics(self) -> None:
        if not self.options.metrics:
            return
        from prometheus_client import start_http_server

        from ovsmgr.controller.metrics import registry_for

        host, _, port = self.options.metrics.rpartition(":")
        result = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry_for(self.snapshots))
        if isinstance(result, tuple):
            self._closers.append(result[0].shutdown)

    def snapshots(self) -> list[dict[str, Any]]:
        return [snap for sw in self.switches.values() if (snap := sw.snapshot()) is not None]

    def _follow_store(self) -> None:
        """Take over when the lock comes, step down when it goes, hand each switch its release.
        (Getting the lock is no row change: it is looked at every half second too.)"""
        while not self.stop.is_set():
            self.store_changed.wait(0.5)
            self.store_changed.clear()
            try:
                self._store_step()
            except StoreError as exc:
                log.warning("fleet store: %s", exc)

    def _store_step(self) -> None:
        has_lock = self.store.has_lock
        if has_lock and not self.active:
            # the fleet's active_controller is that of the switches of no group; the others' served_by say theirs
            self.role_generation = self.store.take_over(
                self.name, fleet_wide=self.options.switch is None and self.options.group is None)
            self.active = True
            log.info("fleet controller %s is active (role generation %d)", self.name, self.role_generation)
            for sw in self.switches.values():
                sw.role_changed()
        elif not has_lock and self.active:
            self.active = False
            log.warning("fleet controller %s lost its lock in the store: standby, writes nothing", self.name)
            for sw in self.switches.values():
                sw.role_changed()
        self.state = state = self.store.state()
        if state.role_generation > self.role_generation:  # a newer take-over: of another switch's agent
            self.role_generation = state.role_generation
            for sw in self.switches.values():
                sw.generation_changed()
        for name, sw in self.switches.items():
            row = state.switches.get(name)
            if row is not None and row.release is not None and row.release in state.policies:
                sw.offer(state.policies[row.release], row.released_generation)
