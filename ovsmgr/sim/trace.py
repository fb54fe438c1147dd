"""What a simulated packet went through: the steps table by table, the verdict, the output.

`Trace.as_dict()` is the JSON form (`ovsmgr trace -o json`); `format_trace` the text
form, close to what `ovs-appctl ofproto/trace` prints, with rule names.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ovsmgr.compiler.flows import (
    Action,
    Conjunction,
    Controller,
    Ct,
    Flow,
    GotoTable,
    Group,
    InPort,
    LearnMacBinding,
    Match,
    MatchItem,
    Meter,
    Move,
    Normal,
    Output,
    PopVlan,
    PushVlan,
    Resubmit,
    SetField,
)
from ovsmgr.compiler.pipeline import CT_STATE_BITS, PacketInKind, Table
from ovsmgr.sim.conntrack import Conntrack, format_ct_state
from ovsmgr.sim.fields import IPV4_FIELDS, IPV6_FIELDS, WIDTHS, format_value
from ovsmgr.sim.packet import Packet, format_packet, packet_fields

Verdict = Literal["allow", "drop", "reject"]


def table_name(table: int) -> str:
    return Table(table).name if table in Table._value2member_map_ else str(table)


@dataclass(frozen=True)
class Step:
    """One table visit: the flow that matched (None: table miss, the packet is dropped) and what it did."""

    table: int
    priority: int | None
    rule: str | None
    cookie: int | None
    match: Match | None
    actions: tuple[Action, ...]
    events: tuple[str, ...]
    depth: int = 0
    conjunction: int | None = None
    continued: bool = False
    """The rest of a flow's actions, after a resubmit or recirculation returned."""
    packet: Packet | None = field(default=None, compare=False)
    """The packet as the table looked it up (before this flow's actions ran)."""
    metadata: Mapping[str, int] | None = field(default=None, compare=False)
    """Registers and ct fields at the lookup; with `packet`, what `ofproto/trace` needs to
    trace from this table on (`ovsmgr.sim.ofproto_trace`)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table, "table_name": table_name(self.table), "priority": self.priority,
            "rule": self.rule, "cookie": None if self.cookie is None else f"{self.cookie:#x}",
            "match": None if self.match is None else format_match(self.match),
            "actions": [describe_action(a) for a in self.actions], "events": list(self.events),
            "conjunction": self.conjunction, "depth": self.depth, "continued": self.continued,
        }


@dataclass(frozen=True)
class Delivery:
    """The packet as it left by one port (after every translation)."""

    port: str
    packet: Packet


@dataclass(frozen=True)
class Trace:
    packet_in: Packet
    steps: tuple[Step, ...]
    verdict: Verdict
    rule: str | None
    """The firewall rule that decided: the FILTER flow's rule for a new connection, the rule whose
    fingerprint is the connection's ct_mark for an established one, None for defaults."""
    deliveries: tuple[Delivery, ...]
    final: Packet
    """The packet as the pipeline last saw it (the same as the delivered one unless it was dropped)."""
    ct_state: int
    ct_mark: int
    conntrack: Conntrack
    learned: tuple[Flow, ...]
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    """Where the real switch would differ from the verdict: e.g. a frame no host accepts."""
    shadow: tuple[str, ...] = ()
    """The shadow rules that counted the packet (in the order it met them); they decide nothing."""

    @property
    def output(self) -> tuple[str, ...]:
        return tuple(d.port for d in self.deliveries)

    @property
    def packet(self) -> Packet:
        return self.deliveries[0].packet if self.deliveries else self.final

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict, "rule": self.rule, "output": list(self.output),
            "packet": packet_fields(self.packet), "ct_state": format_ct_state(self.ct_state),
            "ct_mark": f"{self.ct_mark:#x}", "steps": [s.as_dict() for s in self.steps],
            "notes": list(self.notes), "warnings": list(self.warnings), "shadow": list(self.shadow),
        }


