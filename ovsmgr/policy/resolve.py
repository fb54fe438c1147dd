"""From loaded YAML to a `ResolvedPolicy`, with every problem reported at its source.

Three passes, each collecting all it finds: shape (pydantic, errors mapped back
to spans), names (zones, ports, sets, services must exist, once), and meaning
(prefixes, ranges, families, NAT, shadowed rules; see `analysis`).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ovsmgr.policy import analysis
from ovsmgr.policy.diagnostics import Collector, Diagnostic, PolicyError, Severity, Span, did_you_mean
from ovsmgr.policy.ir import IPNetwork, NatRule, PortInfo, ResolvedPolicy, Rule, RuleMatch, Service, ZoneInfo
from ovsmgr.policy.loader import Document, Path_, SourceMap, load_file, load_text
from ovsmgr.policy.merge import merge_documents
from ovsmgr.policy.model import Policy
from ovsmgr.policy.terms import (
    TermError, looks_like_service_literal, parse_address_range, parse_port_range, parse_prefix,
    parse_service,
)


def load_policy(paths: Sequence[str | Path]) -> ResolvedPolicy:
    """Load, merge and validate policy files; raise `PolicyError` listing every problem."""
    return resolve_documents(_load_all([str(p) for p in paths]))


def load_policy_text(text: str, file: str = "<policy>") -> ResolvedPolicy:
    return resolve_documents([load_text(text, file)])


def check_policy(paths: Sequence[str | Path]) -> tuple[ResolvedPolicy | None, list[Diagnostic]]:
    """Like `load_policy`, but return the diagnostics (warnings too) instead of raising."""
    try:
        policy = load_policy(paths)
    except PolicyError as exc:
        return None, exc.diagnostics
    return policy, list(policy.diagnostics)


def _load_all(paths: list[str]) -> list[Document]:
    docs, problems = [], []
    if not paths:
        raise PolicyError([Diagnostic(Span("<policy>", 1, 1), _ERR, "no policy file given")])
    for path in paths:
        try:
            docs.append(load_file(path))
        except PolicyError as exc:
            problems.extend(exc.diagnostics)
    if problems:
        raise PolicyError(problems)
    return docs


def resolve_documents(docs: list[Document]) -> ResolvedPolicy:
    diag = Collector()
    data, source = merge_documents(docs, diag)
    diag.raise_if_errors()
    model = _validate_shape(data, source, diag)
    resolved = _Resolver(model, source, diag, tuple(d.file for d in docs)).resolve()
    analysis.check(resolved, source, diag)
    diag.raise_if_errors()
    object.__setattr__(resolved, "diagnostics", tuple(sorted(diag.items)))
    return resolved


_ERR = Severity.ERROR


def _validate_shape(data: Any, source: SourceMap, diag: Collector) -> Policy:
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        seen: set[tuple[Span, str]] = set()
        for err in exc.errors():
            span, message = _describe(err, data, source)
            if (span, message) not in seen:
                seen.add((span, message))
                diag.error(span, message)
        raise PolicyError(diag.items) from None


def _data_path(loc: tuple[Any, ...], data: Any) -> Path_:
    """Pydantic locations include union branch names; keep only the parts present in the data."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and part == loc[-1]:
            path.append(part)  # a missing or unknown key: the last part names it
            break
        else:
            continue
        path.append(part)
    return tuple(path)


def _describe(err: Any, data: Any, source: SourceMap) -> tuple[Span, str]:
    path = _data_path(tuple(err["loc"]), data)
    where = ".".join(str(p) for p in path) or "policy"
    kind = err["type"]
    if kind == "extra_forbidden":
        return source.span(path, key=True), f'unknown key "{path[-1]}" in {".".join(map(str, path[:-1])) or "policy"}'
    if kind == "missing":
        parent = path[:-1] if path and path[-1] == err["loc"][-1] else path
        return source.span(parent), f'{".".join(map(str, parent)) or "policy"}: missing required key "{err["loc"][-1]}"'
    if kind == "string_pattern_mismatch" and path and path[-1] != "bridge":
        return source.span(path), f'{where}: "{err.get("input")}" is not a valid name (letters, digits, _ . -; starting with a letter or _)'
    return source.span(path), f"{where}: {err['msg']}"


