"""What a lab is made of, decided before anything is created: ports, hosts, addresses.

`LabSpec` lists the bridge and one `LabPort` (switch port plus the host behind
it) per policy port; `validate_spec` refuses a spec whose names or addresses
would make a setup command fail half way; `lab_spec_from_policy` picks host
addresses from a policy's zones. Pure: no I/O, so it is tested without root.
`ovsmgr.lab.ovs` re-exports all of it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Datapath = Literal["netdev", "dpdk"]
FALLBACK_NETWORK = "198.51.100.0/24"
FIRST_HOST = 10
IFNAMSIZ = 15


class LabError(Exception):
    """A lab step failed; the message names the command and its stderr."""


@dataclass(frozen=True)
class LabPort:
    """One switch port and the host behind it (``address`` like ``10.0.0.5/24``)."""

    name: str
    ofport: int
    address: str | None = None
    vlans: tuple[tuple[int, str], ...] = ()
    """(VLAN id, address) of each VLAN the host is in: a subinterface eth0.ID with that address, whose
    traffic leaves tagged (a host behind a trunk port with VLAN zones)."""

    @property
    def mac(self) -> str:
        """The host's fixed, locally administered MAC (from the ofport), so flows and tests
        can name it."""
        return f"02:00:00:00:{self.ofport >> 8:02x}:{self.ofport & 0xFF:02x}"


@dataclass(frozen=True)
class LabSpec:
    bridge: str
    datapath: Datapath
    ports: list[LabPort]
    name: str = "ovsmgr"


def validate_spec(spec: LabSpec) -> None:
    """Refuse a spec before anything is created, so errors name the spec, not a command."""
    problems: list[str] = []
    if spec.datapath not in ("netdev", "dpdk"):
        problems.append(f"datapath must be netdev or dpdk, not {spec.datapath!r}")
    if not spec.bridge or len(spec.bridge) > IFNAMSIZ:
        problems.append(f"bridge name {spec.bridge!r} must have 1..{IFNAMSIZ} characters")
    limit = IFNAMSIZ - 2 if spec.datapath == "dpdk" else IFNAMSIZ
    for port in spec.ports:
        if not port.name or len(port.name) > limit or "/" in port.name or port.name == spec.bridge:
            problems.append(f"port name {port.name!r} must have 1..{limit} characters, "
                            "no '/', and differ from the bridge name")
        if not 1 <= port.ofport < 0xFF00:
            problems.append(f"port {port.name}: ofport {port.ofport} is not in 1..65279")
        for address in (port.address, *(a for _, a in port.vlans)):
            try:
                if address is not None:
                    ipaddress.ip_interface(address)
            except ValueError as exc:
                problems.append(f"port {port.name}: {exc}")
        vids = [vid for vid, _ in port.vlans]
        if any(not 1 <= vid <= 4094 for vid in vids) or len(set(vids)) != len(vids):
            problems.append(f"port {port.name}: VLAN ids {vids} must be distinct, each in 1..4094")
    addresses = [_ip(a) for p in spec.ports for a in (p.address, *(a for _, a in p.vlans)) if _ip(a)]
    for what, values in (("port names", [p.name for p in spec.ports]),
                         ("ofports", [p.ofport for p in spec.ports]),
                         ("addresses", addresses)):
        if len(set(values)) != len(values):
            problems.append(f"{what} are not unique: {values}")
    if problems:
        raise LabError("invalid lab spec: " + "; ".join(problems))


def _ip(address: str | None) -> str | None:
    try:
        return str(ipaddress.ip_interface(address).ip) if address else None
    except ValueError:
        return None


# -- policy to lab spec ------------------------------------------------------------------------
class _Port(Protocol):
    @property
    def ofport(self) -> int: ...


class _Zone(Protocol):
    @property
    def ports(self) -> Sequence[str]: ...
    @property
    def networks(self) -> Sequence[str | ipaddress.IPv4Network | ipaddress.IPv6Network]: ...
    @property
    def vlan(self) -> int | None: ...


class _Switch(Protocol):
    @property
    def bridge(self) -> str: ...
    @property
    def ports(self) -> Mapping[str, _Port]: ...


class _Policy(Protocol):
    """The part of ``ovsmgr.policy.Policy`` a lab needs (kept structural on purpose)."""

    @property
    def switch(self) -> _Switch: ...
    @property
    def zones(self) -> Mapping[str, _Zone]: ...


def _nth_host(network: ipaddress.IPv4Network | ipaddress.IPv6Network, n: int) -> str:
    """The n-th lab host of a network: .10, .11, ... for IPv4, ::10, ::11, ... for IPv6
    (the IPv6 offsets read as the same digits, so 0x10 is the first)."""
    offset = FIRST_HOST + n if network.version == 4 else int(str(FIRST_HOST + n), 16)
    if offset >= network.num_addresses - (2 if network.version == 4 else 1):
        raise LabError(f"network {network} has no room for lab host number {n + 1}")
    return f"{network.network_address + offset}/{network.prefixlen}"


def _first_networks(policy: _Policy) -> dict[tuple[str, int | None], str]:
    """(port name, VLAN) to the first prefix of the port's zone for that VLAN (None: untagged),
    skipping default routes (/0)."""
    first: dict[tuple[str, int | None], str] = {}
    for zone in policy.zones.values():
        prefixes = [ipaddress.ip_network(str(n), strict=False) for n in zone.networks]
        usable = [str(p) for p in prefixes if p.prefixlen > 0]
        for port_name in zone.ports:
            if usable:
                first[port_name, zone.vlan] = usable[0]
    return first


def lab_spec_from_policy(policy: _Policy, datapath: Datapath,
                         host_overrides: Mapping[str, str], name: str = "ovsmgr") -> LabSpec:
    """A lab with one host per policy port, in the policy's port order.

    A host's address is ``host_overrides[port]`` if given; otherwise the next
    free one of .10, .11, ... (``::10``, ``::11``, ... for IPv6) in the first
    network of the port's zone that is not a default route (/0); a port with no
    such network gets the next free one of 198.51.100.10, .11, ... (TEST-NET-2),
    counted in port order. Addresses given as overrides are skipped. A port with
    VLAN zones gives its host one more address per VLAN zone, the next free one of
    the zone's first network, on a VLAN subinterface (``LabPort.vlans``).
    """
    unknown = sorted(set(host_overrides) - set(policy.switch.ports))
    if unknown:
        raise LabError(f"--host for unknown port(s): {', '.join(unknown)}")
    taken = {ipaddress.ip_interface(a).ip for a in host_overrides.values()}
    first = _first_networks(policy)
    next_index: dict[str, int] = {}
    ports: list[LabPort] = []
    for port_name, port in policy.switch.ports.items():
        address = host_overrides.get(port_name)
        vids = sorted({z.vlan for z in policy.zones.values() if z.vlan is not None and port_name in z.ports})
        if address is None and (not vids or (port_name, None) in first):
            network = ipaddress.ip_network(first.get((port_name, None), FALLBACK_NETWORK))
            address = _next_free_host(network, next_index, taken)
        vlans = tuple((vid, _next_free_host(ipaddress.ip_network(first[port_name, vid]), next_index, taken))
                      for vid in vids if (port_name, vid) in first)
        ports.append(LabPort(port_name, port.ofport, address, vlans))
    return LabSpec(policy.switch.bridge, datapath, ports, name)


def _next_free_host(network: ipaddress.IPv4Network | ipaddress.IPv6Network,
                    next_index: dict[str, int], taken: set[Any]) -> str:
    """The next lab host address of a network that nobody has yet; marks it taken."""
    while True:
        index = next_index.get(str(network), 0)
        next_index[str(network)] = index + 1
        address = _nth_host(network, index)
        ip = ipaddress.ip_interface(address).ip
        if ip not in taken:
            taken.add(ip)
            return address
