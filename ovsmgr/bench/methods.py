"""Measurement methods that do not care what they measure: the NDR search and the plan.

`ndr_search` is RFC 2544's throughput search: the highest rate at which the
device under test loses no more than a tolerance, found by bisection in a
bounded number of trials. It takes the trial as a function, so it is tested
with fake devices.

`plan_experiment` turns an experiment of the spec into *groups*: a baseline
task and the subject tasks measured right after it, on the same test bed. The
runner measures a group's baseline and subjects back to back, once per
repetition (in reverse order every other repetition, ABBA), so each ratio
compares measurements taken seconds apart. An ``updates`` group's baseline and
subject run the same pipeline (with the bench's blocklist); the subject's NDR is
searched while runtime changes are applied (`Task.update_rate`, see
`ovsmgr.bench.updates`). A ``flood`` group's baseline is the same pipeline with its
established stream and ping and no flood; its subject adds the SYN flood at ``Task.rate``
(`ovsmgr.bench.flood`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ovsmgr.bench.pipelines import Config
from ovsmgr.bench.spec import (
    COST_RATE,
    ONE_DESTINATION,
    Destinations,
    Experiment,
    NdrSettings,
    Rate,
)

Measure = Literal["rate", "ndr", "tcp", "cps", "flood"]
MAX_ATTEMPTS = 4


@dataclass(frozen=True)
class NdrResult:
    ndr_pps: float
    """Highest offered rate with loss <= tolerance (0 when even the lowest rate lost more)."""
    trials: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    """Figures of the trial that set the NDR (its latency is the latency at the NDR)."""
    generator_limited: bool = False
    """The generator could not offer more: the NDR is at least this, maybe higher."""
    below_low: bool = False


def ndr_search(trial: Callable[[float], Mapping[str, Any]], settings: NdrSettings,
               frame_size: int) -> NdrResult:
    """Bisect between ``settings.low`` and ``settings.high`` at at most ``settings.steps`` rates.

    The first rate tried is ``high``. If it passes, that is the answer (flagged as
    generator-limited when the generator offered less than asked). Otherwise what it
    delivered bounds the search from above: no rate much above the delivered one can pass,
    so the bisection runs in [low, min(high, 1.05 x delivered)]. A rate passes when a
    trial's loss is at most ``settings.loss``; a failed trial is repeated up to
    ``settings.retries`` times (losses caused by other tenants of the machine come and go,
    the device's own do not), and a failed trial in which the DPDK PMD was starved of its
    CPU (``pmd_cpu_share`` below ``settings.min_cpu_share``) does not count against that, up
    to `MAX_ATTEMPTS` trials per rate. The NDR is the highest *offered* rate of a passing trial.
    """
    low, high = settings.low.pps(frame_size), settings.high.pps(frame_size)
    trials: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None

    def run(rate: float) -> bool:
        nonlocal best
        retries = settings.retries
        for attempt in range(1, MAX_ATTEMPTS + 1):
            figures = dict(trial(rate))
            passed = _passes(figures, settings.loss)
            starved = float(figures.get("pmd_cpu_share", 1.0)) < settings.min_cpu_share
            trials.append({**figures, "passed": passed, "attempt": attempt, "starved": starved})
            if passed:
                if best is None or figures["offered_pps"] > best["offered_pps"]:
                    best = figures
                return True
            if not starved:
                retries -= 1
            if retries < 0:
                return False
        return False

    if run(high):
        assert best is not None
        return NdrResult(best["offered_pps"], trials, best, bool(best.get("generator_limited")))
    delivered = max(float(t.get("delivered_pps") or 0.0) for t in trials)
    lo, hi = low, max(low, min(high, 1.05 * delivered)) if delivered > low else high
    for _ in range(settings.steps - 1):
        mid = (lo + hi) / 2 if lo < hi else lo
        if run(mid):
            lo = mid
        else:
            hi = mid
        if hi - lo < 0.005 * high:
            break
    if best is None:
        return NdrResult(0.0, trials, None, below_low=True)
    return NdrResult(best["offered_pps"], trials, best, bool(best.get("generator_limited")))


def _passes(figures: Mapping[str, Any], tolerance: float) -> bool:
    loss = figures.get("loss")
    return loss is not None and loss == loss and float(loss) <= tolerance  # NaN never passes


# -- planning -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    config: Config
    measure: Measure
    flows: int = 1000
    size: int = 64
    rate: Rate | None = None
    establish: bool = False
    update_rate: float = 0.0
    """Runtime changes per second applied through the controller's engine while measuring."""
    update_kind: str = "mixed"
    destinations: Destinations = ONE_DESTINATION
    """SYN loads (``cps``, ``flood``): where the SYNs go."""
    stream: Rate | None = None
    """``flood``: the established TCP stream's rate; ``rate`` is the flood's (None: no flood)."""

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"system": self.config.system if self.config.system != "ovs" else "ovs",
                               "pipeline": self.config.label, "measure": self.measure}
        if self.config.system != "ovs" or self.config.pipeline == "generated":
            out.update(rules=self.config.rules, rule_kind=self.config.rule_kind)
        if self.measure in ("cps", "flood"):
            out.update(destinations=str(self.destinations), size=self.size)
        elif self.measure != "tcp":
            out.update(flows=self.flows, size=self.size)
        if self.measure == "flood":
            out.update(flood=str(self.rate) if self.rate else "none", stream=str(self.stream))
        elif self.rate is not None:
            out.update(rate=str(self.rate), rate_pps=round(self.rate.pps(self.size), 1))
        if self.establish:
            out["established"] = True
        if self.config.blocklist is not None:
            rate = self.update_rate
            out["update_rate"] = int(rate) if float(rate).is_integer() else rate
            if self.update_rate:
                out["update_kind"] = self.update_kind
        return out


