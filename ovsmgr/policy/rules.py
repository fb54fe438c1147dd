"""Firewall and NAT rules: names, zones, matches and translations, resolved and checked.

Rules are kept in the order written (first match wins), with their index in the
merged policy and their source span. A rule that the shape pass had to prune,
or whose references are broken, is still checked for everything else but is
left out of the result, so the analysis never reasons about a rule that does
not say what its author wrote.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_network
from typing import Any

from ovsmgr.policy.diagnostics import Collector, Span, did_you_mean
from ovsmgr.policy.ir import (
    MAX_SHADOW_RULES,
    Backend,
    HealthCheck,
    IPAddress,
    Limit,
    NatRule,
    Rule,
    RuleMatch,
    ZoneInfo,
)
from ovsmgr.policy.loader import Path_, SourceMap
from ovsmgr.policy.model import FirewallRule, Policy
from ovsmgr.policy.model import NatRule as NatRuleModel
from ovsmgr.policy.names import AddressBook, ServiceBook
from ovsmgr.policy.shape import Shape
from ovsmgr.policy.terms import (
    TermError,
    parse_address,
    parse_address_range,
    parse_limit,
    parse_port_range,
)

_FAMILY_NAMES = {frozenset({4}): "IPv4 only", frozenset({6}): "IPv6 only"}


HELPER_PROTOCOLS = {"ftp": "tcp", "tftp": "udp"}
HELPER_EXAMPLES = {"ftp": "services: [tcp/21]", "tftp": "services: [udp/69]"}
HELPER_PORTS = {"ftp": 21, "tftp": 69}
"""The ports OVS's userspace helpers read (`get_alg_ctl_type` in lib/conntrack.c): a ct() without
`alg=` (all but the commit) hands them only packets to or from these."""


class RuleResolver:
    def __init__(
        self, shape: Shape, zones: dict[str, ZoneInfo], addresses: AddressBook, services: ServiceBook,
        source: SourceMap, diag: Collector,
    ):
        self.m: Policy = shape.model
        self.shape = shape
        self.broken = shape.broken
        self.zones = zones
        self.addresses = addresses
        self.services = services
        self.src = source
        self.diag = diag
        self.names: dict[str, Path_] = {}
        """Rule name -> where the first rule of that name is (NAT and firewall rules share names)."""

    def firewall(self) -> tuple[Rule, ...]:
        out = []
        shadows = 0
        for raw, i in zip(self.m.firewall.rules, self.shape.rule_index, strict=True):
            path = ("firewall", "rules", i)
            self._unique_name(raw.name, path, ("firewall", i))
            match = self._match(raw, path)
            helper_ok = self._helper_ok(raw, path, match)
            limit, limit_ok = self._limit(raw, path)
            if raw.shadow and raw.enabled:
                shadows += 1
                if shadows > MAX_SHADOW_RULES:
                    self.diag.error(self.src.span((*path, "shadow")),
                                    f"more than {MAX_SHADOW_RULES} shadow rules: enforce or remove some first")
                if raw.limit is not None:
                    self.diag.error(self.src.span((*path, "limit")), f'rule "{raw.name}" is a shadow rule: it '
                                    "passes every packet the rules below it pass, so it can limit none")
                    limit_ok = False
            if match is not None and helper_ok and limit_ok and raw.enabled and i not in self.broken.rules:
                out.append(Rule(raw.name, i, match, raw.action, raw.stateful, raw.log, self.src.span(path),
                                raw.helper, limit, raw.shadow))
        return tuple(out)

    def _helper_ok(self, raw: FirewallRule, path: Path_, match: RuleMatch | None) -> bool:
        """A helper watches the control connections a stateful allow rule opens: ftp's are TCP,
        tftp's UDP, so every service of the rule must be of that protocol (and there must be one:
        a helper on every port of every protocol would parse traffic that is not its own)."""
        if raw.helper is None:
            return True
        span = self.src.span((*path, "helper"))
        if raw.action != "allow" or not raw.stateful:
            what = f"action: {raw.action}" if raw.action != "allow" else "stateful: false"
            self.diag.error(span, f'helper: {raw.helper} needs a stateful allow rule; rule "{raw.name}" has {what}')
            return False
        proto = HELPER_PROTOCOLS[raw.helper]
        if raw.services is None:
            self.diag.error(span, f'helper: {raw.helper} needs services: the {proto} port(s) of the control '
                                  f'connection (rule "{raw.name}" has none), e.g. {HELPER_EXAMPLES[raw.helper]}')
            return False
        if match is None:
            return True  # its services were reported already
        others = sorted({str(s) for s in match.services if s.proto != proto})
        if others:
            self.diag.error(self.src.span((*path, "services")),
                            f'helper: {raw.helper} watches {proto} control connections; rule "{raw.name}" '
                            f'also has {", ".join(others)}')
            return False
        port = HELPER_PORTS[raw.helper]
        if self.m.switch.datapath != "system" and not any(s.ports and s.ports[0] <= port <= s.ports[1]
                                                          for s in match.services):
            self.diag.warning(self.src.span((*path, "services")),
                              f'helper: {raw.helper} on the {self.m.switch.datapath} datapath reads control '
                              f'connections on {proto}/{port} only; rule "{raw.name}" does not include it, so '
                              "its data connections will not pass")
        return True

    def nat(self) -> tuple[NatRule, ...]:
        out: list[NatRule] = []
        for raw, i in zip(self.m.nat, self.shape.nat_index, strict=True):
            path = ("nat", i)
            self._unique_name(raw.name, path, ("nat", i))
            match = self._match(raw, path)
            if i in self.broken.nat:
                continue
            if raw.type == "static":
                halves = self._static(raw, path, match)
                if halves and raw.enabled:
                    out += halves
                continue
            translation = self._translation(raw, path, match)
            limit, limit_ok = self._limit(raw, path)
            backends = self._backends(raw, path, match)
            if match is not None and translation is not None and limit_ok and backends is not None and raw.enabled:
                lo, hi, ports = translation
                check = raw.health_check
                out.append(NatRule(raw.name, i, raw.type, match, lo, hi, ports, raw.port, self.src.span(path),
                                   limit, backends, health_check=HealthCheck(check.interval, check.timeout,
                                                                             check.failures) if check else None))
        return tuple(out)

    def _limit(self, raw: FirewallRule | NatRuleModel, path: Path_) -> tuple[Limit | None, bool]:
        """The rule's `limit:` (None without one), and whether it is sound."""
        if raw.limit is None:
            return None, True
        span = self.src.span((*path, "limit"))
        try:
            limit = parse_limit(raw.limit)
        except TermError as exc:
            self.diag.error(span, str(exc))
            return None, False
        if isinstance(raw, NatRuleModel) and limit.unit != "pktps":
            self.diag.error(span, f'a NAT rule\'s limit counts new connections: write N/s or N/m, not "{raw.limit}"')
            return None, False
        if isinstance(raw, FirewallRule) and raw.action == "drop":
            self.diag.error(span, f'rule "{raw.name}" drops every packet it matches: a limit has nothing to limit')
            return None, False
        return limit, True

    def _unique_name(self, name: str, path: Path_, where: tuple[str, int]) -> None:
        if where in self.broken.anonymous:
            return
        first = self.names.setdefault(name, path)
        if first is not path:  # spans only for the message: most names are used once
            self.diag.error(self.src.span((*path, "name")),
                            f'rule name "{name}" is used twice (also at {self.src.span((*first, "name"))})')

    # --- matches ---------------------------------------------------------------------------
    def _zones_ok(self, raw: FirewallRule | NatRuleModel, path: Path_) -> bool:
        ok = True
        for key, zone in (("from", raw.from_), ("to", raw.to)):
            if zone is None:
                continue
            if zone not in self.zones:
                if not self.broken.zone(zone):
                    self.diag.error(self.src.span((*path, key)),
                                    f'unknown zone "{zone}"{did_you_mean(zone, self.zones)}')
                ok = False
            elif key == "to" and self.m.switch.forwarding == "normal" and not self.zones[zone].networks \
                    and not self.broken.zone(zone):
                self.diag.error(self.src.span((*path, key)),
                                f'"to: {zone}" needs networks on zone "{zone}": with forwarding: normal '
                                "the zone a packet leaves by is known from its destination address")
        return ok

    def _match(self, raw: FirewallRule | NatRuleModel, path: Path_) -> RuleMatch | None:
        """The rule's match; None when it cannot be trusted or matches nothing (reported)."""
        zones_ok = self._zones_ok(raw, path)
        src, src_ok = self.addresses.resolve(raw.src, (*path, "src"))
        dst, dst_ok = self.addresses.resolve(raw.dst, (*path, "dst"))
        services, services_ok = self.services.resolve(raw.services, (*path, "services"))
        if not (zones_ok and src_ok and dst_ok and services_ok):
            return None
        empty = [key for key, written, value in (("src", raw.src, src), ("dst", raw.dst, dst),
                                                 ("services", raw.services, services))
                 if written is not None and not value]
        if empty:
            verb = "is" if len(empty) == 1 else "are"
            self.diag.warning(self.src.span(path),
                              f'rule "{raw.name}" matches nothing: its {" and ".join(empty)} {verb} empty '
                              "(an empty list, or sets without members); the rule is left out")
            return None
        match = RuleMatch(raw.from_, raw.to, src, dst, services)
        if not match.families():
            self._mixed_families(raw, path, match)
            return None
        return match

    def _mixed_families(self, raw: Any, path: Path_, match: RuleMatch) -> None:
        parts: list[tuple[str, frozenset[int]]] = []
        if match.src:
            parts.append(("src", frozenset(p.version for p in match.src)))
        if match.dst:
            parts.append(("dst", frozenset(p.version for p in match.dst)))
        if match.services:
            parts.append(("services", frozenset().union(*(s.families for s in match.services))))
        families: frozenset[int] = frozenset({4, 6})
        culprit = parts[-1][0]
        for key, fams in parts:
            families &= fams
            if not families:
                culprit = key
                break
        said = ", ".join(f"{key} is {_FAMILY_NAMES.get(fams, 'IPv4 and IPv6')}" for key, fams in parts)
        self.diag.error(self.src.span((*path, culprit), key=True),
                        f'rule "{raw.name}" mixes IPv4 and IPv6 ({said}): no packet can match it')

    # --- NAT -------------------------------------------------------------------------------
    def _translation(
        self, raw: NatRuleModel, path: Path_, match: RuleMatch | None,
    ) -> tuple[IPAddress, IPAddress, tuple[int, int] | None] | None:
        ok = True
        lo: IPAddress | None = None
        hi: IPAddress | None = None
        if raw.backends:
            first = self._backend_address(raw.backends[0].address, (*path, "backends", 0, "address"))
            lo = hi = first
            ok = first is not None
        elif raw.translate_to is None:
            needs = "translate_to or backends" if raw.type == "dnat" else "translate_to"
            self.diag.error(self.src.span(path), f'{raw.type} rule "{raw.name}" needs {needs}')
            ok = False
        else:
            try:
                lo, hi = parse_address_range(raw.translate_to)
            except TermError as exc:
                self.diag.error(self.src.span((*path, "translate_to")), str(exc))
                ok = False
        ports = None
        for span, message in self._nat_kind_problems(raw, path, match):
            self.diag.error(span, message)
            ok = False
        if raw.type == "snat" and raw.ports is not None:
            try:
                ports = parse_port_range(str(raw.ports))
            except TermError as exc:
                self.diag.error(self.src.span((*path, "ports")), str(exc))
                ok = False
        if lo is not None and match is not None and lo.version not in match.families() and not raw.backends:
            self.diag.error(self.src.span((*path, "translate_to")),
                            f"translate_to {raw.translate_to} is IPv{lo.version} but the rule matches only "
                            f"IPv{'/'.join(map(str, sorted(match.families())))}")
            ok = False
        if not ok or lo is None or hi is None:
            return None
        return lo, hi, ports

    def _backend_address(self, text: str, at: Path_) -> IPAddress | None:
        try:
            return parse_address(text)
        except TermError as exc:
            self.diag.error(self.src.span(at), str(exc))
            return None

    def _backends(self, raw: NatRuleModel, path: Path_, match: RuleMatch | None) -> tuple[Backend, ...] | None:
        """The backends of a load-balanced dnat rule (empty for any other rule); None after an error."""
        if not raw.backends:
            if raw.health_check is not None:
                self.diag.error(self.src.span((*path, "health_check"), key=True),
                                "health_check checks the backends of a dnat rule: this rule has none")
                return None
            return ()
        ok, out = True, []
        seen: dict[tuple[IPAddress, int | None], Path_] = {}
        for n, backend in enumerate(raw.backends):
            at = (*path, "backends", n)
            address = self._backend_address(backend.address, (*at, "address"))
            if address is None:
                ok = False
                continue
            if match is not None and address.version not in match.families():
                self.diag.error(self.src.span((*at, "address")), f"backend {address} is IPv{address.version} but "
                                f"the rule matches only IPv{'/'.join(map(str, sorted(match.families())))}")
                ok = False
            key = (address, backend.port)
            if key in seen:
                self.diag.error(self.src.span(at), f"backend {address}{f':{backend.port}' if backend.port else ''} "
                                f"is listed twice (also at {self.src.span(seen[key])})")
                ok = False
            seen.setdefault(key, at)
            out.append(Backend(address, backend.port, backend.weight))
        if any(b.port is not None for b in raw.backends) and match is not None \
                and not any(s.ports for s in match.services):
            self.diag.error(self.src.span((*path, "backends"), key=True),
                            "a backend port needs services with tcp, udp or sctp ports to translate")
            ok = False
        return tuple(out) if ok else None

    def _static(self, raw: NatRuleModel, path: Path_, match: RuleMatch | None) -> tuple[NatRule, ...]:
        """A `type: static` rule as its two halves: the inside address leaves as the public one, and
        connections to the public address from the outside zone reach the inside one."""
        problems = [(key, f"{key} is not used by static NAT, which translates every connection of src")
                    for key in ("dst", "services", "ports", "port", "backends", "limit", "health_check")
                    if getattr(raw, key) is not None]
        for key, message in problems:
            self.diag.error(self.src.span((*path, key), key=True), message)
        meaning = {"to": "to (the outside zone)", "src": "src (the inside address)",
                   "translate_to": "translate_to (its public address)"}
        missing = [key for key in meaning if getattr(raw, key) is None]
        if missing:
            self.diag.error(self.src.span(path),
                            f'static rule "{raw.name}" needs {" and ".join(meaning[k] for k in missing)}')
        if problems or missing or match is None or raw.translate_to is None or raw.to is None:
            return ()
        inside = match.src[0] if len(match.src) == 1 and match.src[0].num_addresses == 1 else None
        if inside is None:
            self.diag.error(self.src.span((*path, "src")), f'static rule "{raw.name}": src must be one address '
                            "(1:1 NAT maps one address to one address)")
        try:
            public, hi = parse_address_range(raw.translate_to)
        except TermError as exc:
            self.diag.error(self.src.span((*path, "translate_to")), str(exc))
            return ()
        if public != hi:
            self.diag.error(self.src.span((*path, "translate_to")), f'static rule "{raw.name}": translate_to must '
                            "be one address (1:1 NAT maps one address to one address)")
            return ()
        if inside is None:
            return ()
        if public.version != inside.version:
            self.diag.error(self.src.span((*path, "translate_to")), f"translate_to {public} is IPv{public.version} "
                            f"but src {inside.network_address} is IPv{inside.version}")
            return ()
        span = self.src.span(path)
        private = inside.network_address
        outbound = NatRule(raw.name, self._index(path), "snat", match, public, public, None, None, span, static=True)
        inbound = NatRule(raw.name, self._index(path), "dnat", RuleMatch(raw.to, None, (), (ip_network(public),)),
                          private, private, None, None, span, static=True)
        return outbound, inbound

    @staticmethod
    def _index(path: Path_) -> int:
        return int(path[1])

    def _nat_kind_problems(self, raw: NatRuleModel, path: Path_, match: RuleMatch | None) -> Iterator[tuple[Span, str]]:
        if raw.type == "dnat":
            if raw.dst is None:
                yield self.src.span(path), f'dnat rule "{raw.name}" needs dst: the public address it translates'
            if raw.ports is not None:
                yield (self.src.span((*path, "ports"), key=True),
                       "ports (a source port range) is for snat; dnat takes port")
            if raw.port is not None and match is not None and not any(s.ports for s in match.services):
                yield (self.src.span((*path, "port"), key=True),
                       "port needs services with tcp, udp or sctp ports to translate")
            if raw.backends and raw.translate_to is not None:
                yield (self.src.span((*path, "translate_to"), key=True),
                       "translate_to or backends: a dnat rule translates to one or spreads over the other")
            if raw.backends and raw.port is not None:
                yield self.src.span((*path, "port"), key=True), "with backends, each backend has its own port"
        else:
            if raw.port is not None:
                yield (self.src.span((*path, "port"), key=True),
                       "port (a new destination port) is for dnat; snat takes ports")
            if raw.backends:
                yield self.src.span((*path, "backends"), key=True), "backends are for dnat rules"