# --- text ------------------------------------------------------------------------------------
def format_trace(trace: Trace, port_names: Mapping[int, str] | None = None) -> list[str]:
    lines = [f"packet: {format_packet(trace.packet_in, port_names)}"]
    for step in trace.steps:
        indent = "  " * (step.depth + 1)
        head = f"{indent}table {step.table} {table_name(step.table)}"
        if step.continued:
            if step.events:
                lines.append(f"{indent}  (back in {head.strip()})")
                lines.extend(f"{indent}     {event}" for event in step.events)
            continue
        if step.priority is None:
            lines.append(f"{head}: {'; '.join(step.events) or 'no flow matches'}")
            continue
        rule = f" [{step.rule}]" if step.rule else ""
        conj = f" (conjunction {step.conjunction})" if step.conjunction is not None else ""
        lines.append(f"{head} priority {step.priority}{rule}{conj}: {format_match(step.match or Match())}")
        actions = ", ".join(describe_action(a, port_names) for a in step.actions) or "drop"
        lines.append(f"{indent}  -> {actions}")
        lines.extend(f"{indent}     {event}" for event in step.events)
    lines.extend(f"note: {note}" for note in trace.notes)
    lines.extend(f"warning: {warning}" for warning in trace.warnings)
    rule = f" by rule {trace.rule}" if trace.rule else " (no rule: default or pipeline)"
    out = f", output {', '.join(trace.output)}" if trace.output else ""
    lines.append(f"verdict: {trace.verdict}{rule}{out}")
    if trace.shadow:
        lines.append(f"shadow rules matched (counted, not enforced): {', '.join(trace.shadow)}")
    if trace.deliveries:
        lines.append(f"packet out: {format_packet(trace.packet, port_names, in_port=False)}")
    return lines


def format_match(match: Match) -> str:
    return ",".join(_format_item(i) for i in match.items) or "any"


def _format_item(item: MatchItem) -> str:
    if item.field == "ct_state":
        return f"ct_state={_format_ct_state_match(item)}"
    if item.mask is None:
        return f"{item.field}={format_value(item.field, item.value)}"
    if item.field in IPV4_FIELDS | IPV6_FIELDS:
        width = WIDTHS[item.field]
        if item.mask == (1 << width) - (1 << (width - item.mask.bit_count())):
            address = ipaddress.ip_address(item.value) if width == 32 else ipaddress.IPv6Address(item.value)
            return f"{item.field}={address}/{item.mask.bit_count()}"
    return f"{item.field}={format_value(item.field, item.value)}/{item.mask:#x}"


def _format_ct_state_match(item: MatchItem) -> str:
    mask = item.mask if item.mask is not None else (1 << 32) - 1
    order = sorted(CT_STATE_BITS.items(), key=lambda kv: kv[0] != "trk")
    parts = [("+" if item.value & bit else "-") + name for name, bit in order if mask & bit]
    return "".join(parts) or format_ct_state(item.value)


def describe_action(action: Action, port_names: Mapping[int, str] | None = None) -> str:
    names = port_names or {}
    match action:
        case Output(port=port):
            return f"output:{names.get(port, port)}"
        case InPort():
            return "in_port"
        case Normal():
            return "NORMAL"
        case GotoTable(table=table):
            return f"goto_table:{table_name(table)}"
        case Resubmit(table=table):
            return f"resubmit(,{table_name(table)})"
        case SetField(field=name, value=value):
            return f"set_field:{format_value(name, value) if name in WIDTHS else value}->{name}"
        case Move(src=src, dst=dst):
            return f"move:{src}->{dst}"
        case Ct():
            return _describe_ct(action)
        case Conjunction(id=conj, clause=clause, n_clauses=n):
            return f"conjunction({conj},{clause}/{n})"
        case Controller(userdata=data):
            kind = PacketInKind(data[0]).name if data and data[0] in PacketInKind._value2member_map_ else "?"
            return f"controller({kind}, rule id {int.from_bytes(data[4:8], 'big'):#x})"
        case LearnMacBinding(table=table):
            return f"learn(mac binding -> {table_name(table)})"
        case Meter(id=meter):
            return f"meter:{meter}"
        case Group(group_id=group_id):
            return f"group:{group_id}"
        case PushVlan():
            return "push_vlan:0x8100"
        case PopVlan():
            return "pop_vlan"
    return repr(action)


def _describe_ct(ct: Ct) -> str:
    parts = ["commit"] if ct.commit else []
    if ct.zone is not None:
        parts.append(f"zone={ct.zone}")
    if ct.table is not None:
        parts.append(f"table={table_name(ct.table)}")
    if ct.nat is not None:
        field = "nw_src" if ct.nat.version == 4 else "ipv6_src"
        lo, hi = format_value(field, ct.nat.addr_lo), format_value(field, ct.nat.addr_hi)
        addresses = lo if lo == hi else f"{lo}-{hi}"
        port_hi = ct.nat.port_hi or ct.nat.port_lo
        ports = "" if ct.nat.port_lo is None else f":{ct.nat.port_lo}" + (
            f"-{port_hi}" if port_hi != ct.nat.port_lo else "")
        parts.append(f"nat({ct.nat.kind}={addresses}{ports})")
    elif ct.apply_nat:
        parts.append("nat")
    if ct.exec:
        parts.append(f"exec({', '.join(describe_action(a) for a in ct.exec)})")
    if ct.alg is not None:
        parts.append(f"alg={ct.alg}")
    return f"ct({','.join(parts)})"
