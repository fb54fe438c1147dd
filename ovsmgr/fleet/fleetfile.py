"""Reading a fleet file: strict YAML with every mistake at its file:line:column, then every switch's
policy through the policy front end, before anything is contacted.

The YAML is read by the policy front end's loader (no YAML 1.1 surprises, duplicate keys, aliases and
tags refused, spans kept); shape errors come from `ovsmgr.fleet.model` worded as the policy's are;
then what needs several values. `load_fleet` raises `PolicyError` with every diagnostic it found, so
the CLI reports fleet files exactly as it reports policies. `load_policies` loads each switch's
policy and fails if any one does not validate: a fleet with one bad policy changes no switch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ovsmgr.fleet.model import SECTIONS, FleetFile, FleetSwitch, ModelPath
from ovsmgr.policy import PolicyError, ResolvedPolicy, load_policy
from ovsmgr.policy.diagnostics import Collector, Diagnostic, Severity, Span, did_you_mean
from ovsmgr.policy.loader import SourceMap, load_file
from ovsmgr.policy.shape import _data_path as pydantic_data_path
from ovsmgr.policy.shape import describe, where
from ovsmgr.southbound.tls import TlsFiles

CLIENT_SCHEMES = ("ssl", "unix")
"""How ovsmgr reaches the store and the switches: TLS, or a local socket. Never plain TCP."""


@dataclass(frozen=True)
class Rollout:
    canary: tuple[str, ...] = ()
    batch: int = 1
    stop_on_failure: bool = True
    confirm: int | None = None
    timeout: int = 60


@dataclass(frozen=True)
class SwitchSpec:
    """One switch of the fleet as the file says it (paths made absolute)."""

    name: str
    policy: tuple[str, ...]
    datapath_id: int | None = None
    db: str | None = None
    openflow: str | None = None
    controllers: tuple[str, ...] = ()
    group: str | None = None
    """The fleet controllers that serve it (`controller --fleet --group GROUP`); None: those without --group."""
    agent: bool = False
    """Served by its own agents (`ovsmgr agent --switch NAME`), not by fleet controllers."""
    span: Span = field(default_factory=lambda: Span("<fleet>", 1, 1))
    state_dir: str | None = None
    """Where this switch's applied record is kept: the fleet file's `state_dir:`/NAME (None: the default,
    `ovsmgr.fleet.targets.record_dir`)."""


@dataclass(frozen=True)
class Fleet:
    path: str
    switches: dict[str, SwitchSpec]
    """In the file's order."""
    store: tuple[str, ...] = ()
    tls: TlsFiles | None = None
    rollout: Rollout = Rollout()
    source: SourceMap = field(default_factory=SourceMap, compare=False, repr=False)

    def span(self, *path: str | int) -> Span:
        return self.source.span(path)


def load_fleet(path: str | Path) -> Fleet:
    """Read and check a fleet file; `PolicyError` with every problem found."""
    doc = load_file(path)
    diag = Collector(list(doc.problems))
    if not isinstance(doc.data, dict):
        diag.error(doc.source.span(()), "a fleet file is a mapping (version, store, tls, rollout, switches)")
        diag.raise_if_errors()
    try:
        model = FleetFile.model_validate(doc.data)
    except ValidationError as exc:
        _report(exc, doc.data, doc.source, diag)
        diag.raise_if_errors()
        raise AssertionError("unreachable") from None
    diag.raise_if_errors()
    fleet = _build(model, Path(str(path)), doc.source)
    _check(fleet, model, diag)
    diag.raise_if_errors()
    return fleet


def _report(exc: ValidationError, data: Any, source: SourceMap, diag: Collector) -> None:
    """Every shape error once per place, worded as the policy front end words them."""
    groups: dict[tuple[ModelPath, bool], list[Any]] = {}
    for err in exc.errors():
        loc = tuple(err["loc"])
        groups.setdefault(pydantic_data_path(loc, data), []).append(err)
    for (path, is_key), errors in groups.items():
        if errors[0]["type"] == "extra_forbidden":
            model = SECTIONS.get(path[:-1]) or (FleetSwitch if path[:1] == ("switches",) else None)
            allowed = sorted(model.model_fields) if model else []
            diag.error(source.span(path, key=True), f'unknown key "{path[-1]}" in {where(path[:-1]) or "the fleet"}'
                       f"{did_you_mean(str(path[-1]), allowed)} (allowed: {', '.join(allowed)})")
        elif path == ("version",):
            diag.error(source.span(path), "version: only version 1 of the fleet file exists")
        else:
            diag.error(*describe(errors, path, is_key, source))


def _build(model: FleetFile, path: Path, source: SourceMap) -> Fleet:
    base = path.parent

    def local(name: str) -> str:
        return str(Path(name) if Path(name).is_absolute() else base / name)

    switches = {}
    for name, sw in model.switches.items():
        files = [sw.policy] if isinstance(sw.policy, str) else sw.policy
        switches[name] = SwitchSpec(
            name, tuple(local(f) for f in files), int(sw.datapath_id, 16) if sw.datapath_id else None,
            sw.db, sw.openflow, tuple(sw.controllers if sw.controllers is not None else model.controllers),
            sw.group, sw.agent, source.span(("switches", name), key=True),
            str(Path(local(model.state_dir)) / name) if model.state_dir else None)
    tls = TlsFiles(Path(local(model.tls.private_key)), Path(local(model.tls.certificate)),
                   Path(local(model.tls.ca_cert))) if model.tls else None
    r = model.rollout
    rollout = Rollout(tuple(r.canary), r.batch, r.stop_on_failure, r.confirm, r.timeout)
    return Fleet(str(path), switches, tuple(model.store or ()), tls, rollout, source)


