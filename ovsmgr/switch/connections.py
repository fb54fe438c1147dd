"""Which established connections a new policy would cut (`ovsmgr plan --connections`).

The switch's conntrack zone holds the connections the applied policy let in, each with the
fingerprint of the rule that allowed it in its ct_mark (docs/design.md, "Cut on rule removal").
Each one is put into the simulator's conntrack as it is (tuples, translation, mark) and its next
original-direction packet is run through the new policy's flows: exactly what the switch will do
with it after the apply (a connection whose rule is unchanged passes on its mark, one whose rule
went is judged by the new rules and passes or is cut). The rule that allowed it is read from the
switch's own STATE flows (one per stateful allow rule: its fingerprint and its cookie).

Conntrack does not say by which port a connection came in; it is the port of the zone whose
networks hold the source address, else a port of the zone the allowing rule (if the new policy
still has it) speaks of, else the port of a zone without networks, when there is just one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ovsmgr.compiler import CompiledPolicy
from ovsmgr.compiler.flows import SetField
from ovsmgr.compiler.ids import fingerprint
from ovsmgr.compiler.pipeline import CT_MARK_RULE_MASK, REG_RULE, CookieKind, Table, cookie_parts
from ovsmgr.compiler.stages.filter import DEFAULT_RULE
from ovsmgr.policy import ResolvedPolicy
from ovsmgr.southbound.conntrack import CtEntry, OvsToolError, zone_entries
from ovsmgr.southbound.openflow import InstalledFlow, decode_flow
from ovsmgr.southbound.ovsdb import SwitchDB
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch.connect import flow_table

if TYPE_CHECKING:  # the simulator is imported by plan --connections only
    from ovsmgr.sim import SimulatedSwitch, Trace

PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58}


@dataclass(frozen=True)
class CutConnection:
    proto: str
    src: str
    sport: int | None
    dst: str
    dport: int | None
    rule_before: str | None
    """The rule that allowed it (None: its mark names no rule the switch knows)."""
    verdict_after: str
    """What its next packet meets under the new policy: `drop` or `reject`."""
    rule_after: str | None
    """The rule of the new policy that refuses it (None: the default, or the pipeline)."""

    def to_json(self) -> dict[str, Any]:
        return {"proto": self.proto, "src": self.src, "sport": self.sport, "dst": self.dst, "dport": self.dport,
                "rule_before": self.rule_before, "verdict_after": self.verdict_after, "rule_after": self.rule_after}

    def describe(self) -> str:
        ends = f"{_end(self.src, self.sport)} > {_end(self.dst, self.dport)}"
        after = f"{self.verdict_after} by rule {self.rule_after}" if self.rule_after else \
            f"{self.verdict_after} (firewall default)"
        return f"{self.proto} {ends}: allowed by {self.rule_before or '(unknown rule)'}, now {after}"


def _end(address: str, port: int | None) -> str:
    host = f"[{address}]" if ":" in address and port is not None else address
    return host if port is None else f"{host}:{port}"


def rule_marks(flows: Iterable[InstalledFlow], names: dict[int, str]) -> dict[int, str]:
    """ct_mark fingerprint -> rule name of the applied policy, from the switch's FILTER flows: a
    stateful allow rule's (and an allowing default's) sets its fingerprint in REG_RULE."""
    marks: dict[int, str] = {}
    for installed in flows:
        _, kind, rid = cookie_parts(installed.cookie)
        if kind not in (CookieKind.FIREWALL, CookieKind.DEFAULT) or installed.mod.table != Table.FILTER:
            continue
        flow = decode_flow(installed.mod)
        for action in flow.actions if flow is not None else ():
            if isinstance(action, SetField) and action.field == REG_RULE.reg:
                marks[action.value] = DEFAULT_RULE if kind is CookieKind.DEFAULT else names.get(rid, f"{rid:#010x}")
    return marks


def established(entries: Iterable[CtEntry]) -> list[CtEntry]:
    """Connections that carry traffic: TCP in ESTABLISHED, every UDP, SCTP and ICMP entry."""
    return [e for e in entries if e.proto in PROTOCOLS and (e.proto != "tcp" or e.state == "ESTABLISHED")]


def live_marks(policy: ResolvedPolicy) -> set[int]:
    """The fingerprints the new policy's STATE flows pass: its enforced stateful allow rules' and,
    when it allows by default, the default's (as `filter._rule_actions` makes them)."""
    marks = {fingerprint(r.name, r.match) for r in policy.rules if r.action == "allow" and r.stateful and not r.shadow}
    if policy.default_action == "allow":
        marks.add(fingerprint(DEFAULT_RULE, None))
    return marks


