"""Reading bench specs: strict YAML with every mistake at its file:line:column, the built-in
smoke spec, and the spec behind ``ovsmgr bench run --policy FILE``.

The format is described in `ovsmgr.bench.spec`; YAML is read with the policy front
end's loader (no YAML 1.1 surprises, duplicate keys refused, spans kept).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from ovsmgr.bench.spec import (
    COMMON_FIELDS,
    FRAME_SIZES,
    MAX_FLOWS,
    MAX_UPDATE_RATE,
    MEASURES,
    METHOD_FIELDS,
    METHODS,
    RULE_KINDS,
    SEED_PIPELINES,
    SYSTEMS,
    TOP_FIELDS,
    UPDATE_KINDS,
    BenchSpec,
    Experiment,
    NdrSettings,
    Rate,
    Settings,
    SpecError,
    Traffic,
    parse_rate,
    rate_steps,
)
from ovsmgr.policy.diagnostics import Collector, PolicyError
from ovsmgr.policy.loader import load_file, load_text


class _Reader:
    """Typed access to a loaded document that collects every problem with its span."""

    def __init__(self, doc: Any, file: str, span_of: Any):
        self.doc, self.file, self.span_of, self.diag = doc, file, span_of, Collector()

    def error(self, path: tuple[str | int, ...], message: str) -> None:
        self.diag.error(self.span_of(path), message)

    def mapping(self, path: tuple[str | int, ...], value: Any, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.error(path, "expected a mapping")
            return {}
        for key in sorted(set(value) - allowed):
            self.diag.error(self.span_of((*path, key), key=True),
                            f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
        return value

    def number(self, path: tuple[str | int, ...], value: Any, lo: float, hi: float,
               integer: bool = False) -> float | None:
        ok = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, str) and not integer:
            try:
                value, ok = float(value), True
            except ValueError:
                ok = False
        if not ok or isinstance(value, bool) or not lo <= value <= hi:
            what = f"an integer in {int(lo)}..{int(hi)}" if integer else f"a number in {lo:g}..{hi:g}"
            self.error(path, f"expected {what}")
            return None
        return float(value)

    def rate(self, path: tuple[str | int, ...], value: Any) -> Rate | None:
        try:
            return parse_rate(value)
        except (ValueError, TypeError) as exc:
            self.error(path, str(exc))
            return None

    def listing(self, path: tuple[str | int, ...], value: Any) -> list[Any]:
        items = value if isinstance(value, list) else [value]
        if not items:
            self.error(path, "expected at least one value")
        return items

    def choices(self, path: tuple[str | int, ...], value: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
        items = self.listing(path, value)
        for i, item in enumerate(items):
            if item not in allowed:
                self.error((*path, i) if isinstance(value, list) else path,
                           f"{item!r} is not one of {', '.join(allowed)}")
        return tuple(str(i) for i in items)

    def integers(self, path: tuple[str | int, ...], value: Any, lo: int, hi: int) -> tuple[int, ...]:
        items = self.listing(path, value)
        out = [self.number((*path, i) if isinstance(value, list) else path, v, lo, hi, integer=True)
               for i, v in enumerate(items)]
        return tuple(int(v) for v in out if v is not None)


def _settings(r: _Reader, path: tuple[str | int, ...], data: dict[str, Any], base: Settings) -> Settings:
    s = base
    if "datapath" in data:
        if data["datapath"] in ("netdev", "dpdk"):
            s = replace(s, datapath=data["datapath"])
        else:
            r.error((*path, "datapath"), "datapath must be netdev or dpdk")
    for key, lo, hi, integer in (("duration", 0.1, 600, False), ("warmup", 0, 60, False),
                                 ("repetitions", 1, 100, True), ("probe_rate", 0, 20000, True),
                                 ("dpdk_ring", 0, 65536, True), ("nice", -20, 19, True)):
        if key in data:
            value = r.number((*path, key), data[key], lo, hi, integer)
            if value is not None:
                update: dict[str, Any] = {key: int(value) if integer else float(value)}
                s = replace(s, **update)
    if "ndr" in data:
        s = replace(s, ndr=_ndr(r, (*path, "ndr"), data["ndr"], s.ndr))
    if "traffic" in data:
        s = replace(s, traffic=_traffic(r, (*path, "traffic"), data["traffic"], s.traffic))
    return s


def _ndr(r: _Reader, path: tuple[str | int, ...], value: Any, base: NdrSettings) -> NdrSettings:
    data = r.mapping(path, value, {"loss", "steps", "low", "high", "retries", "min_cpu_share"})
    ndr = base
    if "loss" in data and (loss := r.number((*path, "loss"), data["loss"], 0, 0.5)) is not None:
        ndr = replace(ndr, loss=float(loss))
    if "steps" in data and (steps := r.number((*path, "steps"), data["steps"], 1, 30, True)) is not None:
        ndr = replace(ndr, steps=int(steps))
    if "retries" in data and (tries := r.number((*path, "retries"), data["retries"], 0, 5, True)) is not None:
        ndr = replace(ndr, retries=int(tries))
    if "min_cpu_share" in data and (share := r.number((*path, "min_cpu_share"), data["min_cpu_share"],
                                                      0, 1)) is not None:
        ndr = replace(ndr, min_cpu_share=float(share))
    for key in ("low", "high"):
        if key in data and (rate := r.rate((*path, key), data[key])) is not None:
            update: dict[str, Any] = {key: rate}
            ndr = replace(ndr, **update)
    if ndr.low.unit == ndr.high.unit and ndr.low.value >= ndr.high.value:
        r.error(path, "ndr.low must be below ndr.high")
    return ndr


def _traffic(r: _Reader, path: tuple[str | int, ...], value: Any, base: Traffic) -> Traffic:
    data = r.mapping(path, value, {"proto", "dport"})
    traffic = base
    if "proto" in data:
        if data["proto"] in ("udp", "tcp"):
            traffic = replace(traffic, proto=data["proto"])
        else:
            r.error((*path, "proto"), "proto must be udp or tcp")
    if "dport" in data and (port := r.number((*path, "dport"), data["dport"], 1, 19999, True)):
        traffic = replace(traffic, dport=int(port))
    return traffic


def _rates(r: _Reader, path: tuple[str | int, ...], value: Any) -> tuple[Rate, ...]:
    if isinstance(value, dict):
        data = r.mapping(path, value, {"from", "to", "steps", "step"})
        start, stop = r.rate((*path, "from"), data.get("from")), r.rate((*path, "to"), data.get("to"))
        step = r.rate((*path, "step"), data["step"]) if "step" in data else None
        steps = r.number((*path, "steps"), data["steps"], 2, 200, True) if "steps" in data else None
        if start is None or stop is None:
            return ()
        try:
            return tuple(rate_steps(start, stop, int(steps) if steps else None, step))
        except ValueError as exc:
            r.error(path, str(exc))
            return ()
    items = r.listing(path, value)
    rates = [r.rate((*path, i) if isinstance(value, list) else path, v) for i, v in enumerate(items)]
    return tuple(x for x in rates if x is not None)


def _pipelines(r: _Reader, path: tuple[str | int, ...], value: Any, base_dir: Path) -> tuple[str, ...]:
    out = []
    for i, item in enumerate(r.listing(path, value)):
        where = (*path, i) if isinstance(value, list) else path
        if not isinstance(item, str) or not (item in SEED_PIPELINES or item.endswith((".yaml", ".yml"))):
            r.error(where, f"pipeline {item!r} must be one of {', '.join(SEED_PIPELINES)} "
                           "or a policy file (*.yaml)")
            continue
        if item in SEED_PIPELINES:
            out.append(item)
            continue
        path_ = Path(item) if Path(item).is_absolute() else base_dir / item
        if not path_.is_file():
            r.error(where, f"policy file {path_} does not exist")
        out.append(str(path_))
    return tuple(out)


def _experiment(r: _Reader, i: int, value: Any, base: Settings, base_dir: Path) -> Experiment | None:
    path: tuple[str | int, ...] = ("experiments", i)
    if not isinstance(value, dict):
        r.error(path, "expected a mapping")
        return None
    method = value.get("method")
    if method not in METHODS:
        r.error((*path, "method"), f"method must be one of {', '.join(METHODS)}")
        return None
    data = r.mapping(path, value, {"name", "method", *COMMON_FIELDS, *METHOD_FIELDS[method]})
    exp = Experiment(name=str(data.get("name") or f"{method}-{i + 1}"), method=method,
                     settings=_settings(r, path, data, base))
    if method == "flows":
        exp = replace(exp, flows=(100, 1000, 10000, 100000), baseline=None)
    if method == "control":
        exp = replace(exp, rules=(100, 1000, 5000), rule_kinds=("mixed",), baseline=None)
    fields: dict[str, Any] = {}
    if "pipelines" in data:
        fields["pipelines"] = _pipelines(r, (*path, "pipelines"), data["pipelines"], base_dir)
    if "baseline" in data:
        fields["baseline"] = (None if data["baseline"] in (None, "none")
                              else _pipelines(r, (*path, "baseline"), data["baseline"], base_dir)[0])
    if "systems" in data:
        fields["systems"] = r.choices((*path, "systems"), data["systems"], SYSTEMS)
    if "rule_kinds" in data:
        fields["rule_kinds"] = r.choices((*path, "rule_kinds"), data["rule_kinds"], RULE_KINDS)
    if "measures" in data:
        fields["measures"] = r.choices((*path, "measures"), data["measures"], MEASURES)
    if "rules" in data:
        fields["rules"] = r.integers((*path, "rules"), data["rules"], 0, 100_000)
    if "flows" in data:
        fields["flows"] = r.integers((*path, "flows"), data["flows"], 1, MAX_FLOWS)
    if "sizes" in data:
        fields["sizes"] = r.integers((*path, "sizes"), data["sizes"], FRAME_SIZES.start, FRAME_SIZES.stop - 1)
    if "rates" in data:
        fields["rates"] = _rates(r, (*path, "rates"), data["rates"])
    if "establish" in data:
        fields["establish"] = bool(data["establish"])
    if "update_rate" in data and (rate := r.number((*path, "update_rate"), data["update_rate"], 0.1,
                                                   MAX_UPDATE_RATE)) is not None:
        fields["update_rate"] = float(rate)
    if "update_kind" in data:
        if data["update_kind"] in UPDATE_KINDS:
            fields["update_kind"] = data["update_kind"]
        else:
            r.error((*path, "update_kind"), f"update_kind must be one of {', '.join(UPDATE_KINDS)}")
    if "policy_ports" in data:
        ports = data["policy_ports"]
        if isinstance(ports, list) and len(ports) == 2 and all(isinstance(p, str) for p in ports):
            fields["policy_ports"] = (ports[0], ports[1])
        else:
            r.error((*path, "policy_ports"), "policy_ports is [GENERATOR_PORT, SINK_PORT]")
    exp = replace(exp, **fields)
    if method == "sweep" and not exp.rates:
        r.error(path, "a sweep needs rates (a list, or {from, to, steps|step})")
    if method == "updates" and "plain" in exp.pipelines:
        r.error((*path, "pipelines"), "plain forwarding has no firewall to change: updates need a policy")
    return exp


def parse_spec(text: str, file: str = "<spec>", base_dir: Path | None = None) -> BenchSpec:
    """Parse and validate a spec; SpecError lists every problem with its file:line:column."""
    try:
        doc = load_text(text, file)
    except PolicyError as exc:
        raise SpecError(exc.diagnostics) from None
    r = _Reader(doc.data, file, doc.source.span)
    data = r.mapping((), doc.data, TOP_FIELDS)
    if data.get("version", 1) != 1:
        r.error(("version",), "only version 1 is known")
    settings = _settings(r, (), data, Settings())
    experiments = []
    raw_experiments = data.get("experiments")
    if not isinstance(raw_experiments, list) or not raw_experiments:
        r.error(("experiments",), "experiments: a list of at least one experiment is required")
        raw_experiments = []
    for i, value in enumerate(raw_experiments):
        exp = _experiment(r, i, value, settings, base_dir or Path.cwd())
        if exp is not None:
            experiments.append(exp)
    names = [e.name for e in experiments]
    for i, name in enumerate(names):
        if names.index(name) != i:
            r.error(("experiments", i, "name"), f"experiment name {name!r} is used twice")
    if r.diag.has_errors:
        raise SpecError(r.diag.items)
    raw = cast(dict[str, Any], doc.data)
    return BenchSpec(str(data.get("name") or Path(file).stem), tuple(experiments), file, raw)


def load_spec(path: str | Path) -> BenchSpec:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        try:
            load_file(path)  # the policy front end words unreadable files well
        except PolicyError as exc:
            raise SpecError(exc.diagnostics) from None
        raise
    return parse_spec(text, str(path), Path(path).resolve().parent)


SMOKE_SPEC = """\
version: 1
name: smoke
datapath: netdev
duration: 0.4
warmup: 0.2
probe_rate: 200
ndr: {loss: 0.01, steps: 2, low: 2kpps, high: 8kpps}
experiments:
  - {name: sweep, method: sweep, pipelines: [seed-firewall], flows: [10], sizes: [64],
     rates: [2kpps, 5kpps]}
  - {name: ndr, method: ndr, pipelines: [seed-nat], flows: [10], sizes: [64]}
  - {name: rules, method: rules, systems: [ovsmgr, iptables], rule_kinds: [dport],
     rules: [0, 50], flows: [10], measures: [ndr, tcp], traffic: {proto: tcp}}
  - {name: control, method: control, rules: [20], rule_kinds: [dport]}
  - {name: updates, method: updates, pipelines: [seed-firewall], flows: [10], sizes: [64],
     update_rate: 100}
