"""`ovsmgr controller`: one process that keeps one bridge in line.

Threads: os-ken's (OpenFlow channel, event loop), the unix relay (lab
switches), the API server, the metrics server, a worker that reconciles when
the switch (re)connects, and a watcher that reloads when a policy file
changes or SIGHUP arrives. Everything that changes the switch goes through
`Engine` and its lock. SIGTERM/SIGINT stop the process and leave the switch
as it is: fail_mode=secure keeps the flows enforcing until a controller
comes back, which then only pushes what differs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ovsmgr.compiler.pipeline import PacketInKind
from ovsmgr.controller import packetin
from ovsmgr.controller.api import ApiServer, routes
from ovsmgr.controller.engine import Engine
from ovsmgr.controller.health import BackendKey, HealthChecker
from ovsmgr.controller.metrics import Counters, conntrack_entries, registry_for
from ovsmgr.controller.ofchannel import DatapathChannel
from ovsmgr.controller.relay import UnixRelay
from ovsmgr.controller.switchdb import ControllerDB
from ovsmgr.lab import netns
from ovsmgr.policy import PolicyError
from ovsmgr.southbound.openflow import OpenFlowError, SwitchFlowTable
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.southbound.tls import ServerContext, TlsFiles
from ovsmgr.switch.natrules import policy_zones, try_connections_by_rule

log = logging.getLogger("ovsmgr.controller")
FIRST_CONNECT_SECONDS = 30


@dataclass(frozen=True)
class Options:
    files: list[str]
    target: SwitchTarget
    listen: str | None = None
    """`tcp:HOST:PORT` or `unix:PATH`; default: a unix socket in the state dir for a lab, else tcp:127.0.0.1:6653.
    (`ssl:` is for the fleet controller and the agent, which have the fleet file's TLS files.)"""
    api: str | None = None
    """`HOST:PORT` (loopback) or `unix:PATH`; default: `unix:` in the state dir."""
    metrics: str | None = None
    stats_interval: float = 5.0
    log_rate: float = 10.0
    log_burst: int = 20
    match_log: str | None = None
    watch_interval: float = 0.25
    health_netns: str | None = None
    """The network namespace backends' health checks connect from (default: the controller's)."""


class Controller:
    """The hooks the os-ken app calls, and the process around the engine."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.stats_interval = options.stats_interval
        self.engine = Engine(options.files, options.target)
        self.counters = Counters()
        self.stats: dict[int, list[int]] = {}
        self.stats_at = -1e9
        self.stats_ready = threading.Event()
        self.app: Any = None
        self.log_bucket = packetin.TokenBucket(options.log_rate, options.log_burst)
        self.reject_bucket = packetin.TokenBucket(200.0, 400)
        self.jobs: queue.Queue[tuple[int, DatapathChannel | None]] = queue.Queue()
        self.dpid_known = threading.Event()
        self.first_reconcile = threading.Event()
        self.reload_now = threading.Event()
        self.stop = threading.Event()
        self.dpid: int | None = None
        self.match_log: IO[str] = sys.stdout
        self.log_fields: dict[str, Any] = {}
        """Put first in every match log line (a fleet controller's `switch`)."""
        self.relay: UnixRelay | None = None
        self.tls_listener = False
        self._closers: list[Any] = []
        self.health = HealthChecker(lambda: self.engine.policy.nat, self._backends_changed, options.health_netns)

    # --- hooks (called from os-ken threads; keep them short) ---------------------------------------
    def switch_state(self, dpid: int, channel: DatapathChannel | None) -> None:
        self.jobs.put((dpid, channel))

    def attach(self, app: Any) -> None:
        self.app = app

    def switch_allowed(self, address: Any) -> bool:
        """Behind a relay, os-ken's port is internal: only the relay's own connections are switches."""
        return self.relay is None or self.relay.is_relayed(address)

    def flow_stats(self, dpid: int, totals: dict[int, list[int]]) -> None:
        if dpid == self.dpid:
            self.stats = totals
            self.stats_at = time.monotonic()
            self.stats_ready.set()

    def fresh_stats(self) -> dict[int, list[int]]:
        """Flow statistics no older than `stats_interval` (asked for now if they are), for a scrape."""
        if self.dpid is not None and time.monotonic() - self.stats_at > self.stats_interval:
            self.stats_ready.clear()
            if self.app is not None and self.app.request_stats(self.dpid):
                self.stats_ready.wait(5.0)
        return dict(self.stats)

    def packet_in(self, dpid: int, userdata: bytes | None, metadata: bytes | None,
                  frame: bytes) -> tuple[int, bytes] | None:
        info = packetin.parse_userdata(userdata)
        if info is None:
            self.counters.packet_ins["unknown"] += 1
            return None
        name, action, shadow = self.engine.rule_info(info.rule_id)
        in_port = packetin.in_port_of(metadata)
        if info.kind is PacketInKind.LOG:
            self.counters.packet_ins["log"] += 1
            self._log_match(frame, name, action, in_port, shadow)
            return None
        self.counters.packet_ins["reject"] += 1
        if in_port is None or not self.reject_bucket.allow():
            self.counters.reject_suppressed += 1
            return None
        reply = packetin.reject_reply(frame)
        if reply is None:
            return None
        self.counters.rejects_sent += 1
        return in_port, reply

    def _log_match(self, frame: bytes, name: str, action: str, in_port: int | None, shadow: bool) -> None:
        if not self.log_bucket.allow():
            self.counters.log_suppressed += 1
            return
        record = packetin.log_record(frame, name, action, in_port, self.log_bucket.take_suppressed(), shadow=shadow)
        self.match_log.write(packetin.log_line({**self.log_fields, **record}) + "\n")
        self.match_log.flush()
        self.counters.log_lines += 1

    # --- running ------------------------------------------------------------------------------------
    def run(self) -> int:
        """Load, start everything, serve until SIGTERM/SIGINT. Raises on a policy that does not load."""
        self.engine.load()
        paths = self.engine.paths
        if self.options.match_log:
            self.match_log = open(self.options.match_log, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
        target = self._start_openflow(paths.of_socket)
        self.engine.prepare(target)
        self.dpid = self._datapath_id()
        self.dpid_known.set()
        for work in (self._worker, self._watcher):
            threading.Thread(target=work, name=work.__name__, daemon=True).start()
        threading.Thread(target=self.health.run, args=(self.stop,), name="health", daemon=True).start()
        if not self.first_reconcile.wait(FIRST_CONNECT_SECONDS):
            log.warning("%s has not connected to the controller within %d s; its flows follow when it does",
                        self.engine.bridge, FIRST_CONNECT_SECONDS)
        self.engine.settle()
        api = self.options.api or f"unix:{paths.api_socket}"
        server = ApiServer(api, paths.ensure_token(), routes(self.engine, self.describe))
        server.start()
        self._closers.append(server)
        self._start_metrics()
        paths.write_info({"pid": os.getpid(), "api": api, "listen": target, "metrics": self.options.metrics,
                          "files": self.engine.files, "started_at": time.time()})
        self._closers.append(lambda: paths.info.unlink(missing_ok=True))
        self._install_signals()
        log.info("controller for %s: listening on %s, API %s", self.engine.bridge, target, api)
        while not self.stop.wait(0.5):
            pass
        self.close()
        log.info("controller for %s stopped; the switch keeps its flows (fail_mode=secure)", self.engine.bridge)
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)  # os-ken's threads are not daemons and have no stop; everything is saved by now

    def close(self) -> None:
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):
                closer() if callable(closer) else closer.close()
        if self.engine.recorder is not None:
            self.engine.recorder.flush()

    def _start_openflow(self, default_socket: Path) -> str:
        """os-ken on TCP; with a unix listen target, a relay in front. Returns the switch's target."""
        listen = self.options.listen or (f"unix:{default_socket}" if self.options.target.lab else "tcp:127.0.0.1:6653")
        target, self.relay = start_listener(listen, self)
        if self.relay is not None:
            self._closers.append(self.relay)
        return target

    def _start_metrics(self) -> None:
        if not self.options.metrics:
            return
        from prometheus_client import start_http_server

        host, _, port = self.options.metrics.rpartition(":")
        result = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry_for(self.metrics_snapshot))
        if isinstance(result, tuple):
            self._closers.append(result[0].shutdown)

    def _install_signals(self) -> None:
        signal.signal(signal.SIGHUP, lambda *_: self.reload_now.set())
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())

    # --- background work ----------------------------------------------------------------------------
    def _datapath_id(self) -> int | None:
        """The bridge's datapath id (ovs-vswitchd sets it shortly after creating the bridge)."""
        deadline = time.monotonic() + 10
        with ControllerDB(self.options.target.db) as db:
            while True:
                dpid = db.datapath_id(self.engine.bridge)
                if dpid is not None or time.monotonic() > deadline:
                    return dpid
                time.sleep(0.05)

    def _worker(self) -> None:
        """Reconcile when our switch connects (over its connection); note when it goes."""
        self.dpid_known.wait()
        while True:
            dpid, channel = self.jobs.get()
            if dpid != self.dpid:
                log.warning("datapath %016x is not %s (%s); ignored", dpid, self.engine.bridge,
                            f"{self.dpid:016x}" if self.dpid is not None else "unknown")
                continue
            self.engine.attach(SwitchFlowTable(channel) if channel is not None else None)
            log.info("switch %s %s", self.engine.bridge, "connected" if channel else "disconnected")
            if channel is not None:
                try:
                    self.engine.reconcile()
                except Exception:  # logged; the next connection or change tries again
                    log.exception("reconcile of %s failed", self.engine.bridge)
                else:
                    self.first_reconcile.set()

    def _watcher(self) -> None:
        """Reload when a policy file changes (polled) or SIGHUP arrives."""
        seen = _signature(self.engine.files)
        while not self.stop.is_set():
            triggered = self.reload_now.wait(self.options.watch_interval)
            now = _signature(self.engine.files)
            if not triggered and now == seen:
                continue
            self.reload_now.clear()
            time.sleep(0.05)  # let an editor finish writing
            seen = _signature(self.engine.files)
            self._reload("SIGHUP" if triggered else "a policy file changed")

    def _backends_changed(self, down: frozenset[BackendKey]) -> None:
        """The health checks took backends out or brought them back: their groups change."""
        result = self.engine.set_backends_down(down)
        log.info("backends down: %s (generation %d, %s)",
                 ", ".join(f"{rule} {address}" for rule, address, _ in sorted(down, key=str)) or "none",
                 result.generation, result.counts)

    def _reload(self, why: str) -> None:
        try:
            result = self.engine.reload()
        except PolicyError as exc:
            log.error("reload (%s) refused, the old policy stays:\n%s", why,
                      "\n".join(str(d) for d in exc.diagnostics))
            return
        except Exception as exc:  # ChangeError, OpenFlow, OVSDB: reported, old policy stays
            log.error("reload (%s) failed, the old policy stays: %s", why, exc)
            return
        log.info("reloaded (%s): generation %d, %s", why, result.generation, result.counts)

    # --- reports --------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        info = self.engine.describe()
        info.update(pid=os.getpid(), listen=self.options.listen, api=self.options.api,
                    packet_ins=dict(self.counters.packet_ins), log_suppressed=self.counters.log_suppressed,
                    backends=self.health.report())
        return info

    def _limit_drops(self) -> dict[str, int]:
        """Drops of each rule's `limit:`; none while the switch is away."""
        try:
            return self.engine.limit_drops() if self.engine.status.connected else {}
        except OpenFlowError as exc:
            log.warning("meter statistics: %s", exc)
            return {}

    def metrics_snapshot(self) -> dict[str, Any]:
        s = self.engine.status
        policy = self.engine.policy
        return {
            "bridge": self.engine.bridge, "generation": s.generation, "applied_at": s.applied_at,
            "last_change_seconds": s.last_change_seconds, "connected": s.connected,
            "flows": len(self.engine.entries), "reload_failures": s.reload_failures,
            "update_failures": s.update_failures, "counters": self.counters, "stats": self.fresh_stats(),
            "names": self.engine.names, "zone": policy.ct_zone, "limit_drops": self._limit_drops(),
            "actions": self.engine.rule_actions(),
            "conntrack": conntrack_entries(self.options.target.appctl(), policy.ct_zone),
            "nat_connections": try_connections_by_rule(self.options.target.appctl(), policy_zones(policy)),
            "backends": self.health.report(),
            "conntrack_limit": policy.max_connections, "change_durations": s.change_durations,
        }


