"""Run one packet through a flow set, table by table, with conntrack.

The walk follows OVS: lookup in table 0 first (see `flowtable` for priorities and
conjunctions); `goto_table` continues after the action list, `resubmit` returns to
it (a miss there does nothing). `ct(table=T)` sends a copy of the packet through
conntrack and continues it in table T with ct_state, ct_zone and ct_mark set; the
rest of the action list runs on the original, untracked packet (OVS forks there;
compiled flows put nothing after it). Every `ct()` leaves the packet that goes on
in the same pass untracked, its ct fields cleared (`ovs-actions(7)`), though NAT
and commit happen. A packet keeps the connection it was tracked to, so a second
`ct()` in the same zone finds it without a lookup. Registers start at 0; a table
miss drops; more than MAX_TABLE_VISITS lookups are taken for a loop and drop.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ovsmgr.compiler.flows import (
    Action,
    Bucket,
    Controller,
    Ct,
    Flow,
    FlowSet,
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
    SelectGroup,
    SetField,
)
from ovsmgr.compiler.pipeline import (
    CT_MARK_RULE_MASK,
    CookieKind,
    PacketInKind,
    Table,
    cookie,
    cookie_parts,
)
from ovsmgr.sim.conntrack import (
    TRK,
    Conntrack,
    CtCache,
    CtRequest,
    CtResult,
    format_ct_state,
    run_ct,
)
from ovsmgr.sim.fields import (
    DL_TYPE_ARP,
    DL_TYPE_IP,
    DL_TYPE_IPV6,
    FRAG_LATER,
    L4_FIELDS,
    METADATA_FIELDS,
    field_ref,
    format_value,
)
from ovsmgr.sim.flowtable import FlowTables, Hit
from ovsmgr.sim.forwarding import NormalForwarding
from ovsmgr.sim.packet import Packet
from ovsmgr.sim.trace import Delivery, Step, Trace, Verdict, describe_action

MAX_TABLE_VISITS = 64
LATER_FRAGMENT_ZEROS = L4_FIELDS | {"ct_tp_src", "ct_tp_dst"}
"""What a later fragment's flow key shows as 0 on the userspace datapath: it has no L4 header, and
Open vSwitch before 3.6 (the lab's 3.1) leaves the conntrack tuple's ports out with it."""
LEARNED_PRIORITY = 100
"""The priority `learn()` gives MAC bindings, as `render.ofctl` writes it (`learn(...,priority=100,...)`)."""


@dataclass(frozen=True)
class Pipeline:
    """Everything static a simulation needs: the flows and how to name what they refer to."""

    tables: FlowTables
    ports: Mapping[int, str]
    fingerprints: Mapping[int, str] = field(default_factory=dict)
    """ct_mark value -> rule name (the compiler's `fingerprints`)."""
    rule_ids: Mapping[int, str] = field(default_factory=dict)
    """Cookie low 32 bits -> rule name (the compiler's `rule_ids`), for flows without `rule`."""
    normal: NormalForwarding = field(default_factory=NormalForwarding)
    own_mac: int | None = None
    """The MAC the switch answers ARP with for NAT-owned addresses; no host accepts frames to it."""
    groups: Mapping[int, SelectGroup] = field(default_factory=dict)
    """The select groups the flows use, by id."""


def simulate(flowset: FlowSet | FlowTables, packet: Packet, conntrack: Conntrack, ports: Mapping[int, str], *,
             fingerprints: Mapping[int, str] | None = None, rule_ids: Mapping[int, str] | None = None,
             normal: NormalForwarding | None = None, learned: Sequence[Flow] = ()) -> Trace:
    """Run `packet` through the flows; the trace carries the conntrack state after it."""
    tables = flowset if isinstance(flowset, FlowTables) else FlowTables.of(flowset.flows.values())
    groups = {} if isinstance(flowset, FlowTables) else dict(flowset.groups)
    pipeline = Pipeline(tables, ports, fingerprints or {}, rule_ids or {}, normal or NormalForwarding(), groups=groups)
    return run_packet(pipeline, packet, conntrack, learned)


def run_packet(pipeline: Pipeline, packet: Packet, conntrack: Conntrack, learned: Sequence[Flow] = ()) -> Trace:
    walk = _Walk(pipeline, conntrack, learned)
    state = _State(packet, dict.fromkeys(METADATA_FIELDS, 0))
    walk.table(Table.CLASSIFY, state, 0)
    return walk.trace(packet)


@dataclass
class _State:
    """The packet being processed and its metadata (registers, ct results)."""

    packet: Packet
    meta: dict[str, int]
    ct_cache: CtCache | None = None

    def read(self, name: str) -> int:
        if name in LATER_FRAGMENT_ZEROS and (self.packet.nw_frag or 0) & FRAG_LATER:
            return 0
        if name in self.meta:
            return self.meta[name]
        value = getattr(self.packet, name, None)
        return value if isinstance(value, int) else 0

    def write(self, name: str, value: int) -> None:
        if name in self.meta:
            self.meta[name] = value
        elif name == "nd_options_type":
            self.packet = self.packet.with_nd_option_type(value)
        else:
            self.packet = self.packet.replace(**{name: value})

    def copy(self) -> _State:
        return _State(self.packet, dict(self.meta), self.ct_cache)

    def untrack(self) -> None:
        """What every ct() leaves for the actions after it: -trk, ct fields cleared (OVS)."""
        self.meta.update(ct_state=0, ct_zone=0, ct_mark=0, ct_label=0, ct_nw_proto=0, ct_tp_src=0, ct_tp_dst=0)


class _Walk:
    """One packet's way through the tables; collects steps, deliveries and the new conntrack."""

    def __init__(self, pipeline: Pipeline, conntrack: Conntrack, learned: Sequence[Flow]):
        self.p = pipeline
        self.conntrack = conntrack
        self.learned = list(learned)
        self.steps: list[Step] = []
        self.deliveries: list[Delivery] = []
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.visits = 0
        self.rejected = False
        self.filter_flow: Flow | None = None
        self.shadow: list[str] = []
        self.last: _State | None = None

    # --- tables ----------------------------------------------------------------------------
    def table(self, table: int, state: _State, depth: int, resubmit: bool = False) -> None:
        self.visits += 1
        self.last = state
        if self.visits > MAX_TABLE_VISITS:
            self.notes.append(f"more than {MAX_TABLE_VISITS} table visits (a loop?): dropped")
            return
        learned = [f for f in self.learned if int(f.table) == table]
        hit = self.p.tables.lookup(table, state.read, learned)
        if hit is None:
            miss = "no flow matches: back to the resubmit" if resubmit else "no flow matches: drop"
            self.steps.append(Step(table, None, None, None, None, (), (miss,), depth,
                                   packet=state.packet, metadata=dict(state.meta)))
            return
        if table == Table.FILTER:
            if cookie_parts(hit.flow.cookie)[1] is CookieKind.SHADOW:
                self.shadow.append(self.rule_of(hit.flow) or f"{hit.flow.cookie:#x}")
            else:
                self.filter_flow = hit.flow
        frame = _Frame(hit, table, depth, self.rule_of(hit.flow), state.packet, dict(state.meta))
        self.open(frame)
        goto = self.actions(hit.flow.actions, state, frame)
        self.close(frame)
        if goto is not None:
            self.table(goto, state, depth)

    def open(self, frame: _Frame) -> None:
        frame.index, frame.events = len(self.steps), []
        self.steps.append(frame.step())

    def close(self, frame: _Frame) -> None:
        self.steps[frame.index] = frame.step()

    def actions(self, actions: Sequence[Action], state: _State, frame: _Frame) -> int | None:
        """Run an action list; return the goto_table target (applied after the list, as in OpenFlow).

        A nested lookup (resubmit, recirculation) splits the list's step in two, so the
        trace reads in the order things happened.
        """
        goto: int | None = None
        for i, action in enumerate(actions):
            if isinstance(action, GotoTable):
                goto = int(action.table)
            elif isinstance(action, Resubmit):
                self.close(frame)
                self.table(int(action.table), state, frame.depth + 1, resubmit=True)
                frame.continued = True
                self.open(frame)
            elif isinstance(action, Group):  # the bucket's actions run in the same lookup, as in OVS
                bucket = self.bucket(action.group_id, state, frame.events)
                if bucket is not None and self.actions(bucket.actions, state, frame) is not None:
                    frame.events.append("a goto_table in a bucket is not an OpenFlow action: ignored")
            elif isinstance(action, Ct) and action.table is not None:
                tracked = self.recirculate(action, state, frame.events)
                if i + 1 < len(actions):
                    frame.events.append("ct(table=...) forks: the actions after it run on the untracked packet")
                self.close(frame)
                self.table(int(action.table), tracked, frame.depth)
                frame.continued = True
                self.open(frame)
            else:
                self.act(action, state, frame.events)
        return goto

    def act(self, action: Action, state: _State, events: list[str]) -> None:
        if isinstance(action, Output):
            self.output(action.port, state, events)
        elif isinstance(action, InPort):
            self.deliver(self.port_name(state.packet.in_port), state, events)
        elif isinstance(action, Normal):
            self.normal(state, events)
        elif isinstance(action, SetField):
            state.write(field_ref(action.field).name, action.value)
        elif isinstance(action, Move):
            self.move(action, state)
        elif isinstance(action, Ct):
            self.ct(action, state, events)
            state.untrack()
            events.append("ct fields cleared: later matches see -trk (only ct(table=...) shows the state)")
        elif isinstance(action, Controller):
            self.controller(action, events)
        elif isinstance(action, LearnMacBinding):
            self.learn(action, state, events)
        elif isinstance(action, Meter):
            events.append(f"meter {action.id:#x}: rates are not simulated, the packet passes")
        elif isinstance(action, PushVlan):
            state.packet = state.packet.replace(vlan_vid=0x1000)  # VLAN id 0 until a set_field gives one
        elif isinstance(action, PopVlan):
            state.packet = state.packet.replace(vlan_vid=None)

    # --- conntrack -------------------------------------------------------------------------
    def recirculate(self, action: Ct, state: _State, events: list[str]) -> _State:
        """The copy of the packet that conntrack sends back to the pipeline, with its ct state."""
        tracked = state.copy()
        result = self.ct(action, tracked, events)
        tracked.meta.update(ct_state=result.state, ct_zone=action.zone or 0, ct_mark=result.mark, ct_label=result.label)
        tracked.meta.update(zip(("ct_nw_proto", "ct_tp_src", "ct_tp_dst"), result.tuple, strict=True))
        state.untrack()
        state.ct_cache = tracked.ct_cache
        events.append(f"recirculate to table {action.table} with ct_state={format_ct_state(result.state)}")
        return tracked

    def ct(self, action: Ct, state: _State, events: list[str]) -> CtResult:
        written = self.exec_fields(action.exec, state, events) if action.commit else {}
        request = CtRequest(action.zone or 0, action.commit, action.nat, action.apply_nat, written.get("ct_mark"),
                            action.alg, written.get("ct_label"))
        result = run_ct(self.conntrack, state.packet, request, state.ct_cache)
        self.conntrack = result.conntrack
        state.packet = result.packet
        state.ct_cache = result.cache
        events.append(f"{describe_action(action)}: {format_ct_state(result.state)}")
        events.extend(f"  {e}" for e in result.events)
        return result

    def exec_fields(self, actions: Sequence[SetField | Move], state: _State, events: list[str]) -> dict[str, int]:
        """The ct_mark and ct_label that `ct(commit, exec(...))` writes (absent: exec leaves it alone)."""
        written: dict[str, int] = {}
        for action in actions:
            dst = field_ref(action.field if isinstance(action, SetField) else action.dst)
            if dst.name not in ("ct_mark", "ct_label"):
                events.append(f"exec({describe_action(action)}) ignored: only ct_mark and ct_label are modelled")
                continue
            old = written.get(dst.name, state.read(dst.name))
            if isinstance(action, SetField):
                bits = action.value
            else:
                src = field_ref(action.src)
                bits = src.read(state.read(src.name))
            written[dst.name] = dst.write(old, bits)
        return written

    def bucket(self, group_id: int, state: _State, events: list[str]) -> Bucket | None:
        """The bucket a select group gives this packet (`pick_bucket`)."""
        group = self.p.groups.get(group_id)
        if group is None:
            events.append(f"group:{group_id}: no such group: drop")
            return None
        chosen = pick_bucket(group, state.packet)
        if chosen is None:
            events.append(f"group:{group_id}: no bucket (no backend up): drop")
            return None
        index = group.buckets.index(chosen)
        events.append(f"group:{group_id}: bucket {index + 1} of {len(group.buckets)} (weight {chosen.weight})")
        return chosen

    # --- the rest --------------------------------------------------------------------------
    def move(self, action: Move, state: _State) -> None:
        src, dst = field_ref(action.src), field_ref(action.dst)
        bits = src.read(state.read(src.name))
        state.write(dst.name, dst.write(state.read(dst.name), bits))

    def output(self, port: int, state: _State, events: list[str]) -> None:
        if port == state.packet.in_port:
            events.append(f"output:{port} is the in_port: OpenFlow skips it (in_port must be said)")
            return
        self.deliver(self.port_name(port), state, events)

    def normal(self, state: _State, events: list[str]) -> None:
        ports = [self.p.ports[n] for n in sorted(self.p.ports)]
        targets, why = self.p.normal.resolve(state.packet, self.port_name(state.packet.in_port), ports)
        events.append(f"NORMAL: {why}")
        for name in targets:
            self.deliver(name, state, events)

    def deliver(self, name: str, state: _State, events: list[str]) -> None:
        self.deliveries.append(Delivery(name, state.packet))
        events.append(f"output to {name}")
        packet = state.packet
        if self.p.own_mac is not None and packet.version is not None and packet.dl_dst == self.p.own_mac:
            self.warnings.append(
                f"left by {name} with dl_dst {format_value('dl_dst', packet.dl_dst)}, the switch's own NAT "
                "MAC: the host there ignores the frame (no MAC binding was applied)")

    def controller(self, action: Controller, events: list[str]) -> None:
        data = action.userdata
        rule_id = int.from_bytes(data[4:8], "big")
        rule = self.p.rule_ids.get(rule_id, f"{rule_id:#x}")
        if data and data[0] == PacketInKind.REJECT:
            self.rejected = True
            events.append(f"packet-in REJECT (rule {rule}): the controller answers the sender")
        elif data and data[0] == PacketInKind.LOG:
            events.append(f"packet-in LOG (rule {rule})")
        else:
            events.append(f"packet-in with userdata {data.hex()}")

    def learn(self, action: LearnMacBinding, state: _State, events: list[str]) -> None:
        """ARP teaches `nw_dst=arp_spa`, neighbour discovery `ipv6_dst=ipv6_src`: the sender's MAC."""
        packet = state.packet
        if action.version == 4 and packet.dl_type == DL_TYPE_ARP and packet.arp_spa is not None:
            dl_type, field, address = DL_TYPE_IP, "nw_dst", packet.arp_spa
        elif action.version == 6 and packet.dl_type == DL_TYPE_IPV6 and packet.ipv6_src is not None:
            dl_type, field, address = DL_TYPE_IPV6, "ipv6_dst", packet.ipv6_src
        else:
            return
        match = Match.of(MatchItem("dl_type", dl_type), MatchItem(field, address))
        flow = Flow(action.table, LEARNED_PRIORITY, match, (SetField("dl_dst", packet.dl_src),),
                    cookie(CookieKind.LEARNED))
        self.learned = [f for f in self.learned if f.key != flow.key] + [flow]
        events.append(f"learned: {field}={format_value(field, address)} -> "
                      f"dl_dst={format_value('dl_dst', packet.dl_src)}")

    def port_name(self, port: int) -> str:
        return self.p.ports.get(port, str(port))

    def rule_of(self, flow: Flow) -> str | None:
        if flow.rule is not None:
            return flow.rule
        ours, kind, rule_id = cookie_parts(flow.cookie)
        if ours and kind in (CookieKind.FIREWALL, CookieKind.NAT, CookieKind.SHADOW):
            return self.p.rule_ids.get(rule_id)
        return None

    # --- result ----------------------------------------------------------------------------
    def trace(self, packet_in: Packet) -> Trace:
        last = self.last or _State(packet_in, dict.fromkeys(METADATA_FIELDS, 0))
        verdict: Verdict = "reject" if self.rejected else "allow" if self.deliveries else "drop"
        return Trace(
            packet_in=packet_in, steps=tuple(self.steps), verdict=verdict, rule=self.deciding_rule(last),
            deliveries=tuple(self.deliveries), final=last.packet, ct_state=last.meta["ct_state"],
            ct_mark=last.meta["ct_mark"], conntrack=self.conntrack, learned=tuple(self.learned),
            notes=tuple(self.notes), warnings=tuple(self.warnings), shadow=tuple(self.shadow))

    def deciding_rule(self, last: _State) -> str | None:
        """The FILTER flow's rule when the packet met FILTER, else the rule its connection was allowed by
        (the rule whose fingerprint is the connection's ct_mark)."""
        if self.filter_flow is not None:
            return self.rule_of(self.filter_flow)
        if last.meta["ct_state"] & TRK:
            return self.p.fingerprints.get(last.meta["ct_mark"] & CT_MARK_RULE_MASK)
        return None


@dataclass
class _Frame:
    """The step being written for one flow's action list (reopened after a nested lookup)."""

    hit: Hit
    table: int
    depth: int
    rule: str | None
    packet: Packet
    metadata: dict[str, int]
    """The packet and metadata as the table looked the flow up."""
    index: int = 0
    events: list[str] = field(default_factory=list)
    continued: bool = False

    def step(self) -> Step:
        flow = self.hit.flow
        return Step(self.table, flow.priority, self.rule, flow.cookie, flow.match, flow.actions,
                    tuple(self.events), self.depth, self.hit.conjunction, self.continued,
                    packet=self.packet, metadata=self.metadata)


def pick_bucket(group: SelectGroup, packet: Packet) -> Bucket | None:
    """The bucket for the packet's connection, as OVS picks one: from a hash of its addresses and
    ports that is the same both ways, in proportion to the buckets' weights. The hash is not OVS's
    (a datapath's dp_hash), so a connection may get another backend than on a real switch; what
    holds is that one connection always gets the same one and that connections spread by weight."""
    total = sum(b.weight for b in group.buckets)
    if not total:
        return None
    ends = sorted([(packet.src or 0, packet.tp_src or 0), (packet.dst or 0, packet.tp_dst or 0)])
    point = zlib.crc32(repr((packet.nw_proto, ends)).encode()) % total
    for bucket in group.buckets:
        if point < bucket.weight:
            return bucket
        point -= bucket.weight
    return None
