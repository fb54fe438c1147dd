"""The lock-out guard: `apply` refuses a policy that would cut the switch's own connections.

A switch managed over the network can be told to drop the very connections it
is managed through: the operator's SSH session, the management address, the
OpenFlow controller. That only happens when those connections cross the
bridge, which is when the switch host's own address sits on an interface of
the bridge (an internal port, or the bridge's LOCAL port), or on an interface
the policy is about to add to the bridge.

The *lifelines* checked, each a TCP connection:

- every `tcp:` / `ssl:` controller target of the bridge (OVSDB `Controller`),
  opened by the switch from the address its routing table would use;
- the SSH session `apply` runs in (`SSH_CONNECTION`), when it ends on the switch host;
- every `--mgmt ADDR[:PORT]` (port 22 by default): connections to the switch
  host's management address, from anywhere the policy could let them come from.

Each lifeline that crosses the bridge is run through the simulator
(`ovsmgr.sim`: the compiled flows with a conntrack model) as a TCP handshake,
SYN, SYN+ACK, ACK (tagged when its client is in a VLAN zone's networks on a port
with VLAN zones); if a step would be dropped, the connection is cut, and the
first-match reference (`ovsmgr.sim.reference.decide`) names the rule that cuts
it. An established connection is judged the same way: when its rule goes, the
next packet is revalidated against the new rules (docs/design.md).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ovsmgr.compiler import CompiledPolicy
from ovsmgr.policy import ResolvedPolicy
from ovsmgr.policy.ir import IPAddress
from ovsmgr.southbound.ovsdb import SwitchDB
from ovsmgr.southbound.target import SwitchTarget

if TYPE_CHECKING:  # the simulator is imported when a lifeline crosses the bridge, not at every apply
    from ovsmgr.sim import SimulatedSwitch, Trace

MGMT_PORT = 22
CONTROLLER_PORT = 6653
LOCAL_OFPORT = 65534
_ANY_CLIENT = {4: ipaddress.ip_address("192.0.2.123"), 6: ipaddress.ip_address("2001:db8::123")}
"""A client address no policy names (TEST-NET), tried when a lifeline's client is not known."""


@dataclass(frozen=True)
class Endpoint:
    address: IPAddress
    port: int

    @staticmethod
    def parse(text: str, default_port: int = MGMT_PORT) -> Endpoint:
        """`10.0.0.1`, `10.0.0.1:22`, `fd00::1`, `[fd00::1]:22`."""
        host, port = text, default_port
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else default_port
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
            port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} out of range")
        return Endpoint(ipaddress.ip_address(host.split("%")[0]), port)

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if self.address.version == 6 else f"{self.address}:{self.port}"


@dataclass(frozen=True)
class Lifeline:
    """A TCP connection from `client` (None: any client) to `server` that must survive an apply."""

    what: str
    server: Endpoint
    client: IPAddress | None = None


@dataclass(frozen=True)
class Cut:
    lifeline: Lifeline
    reason: str

    def __str__(self) -> str:
        return f"{self.lifeline.what}: {self.reason}"


class LockoutError(Exception):
    def __init__(self, cuts: Sequence[Cut]):
        self.cuts = list(cuts)
        super().__init__("refused: the policy would cut the switch's own connections "
                         "(apply --force to apply it anyway):\n" + "\n".join(f"  - {c}" for c in self.cuts))


class SwitchView(Protocol):
    """What the guard needs to know of the switch; unit tests give a fake."""

    def interfaces(self) -> dict[str, int]:
        """Name -> ofport of every interface of the bridge (its LOCAL port is 65534)."""

    def controllers(self) -> list[str]: ...

    def addresses(self) -> dict[IPAddress, str] | None:
        """The switch host's own addresses -> the interface holding each; None: unknown."""

    def route(self, address: IPAddress) -> IPAddress | None:
        """The source address the switch host would use to reach `address`; None: unknown."""


def check_lockout(compiled: CompiledPolicy | Callable[[], CompiledPolicy], view: SwitchView,
                  mgmt: Sequence[Endpoint] = (), ssh_connection: str | None = None,
                  policy: ResolvedPolicy | None = None) -> list[Cut]:
    """The lifelines of the switch that the policy would cut (empty: safe to apply). `compiled` may
    be a function that compiles (with `policy` given): the full compile, which the simulator needs,
    is then made only if a lifeline crosses the bridge."""
    found = lifelines(view, mgmt, ssh_connection)
    if not found:
        return []
    own = view.addresses() or {}
    lazy = functools.cache(compiled if callable(compiled) else (lambda: compiled))
    resolved = policy if policy is not None else lazy().policy
    return [cut for line in found if (cut := judge(resolved, lazy, view, own, line)) is not None]