def _signature(files: list[str]) -> list[tuple[int, int, int] | None]:
    out: list[tuple[int, int, int] | None] = []
    for name in files:
        try:
            st = os.stat(name)
        except OSError:
            out.append(None)
            continue
        out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return out


def listen_problem(listen: str, tls: TlsFiles | None) -> str | None:
    """Why `listen` is no OpenFlow listen target `start_listener` takes (None: it is one)."""
    if listen.startswith("unix:"):
        return None if listen.removeprefix("unix:") else f"--listen {listen}: unix:PATH without a PATH"
    scheme = "ssl" if listen.startswith("ssl:") else "tcp"
    port = listen.removeprefix(f"{scheme}:").rpartition(":")[2]
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f"--listen {listen}: not tcp:HOST:PORT, ssl:HOST:PORT or unix:PATH"
    if scheme == "ssl" and tls is None:
        return f"--listen {listen} needs TLS files (the fleet file's tls:)"
    return None


def start_listener(listen: str, hooks: Any, tls: TlsFiles | None = None) -> tuple[str, UnixRelay | None]:
    """os-ken on TCP (`tcp:HOST:PORT`), on TLS (`ssl:HOST:PORT`, with `tls`: the listener's key and
    certificate, and the CA every switch's certificate must be signed by), or on a free loopback
    port behind a unix relay (`unix:PATH`). Returns the target switches are pointed at, and the
    relay (to close). ValueError: `listen_problem`."""
    problem = listen_problem(listen, tls)
    if problem:
        raise ValueError(problem)
    if listen.startswith("unix:"):
        port = netns.free_port()
        relay = UnixRelay(Path(listen.removeprefix("unix:")), port)  # before os-ken takes connections
        hooks.relay = relay
        start_osken("127.0.0.1", port, hooks)
        relay.start()
        return listen, relay
    scheme = "ssl" if listen.startswith("ssl:") else "tcp"
    host, _, port_text = listen.removeprefix(f"{scheme}:").rpartition(":")
    host = host or "127.0.0.1"
    start_osken(host.strip("[]"), int(port_text), hooks, tls if scheme == "ssl" else None)  # os-ken: bare IPv6
    return f"{scheme}:{host}:{port_text}", None


