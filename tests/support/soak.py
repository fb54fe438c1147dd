"""A bounded soak run of controller mode: steady traffic, a stream of runtime updates, memory sampled.

`run_soak` drives a running `ovsmgr controller` and its lab switch for a given
time (a minute in CI, as long as wanted by hand) and checks, at the end:

- a UDP probe stream on an allowed path (one datagram every `probe_interval`,
  each from a fresh source port, so each a new connection the firewall judges;
  the traffic agent's `stream-send`), counted at the receiver: loss at most
  `loss_tolerance`;
- new TCP connections on an allowed path, one every `tcp_interval`, each a
  full request and answer: none refused, none timed out;
- runtime updates through the controller API, `update_rate` a second (every
  `cli_every`-th through `ovsmgr set`), adding and removing members of an
  address set the traffic does not touch, at most `churn_members` added at a
  time: none refused;
- the flow table afterwards: with the added members removed again, compiling
  the policy files (`ovsmgr plan`) finds nothing to change, and `ovsmgr status`
  finds no drift from what the controller recorded;
- memory: VmRSS of ovs-vswitchd, ovsdb-server and the controller, sampled every
  `sample_interval`; after `warmup`, the median of the last third of the samples
  is at most max(`growth_mib`, `growth_fraction` of it) above the median of the
  first third, per process. Open file descriptors get the same check with a
  margin of `fd_margin`.

The warm-up matters for ovs-vswitchd: every probe is a conntrack entry, and
entries only start to expire after their timeout (OVS 3.1 userspace,
`conntrack-tp.c`: 60 s for a lone UDP datagram, 45 s for a closed TCP
connection in TIME_WAIT), so the table, and memory with it, grows for the first
minute by design: about 6,000 entries at the default rates (the `conntrack`
figures in the samples). Runs of 5 minutes or more get a warm-up past that by
default; the one-minute CI run measures through it, within the 8 MiB margin.

`soak_lab` builds a lab switch and starts a controller for a standalone run
(`benchmarks/soak.py`); the integration test brings its own. All traffic comes from
the lab's traffic agent (`ovsmgr.lab.probe`) in the lab's hosts.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovsmgr.controller.client import ApiClient, ApiError
from ovsmgr.controller.paths import ControllerPaths
from ovsmgr.lab.ovs import Lab, LabPort, LabSpec
from ovsmgr.southbound.conntrack import OvsToolError, connections
from ovsmgr.southbound.target import SwitchTarget

OVSMGR = str(Path(sys.executable).parent / "ovsmgr")
AGENT = [sys.executable, "-m", "ovsmgr.lab.probe"]
MIB = 1024

SOAK_POLICY = """\
version: 1
switch:
  bridge: br0
  datapath: netdev
  ports: {inside: {ofport: 1}, outside: {ofport: 2}}
  links: [[inside, outside]]
zones:
  inside: {ports: [inside]}
  outside: {ports: [outside]}
addresses:
  blocklist: [203.0.113.0/24]
firewall:
  default: drop
  rules:
    - {name: blocked, from: inside, src: "@blocklist", action: drop}
    - {name: no-ssh, from: inside, services: [tcp/22], action: reject}
    - {name: allow-out, from: inside, action: allow}