def lifelines(view: SwitchView, mgmt: Sequence[Endpoint], ssh_connection: str | None) -> list[Lifeline]:
    found = [Lifeline(f"management address {ep}", ep) for ep in mgmt]
    if ssh_connection:
        parts = ssh_connection.split()
        if len(parts) == 4:
            client, server = ipaddress.ip_address(parts[0].split("%")[0]), Endpoint.parse(parts[2], int(parts[3]))
            found.append(Lifeline(f"this SSH session from {client} to {server}", server, client))
    for target in view.controllers():
        kind, _, rest = target.partition(":")
        if kind not in ("tcp", "ssl"):
            continue  # unix: and punix: never cross a bridge
        server = Endpoint.parse(rest, CONTROLLER_PORT)
        if server.address.is_loopback:
            continue
        found.append(Lifeline(f"controller {target}", server, view.route(server.address)))
    return found


def judge(policy: ResolvedPolicy, compiled: Callable[[], CompiledPolicy], view: SwitchView,
          own: dict[IPAddress, str], line: Lifeline) -> Cut | None:
    """Does `line` cross the bridge, and if so, does the policy still let it through?"""
    if line.server.address in own:
        switch_end, remote, switch_is_client = line.server.address, line.client, False
    elif line.client is not None and line.client in own:
        switch_end, remote, switch_is_client = line.client, line.server.address, True
    else:
        return None  # not the switch host's own connection, or its addresses are unknown
    iface = own[switch_end]
    interfaces = view.interfaces()
    if iface not in interfaces:
        adding = [p.name for p in policy.ports.values() if (p.interface or p.name) == iface and p.interface]
        if adding:
            return Cut(line, f"port {adding[0]} would move interface {iface}, which holds {switch_end}, "
                             f"into bridge {policy.bridge}")
        return None  # out of band: the connection does not cross the bridge
    by_ofport = {p.ofport: p.name for p in policy.ports.values()}
    port = by_ofport.get(interfaces[iface])
    if port is None:
        if interfaces[iface] == LOCAL_OFPORT and switch_is_client:
            return None  # controller traffic of the LOCAL port: OVS in-band control passes it
        return Cut(line, f"{switch_end} is on interface {iface} (ofport {interfaces[iface]}), which is "
                         f"no port of the policy: the pipeline drops everything it sends")
    return _simulate(compiled(), line, port, switch_end, remote, switch_is_client)


def _simulate(compiled: CompiledPolicy, line: Lifeline, port: str, switch_end: IPAddress,
              remote: IPAddress | None, switch_is_client: bool) -> Cut | None:
    """Try the handshake from every place the remote end could be; one that passes is enough."""
    from ovsmgr import sim

    policy = compiled.policy
    reasons = []
    for far_port in _far_ports(policy, port, remote):
        clients = [remote] if remote is not None else _any_clients(policy, far_port, switch_end.version)
        for client in clients:
            hosts = {port: (str(switch_end),), far_port: (str(client),)}
            switch = sim.SimulatedSwitch.from_policy(policy, hosts=hosts, compiled=compiled)
            if switch_is_client:
                reason = _handshake(switch, policy, port, switch_end, far_port, client, line.server.port)
            else:
                reason = _handshake(switch, policy, far_port, client, port, switch_end, line.server.port)
            if reason is None:
                return None
            reasons.append(reason)
    return Cut(line, reasons[0] if reasons else f"nothing the policy lets reach port {port}")


def _handshake(switch: SimulatedSwitch, policy: ResolvedPolicy, client_port: str, client: IPAddress,
               server_port: str, server: IPAddress, tcp_port: int) -> str | None:
    """SYN, SYN+ACK, ACK through the switch; None if all three arrive, else why one does not."""
    from ovsmgr import sim

    fields = "nw" if client.version == 4 else "ipv6"
    proto = "tcp" if client.version == 4 else "tcp6"
    vlan = policy.host_vlan(client_port, client)  # a client in a VLAN zone of its port sends tagged
    tagged = f"dl_vlan={vlan}," if vlan is not None else ""
    talk = sim.Conversation(switch)
    trace = talk.send(client_port, f"{tagged}{proto},{fields}_src={client},{fields}_dst={server},tp_dst={tcp_port}")
    if server_port not in trace.output:
        return _why(policy, client_port, trace, "is dropped")
    trace = talk.reply(server_port)
    if client_port not in trace.output:
        return _why(policy, server_port, trace, "is dropped on its way back")
    trace = talk.reply(client_port)
    if server_port not in trace.output:
        return _why(policy, client_port, trace, "passes, but the connection is dropped after its first packet")
    return None


