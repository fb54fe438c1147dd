"""Reading bench specs: strict YAML with every mistake at its file:line:column, the built-in
smoke spec, and the spec behind ``ovsmgr bench run --policy FILE``.

YAML is read with the policy front end's loader (no YAML 1.1 surprises, duplicate keys
refused, spans kept); its shape is checked by the pydantic models of
`ovsmgr.bench.specmodel`, whose errors are worded here and placed at their span; then
what needs several values (`_check_experiment`), and the model becomes the
`ovsmgr.bench.spec` dataclasses, an experiment's settings over the spec's.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, ValidationError

from ovsmgr.bench.pipelines import HANDWRITTEN
from ovsmgr.bench.spec import (
    SEED_PIPELINES,
    BenchSpec,
    Destinations,
    Experiment,
    NatMeter,
    NdrSettings,
    Rate,
    Settings,
    SpecError,
)
from ovsmgr.bench.specmodel import (
    BOUNDS,
    CHOICES,
    EXPERIMENTS,
    BenchFile,
    CommonSettings,
    DestinationsModel,
    NatMeterModel,
    NdrModel,
    RateRange,
    TrafficModel,
    listed,
)
from ovsmgr.policy.diagnostics import Collector, PolicyError
from ovsmgr.policy.loader import Path_, SourceMap, load_file, load_text
from ovsmgr.policy.shape import _data_path as pydantic_data_path

_MAPPING_ERRORS = ("model_type", "model_attributes_type", "dict_type", "union_tag_not_found")
_NOUNS = {"bool_type": "true or false", "string_type": "a string", "list_type": "a list"}
_LISTED = ("systems", "rule_kinds", "measures", "nat_flags")
_SECTIONS: dict[str, type[BaseModel]] = {"ndr": NdrModel, "traffic": TrafficModel, "rates": RateRange,
                                         "destinations": DestinationsModel, "nat_meter": NatMeterModel}
SPREAD = Destinations(16, 64)
"""The ``cps`` method's destinations unless a spec says: 1,024 (address, port) pairs, so a NAT's
source ports are not what runs out."""


# --- shape errors, worded --------------------------------------------------------------------
def _field(path: Path_) -> tuple[str, str | tuple[str, str]]:
    """(field name, its BOUNDS key) of the value at ``path`` (an item of a list: the list's)."""
    names = [p for p in path if isinstance(p, str)]
    name = names[-1] if names else ""
    section = names[-2] if len(names) > 1 else ""
    return name, (section, name) if (section, name) in BOUNDS else name


def _allowed(path: Path_, data: dict[str, Any]) -> str:
    """The keys the mapping at ``path`` may have (for "unknown key")."""
    model: type[BaseModel] = BenchFile
    section = next((p for p in reversed(path) if isinstance(p, str)), "")
    if section in _SECTIONS:
        model = _SECTIONS[section]
    elif len(path) == 2 and path[0] == "experiments":
        model = EXPERIMENTS[data["experiments"][path[1]]["method"]]
    return ", ".join(sorted(info.alias or name for name, info in model.model_fields.items()))


def _message(err: Any, path: Path_, data: Any) -> str:
    kind, value = err["type"], err.get("input")
    name, bound = _field(path)
    if path == ("experiments",):
        return "experiments: a list of at least one experiment is required"
    if kind in _MAPPING_ERRORS or (kind == "union_tag_invalid" and not isinstance(value, dict)):
        return "expected a mapping"
    if kind == "union_tag_invalid" or name == "method":
        return f"method must be one of {', '.join(CHOICES['method'])}"
    if path == ("version",):
        return "only version 1 is known"
    if name == "policy_ports":
        return "policy_ports is [GENERATOR_PORT, SINK_PORT]"
    if kind == "value_error":
        return str((err.get("ctx") or {}).get("error") or err["msg"])
    if kind == "too_short":
        return "expected at least one value"
    if kind == "literal_error" and name == "packets" and value == "new":
        return ("packets: new is the policy's limit: on the NAT rule: measure it with a pipeline whose "
                "policy has one (bench/nat/seed-nat-limit.yaml)")
    if kind == "literal_error" and name in CHOICES:
        return _choice_message(name, value, listed_field=isinstance(path[-1], int) or name in _LISTED)
    if bound in BOUNDS:
        lo, hi, number = BOUNDS[bound]
        return f"expected an integer in {int(lo)}..{int(hi)}" if number is int else f"expected a number in {lo:g}..{hi:g}"
    return f"expected {_NOUNS[kind]}" if kind in _NOUNS else str(err["msg"]).lower()


def _choice_message(name: str, value: Any, listed_field: bool) -> str:
    choices = CHOICES[name]
    if listed_field:
        return f"{value!r} is not one of {', '.join(choices)}"
    if len(choices) <= 2:
        return f"{name} must be {' or '.join(choices)}"
    return f"{name} must be one of {', '.join(choices)}"


def _report(exc: ValidationError, data: Any, source: SourceMap, diag: Collector) -> set[Path_]:
    """Every shape error, once per place (a union's branches may each report one); the places."""
    seen: dict[Path_, Any] = {}
    for err in exc.errors():
        path, _ = pydantic_data_path(tuple(err["loc"]), data)  # union tags and branches left out
        if path not in seen or err["type"] == "value_error":  # a validator's own words win
            seen[path] = err
    for path, err in seen.items():
        if err["type"] == "extra_forbidden":
            diag.error(source.span(path, key=True),
                       f"unknown key {path[-1]!r} (allowed: {_allowed(path[:-1], data)})")
        elif err["type"] == "missing" and path != ("experiments",):
            diag.error(source.span(path[:-1]), f"missing required key {path[-1]!r}")
        else:
            diag.error(source.span(path), _message(err, path, data))
    return set(seen)


# --- from the model to the dataclasses ----------------------------------------------------------
def _settings(model: CommonSettings, base: Settings) -> Settings:
    """``base`` with what ``model`` sets; ndr and traffic field by field."""
    given = {name: getattr(model, name) for name in model.model_fields_set if name in CommonSettings.model_fields}
    if "ndr" in given:
        ndr = given.pop("ndr")
        given["ndr"] = replace(base.ndr, **{k: getattr(ndr, k) for k in ndr.model_fields_set})
    if "traffic" in given:
        traffic = given.pop("traffic")
        given["traffic"] = replace(base.traffic, **{k: getattr(traffic, k) for k in traffic.model_fields_set})
    return replace(base, **given)


def _experiment(model: Any, i: int, base: Settings, base_dir: Path) -> Experiment:
    exp = Experiment(name=model.name or f"{model.method}-{i + 1}", method=model.method,
                     settings=_settings(model, base))
    if model.method == "flows":
        exp = replace(exp, flows=(100, 1000, 10000, 100000), baseline=None)
    if model.method == "control":
        exp = replace(exp, rules=(100, 1000, 5000), rule_kinds=("mixed",), baseline=None)
    if model.method == "cps":
        exp = replace(exp, destinations=(SPREAD,))
    if model.method == "flood":
        exp = replace(exp, pipelines=("seed-nat",), baseline=None, rates=(Rate(250000.0),))
    fields: dict[str, Any] = {}
    for name in model.model_fields_set - set(CommonSettings.model_fields) - {"name", "method"}:
        value = getattr(model, name)
        if name in ("pipelines", "baseline"):
            value = None if value in (None, "none") else tuple(_resolve(p, base_dir) for p in listed(value))
            value = value[0] if name == "baseline" and value else value
        elif name == "rates":
            value = tuple(value.rates() if isinstance(value, RateRange) else listed(value))
        elif name == "destinations":
            value = tuple(Destinations(d.addresses, d.ports) for d in listed(value))
        elif name == "nat_meter":
            value = NatMeter(value.packets, value.rate) if value is not None else None
        elif isinstance(value, list) or name in ("flows", "sizes", "rules", "systems", "rule_kinds", "measures",
                                                 "nat_flags"):
            value = tuple(listed(value))
        fields[name] = value
    return replace(exp, **fields)


def _resolve(pipeline: str, base_dir: Path) -> str:
    if pipeline in SEED_PIPELINES:
        return pipeline
    return str(Path(pipeline) if Path(pipeline).is_absolute() else base_dir / pipeline)


# --- what needs more than one value ----------------------------------------------------------------
def _check_experiment(exp: Experiment, raw: dict[str, Any], path: Path_, source: SourceMap,
                      diag: Collector) -> None:
    files = [(("pipelines", j) if isinstance(raw.get("pipelines"), list) else ("pipelines",), p)
             for j, p in enumerate(exp.pipelines)]
    if "baseline" in raw and exp.baseline is not None:
        files.append((("baseline",), exp.baseline))
    for at, pipeline in files:
        if pipeline not in SEED_PIPELINES and not Path(pipeline).is_file():
            diag.error(source.span((*path, *at)), f"policy file {pipeline} does not exist")
    if exp.method == "sweep" and not exp.rates:
        diag.error(source.span(path), "a sweep needs rates (a list, or {from, to, steps|step})")
    if (exp.nat_meter or exp.nat_flags) and exp.pipelines == ("plain",):
        diag.error(source.span(path), "nat_meter and nat_flags change NAT rules: plain forwarding has none")
    if exp.method == "updates" and "plain" in exp.pipelines:
        diag.error(source.span((*path, "pipelines")),
                   "plain forwarding has no firewall to change: updates need a policy")
    handwritten = [p for p in exp.pipelines if p in HANDWRITTEN]
    if handwritten and (exp.method in ("updates", "flood") or exp.nat_meter or exp.nat_flags):
        diag.error(source.span((*path, "pipelines")),
                   f"{handwritten[0]} is fixed hand-written flows: no policy for updates, floods, "
                   "nat_meter or nat_flags to change")
    _check_ndr(exp.settings.ndr, (*path, "ndr"), raw, source, diag)


def _check_ndr(ndr: NdrSettings, path: Path_, raw: dict[str, Any], source: SourceMap, diag: Collector) -> None:
    if "ndr" in raw and ndr.low.unit == ndr.high.unit and ndr.low.value >= ndr.high.value:
        diag.error(source.span(path), "ndr.low must be below ndr.high")


def _check_names(raw: list[Any], source: SourceMap, diag: Collector) -> None:
    names = [(i, str(e.get("name") or f"{e.get('method')}-{i + 1}")) for i, e in enumerate(raw)
             if isinstance(e, dict) and e.get("method") in EXPERIMENTS]
    seen: set[str] = set()
    for i, name in names:
        if name in seen:
            diag.error(source.span(("experiments", i, "name")), f"experiment name {name!r} is used twice")
        seen.add(name)


def parse_spec(text: str, file: str = "<spec>", base_dir: Path | None = None) -> BenchSpec:
    """Parse and validate a spec; SpecError lists every problem with its file:line:column."""
    try:
        doc = load_text(text, file)
    except PolicyError as exc:
        raise SpecError(exc.diagnostics) from None
    data, source, diag = doc.data, doc.source, Collector()
    bad: set[Path_] = set()
    try:
        BenchFile.model_validate(data)
    except ValidationError as exc:
        bad = _report(exc, data, source, diag)
    if not isinstance(data, dict) or not isinstance(data.get("experiments"), list):
        raise SpecError(diag.items)
    top_ok = not any(p and p[0] != "experiments" for p in bad) and () not in bad
    settings = _settings(CommonSettings.model_validate(_common(data)), Settings()) if top_ok else Settings()
    if top_ok:
        _check_ndr(settings.ndr, ("ndr",), data, source, diag)
    experiments = []
    for i, raw in enumerate(data["experiments"]):
        path: Path_ = ("experiments", i)
        if any(p[:2] == path for p in bad) or ("experiments",) in bad:
            continue
        exp = _experiment(EXPERIMENTS[raw["method"]].model_validate(raw), i, settings, base_dir or Path.cwd())
        _check_experiment(exp, raw, path, source, diag)
        experiments.append(exp)
    _check_names(data["experiments"], source, diag)
    if diag.has_errors:
        raise SpecError(diag.items)
    return BenchSpec(str(data.get("name") or Path(file).stem), tuple(experiments), file, cast(dict[str, Any], data))


def _common(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k in CommonSettings.model_fields}


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
  - {name: flood, method: flood, pipelines: [seed-nat], rates: [5kpps], stream: 20Mbit,
     nat_meter: {packets: syn, rate: 1000}}
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