def _check(fleet: Fleet, model: FleetFile, diag: Collector) -> None:
    """What needs more than one value: names, unique datapath ids, TLS on every connection."""
    for i, name in enumerate(fleet.rollout.canary):
        if name not in fleet.switches:
            diag.error(fleet.span("rollout", "canary", i),
                       f'canary "{name}" is not a switch of this fleet{did_you_mean(name, fleet.switches)}')
        elif name in fleet.rollout.canary[:i]:
            diag.error(fleet.span("rollout", "canary", i), f'canary "{name}" is named twice')
    seen: dict[int, str] = {}
    for sw in fleet.switches.values():
        if sw.datapath_id is not None:
            if sw.datapath_id in seen:
                diag.error(fleet.span("switches", sw.name, "datapath_id"),
                           f"datapath_id {sw.datapath_id:#018x} is also switch {seen[sw.datapath_id]}'s")
            seen.setdefault(sw.datapath_id, sw.name)
        for key, value in (("agent", sw.agent), ("group", sw.group)):
            if value and not sw.controllers:
                diag.error(fleet.span("switches", sw.name, key),
                           f"{key}: is about who serves the switch, but it has no controllers: (fleet apply pushes to it)")
        if sw.agent and sw.group is not None:
            diag.error(fleet.span("switches", sw.name, "group"),
                       "group: names the fleet controllers that serve a switch; agent: true says its own agents do")
    uses_tls = False
    for path, endpoint, active in _endpoints(fleet, model):
        uses_tls |= endpoint.startswith("ssl:")
        problem = endpoint_problem(endpoint, active)
        if problem:
            diag.error(fleet.span(*path), f"{where(path)}: {problem}")
    if uses_tls and fleet.tls is None:
        diag.error(fleet.span(), "ssl: endpoints need tls: {private_key: ..., certificate: ..., ca_cert: ...}")


def _endpoints(fleet: Fleet, model: FleetFile) -> Iterable[tuple[ModelPath, str, bool]]:
    """(where, endpoint, True for targets ovsmgr connects to / False for controllers switches connect to)."""
    for i, endpoint in enumerate(fleet.store):
        yield ("store", i), endpoint, True
    for i, endpoint in enumerate(model.controllers):
        yield ("controllers", i), endpoint, False
    for name, sw in model.switches.items():
        for key in ("db", "openflow"):
            value = getattr(sw, key)
            if value is not None:
                yield ("switches", name, key), value, True
        for i, endpoint in enumerate(sw.controllers or ()):
            yield ("switches", name, "controllers", i), endpoint, False


def endpoint_problem(endpoint: str, client: bool = True) -> str | None:
    """Why an endpoint is refused (None: it is fine). ovsmgr speaks TLS or a local socket; a switch
    reaches its controllers over TLS, or TCP on the switch's own loopback or a unix socket (a
    controller on the switch's host)."""
    scheme, _, rest = endpoint.partition(":")
    if client and scheme not in CLIENT_SCHEMES:
        hint = " (plain TCP is refused: TLS everywhere)" if scheme == "tcp" else ""
        return f'"{endpoint}" is not ssl:HOST:PORT or unix:PATH{hint}'
    if not client and not (scheme in ("ssl", "unix") or (scheme == "tcp" and rest.startswith(("127.", "[::1]")))):
        return (f'"{endpoint}" is not ssl:HOST:PORT (a switch reaches remote controllers over TLS; '
                "plain TCP only to its own loopback, unix:PATH on its own host)")
    if scheme != "unix":
        host, sep, port = rest.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            return f'"{endpoint}" is not {scheme}:HOST:PORT'
    elif not rest.startswith("/"):
        return f'"{endpoint}" is not unix:/ABSOLUTE/PATH'
    return None


def load_policies(fleet: Fleet, names: Iterable[str] | None = None) -> dict[str, ResolvedPolicy]:
    """Every switch's policy (or those named), validated; `PolicyError` with the diagnostics of every
    policy that fails, each marked with its switch, so nothing is written while one is wrong."""
    problems: list[Diagnostic] = []
    out: dict[str, ResolvedPolicy] = {}
    cache: dict[tuple[str, ...], ResolvedPolicy | PolicyError] = {}
    for name in names if names is not None else fleet.switches:
        spec = fleet.switches[name]
        result = cache.get(spec.policy)
        if result is None:
            try:
                result = load_policy(list(spec.policy))
            except PolicyError as exc:
                result = exc
            cache[spec.policy] = result
        if isinstance(result, PolicyError):
            problems += [Diagnostic(d.span, d.severity, f"{d.message} (switch {name})") for d in result.diagnostics]
        else:
            out[name] = result
    problems += _shared_bridges(fleet, out)
    if any(d.severity is Severity.ERROR for d in problems):
        raise PolicyError(problems)
    return out


def _shared_bridges(fleet: Fleet, policies: dict[str, ResolvedPolicy]) -> list[Diagnostic]:
    """Two switches that are one bridge of one OVS would fight over its flows."""
    seen: dict[tuple[str, str], str] = {}
    out = []
    for name, policy in policies.items():
        db = fleet.switches[name].db
        if db is None:
            continue
        key = (db, policy.bridge)
        if key in seen:
            out.append(Diagnostic(fleet.switches[name].span, Severity.ERROR,
                                  f"switch {name} is bridge {policy.bridge} at {db}, as switch {seen[key]} is"))
        seen.setdefault(key, name)
    return out