def connections_cut(policy: ResolvedPolicy, compiled: Callable[[], CompiledPolicy], entries: Sequence[CtEntry],
                    marks: dict[int, str]) -> list[CutConnection]:
    """The established connections among `entries` that `policy` would stop. Those whose rule the new
    policy keeps pass on their mark and are not simulated; `compiled` is called only if one is not."""
    if not policy.cut_on_rule_removal:
        return []  # every committed connection passes, whatever its mark
    live = live_marks(policy)
    judged = [e for e in established(entries) if (e.mark & CT_MARK_RULE_MASK) not in live]
    if not judged:
        return []
    from ovsmgr.sim import SimulatedSwitch  # for connections whose rule changed only

    switch = SimulatedSwitch.from_policy(policy, compiled=compiled())
    cut = []
    verdicts: dict[tuple[object, ...], tuple[str, str | None]] = {}
    for entry in judged:
        before = marks.get(entry.mark & CT_MARK_RULE_MASK)
        port = ingress_port(policy, entry.orig["src"], before)
        if port is None:
            continue
        # rules and NAT judge no source port: connections that differ in it alone share a verdict
        same = (port, entry.proto, entry.mark, entry.orig["src"], entry.orig["dst"], entry.orig.get("dport"),
                entry.orig.get("type"), entry.reply["src"], entry.reply["dst"], entry.reply.get("sport"))
        if same not in verdicts:
            trace = _next_packet(switch, entry, port)
            verdicts[same] = (trace.verdict, trace.rule)
        verdict, rule = verdicts[same]
        if verdict != "allow":
            cut.append(CutConnection(entry.proto, entry.orig["src"], _port(entry.orig, "sport"), entry.orig["dst"],
                                     _port(entry.orig, "dport"), before, verdict, rule))
    return cut


def _port(tuple_: dict[str, str], key: str) -> int | None:
    return int(tuple_[key]) if key in tuple_ else None


def ingress_port(policy: ResolvedPolicy, src: str, rule: str | None) -> str | None:
    """The port the connection's original direction enters by (see the module's docstring)."""
    address = ipaddress.ip_address(src)
    best: tuple[int, str] | None = None
    for zone in policy.zones.values():
        for network in zone.networks:
            if network.version == address.version and address in network and zone.ports and (
                    best is None or network.prefixlen > best[0]):
                best = (network.prefixlen, zone.name)
    if best is not None:
        return policy.zones[best[1]].ports[0]
    allowing = next((r for r in policy.rules if r.name == rule), None)
    if allowing is not None and policy.zones[allowing.match.from_zone].ports:
        return policy.zones[allowing.match.from_zone].ports[0]
    open_zones = [z for z in policy.zones.values() if not z.networks and z.ports]
    return open_zones[0].ports[0] if len(open_zones) == 1 and len(open_zones[0].ports) == 1 else None


def _next_packet(switch: SimulatedSwitch, entry: CtEntry, port: str) -> Trace:
    """The connection's next original-direction packet through the new flows, its state seeded."""
    from ovsmgr.sim import Connection, Conntrack, Conversation, SwitchState
    from ovsmgr.sim.conntrack import packet_key

    packet = switch.packet(port, _spec(entry, entry.orig))
    reply = switch.packet(port, _spec(entry, entry.reply))
    original, answer = packet_key(packet), packet_key(reply)
    if original is None or answer is None:
        raise ValueError(f"not an IP connection: {entry}")
    nat = frozenset(({"src"} if answer.dst != original.src or answer.dport != original.sport else set())
                    | ({"dst"} if answer.src != original.dst or answer.sport != original.dport else set()))
    connection = Connection(entry.zone, original, answer, entry.mark, nat, seen_reply=True, originals=1)
    state = switch.initial_state()
    conversation = Conversation(switch, SwitchState(Conntrack((connection,), state.conntrack.limits)))
    return conversation.send(port, packet)


def _spec(entry: CtEntry, ends: dict[str, str]) -> str:
    six = ":" in ends["src"]
    proto = {"tcp": "tcp6", "udp": "udp6", "sctp": "sctp6"}.get(entry.proto, entry.proto) if six else entry.proto
    proto = "icmp6" if entry.proto == "icmpv6" else proto
    spec = f"{proto},nw_src={ends['src']},nw_dst={ends['dst']}"
    if "sport" in ends:
        spec += f",tp_src={ends['sport']},tp_dst={ends['dport']}"
        if entry.proto == "tcp":
            spec += ",tcp_flags=ack"
    elif "type" in ends:
        spec += f",icmp_type={ends['type']},icmp_code={ends.get('code', '0')}"
    return spec


@dataclass(frozen=True)
class ConnectionsReport:
    established: int
    """Established connections in the policy's zone."""
    cut: list[CutConnection]


def judge_connections(policy: ResolvedPolicy, target: SwitchTarget, names: dict[int, str],
                      compiled: Callable[[], CompiledPolicy]) -> ConnectionsReport:
    """Read the zone's connections and the applied rules' fingerprints from the switch; judge them."""
    ctl = target.appctl()
    if ctl is None:
        raise OvsToolError("--connections reads conntrack through ovs-vswitchd's control socket, and no "
                           f"ovs-vswitchd.pid was found in {target.rundir}")
    entries = established(zone_entries(ctl, policy.ct_zone))
    if not entries:
        return ConnectionsReport(0, [])
    with SwitchDB(target.db) as db:
        exists = policy.bridge in db.bridges()
    flows: list[InstalledFlow] = []
    if exists:
        with flow_table(target, policy.bridge) as table:
            flows = table.read()
    return ConnectionsReport(len(entries), connections_cut(policy, compiled, entries, rule_marks(flows, names)))
