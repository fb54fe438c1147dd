"""From loaded YAML to a `ResolvedPolicy`, with every problem reported at its source.

The passes, each collecting all it finds and none stopping the next unless
nothing is left to check: YAML (`loader`), merging several files (`merge`),
shape (`shape`: pydantic, errors mapped back to spans, bad parts pruned),
names (zones, ports, sets, services must exist, once: here, `names`, `rules`)
and meaning (prefixes, ranges, families, NAT, shadowed rules: `analysis`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from ovsmgr.policy import analysis
from ovsmgr.policy.diagnostics import (
    Collector,
    Diagnostic,
    PolicyError,
    Severity,
    Span,
    did_you_mean,
)
from ovsmgr.policy.gcpause import gc_paused
from ovsmgr.policy.ir import PortInfo, ResolvedPolicy, ZoneInfo
from ovsmgr.policy.loader import Document, SourceMap, load_file, load_text
from ovsmgr.policy.merge import merge_documents
from ovsmgr.policy.names import AddressBook, ServiceBook
from ovsmgr.policy.rules import RuleResolver
from ovsmgr.policy.shape import Shape, validate_shape

MAX_IFNAME = 15
"""Linux interface names (IFNAMSIZ - 1)."""


def load_policy(paths: Sequence[str | Path]) -> ResolvedPolicy:
    """Load, merge and validate policy files; raise `PolicyError` listing every problem."""
    with gc_paused():
        return resolve_documents(_load_all([str(p) for p in paths]))


def load_policy_text(text: str, file: str = "<policy>") -> ResolvedPolicy:
    """Like `load_policy`, for one policy given as text (`file` names it in diagnostics)."""
    with gc_paused():
        return resolve_documents([load_text(text, file)])


def check_policy(paths: Sequence[str | Path]) -> tuple[ResolvedPolicy | None, list[Diagnostic]]:
    """Like `load_policy`, but return the diagnostics (warnings too) instead of raising."""
    try:
        policy = load_policy(paths)
    except PolicyError as exc:
        return None, exc.diagnostics
    return policy, list(policy.diagnostics)


def _load_all(paths: list[str]) -> list[Document]:
    if not paths:
        raise PolicyError([Diagnostic(Span("<policy>", 1, 1), Severity.ERROR, "no policy file given")])
    docs: list[Document] = []
    problems: list[Diagnostic] = []
    seen: dict[Path, str] = {}
    for path in paths:
        key = Path(path).resolve()
        if key in seen:
            problems.append(Diagnostic(Span(path, 1, 1), Severity.WARNING,
                                       f"the file is given twice (also as {seen[key]}); it is read once"))
            continue
        seen[key] = path
        try:
            docs.append(load_file(path))
        except PolicyError as exc:
            problems.extend(exc.diagnostics)
    if any(d.severity is Severity.ERROR for d in problems):
        raise PolicyError(problems)
    if docs and problems:
        docs[0].problems.extend(problems)
    return docs


def resolve_documents(docs: list[Document]) -> ResolvedPolicy:
    """Merge, validate and resolve loaded documents; raise `PolicyError` if anything is wrong."""
    diag = Collector()
    for doc in docs:
        diag.extend(doc.problems)
    data, source = merge_documents(docs, diag)
    if any(not isinstance(doc.data, dict) for doc in docs):
        raise PolicyError(diag.items)  # nothing sensible can be said about the rest
    shape = validate_shape(data, source, diag)
    resolved = _Resolver(shape, source, diag, tuple(d.file for d in docs)).resolve()
    analysis.check(resolved, source, diag)
    diag.raise_if_errors()
    object.__setattr__(resolved, "diagnostics", tuple(sorted(set(diag.items))))
    object.__setattr__(resolved, "digest", documents_digest(docs))
    return resolved


def documents_digest(docs: Sequence[Document]) -> str:
    h = hashlib.sha256()
    for doc in docs:
        h.update((doc.digest or hashlib.sha256(json.dumps(doc.data, sort_keys=True, default=str).encode())
                  .hexdigest()).encode())
    return h.hexdigest()


class _Resolver:
    def __init__(self, shape: Shape, source: SourceMap, diag: Collector, files: tuple[str, ...]):
        self.shape = shape
        self.m = shape.model
        self.broken = shape.broken
        self.src = source
        self.diag = diag
        self.files = files

    def resolve(self) -> ResolvedPolicy:
        addresses = AddressBook(self.m.addresses, self.src, self.diag, self.broken)
        services = ServiceBook(self.m.services, self.src, self.diag, self.broken)
        ports = self._ports()
        zones = self._zones(addresses)
        ports = self._zone_members(zones, ports)
        links = self._links(ports)
        rules = RuleResolver(self.shape, zones, addresses, services, self.src, self.diag)
        sw, ct = self.m.switch, self.m.conntrack
        if sw.fail_mode == "standalone":
            self.diag.warning(self.src.span(("switch", "fail_mode")), "fail_mode: standalone fails open: "
                              "without a controller the bridge switches everything")
        return ResolvedPolicy(
            model=self.m, bridge=sw.bridge, datapath=sw.datapath, fail_mode=sw.fail_mode,
            forwarding=sw.forwarding, mac=sw.mac or _derived_mac(sw.bridge), ports=ports, links=links,
            zones=zones, rules=rules.firewall(), nat=rules.nat(), default_action=self.m.firewall.default,
            ct_zone=ct.zone, max_connections=ct.max_connections, invalid=ct.invalid,
            cut_on_rule_removal=ct.cut_on_rule_removal, sources=self.files,
            ct_timeouts=tuple(ct.timeouts.as_dict().items()) if ct.timeouts else (),
            nat_zone=self._nat_zone(),
        )

    def _nat_zone(self) -> int:
        ct = self.m.conntrack
        if ct.nat_zone is not None and ct.nat_zone == ct.zone:
            self.diag.error(self.src.span(("conntrack", "nat_zone")),
                            f"nat_zone must differ from zone ({ct.zone}): a connection translated twice "
                            "needs a second conntrack zone")
        return ct.nat_zone or 0

    # --- ports, zones, links -------------------------------------------------------------------
    def _ports(self) -> dict[str, PortInfo]:
        sw = self.m.switch
        by_ofport: dict[int, str] = {}
        for name, port in sw.ports.items():
            path = ("switch", "ports", name)
            if port.ofport in by_ofport:
                self.diag.error(self.src.span((*path, "ofport")),
                                f'ofport {port.ofport} of port "{name}" is also used by port "{by_ofport[port.ofport]}"')
            by_ofport.setdefault(port.ofport, name)
            if port.type == "dpdk" and not port.devargs:
                self.diag.error(self.src.span(path, key=True), f'port "{name}" has type dpdk but no devargs')
            if port.type == "dpdk" and sw.datapath == "system":
                self.diag.error(self.src.span((*path, "type")),
                                f'port "{name}" has type dpdk, which needs datapath netdev or dpdk, not system')
            if port.devargs and port.type != "dpdk":
                self.diag.warning(self.src.span((*path, "devargs"), key=True),
                                  f'port "{name}": devargs is only used with type: dpdk')
            if port.interface is not None and not 1 <= len(port.interface) <= MAX_IFNAME:
                self.diag.error(self.src.span((*path, "interface")),
                                f'interface name "{port.interface}" must have 1-{MAX_IFNAME} characters')
        return {name: PortInfo(name, port.ofport, "", port.interface, port.type, port.devargs)
                for name, port in sw.ports.items()}

    def _zones(self, addresses: AddressBook) -> dict[str, ZoneInfo]:
        zones: dict[str, ZoneInfo] = {}
        for zone_id, name in enumerate(sorted(self.m.zones), start=1):
            zone = self.m.zones[name]
            if not zone.ports and not self.broken.zone(name):
                self.diag.error(self.src.span(("zones", name), key=True),
                                f'zone "{name}" has no ports: give it ports: [PORT, ...]')
            networks, _ = addresses.prefixes(zone.networks, ("zones", name, "networks"))
            zones[name] = ZoneInfo(name, zone_id, tuple(dict.fromkeys(zone.ports)), networks, zone.vlan)
            if zone.vlan is not None:
                self._check_vlan_zone(zones[name])
        return zones

    def _check_vlan_zone(self, zone: ZoneInfo) -> None:
        """A VLAN zone needs explicit output (links) and IPv4 networks to be sent to (see docs/policy.md)."""
        at = self.src.span(("zones", zone.name, "vlan"))
        if self.m.switch.forwarding == "normal":
            self.diag.error(at, f'zone "{zone.name}": vlan needs forwarding: ports (OVS NORMAL switches within one '
                                "VLAN and never sends a frame back by the port it came in by)")
        if any(n.version == 6 for n in zone.networks):
            self.diag.error(at, f'zone "{zone.name}": a VLAN zone takes IPv4 networks only (IPv6 neighbour '
                                "discovery is not carried between VLANs)")
        if not zone.networks:
            self.diag.warning(at, f'zone "{zone.name}" has vlan {zone.vlan} but no networks: nothing is sent '
                                  "toward it (a VLAN of a trunk port is chosen by the destination's network)")

    def _zone_members(self, zones: dict[str, ZoneInfo], ports: dict[str, PortInfo]) -> dict[str, PortInfo]:
        """A port is in one zone per VLAN (None: untagged); a (port, vlan) pair in two zones is an error."""
        zone_of: dict[tuple[str, int | None], str] = {}
        for name in sorted(self.m.zones):
            if self.broken.zone(name):
                continue  # its own error is reported; what it would hold is unknown
            vlan = self.m.zones[name].vlan
            for i, port in enumerate(self.m.zones[name].ports):
                at = self.src.span(("zones", name, "ports", i))
                if port not in ports:
                    if not self.broken.port(port):
                        self.diag.error(at, f'zone "{name}": unknown port "{port}"{did_you_mean(port, ports)}')
                elif zone_of.get((port, vlan)) == name:
                    self.diag.error(at, f'port "{port}" is listed twice in zone "{name}"')
                elif (port, vlan) in zone_of:
                    other = zone_of[port, vlan]
                    frames = "untagged frames" if vlan is None else f"vlan {vlan}"
                    self.diag.error(at, f'port "{port}" is already in zone "{other}" for {frames} '
                                        f"(at {self.src.span(('zones', other), key=True)}); a port may be in "
                                        "several zones only with a different vlan each")
                else:
                    zone_of[port, vlan] = name
        quiet = self.broken.all_zones or bool(self.broken.zones)
        member = {port for port, _ in zone_of}
        for name in ports:
            if name not in member and not quiet:
                self.diag.warning(self.src.span(("switch", "ports", name), key=True),
                                  f'port "{name}" is in no zone: everything it sends is dropped')
        return {name: PortInfo(p.name, p.ofport, zone_of.get((name, None), ""), p.interface, p.type, p.devargs)
                for name, p in ports.items()}

    def _links(self, ports: dict[str, PortInfo]) -> dict[str, str]:
        sw = self.m.switch
        links: dict[str, str] = {}
        if sw.links and sw.forwarding == "normal":
            self.diag.error(self.src.span(("switch", "links"), key=True),
                            "links are for forwarding: ports; forwarding: normal learns where to send")
        for (a, b), i in zip(sw.links, self.shape.link_index, strict=True):
            ok = True
            for j, port in enumerate((a, b)):
                at = self.src.span(("switch", "links", i, j))
                if port not in ports:
                    if not self.broken.port(port):
                        self.diag.error(at, f'link: unknown port "{port}"{did_you_mean(port, ports)}')
                    ok = False
                elif port in links and not (j == 1 and a == b):
                    self.diag.error(at, f'port "{port}" is already linked to "{links[port]}"')
                    ok = False
            if a == b:
                self.diag.error(self.src.span(("switch", "links", i)), f'port "{a}" is linked to itself')
            elif ok:
                links[a], links[b] = b, a
        mentioned = {port for pair in sw.links for port in pair}
        if sw.forwarding == "ports" and not self.broken.links and not self.broken.all_ports:
            for name in ports:
                if name not in mentioned and any(name in z.ports for z in self.m.zones.values()):
                    self.diag.warning(self.src.span(("switch", "ports", name), key=True), f'port "{name}" '
                                      "is in no link: with forwarding: ports its traffic has nowhere to go")
        return links


def _derived_mac(bridge: str) -> str:
    """A stable, locally administered unicast MAC for the switch's NAT answers."""
    digest = hashlib.sha256(bridge.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x0A, *digest[:5]))


__all__ = ["PolicyError", "check_policy", "load_policy", "load_policy_text", "resolve_documents"]