"""
SOAK_PORTS = (LabPort("inside", 1, "10.0.0.10/24"), LabPort("outside", 2, "198.51.100.9/24"))


@dataclass(frozen=True)
class SoakConfig:
    duration: float = 60.0
    warmup: float | None = None
    """Seconds before memory samples count; default duration / 4, at least 10 s, at most 120 s."""
    sample_interval: float = 3.0
    probe_interval: float = 0.01
    tcp_interval: float = 0.2
    update_rate: float = 4.0
    cli_every: int = 20
    """Every n-th update runs `ovsmgr set` (a process each); the rest call the API. 0: API only."""
    churn_set: str = "blocklist"
    churn_prefix: str = "192.0.2."
    """Members are CHURN_PREFIX1 .. CHURN_PREFIX254, in turn; unrelated to the traffic."""
    churn_members: int = 16
    src: str = "inside"
    dst: str = "outside"
    dst_address: str = "198.51.100.9"
    udp_port: int = 9000
    tcp_port: int = 8080
    loss_tolerance: float = 0.01
    growth_mib: float = 8.0
    growth_fraction: float = 0.10
    fd_margin: int = 16
    bridge: str = "br0"

    @property
    def warmup_seconds(self) -> float:
        return self.warmup if self.warmup is not None else max(10.0, min(120.0, self.duration / 4))


@dataclass
class Sample:
    t: float
    rss_kib: dict[str, int]
    fds: dict[str, int]
    conntrack: int | None


@dataclass
class SoakResult:
    config: SoakConfig
    started: float
    elapsed: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    probe: dict[str, Any] = field(default_factory=dict)
    tcp: dict[str, Any] = field(default_factory=dict)
    updates: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    flows: dict[str, Any] = field(default_factory=dict)
    controller: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self, samples: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": not self.failures, "failures": self.failures, "elapsed_s": round(self.elapsed, 1),
            "config": {**dataclasses.asdict(self.config), "warmup": self.config.warmup_seconds},
            "probe": self.probe, "tcp": self.tcp, "updates": self.updates, "memory": self.memory,
            "flows": self.flows, "controller": self.controller,
        }
        if samples:
            out["samples"] = [{"t": round(s.t, 1), "rss_kib": s.rss_kib, "fds": s.fds, "conntrack": s.conntrack}
                              for s in self.samples]
        return out


# --- the run ---------------------------------------------------------------------------------------
def run_soak(lab: Lab, controller_pid: int, api: ApiClient, files: Sequence[str | os.PathLike[str]],
             config: SoakConfig | None = None) -> SoakResult:
    """Soak the controller `controller_pid` (API `api`) of `lab`'s bridge, which runs policy `files`;
    `result.failures` lists every check that did not hold (empty: all did)."""
    config = config or SoakConfig()
    pids = {**{name: int(d["pid"]) for name, d in lab.status()["daemons"].items()}, "controller": controller_pid}
    result = SoakResult(config, time.monotonic())
    stop = threading.Event()
    updates = _Updates(lab, api, config)
    with ExitStack() as stack:
        stack.enter_context(_server(lab, config))
        probe_recv = lab.popen(config.dst, [*AGENT, "stream-recv", str(config.udp_port), "--duration",
                                            str(config.duration + 30)], stdout=subprocess.PIPE, text=True)
        stack.callback(_reap, probe_recv)
        assert probe_recv.stdout is not None
        if "listening" not in probe_recv.stdout.readline():
            raise RuntimeError("the probe receiver did not start")
        probe_send = lab.popen(config.src, [*AGENT, "stream-send", config.dst_address, str(config.udp_port), "--interval",
                                            str(config.probe_interval), "--duration", str(config.duration)],
                               stdout=subprocess.PIPE, text=True)
        stack.callback(_reap, probe_send)
        tcp = lab.popen(config.src, [*AGENT, "tcp-stream", config.dst_address, str(config.tcp_port), "--interval",
                                     str(config.tcp_interval), "--duration", str(config.duration)],
                        stdout=subprocess.PIPE, text=True)
        stack.callback(_reap, tcp)
        sampler = threading.Thread(target=_sample_loop, args=(lab, pids, config, result, stop), daemon=True)
        sampler.start()
        updater = threading.Thread(target=updates.run, args=(result.started + config.duration, stop), daemon=True)
        updater.start()

        sent_out, _ = probe_send.communicate(timeout=config.duration + 120)
        tcp_out, _ = tcp.communicate(timeout=config.duration + 120)
        stop.set()
        updater.join(120)
        sampler.join(30)
        time.sleep(0.5)  # the last datagrams in flight
        probe_recv.send_signal(signal.SIGTERM)
        recv_out, _ = probe_recv.communicate(timeout=120)
    result.elapsed = time.monotonic() - result.started
    result.probe = _probe_summary(sent_out, recv_out, config, result.failures)
    result.tcp = _tcp_summary(tcp_out, result.failures)
    result.updates = updates.summary(result.failures)
    updates.undo_all(result.failures)
    result.memory = _memory_summary(result.samples, config, result.failures)
    result.flows = _flow_check(lab, files, config, api, result.failures)
    result.controller = _controller_summary(api, result.failures)
    return result


class _Updates:
    """Add and remove members of the churn set, `update_rate` a second, through the API (and the CLI)."""

    def __init__(self, lab: Lab, api: ApiClient, config: SoakConfig) -> None:
        self.lab, self.api, self.config = lab, api, config
        self.added: list[str] = []
        self.next_member = 0
        self.applied = {"api": 0, "cli": 0}
        self.failed: list[str] = []
        self.seconds: dict[str, list[float]] = {"api": [], "cli": []}
        self.flows = {"add": 0, "delete": 0, "change": 0}

    def run(self, until: float, stop: threading.Event) -> None:
        period = 1.0 / self.config.update_rate
        due = time.monotonic() + period
        count = 0
        while not stop.is_set() and time.monotonic() < until:
            delay = due - time.monotonic()
            if delay > 0 and stop.wait(delay):
                break
            due = max(due + period, time.monotonic() - 1.0)  # late: catch up, but no burst longer than 1 s
            count += 1
            if len(self.added) >= self.config.churn_members:
                verb, member = "remove", self.added[0]
            else:
                verb, member = "add", f"{self.config.churn_prefix}{self.next_member % 254 + 1}"
            via_cli = self.config.cli_every > 0 and count % self.config.cli_every == 0
            if self.update(verb, member, via_cli):
                if verb == "add":
                    self.added.append(member)
                    self.next_member += 1
                else:
                    self.added.remove(member)

    def update(self, verb: str, member: str, via_cli: bool) -> bool:
        started = time.monotonic()
        try:
            if via_cli:
                proc = subprocess.run([OVSMGR, "set", verb, self.config.churn_set, member, "-o", "json",
                                       "--db", self.lab.db_endpoint], capture_output=True, text=True,
                                      timeout=120, check=False)
                if proc.returncode != 0:
                    raise ApiError(f"ovsmgr set {verb} exited {proc.returncode}: {proc.stderr.strip()}")
                answer = json.loads(proc.stdout)
            else:
                answer = self.api.call("POST", f"/v1/sets/{self.config.churn_set}/{verb}", {"addresses": [member]})
        except (ApiError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
            self.failed.append(f"{verb} {member}{' (cli)' if via_cli else ''}: {exc}")
            return False
        channel = "cli" if via_cli else "api"
        self.seconds[channel].append(time.monotonic() - started)
        self.applied[channel] += 1
        for key in self.flows:
            self.flows[key] += int(answer.get("changes", {}).get(key, 0))
        return True

    def undo_all(self, failures: list[str]) -> None:
        """Remove what the run added: the set is as the files say again."""
        for member in list(self.added):
            if self.update("remove", member, via_cli=False):
                self.added.remove(member)
        if self.added:
            failures.append(f"could not remove {self.added} from {self.config.churn_set} after the run")

    def summary(self, failures: list[str]) -> dict[str, Any]:
        if self.failed:
            failures.append(f"{len(self.failed)} runtime updates refused, first: {self.failed[0]}")
        applied = sum(self.applied.values())
        return {
            "applied": applied, "api": self.applied["api"], "cli": self.applied["cli"], "failed": len(self.failed),
            "errors": self.failed[:10], "scheduled_per_s": self.config.update_rate,
            "rate_per_s": round(applied / self.config.duration, 2), "flows": dict(self.flows),
            "latency_ms": {channel: _latency(values) for channel, values in self.seconds.items()},
        }


def _latency(seconds: list[float]) -> dict[str, float] | None:
    if not seconds:
        return None
    ordered = sorted(seconds)
    return {"p50": _ms(statistics.median(ordered)), "p95": _ms(ordered[round(0.95 * (len(ordered) - 1))]),
            "max": _ms(ordered[-1])}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


@contextmanager
def _server(lab: Lab, config: SoakConfig) -> Iterator[None]:
    proc = lab.popen(config.dst, [*AGENT, "serve", "tcp", str(config.tcp_port), "--timeout",
                                  str(config.duration + 120)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening" not in line:
            raise RuntimeError(f"the TCP server did not start: {line!r}")
        # its one line per connection goes nowhere from here on: a pipe nobody reads would fill
        threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
        yield
    finally:
        _reap(proc)


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


def _reap(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)


# --- sampling -------------------------------------------------------------------------------------------
def _sample_loop(lab: Lab, pids: dict[str, int], config: SoakConfig, result: SoakResult,
                 stop: threading.Event) -> None:
    while True:
        result.samples.append(_sample(lab, pids, time.monotonic() - result.started))
        if stop.wait(config.sample_interval):
            return


def _sample(lab: Lab, pids: dict[str, int], t: float) -> Sample:
    rss, fds = {}, {}
    for name, pid in pids.items():
        rss[name] = proc_rss_kib(pid)
        try:
            fds[name] = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            fds[name] = -1
    return Sample(t, rss, fds, conntrack_count(lab))


def proc_rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (-1: it is gone)."""
    try:
        found = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    except OSError:
        return -1
    return int(found[1]) if found else -1