class _Resolver:
    def __init__(self, model: Policy, source: SourceMap, diag: Collector, files: tuple[str, ...]):
        self.m = model
        self.src = source
        self.diag = diag
        self.files = files
        self.sets: dict[str, tuple[IPNetwork, ...]] = {}

    def resolve(self) -> ResolvedPolicy:
        zones, ports = self._zones_and_ports()
        links = self._links(ports)
        self._expand_all_sets()
        rule_names: dict[str, Span] = {}
        rules = tuple(self._rules(zones, rule_names))
        nat = tuple(self._nat_rules(zones, rule_names))
        sw = self.m.switch
        if sw.fail_mode == "standalone":
            self.diag.warning(self.src.span(("switch", "fail_mode")),
                              "fail_mode: standalone fails open: without a controller the bridge switches everything")
        return ResolvedPolicy(
            model=self.m, bridge=sw.bridge, datapath=sw.datapath, fail_mode=sw.fail_mode,
            forwarding=sw.forwarding, mac=sw.mac or _derived_mac(sw.bridge), ports=ports, links=links,
            zones=zones, rules=rules, nat=nat, default_action=self.m.firewall.default,
            ct_zone=self.m.conntrack.zone, max_connections=self.m.conntrack.max_connections,
            invalid=self.m.conntrack.invalid, cut_on_rule_removal=self.m.conntrack.cut_on_rule_removal,
            sources=self.files,
        )

    # --- zones, ports, links -------------------------------------------------
    def _zones_and_ports(self) -> tuple[dict[str, ZoneInfo], dict[str, PortInfo]]:
        sw = self.m.switch
        by_ofport: dict[int, str] = {}
        for name, port in sw.ports.items():
            if port.ofport in by_ofport:
                self.diag.error(self.src.span(("switch", "ports", name, "ofport")),
                                f'ofport {port.ofport} of port "{name}" is also used by port "{by_ofport[port.ofport]}"')
            by_ofport.setdefault(port.ofport, name)
            if port.type == "dpdk" and not port.devargs:
                self.diag.error(self.src.span(("switch", "ports", name), key=True),
                                f'port "{name}" has type dpdk but no devargs')
        zone_of: dict[str, str] = {}
        zones: dict[str, ZoneInfo] = {}
        for zone_id, name in enumerate(sorted(self.m.zones), start=1):
            zone = self.m.zones[name]
            if not zone.ports:
                self.diag.error(self.src.span(("zones", name), key=True), f'zone "{name}" has no ports')
            for i, port in enumerate(zone.ports):
                at = self.src.span(("zones", name, "ports", i))
                if port not in sw.ports:
                    self.diag.error(at, f'zone "{name}": unknown port "{port}"{did_you_mean(port, sw.ports)}')
                elif port in zone_of:
                    self.diag.error(at, f'port "{port}" is already in zone "{zone_of[port]}"')
                else:
                    zone_of[port] = name
            networks = self._prefixes(zone.networks, ("zones", name, "networks"))
            zones[name] = ZoneInfo(name, zone_id, tuple(zone.ports), networks)
        ports = {}
        for name, port in sw.ports.items():
            if name not in zone_of:
                self.diag.warning(self.src.span(("switch", "ports", name), key=True),
                                  f'port "{name}" is in no zone: everything it sends is dropped')
            ports[name] = PortInfo(name, port.ofport, zone_of.get(name, ""), port.interface, port.type, port.devargs)
        return zones, ports

    def _links(self, ports: dict[str, PortInfo]) -> dict[str, str]:
        sw = self.m.switch
        links: dict[str, str] = {}
        if sw.links and sw.forwarding == "normal":
            self.diag.error(self.src.span(("switch", "links"), key=True),
                            "links are for forwarding: ports; forwarding: normal learns where to send")
        for i, (a, b) in enumerate(sw.links):
            ok = True
            for j, port in enumerate((a, b)):
                at = self.src.span(("switch", "links", i, j))
                if port not in ports:
                    self.diag.error(at, f'link: unknown port "{port}"{did_you_mean(port, ports)}')
                    ok = False
                elif port in links:
                    self.diag.error(at, f'port "{port}" is already linked to "{links[port]}"')
                    ok = False
            if a == b:
                self.diag.error(self.src.span(("switch", "links", i)), f'port "{a}" is linked to itself')
            elif ok:
                links[a], links[b] = b, a
        if sw.forwarding == "ports":
            for name in ports:
                if name not in links and ports[name].zone:
                    self.diag.warning(self.src.span(("switch", "ports", name), key=True),
                                      f'port "{name}" is in no link: with forwarding: ports its traffic has nowhere to go')
        return links

    # --- address sets and prefixes -------------------------------------------
    def _expand_all_sets(self) -> None:
        for name in self.m.addresses:
            self._expand_set(name, ())

    def _expand_set(self, name: str, stack: tuple[str, ...]) -> tuple[IPNetwork, ...]:
        if name in self.sets:
            return self.sets[name]
        if name in stack:
            return ()
        out: list[IPNetwork] = []
        for i, item in enumerate(self.m.addresses[name]):
            path = ("addresses", name, i)
            if item.startswith("@"):
                ref = item[1:]
                if ref in stack or ref == name:
                    self.diag.error(self.src.span(path), f'address set "{name}" includes itself through "@{ref}"')
                elif ref not in self.m.addresses:
                    self.diag.error(self.src.span(path), f'unknown address set "@{ref}"{did_you_mean(ref, self.m.addresses)}')
                else:
                    out.extend(self._expand_set(ref, (*stack, name)))
            else:
                out.extend(self._prefixes([item], path, single=True))
        self.sets[name] = tuple(dict.fromkeys(out))
        return self.sets[name]

    def _prefixes(self, items: list[str], path: Path_, single: bool = False) -> tuple[IPNetwork, ...]:
        out: list[IPNetwork] = []
        for i, item in enumerate(items):
            try:
                out.append(parse_prefix(item))
            except TermError as exc:
                self.diag.error(self.src.span(path if single else (*path, i)), str(exc))
        return tuple(out)

    def _addresses(self, value: str | list[str] | None, path: Path_) -> tuple[IPNetwork, ...]:
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        out: list[IPNetwork] = []
        for i, item in enumerate(items):
            at = path if isinstance(value, str) else (*path, i)
            if item.startswith("@"):
                ref = item[1:]
                if ref not in self.m.addresses:
                    self.diag.error(self.src.span(at), f'unknown address set "@{ref}"{did_you_mean(ref, self.m.addresses)}')
                else:
                    out.extend(self.sets.get(ref, ()))
            else:
                out.extend(self._prefixes([item], at, single=True))
        return tuple(dict.fromkeys(out))

    # --- services --------------------------------------------------------------
    def _services(self, items: list[str] | None, path: Path_) -> tuple[Service, ...]:
        out: list[Service] = []
        for i, item in enumerate(items or ()):
            at = self.src.span((*path, i))
            if item in self.m.services:
                for j, literal in enumerate(self.m.services[item]):
                    out.extend(self._service_literal(literal, self.src.span(("services", item, j))))
            elif looks_like_service_literal(item):
                out.extend(self._service_literal(item, at))
            else:
                self.diag.error(at, f'unknown service "{item}"{did_you_mean(item, self.m.services)}')
        return tuple(dict.fromkeys(out))

    def _service_literal(self, text: str, at: Span) -> list[Service]:
        try:
            return [parse_service(text)]
        except TermError as exc:
            self.diag.error(at, str(exc))
            return []

    # --- rules -----------------------------------------------------------------
    def _match(self, raw: Any, path: Path_, zones: dict[str, ZoneInfo]) -> RuleMatch | None:
        ok = True
        for key, zone in (("from", raw.from_), ("to", raw.to)):
            if zone is not None and zone not in zones:
                self.diag.error(self.src.span((*path, key)), f'unknown zone "{zone}"{did_you_mean(zone, zones)}')
                ok = False
        if raw.to is not None and self.m.switch.forwarding == "normal" and ok and not zones[raw.to].networks:
            self.diag.error(self.src.span((*path, "to")),
                            f'"to: {raw.to}" needs networks on zone "{raw.to}" with forwarding: normal')
        match = RuleMatch(raw.from_, raw.to, self._addresses(raw.src, (*path, "src")),
                          self._addresses(raw.dst, (*path, "dst")), self._services(raw.services, (*path, "services")))
        if (raw.src is None or match.src) and (raw.dst is None or match.dst) and not match.families():
            self.diag.error(self.src.span(path), f'rule "{raw.name}" mixes IPv4 and IPv6 (src, dst and services share no IP version): it can never match')
            ok = False
        return match if ok else None

    def _unique_name(self, name: str, path: Path_, names: dict[str, Span]) -> None:
        here = self.src.span((*path, "name"))
        if name in names:
            self.diag.error(here, f'rule name "{name}" is defined twice (also at {names[name]})')
        names.setdefault(name, here)

    def _rules(self, zones: dict[str, ZoneInfo], names: dict[str, Span]) -> list[Rule]:
        out = []
        for i, raw in enumerate(self.m.firewall.rules):
            path = ("firewall", "rules", i)
            self._unique_name(raw.name, path, names)
            match = self._match(raw, path, zones)
            if match is not None and raw.enabled:
                out.append(Rule(raw.name, i, match, raw.action, raw.stateful, raw.log, self.src.span(path)))
        return out

    def _nat_rules(self, zones: dict[str, ZoneInfo], names: dict[str, Span]) -> list[NatRule]:
        out = []
        for i, raw in enumerate(self.m.nat):
            path = ("nat", i)
            self._unique_name(raw.name, path, names)
            match = self._match(raw, path, zones)
            nat = self._nat_translation(raw, path, match)
            if match is not None and nat is not None and raw.enabled:
                lo, hi, ports = nat
                out.append(NatRule(raw.name, i, raw.type, match, lo, hi, ports, raw.port, self.src.span(path)))
        return out

    def _nat_translation(self, raw: Any, path: Path_, match: RuleMatch | None) -> Any:
        try:
            lo, hi = parse_address_range(raw.translate_to)
        except TermError as exc:
            self.diag.error(self.src.span((*path, "translate_to")), str(exc))
            return None
        ports = None
        if raw.type == "dnat":
            if raw.dst is None:
                self.diag.error(self.src.span(path), f'dnat rule "{raw.name}" needs dst: the public address it translates')
            if raw.ports is not None:
                self.diag.error(self.src.span((*path, "ports"), key=True), "ports is for snat; dnat takes port")
        else:
            if raw.port is not None:
                self.diag.error(self.src.span((*path, "port"), key=True), "port is for dnat; snat takes ports")
            if raw.ports is not None:
                try:
                    ports = parse_port_range(str(raw.ports))
                except TermError as exc:
                    self.diag.error(self.src.span((*path, "ports")), str(exc))
        if match is not None and lo.version not in match.families():
            self.diag.error(self.src.span((*path, "translate_to")),
                            f"translate_to {raw.translate_to} is IPv{lo.version} but the rule matches only IPv{'/'.join(map(str, sorted(match.families())))}")
        if raw.port is not None and raw.type == "dnat" and match is not None and not any(s.ports for s in match.services):
            self.diag.error(self.src.span((*path, "port"), key=True), "port needs services with tcp, udp or sctp ports")
        return lo, hi, ports


def _derived_mac(bridge: str) -> str:
    """A stable, locally administered unicast MAC for the switch's NAT answers."""
    digest = hashlib.sha256(bridge.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x0A, *digest[:5]))


__all__ = ["PolicyError", "check_policy", "ipaddress", "load_policy", "load_policy_text"]