ECHO_INTERVAL = 3
"""Seconds between os-ken's echo requests to each switch."""
ECHO_UNANSWERED = 3
"""Echo requests a switch may leave unanswered before its connection is closed."""


def start_osken(host: str, port: int, hooks: Any, tls: TlsFiles | None = None) -> None:
    """Start os-ken 4.x in this process (it has no manager command): on TCP, or with `tls` on TLS.

    The TLS listener is os-ken's own server (`hub.StreamServer` handing each connection to
    `datapath_connection_factory`, as its `OpenFlowController.server_loop` does for
    `--ofp-ssl-listen-port`), given ovsmgr's server context (`tls.ServerContext`): it requires a
    client certificate signed by the CA, so a switch with none, or another CA's, fails the
    handshake. Not os-ken's `--ctl-privkey/--ctl-cert/--ca-certs`: that context, built inside
    `server_loop`, verifies the same way, but with os-ken's native hub a failed handshake ends the
    connection's thread silently (`TaskExit = Exception`), so a refused switch would leave no trace,
    and a client that never finishes its handshake would hold a thread for good. os-ken still opens
    its own TCP listener; with `tls` it is on a free loopback port, and the app refuses every
    connection there (`hooks.tls_listener`: only TLS connections with a verified certificate).

    Echo requests are on, not only to notice a switch that stopped answering: os-ken's native hub
    (the default) cannot stop a connection's send thread, so a connection the switch closed is
    only reported gone (`DEAD_DISPATCHER`) once os-ken sends something on it. Without the echo
    requests a controller with nothing to send would count a switch connected forever."""
    from os_ken import cfg
    from os_ken.base import app_manager
    from os_ken.controller import controller as ofp_controller  # registers --ofp-* for CONF
    from os_ken.lib import hub

    logging.getLogger("os_ken").setLevel(logging.WARNING)
    server = None
    if tls is not None:  # bound first: an address in use is an error before os-ken's threads run
        server = hub.StreamServer((host, port), ofp_controller.datapath_connection_factory,
                                  ssl_ctx=ServerContext.of(tls, _handshake_refused), certfile=str(tls.certificate),
                                  keyfile=str(tls.private_key), cert_reqs=ssl.CERT_REQUIRED)
        hooks.tls_listener = True
    tcp_host, tcp_port = (host, port) if tls is None else ("127.0.0.1", netns.free_port())
    cfg.CONF(args=["--ofp-tcp-listen-port", str(tcp_port), "--ofp-listen-host", tcp_host], project="os_ken")
    cfg.CONF.set_override("echo_request_interval", ECHO_INTERVAL)  # not command-line options in os-ken
    cfg.CONF.set_override("maximum_unreplied_echo_requests", ECHO_UNANSWERED)
    manager = app_manager.AppManager.get_instance()
    manager.load_apps(["ovsmgr.controller.app"])
    contexts = manager.create_contexts()
    manager.instantiate_apps(**contexts, ovsmgr_hooks=hooks)
    if server is not None:
        hub.spawn(server.serve_forever)


_REFUSALS = packetin.TokenBucket(1.0, 10)
"""Refused handshakes logged: 10 at once, then one a second (a peer that keeps trying cannot flood the log)."""


def _handshake_refused(peer: str, reason: str) -> None:
    if not _REFUSALS.allow():
        return
    suppressed = _REFUSALS.take_suppressed()
    log.warning("OpenFlow connection from %s refused: TLS handshake failed: %s%s", peer, reason,
                f" ({suppressed} more refused and not logged since the last line)" if suppressed else "")