def conntrack_count(lab: Lab) -> int | None:
    """Conntrack entries of every zone (None: ovs-vswitchd does not answer: a report, not a check)."""
    ctl = lab.status()["appctl"]
    try:
        return connections(ctl) if ctl else None
    except OvsToolError:
        return None


# --- checks ---------------------------------------------------------------------------------------------
def _probe_summary(sent_out: str, recv_out: str, config: SoakConfig, failures: list[str]) -> dict[str, Any]:
    sent = next((int(json.loads(line)["sent"]) for line in sent_out.splitlines() if '"sent"' in line), 0)
    seqs = sorted({int(json.loads(line)["seq"]) for line in recv_out.splitlines() if '"seq"' in line})
    lost = sent - len(seqs)
    loss = lost / sent if sent else 1.0
    edges = [-1, *seqs, sent]
    gap = max((b - a - 1 for a, b in itertools.pairwise(edges)), default=0)
    if not sent:
        failures.append("the probe sender sent nothing")
    elif loss > config.loss_tolerance:
        failures.append(f"probe loss {loss:.2%} ({lost} of {sent}) above {config.loss_tolerance:.2%}")
    return {"sent": sent, "received": len(seqs), "lost": lost, "loss": round(loss, 5),
            "longest_gap": gap, "tolerance": config.loss_tolerance, "interval_s": config.probe_interval}


