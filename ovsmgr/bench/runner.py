"""Run a spec: test beds up and down, groups measured baseline-then-subjects, results saved.

One test bed is up at a time (an idle DPDK lab still spins its PMD on the switch
CPU); groups of an experiment are ordered so each bed comes up once. Every
measurement is appended to ``results.json`` as soon as its point is complete.
Ctrl-C (or SIGTERM) stops the run cleanly: processes are killed, the test bed is
taken down, and the results so far are written with ``interrupted: true``. An
experiment that fails is recorded with its error and the run goes on.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

from ovsmgr.bench.control import ControlBench, measure_control
from ovsmgr.bench.diagnostics import profiled
from ovsmgr.bench.flood import FloodTrials, port_space_figures
from ovsmgr.bench.measure import Load, Trials
from ovsmgr.bench.methods import MAX_ATTEMPTS, Group, Task, ndr_search, plan_experiment
from ovsmgr.bench.netfilter import LinuxRouter
from ovsmgr.bench.netns import Processes
from ovsmgr.bench.results import Results, jsonable, point_record
from ovsmgr.bench.spec import BenchSpec, Experiment
from ovsmgr.bench.systembed import SystemSwitch, SystemTestbed, host_from
from ovsmgr.bench.testbed import Host, OvsTestbed, Testbed
from ovsmgr.bench.updates import Updater

PRIME_ABOVE = 5000
"""Flow counts above this are primed (each flow sent once) after every pipeline change."""
TESTBED_ATTEMPTS = 4
TESTBED_RETRY_S = 20.0
Status = Callable[[str], None]


class Interrupted(KeyboardInterrupt):
    pass


class Refused(ValueError):
    """A test bed that cannot run a group at all (retrying will not help)."""


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def group_testbed_key(group: Group, exp: Experiment) -> tuple[str, ...]:
    tasks = [t for t in (group.baseline, *group.subjects) if t is not None]
    if any(t.config.testbed == "linux" for t in tasks):
        return ("linux",)
    policies = [t.config.pipeline for t in tasks if t.config.pipeline.endswith((".yaml", ".yml"))]
    return ("ovs", exp.settings.datapath, f"{exp.settings.dpdk_ring}/{exp.settings.nice}",
            policies[0] if policies else "", *(exp.policy_ports or ()))


def ordered_groups(exp: Experiment) -> list[tuple[tuple[str, ...], Group]]:
    """Groups in plan order, stably regrouped by test bed so each bed comes up once."""
    keyed = [(group_testbed_key(g, exp), g) for g in plan_experiment(exp)]
    first_seen = {k: i for i, (k, _) in reversed(list(enumerate(keyed)))}
    return sorted(keyed, key=lambda kg: first_seen[kg[0]])


class Runner:
    def __init__(self, spec: BenchSpec, out_dir: Path, command: list[str], profile: bool = False,
                 status: Status | None = None, advance: Callable[[int], None] | None = None,
                 system: SystemSwitch | None = None):
        self.spec, self.out_dir, self.profile, self.system = spec, out_dir, profile, system
        self.status = status or (lambda _: None)
        self.advance = advance or (lambda _: None)
        self.procs = Processes()
        self.workdir = Path(tempfile.mkdtemp(prefix="ovsmgr-bench-"))
        self.results = Results(out_dir, spec.name, jsonable(spec.raw) or {"name": spec.name}, command)
        self.bed: Testbed | None = None
        self.bed_key: tuple[str, ...] | None = None
        self._hosts: tuple[Host, Host] | None = None

    # -- test beds ------------------------------------------------------------------------------
    def testbed(self, key: tuple[str, ...]) -> Testbed:
        if self.bed is not None and self.bed_key == key:
            return self.bed
        self.close_testbed()
        for attempt in range(1, TESTBED_ATTEMPTS + 1):
            self.status(f"starting test bed {' '.join(k for k in key if k)}")
            try:
                self.bed = self._new_testbed(key)
                break
            except Refused:
                raise
            except Exception as exc:
                # a DPDK lab fails while another one holds the machine's hugepages: wait and retry
                if attempt == TESTBED_ATTEMPTS:
                    raise
                self.status(f"test bed failed ({str(exc)[-80:]}); retrying in {TESTBED_RETRY_S:.0f} s")
                time.sleep(TESTBED_RETRY_S)
        self.bed_key = key
        assert self.bed is not None
        return self.bed

    def _new_testbed(self, key: tuple[str, ...]) -> Testbed:
        if self.system is not None:
            return self._system_testbed(key)
        if key[0] == "linux":
            return LinuxRouter(self.workdir)
        ports = (key[4], key[5]) if len(key) > 5 else None
        ring, nice = (int(v) for v in key[2].split("/"))
        return OvsTestbed(key[1], key[3] or None, ports, dpdk_ring=ring, nice=nice)

    def _system_testbed(self, key: tuple[str, ...]) -> Testbed:
        """The running OVS of ``--switch system`` with the hosts of ``--hosts``."""
        assert self.system is not None
        if key[0] == "linux":
            raise Refused("Linux-netfilter baselines need the embedded lab's Linux router: "
                             f"--switch system benches {self.system.bridge} (an Open vSwitch) only")
        if self._hosts is None:
            self._hosts = (host_from(self.system.gen), host_from(self.system.sink))
        return SystemTestbed(*self._hosts, self.system.bridge, self.system.db, self.system.ports)

    def close_testbed(self) -> None:
        bed, self.bed, self.bed_key = self.bed, None, None
        if bed is not None:
            self.procs.stop_all()
            bed.close()

    # -- the run --------------------------------------------------------------------------------
    def total_steps(self) -> int:
        steps = 0
        for exp in self.spec.experiments:
            if exp.method == "control":
                steps += len(exp.rules) * len(exp.rule_kinds)
            for group in plan_experiment(exp):
                steps += (len(group.subjects) + (group.baseline is not None)) * exp.settings.repetitions
        return steps

    def run(self) -> dict[str, Any]:
        interrupted = False
        try:
            with sigterm_interrupts():
                for exp in self.spec.experiments:
                    self.run_experiment(exp)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            try:
                self.close_testbed()
            finally:
                self.procs.stop_all()
                self.results.finish(interrupted)
                shutil.rmtree(self.workdir, ignore_errors=True)  # traffic configs, perf data: read already
        return self.results.data

    def run_experiment(self, exp: Experiment) -> None:
        record = self.results.experiment({"name": exp.name, "method": exp.method, "status": "running",
                                          "settings": asdict(exp.settings), "started": time.time()})
        try:
            if exp.method == "control":
                self.run_control(exp)
            else:
                for key, group in ordered_groups(exp):
                    self.run_group(exp, self.testbed(key), group)
            record["status"] = "done"
        except KeyboardInterrupt:
            record["status"] = "interrupted"
            raise
        except Exception as exc:
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                          traceback=traceback.format_exc(limit=8))
            self.status(f"experiment {exp.name} failed: {exc}")
            self.close_testbed()
        finally:
            record["finished"] = time.time()
            self.results.save()

    def run_group(self, exp: Experiment, bed: Testbed, group: Group) -> None:
        base_runs: list[dict[str, Any]] = []
        subject_runs: list[list[dict[str, Any]]] = [[] for _ in group.subjects]
        diagnostics: list[dict[str, Any]] = [{} for _ in group.subjects]
        for rep in range(exp.settings.repetitions):
            order: list[int | None] = [None, *range(len(group.subjects))]
            if rep % 2:
                order.reverse()  # ABBA: drift over time hits baseline and subjects alike
            for index in order:
                if index is None:
                    if group.baseline is not None:
                        base_runs.append(self.measure(exp, bed, group.baseline, None))
                    continue
                diag = diagnostics[index] if rep == exp.settings.repetitions - 1 else None
                subject_runs[index].append(self.measure(exp, bed, group.subjects[index], diag))
        for task, runs, diag in zip(group.subjects, subject_runs, diagnostics, strict=True):
            params = {**task.params(), "datapath": getattr(bed, "datapath", exp.settings.datapath)
                      if task.config.testbed == "ovs" else "linux", "repetitions": exp.settings.repetitions}
            base_params = group.baseline.params() if group.baseline else None
            self.results.add_point(point_record(exp.name, exp.method, params, runs, base_params,
                                                base_runs, task.measure, diag))

    def measure(self, exp: Experiment, bed: Testbed, task: Task,
                diagnostics: dict[str, Any] | None) -> dict[str, Any]:
        """Configure the bed for the task and measure it once."""
        label = f"{exp.name}: {task.config.label} {task.measure}"
        if task.update_rate:
            label += f" with {task.update_rate:g} updates/s"
        self.status(label)
        info = bed.configure(task.config)
        s = exp.settings
        trials = Trials(bed, self.procs, self.workdir, s.warmup, s.duration, s.probe_rate, s.nice)
        load = Load(s.traffic.proto if task.measure != "cps" else "tcp", s.traffic.dport, task.size,
                    task.flows, "random" if task.measure == "cps" else "flows", task.destinations)
        if task.measure in ("rate", "ndr") and (task.flows > PRIME_ABOVE or task.establish
                                                or load.proto == "tcp"):
            self.status(f"{label}: opening {task.flows} flows")
            trials.prime(load, task.establish)
        updater: Updater | None = None
        with ExitStack() as stack:
            if diagnostics is not None:
                bed.begin_point()
                if self.profile and isinstance(bed, OvsTestbed):
                    stack.enter_context(profiled(self.procs, bed.vswitchd_pid(),
                                                 self.workdir / "perf.data", diagnostics))
            if task.update_rate:
                if not isinstance(bed, OvsTestbed):
                    raise ValueError("runtime updates need an OVS test bed")
                self.status(f"{label}: controller engine up, one cycle of changes checked on the switch")
                updater = stack.enter_context(Updater(bed, task.config, task.update_rate,
                                                      task.update_kind, self.workdir))
            figures = self._measure(task, trials, load, s, label, bed, updater)
        if updater is not None:
            figures.update(updater.figures())
        if diagnostics is not None:
            diagnostics.update(bed.diagnostics())
            diagnostics["configure"] = info
        figures["configure_s"] = info.get("configure_s")
        self.advance(1)
        return figures

    def _measure(self, task: Task, trials: Trials, load: Load, s: Any, label: str,
                 bed: Testbed, updater: Updater | None = None) -> dict[str, Any]:
        if task.measure == "tcp":
            return trials.tcp()
        if task.measure == "flood":
            flood = FloodTrials(bed, self.procs, self.workdir, s.warmup, s.duration, s.nice, s.traffic.dport)
            return repeat_starved(lambda: flood.run(task), s.ndr.min_cpu_share,
                                  lambda n: self.status(f"{label}: the switch was starved of its CPU, trial {n}"))
        if task.measure == "rate":
            assert task.rate is not None
            return trials.rate(load, task.rate.pps(task.size))

        def trial(pps: float) -> dict[str, Any]:
            self.status(f"{label}: trial at {pps / 1000:.1f} kpps")
            if task.measure == "cps":
                bed.clear_state()  # every trial starts from an empty connection table
                figures = trials.rate(load, pps)
                figures.update(port_space_figures(bed.conntrack_count(), bed.nat_ports, task.destinations.count))
                return figures
            if updater is None:
                return trials.rate(load, pps)
            mark = updater.progress()
            figures = trials.rate(load, pps)
            figures["updates_per_s"] = updater.rate_between(mark, updater.progress())
            return figures

        result = ndr_search(trial, s.ndr, task.size)
        key = "cps" if task.measure == "cps" else "ndr_pps"
        figures: dict[str, Any] = {key: round(result.ndr_pps, 1),
                                   "ndr_mbps": round(result.ndr_pps * task.size * 8 / 1e6, 2),
                                   "generator_limited": result.generator_limited,
                                   "below_low": result.below_low, "trial_count": len(result.trials),
                                   "loss_tolerance": s.ndr.loss}
        if result.best:
            for name in ("latency_p50_us", "latency_p75_us", "latency_p99_us", "latency_max_us", "loss",
                         "port_space_used", "conntrack_connections"):
                if name in result.best:
                    figures[f"at_ndr_{name}"] = result.best[name]
        figures["max_delivered_pps"] = max((t.get("delivered_pps") or 0) for t in result.trials)
        costs = sorted(t["pmd_cycles_per_packet"] for t in result.trials
                       if t.get("passed") and "pmd_cycles_per_packet" in t)
        if costs:  # what a packet costs the PMD below the knee, steadier than the NDR on a shared machine
            figures["pmd_cycles_per_packet"] = costs[len(costs) // 2]
        if any("port_space_used" in t for t in result.trials):
            figures["max_port_space_used"] = max(t.get("port_space_used") or 0 for t in result.trials)
        figures["trials"] = [{k: t.get(k) for k in ("requested_pps", "offered_pps", "delivered_pps",
                                                     "loss", "latency_p99_us", "passed", "attempt",
                                                     "starved", "pmd_cpu_share", "switch_cpu_share",
                                                     "steal_ms_cpu1", "updates_per_s", "port_space_used",
                                                     "pmd_cycles_per_packet")
                              if k in t or k not in ("updates_per_s", "port_space_used", "pmd_cycles_per_packet")}
                             for t in result.trials]
        return figures

    # -- control plane --------------------------------------------------------------------------
    def run_control(self, exp: Experiment) -> None:
        if self.system is not None:
            raise Refused("the control-plane method measures a fresh embedded lab each time; "
                             "it does not run with --switch system")
        bed = self.testbed(("ovs", "netdev", f"0/{exp.settings.nice}", ""))
        assert isinstance(bed, OvsTestbed)
        bench = ControlBench(bed)
        for kind in exp.rule_kinds:
            for rules in exp.rules:
                self.status(f"{exp.name}: {kind} x{rules}: compile, apply, raw bundle, incremental")
                runs = measure_control(bench, rules, kind, exp.settings.repetitions)["runs"]
                subject = [{k: r[k] for k in ("load_s", "compile_s", "apply_s", "incremental_s",
                                              "flows_per_s", "flows", "switch_flows")} for r in runs]
                raw = [{"apply_s": r["raw_s"], "incremental_s": r["raw_incremental_s"],
                        "flows_per_s": r["raw_flows_per_s"], "flows": r["flows"]} for r in runs]
                params = {"system": "ovs", "pipeline": f"ovsmgr {kind} x{rules}", "measure": "control",
                          "rules": rules, "rule_kind": kind, "datapath": "netdev",
                          "repetitions": exp.settings.repetitions}
                self.results.add_point(point_record(
                    exp.name, "control", params, subject,
                    {"pipeline": "ovs-ofctl --bundle add-flows", "measure": "control"}, raw, "control"))
                self.advance(1)
        self.close_testbed()  # a fresh bed for whatever comes next: this one's table is a mess


def repeat_starved(trial: Callable[[], dict[str, Any]], min_share: float,
                   say: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """A trial, repeated (up to `MAX_ATTEMPTS` in all) while the DPDK PMD got less than
    ``min_share`` of its CPU: such a trial measures the machine's other tenants, as in the NDR
    search. Returns the trial in which it got the most, with the shares of all attempts."""
    runs: list[dict[str, Any]] = []
    while len(runs) < MAX_ATTEMPTS:
        if runs:
            say(len(runs) + 1)
        runs.append(trial())
        if float(runs[-1].get("pmd_cpu_share", 1.0)) >= min_share:
            break
    best = max(runs, key=lambda r: float(r.get("pmd_cpu_share", 1.0)))
    best["attempts"] = len(runs)
    if len(runs) > 1:
        best["attempt_pmd_cpu_shares"] = [r.get("pmd_cpu_share") for r in runs]
    return best


def run_spec(spec: BenchSpec, out_dir: Path, command: list[str], profile: bool = False,
             status: Status | None = None, advance: Callable[[int], None] | None = None,
             on_total: Callable[[int], None] | None = None,
             system: SystemSwitch | None = None) -> dict[str, Any]:
    runner = Runner(spec, out_dir, command, profile, status, advance, system)
    if on_total:
        on_total(runner.total_steps())
    return runner.run()