def _why(policy: ResolvedPolicy, in_port: str, trace: Trace, what: str) -> str:
    from ovsmgr import sim

    decision = sim.decide(policy, in_port, trace.packet_in)
    rules = {r.name: r for r in policy.rules}
    if decision.verdict != "allow" and decision.rule in rules:
        rule = rules[decision.rule]
        return f"it {what}: rule {rule.name} ({rule.span}) {rule.action}s it"
    if decision.verdict != "allow" and decision.rule is None:
        default = decision.reason == "firewall default"
        return f"it {what}: " + (f"the firewall default ({policy.default_action})" if default else decision.reason)
    return f"it {what} ({trace.verdict}; {decision.reason})"


def _far_ports(policy: ResolvedPolicy, port: str, remote: IPAddress | None) -> list[str]:
    """Where the remote end of a connection to `port` can be."""

    if policy.forwarding == "ports":
        return [policy.links[port]] if port in policy.links else []
    if remote is not None:
        holding = [(n.prefixlen, z) for z in policy.zones.values() for n in z.networks if remote in n]
        if holding:
            return [p for p in max(holding, key=lambda h: h[0])[1].ports if p != port]
    return sorted(p for p in policy.ports if p != port)


def _any_clients(policy: ResolvedPolicy, far_port: str, version: int) -> list[IPAddress]:
    """Client addresses worth trying from `far_port` when any client will do: the sources of the
    rules for its zone, its zone's networks, and an address nothing names."""
    zones = {z.name for z in policy.port_zones(far_port)}  # one per VLAN of the port
    prefixes = [n for r in policy.rules if r.match.from_zone in zones and r.action == "allow" for n in r.match.src]
    prefixes += [n for z in sorted(zones) for n in policy.zones[z].networks]
    found = [n.network_address if n.num_addresses == 1 else n.network_address + 1
             for n in prefixes if n.version == version]
    return [*dict.fromkeys(found), _ANY_CLIENT[version]]


class LiveSwitchView:
    """The guard's view of a real switch: OVSDB, and the network namespace ovs-vswitchd runs in."""

    def __init__(self, db: SwitchDB, target: SwitchTarget, bridge: str, created: bool):
        self.db, self.target, self.bridge, self.created = db, target, bridge, created
        self._addresses: dict[IPAddress, str] | None = None

    def interfaces(self) -> dict[str, int]:
        return {} if self.created else self.db.ofports(self.bridge)

    def controllers(self) -> list[str]:
        return [] if self.created else self.db.get_controllers(self.bridge)

    def addresses(self) -> dict[IPAddress, str] | None:
        if self._addresses is None:
            out = self._ip("-j", "addr", "show")
            if out is None:
                return None
            self._addresses = {ipaddress.ip_address(a["local"]): link["ifname"]
                               for link in json.loads(out) for a in link.get("addr_info", [])}
        return self._addresses

    def route(self, address: IPAddress) -> IPAddress | None:
        out = self._ip("-j", "route", "get", str(address))
        routes = json.loads(out) if out else []
        source = routes[0].get("prefsrc") if routes else None
        return ipaddress.ip_address(source) if source else None

    def _ip(self, *args: str) -> str | None:
        """`ip ARGS` in ovs-vswitchd's network namespace; None when that cannot be done from here."""
        pid = self._vswitchd_pid()
        if pid is None:
            return None
        same = _netns(pid) == _netns(os.getpid())
        argv = ["ip", *args] if same else ["nsenter", "-t", str(pid), "-n", "ip", *args]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout if proc.returncode == 0 else None

    def _vswitchd_pid(self) -> int | None:
        if self.target.rundir is None:
            return None  # a remote OVSDB: the switch host's addresses are not visible from here
        try:
            return int((self.target.rundir / "ovs-vswitchd.pid").read_text().strip())
        except (OSError, ValueError):
            return None


def _netns(pid: int) -> str | None:
    try:
        return os.readlink(Path(f"/proc/{pid}/ns/net"))
    except OSError:
        return None