def _tcp_summary(out: str, failures: list[str]) -> dict[str, Any]:
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    summary: dict[str, Any] = lines[-1] if lines else {}
    if not summary:
        failures.append("the TCP client reported nothing")
        return {}
    if summary["refused"] or summary["timeout"] or summary["other"]:
        failures.append(f"TCP connections that should pass failed: {summary['refused']} refused, "
                        f"{summary['timeout']} timed out, {summary['other']} other; first: {summary['errors'][:1]}")
    if not summary["ok"]:
        failures.append("no TCP connection passed")
    return summary


def _memory_summary(samples: list[Sample], config: SoakConfig, failures: list[str]) -> dict[str, Any]:
    counted = [s for s in samples if s.t >= config.warmup_seconds]
    out: dict[str, Any] = {"samples": len(samples), "after_warmup": len(counted), "processes": {}}
    if len(counted) < 3:
        failures.append(f"only {len(counted)} memory samples after the {config.warmup_seconds:.0f} s warm-up")
        return out
    third = max(1, len(counted) // 3)
    first, last = counted[:third], counted[-third:]
    for name in counted[0].rss_kib:
        before = statistics.median(s.rss_kib[name] for s in first)
        after = statistics.median(s.rss_kib[name] for s in last)
        limit = max(config.growth_mib * MIB, config.growth_fraction * before)
        fds_before = statistics.median(s.fds[name] for s in first)
        fds_after = statistics.median(s.fds[name] for s in last)
        out["processes"][name] = {
            "rss_start_kib": samples[0].rss_kib[name], "rss_first_third_kib": round(before),
            "rss_last_third_kib": round(after), "growth_kib": round(after - before), "limit_kib": round(limit),
            "rss_max_kib": max(s.rss_kib[name] for s in samples),
            "fds_first_third": round(fds_before), "fds_last_third": round(fds_after),
        }
        if min(s.rss_kib[name] for s in samples) < 0:
            failures.append(f"{name} exited during the run")
        elif after - before > limit:
            failures.append(f"{name} memory grew {(after - before) / MIB:.1f} MiB after the warm-up "
                            f"(median of the first third {before / MIB:.1f} MiB, of the last {after / MIB:.1f} MiB; "
                            f"limit {limit / MIB:.1f} MiB)")
        if fds_after - fds_before > config.fd_margin:
            failures.append(f"{name} open files grew from {fds_before:.0f} to {fds_after:.0f}")
    cts = [s.conntrack for s in samples if s.conntrack is not None]
    if cts:
        out["conntrack"] = {"start": cts[0], "max": max(cts), "end": cts[-1]}
    return out


def _flow_check(lab: Lab, files: Sequence[str | os.PathLike[str]], config: SoakConfig, api: ApiClient,
                failures: list[str]) -> dict[str, Any]:
    """With the churn undone: the files' compile needs no change, and `status` sees no drift."""
    from ovsmgr.compiler import compile_policy
    from ovsmgr.policy import load_policy
    from ovsmgr.switch.apply import plan_policy
    from ovsmgr.switch.status import switch_status

    target = SwitchTarget(lab.db_endpoint, lab.dir, lab.dir, lab=lab.name)
    plan, _ = plan_policy(compile_policy(load_policy([Path(f) for f in files])), target)
    out: dict[str, Any] = {"plan": plan.counts(), "foreign": len(plan.foreign)}
    if not plan.empty:
        failures.append(f"the switch differs from the compiled policy files: {plan.counts()}")
    if plan.foreign:
        failures.append(f"{len(plan.foreign)} flows that are not ovsmgr's appeared")
    generation = api.call("GET", "/v1/status")["generation"]
    deadline = time.monotonic() + 30  # the controller writes its record off the update path
    while True:
        status = switch_status(target, config.bridge)
        if (status["generation"] == generation and not status["drifted"]) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    out.update(generation=generation, recorded_generation=status["generation"], drifted=status["drifted"],
               drift=status["drift"], flows=status["flows"], fail_mode=status["fail_mode"])
    if status["drifted"] or status["generation"] != generation:
        failures.append(f"status: generation {status['generation']} recorded (controller: {generation}), "
                        f"drift {status['drift']}")
    if status["fail_mode"] != "secure":
        failures.append(f"fail_mode is {status['fail_mode']}")
    return out


def _controller_summary(api: ApiClient, failures: list[str]) -> dict[str, Any]:
    status = api.call("GET", "/v1/status")
    keys = ("connected", "generation", "flows", "rules", "update_failures", "reload_failures", "runtime_changes")
    out = {k: status.get(k) for k in keys}
    if not status["connected"]:
        failures.append("the controller is not connected to the switch at the end")
    if status["update_failures"]:
        failures.append(f"the controller counted {status['update_failures']} refused updates")
    if status["runtime_changes"]:
        failures.append(f"runtime changes left after undoing the churn: {status['runtime_changes']}")
    return out


# --- a lab and a controller of its own ------------------------------------------------------------------
@dataclass
class SoakLab:
    lab: Lab
    pid: int
    """The controller's."""
    api: ApiClient
    files: list[Path]
    keep: bool = False
    """Keep the lab's directory (OVS and controller logs) after it is taken down."""


@contextmanager
def soak_lab(policy: str = SOAK_POLICY, timeout: float = 120) -> Iterator[SoakLab]:
    """A fresh lab switch with a controller running `policy`. Both are taken down afterwards; the
    lab's directory (policy, logs) is removed unless the block raised or set `keep`."""
    name = f"s{secrets.token_hex(3)}"
    lab = Lab(name, tempfile.mkdtemp(prefix=f"ovsmgr-{name}-", dir="/tmp"))
    files = [lab.dir / "soak.yaml"]
    files[0].write_text(policy)
    proc: subprocess.Popen[bytes] | None = None
    handle: SoakLab | None = None
    raised = True
    try:
        lab.up(LabSpec("br0", "netdev", list(SOAK_PORTS), name))
        with open(lab.dir / "controller.log", "ab") as log:
            proc = subprocess.Popen([OVSMGR, "controller", *map(str, files), "--db", lab.db_endpoint],
                                    stdout=subprocess.DEVNULL, stderr=log)
        paths = ControllerPaths(lab.dir, "br0")
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the controller exited:\n{(lab.dir / 'controller.log').read_text()[-2000:]}")
            info = paths.read_info()
            if info and info.get("pid") == proc.pid and ApiClient.for_paths(paths).call("GET", "/v1/status")["connected"]:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the controller did not connect in {timeout} s")
            time.sleep(0.2)
        handle = SoakLab(lab, proc.pid, ApiClient.for_paths(paths), files)
        yield handle
        raised = False
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        lab.down()
        if raised or (handle is not None and handle.keep):
            print(f"soak: lab {name}: logs kept in {lab.dir}", file=sys.stderr)
        else:
            shutil.rmtree(lab.dir, ignore_errors=True)