@dataclass(frozen=True)
class Group:
    baseline: Task | None
    subjects: tuple[Task, ...]
    role: str = "pipeline"
    """What varies between baseline and subjects: pipeline, rules, flows, updates."""


def pipeline_config(pipeline: str, exp: Experiment | None = None) -> Config:
    """An OVS pipeline; with the experiment's bench-only NAT variant unless it is plain forwarding."""
    if exp is None or pipeline == "plain":
        return Config("ovs", pipeline)
    return Config("ovs", pipeline, nat_meter=exp.nat_meter, nat_flags=exp.nat_flags)


def _vs_baseline(exp: Experiment, measure: Measure, **task: Any) -> Group:
    base = Task(pipeline_config(exp.baseline), measure, **task) if exp.baseline else None
    subjects = tuple(Task(pipeline_config(p, exp), measure, **task) for p in exp.pipelines
                     if p != exp.baseline)
    return Group(base, subjects)


def _flood_groups(exp: Experiment) -> list[Group]:
    """Per pipeline, destinations and flood rate: the pipeline's stream and ping without the
    flood, then with it."""
    groups = []
    for p in exp.pipelines:
        for d in exp.destinations:
            quiet = Task(pipeline_config(p, exp), "flood", destinations=d, stream=exp.stream)
            groups += [Group(quiet, (replace(quiet, rate=r),), "flood") for r in exp.rates]
    return groups


def rule_config(system: str, rules: int, kind: str) -> Config:
    if system == "ovsmgr":
        return Config("ovs", "generated", rules, kind)
    return Config(system, "linux" if system == "linux" else system, rules, kind)


def _rules_groups(exp: Experiment) -> list[Group]:
    groups = []
    counts = sorted(set(exp.rules))
    zero, rest = counts[0], counts[1:]
    for system in exp.systems:
        for measure in exp.measures:
            if measure == "cps" and system != "ovsmgr":
                continue  # the Linux baselines track no connections
            m, common = _measure_of(exp, measure)
            if system == "linux":
                groups.append(Group(None, (Task(rule_config("linux", 0, "dport"), m, **common),), "rules"))
                continue
            if system == "ovsmgr":  # the stateful firewall of 0 rules against plain forwarding
                groups.append(Group(Task(Config("ovs", "plain"), m, **common),
                                    (Task(rule_config("ovsmgr", zero, exp.rule_kinds[0]), m, **common),),
                                    "pipeline"))
            for kind in exp.rule_kinds:
                base = Task(rule_config(system, zero, kind), m, **common)
                for count in rest:
                    groups.append(Group(base, (Task(rule_config(system, count, kind), m, **common),),
                                        "rules"))
    return groups


def _measure_of(exp: Experiment, measure: str) -> tuple[Measure, dict[str, Any]]:
    """A spec measure as a task's measure and fields: ``cost`` is one trial at a fixed rate
    (the experiment's first rate, else `COST_RATE`), for the datapath's cycles per packet."""
    common: dict[str, Any] = {"flows": exp.flows[0], "size": exp.sizes[0]}
    if measure == "cost":
        common["rate"] = exp.rates[0] if exp.rates else Rate(COST_RATE)
        return "rate", common
    return measure, common  # type: ignore[return-value]


def plan_experiment(exp: Experiment) -> list[Group]:
    """The groups of one experiment, in the order they are measured (see the module doc)."""
    if exp.method == "sweep":
        return [_vs_baseline(exp, "rate", flows=f, size=s, rate=r)
                for f in exp.flows for s in exp.sizes for r in exp.rates]
    if exp.method == "ndr":
        return [_vs_baseline(exp, "ndr", flows=f, size=s) for f in exp.flows for s in exp.sizes]
    if exp.method == "tcp":
        return [_vs_baseline(exp, "tcp")]
    if exp.method == "cps":
        return [_vs_baseline(exp, "cps", size=s, destinations=d) for d in exp.destinations for s in exp.sizes]
    if exp.method == "flood":
        return _flood_groups(exp)
    if exp.method == "flows":
        counts = sorted(set(exp.flows))
        groups = []
        for measure in exp.measures:
            m, common = _measure_of(exp, measure)
            common.pop("flows")
            for p in exp.pipelines:
                for s in exp.sizes:
                    common["size"] = s
                    base = Task(pipeline_config(p), m, flows=counts[0], establish=exp.establish, **common)
                    groups += [Group(base, (replace(base, flows=f),), "flows") for f in counts[1:]]
        return groups
    if exp.method == "rules":
        return _rules_groups(exp)
    if exp.method == "updates":
        generator = exp.policy_ports[0] if exp.policy_ports else ""
        groups = []
        for p in exp.pipelines:
            for f in exp.flows:
                for s in exp.sizes:
                    base = Task(Config("ovs", p, blocklist=generator), "ndr", flows=f, size=s)
                    subject = replace(base, update_rate=exp.update_rate, update_kind=exp.update_kind)
                    groups.append(Group(base, (subject,), "updates"))
        return groups
    return []  # control: no traffic, see `control`