"""


def smoke_spec() -> BenchSpec:
    """The CI smoke run: every part of the harness, end to end, in well under a minute."""
    return parse_spec(SMOKE_SPEC, "<smoke>")


def shrink_for_smoke(spec: BenchSpec) -> BenchSpec:
    """A spec cut down to seconds: one short trial per point, tiny flow and rule counts."""
    settings: dict[str, Any] = {"duration": 0.4, "warmup": 0.2, "repetitions": 1, "probe_rate": 200}
    experiments = []
    for e in spec.experiments:
        s = replace(e.settings, **settings, ndr=replace(e.settings.ndr, steps=2, retries=0))
        experiments.append(replace(
            e, settings=s, flows=tuple(sorted({min(f, 100) for f in e.flows})),
            sizes=e.sizes[:1], rates=e.rates[:2], rules=tuple(sorted({min(r, 50) for r in e.rules})),
            systems=e.systems[:3], rule_kinds=e.rule_kinds[:1], measures=e.measures[:1]))
    return replace(spec, name=f"{spec.name}-smoke", experiments=tuple(experiments))


def spec_from_flags(policy: str | None, method: str, flows: tuple[int, ...], sizes: tuple[int, ...],
                    rates: tuple[str, ...]) -> BenchSpec:
    """The spec behind ``ovsmgr bench run --policy FILE`` (what does my policy cost?): the
    policy (or the seed firewall) against plain forwarding."""
    import yaml

    experiment: dict[str, Any] = {"name": method, "method": method,
                                  "pipelines": [policy or "seed-firewall"], "baseline": "plain"}
    if method in ("sweep", "ndr", "flows"):
        experiment["flows"] = list(flows or (1000,))
        experiment["sizes"] = list(sizes or (64,))
    if method == "cps":
        experiment["sizes"] = list(sizes or (64,))
    if method == "sweep":
        experiment["rates"] = list(rates) or {"from": "10kpps", "to": "100kpps", "steps": 5}
    if method == "flows":
        experiment.pop("baseline")
    text = yaml.safe_dump({"version": 1, "name": Path(policy).stem if policy else "seed-firewall",
                           "experiments": [experiment]}, sort_keys=False)
    return parse_spec(text, "<command line>")
