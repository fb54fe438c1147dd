"""Cross-checking a simulated walk against `ovs-appctl ofproto/trace` on a real switch.

`trace_request(trace)` gives the flow and `--ct-next` states that make
`ofproto/trace` walk the packet the way the simulator did; `parse_trace` reads
its text into passes (the first lookup and one per recirculation), each with the
(table, priority) of every lookup and its datapath actions; `compare_walks` says
where the simulator's steps and the trace differ.

What `ofproto/trace` does with conntrack (OVS 3.1, checked by hand): it runs no
conntrack. Each `ct(table=T)` queues a recirculation whose flow is the flow at
that moment, with `ct_zone` set to the action's zone and `ct_state` taken from
the next `--ct-next`. `ct_mark` (and `ct_label`) is not reset: the first
recirculation carries the `ct_mark` of the traced flow (so `trace_request` writes
the mark the simulator's connection had), later ones the mark the pass had or the
one a `ct(commit, exec(...))` wrote; so a pass in another zone than the one before
it (DNAT then SNAT) is traced alone, as is what follows a select group (its bucket
is chosen after a `dp_hash` recirculation the trace does not follow). A `nat(src=...)`/`nat(dst=...)` with an explicit range is
simulated by rewriting the flow to the first address and port of the range; a
plain `nat` (an existing connection's translation: replies, un-SNAT, un-DNAT)
rewrites nothing. So a pass after such a recirculation starts from other
addresses than the real packet has; `pass_mismatch` finds those passes, and the
caller traces them alone with `ofproto/trace-packet-out FLOW 'resubmit(,T)'`
from the simulator's own packet and metadata (`pass_request`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ovsmgr.compiler.pipeline import CT_STATE_BITS
from ovsmgr.sim.fields import DL_TYPE_ARP, ICMP_PROTOS, format_value, parse_value
from ovsmgr.sim.packet import Packet
from ovsmgr.sim.trace import Step, Trace

REGISTERS = ("reg0", "reg1", "reg2", "reg3", "reg4", "reg5", "reg6", "reg7")
ADDRESS_FIELDS = ("nw_src", "nw_dst", "ipv6_src", "ipv6_dst", "tp_src", "tp_dst")
CT_TUPLE = ("ct_nw_proto", "ct_tp_src", "ct_tp_dst")
STATE_FIELDS = ("ct_state", "ct_zone", "ct_mark", "ct_label", *CT_TUPLE, *REGISTERS)
_RULE = "=" * 79
_RECIRC = re.compile(r"^recirc\((?P<id>0x[0-9a-f]+)\)(?: - resume conntrack with (?:default )?"
                     r"ct_state=(?P<state>[a-z|]+))?")
_HIT = re.compile(r"^\s*(?P<table>\d+)\. (?:(?P<match>.*?), )?priority (?P<priority>\d+)"
                  r"(?:, cookie (?P<cookie>0x[0-9a-f]+))?$")
_MISS = re.compile(r"^\s*(?P<table>\d+)\. No match\.?$")
_PROTOCOLS = {(4, 6): "tcp", (4, 17): "udp", (4, 132): "sctp", (4, 1): "icmp",
              (6, 6): "tcp6", (6, 17): "udp6", (6, 132): "sctp6", (6, 58): "icmp6"}


# --- asking ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TraceRequest:
    flow: str
    ct_next: tuple[str, ...] = ()

    def argv(self, bridge: str) -> list[str]:
        """`ofproto/trace BRIDGE FLOW --ct-next S ...` (arguments for `ovs-appctl`)."""
        args = ["ofproto/trace", bridge, self.flow]
        for state in self.ct_next:
            args += ["--ct-next", state]
        return args


def ct_state_flags(state: int, separator: str = ",") -> str:
    """`trk,est,rpl` (for --ct-next) or `trk|est|rpl` (in a flow) from ct_state bits."""
    return separator.join(name for name, bit in CT_STATE_BITS.items() if state & bit)


def flow_string(packet: Packet, metadata: Mapping[str, int] | None = None) -> str:
    """The packet (and pipeline metadata) as an `ofproto/trace` flow."""
    words = [f"in_port={packet.in_port}", _protocol(packet)]
    for name in ("dl_src", "dl_dst"):
        words.append(f"{name}={format_value(name, getattr(packet, name))}")
    if packet.vlan_vid:
        words.append(f"dl_vlan={packet.vlan_vid & 0xFFF}")
    fields = ("arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha") if packet.dl_type == DL_TYPE_ARP else (
        *ADDRESS_FIELDS, "icmp_type", "icmp_code", "nd_target", "nd_sll", "nd_tll")
    for name in fields:
        value = getattr(packet, name)
        if value is not None:
            words.append(f"{_spelling(name, packet)}={format_value(name, value)}")
    if packet.tcp_flags is not None:
        words.append(f"tcp_flags={packet.tcp_flags:#05x}")
    for name, value in (metadata or {}).items():
        if name == "ct_state" and value:
            words.append(f"ct_state={ct_state_flags(value, '|')}")
        elif name in STATE_FIELDS and value:
            words.append(f"{name}={value:#x}")
    return ",".join(words)


def _spelling(name: str, packet: Packet) -> str:
    """ofproto/trace takes `tp_src` for TCP only: other protocols need `udp_src`, `icmpv6_type`..."""
    if name in ("tp_src", "tp_dst"):
        l4 = {17: "udp", 132: "sctp"}.get(packet.nw_proto or 0, "tcp")
        return f"{l4}_{name[3:]}"
    if name in ("icmp_type", "icmp_code") and packet.version == 6:
        return name.replace("icmp", "icmpv6")
    return name


def _protocol(packet: Packet) -> str:
    if packet.dl_type == DL_TYPE_ARP:
        return "arp"
    word = _PROTOCOLS.get((packet.version or 0, packet.nw_proto or 0))
    if word is not None:
        return word
    if packet.version is None:
        return f"dl_type={packet.dl_type:#06x}"
    return f"{'ip' if packet.version == 4 else 'ipv6'},nw_proto={packet.nw_proto or 0}"


@dataclass(frozen=True)
class SimPass:
    """The simulator's steps between two recirculations (the first pass: from table 0)."""

    steps: tuple[Step, ...]

    @property
    def hits(self) -> list[tuple[int, int | None]]:
        return [(s.table, s.priority) for s in self.steps]

    @property
    def start(self) -> Step:
        return self.steps[0]


def sim_passes(trace: Trace) -> list[SimPass]:
    """The simulated walk cut where OVS recirculates (after every `ct(table=...)`)."""
    passes: list[list[Step]] = [[]]
    for step in trace.steps:
        if not step.continued:
            passes[-1].append(step)
        if any(e.startswith("recirculate to table") for e in step.events):
            passes.append([])
    return [SimPass(tuple(p)) for p in passes if p]


def trace_request(trace: Trace, packet: Packet | None = None) -> TraceRequest:
    """What makes `ofproto/trace` walk like the simulator: `packet` (the sent packet as the real
    host addresses it; default the simulated one), the connection's ct_mark, one
    `--ct-next` per recirculation with the ct_state the simulator computed."""
    passes = sim_passes(trace)
    later = [p.start.metadata or {} for p in passes[1:]]
    first = later[0] if later else {}
    metadata = {"ct_mark": first.get("ct_mark", 0), "ct_label": first.get("ct_label", 0)}
    if first.get("ct_nw_proto"):
        # ofproto/trace keeps a flow's conntrack tuple across recirculations but sets none itself:
        # the traced flow starts with the one the first ct() gives (it needs a tracked ct_state).
        metadata |= {"ct_state": first.get("ct_state", 0), **{n: first.get(n, 0) for n in CT_TUPLE}}
    flow = flow_string(packet or trace.packet_in, metadata)
    return TraceRequest(flow, tuple(ct_state_flags(m.get("ct_state", 0)) for m in later))


def pass_request(sim_pass: SimPass, of_pass: OfPass) -> tuple[str, str]:
    """(flow, actions) for `ofproto/trace-packet-out` tracing one pass alone, from the packet
    and metadata the simulator had when the pass began; the MACs are the ones the trace had
    there (the simulator names hosts' MACs its own way)."""
    start = sim_pass.start
    if start.packet is None:
        raise ValueError("this trace has no packet snapshots")
    packet = start.packet
    for name in ("dl_src", "dl_dst"):
        if of_pass.flow.get(name):
            packet = packet.replace(**{name: parse_value(name, of_pass.flow[name])})
    return flow_string(packet, start.metadata), f"resubmit(,{start.table})"


# --- reading -----------------------------------------------------------------------------------
@dataclass
class OfPass:
    """One pass of an `ofproto/trace`: its starting flow, the lookups, the datapath actions."""

    recirc_id: str | None = None
    flow: dict[str, str] = field(default_factory=dict)
    hits: list[tuple[int, int | None]] = field(default_factory=list)
    cookies: list[int | None] = field(default_factory=list)
    datapath_actions: str = ""
    nat_simulated: bool | None = None
    """None: no NAT on the way in; False: a plain `nat` the trace could not apply; True: rewritten."""

    @property
    def outputs(self) -> list[int]:
        """Datapath ports the pass outputs to."""
        return [int(a) for a in split_actions(self.datapath_actions) if a.isdigit()]

    @property
    def to_controller(self) -> bool:
        return any(a.startswith("userspace(") and "controller(" in a for a in split_actions(self.datapath_actions))


def parse_trace(text: str) -> list[OfPass]:
    """The passes of an `ofproto/trace` (or `trace-packet-out`) output, in order."""
    passes = [OfPass()]
    for line in text.splitlines():
        current = passes[-1]
        if found := _RECIRC.match(line):
            passes.append(OfPass(found["id"]))
        elif line.startswith("Replacing src/dst IP/ports to simulate NAT"):
            current.nat_simulated = False
        elif line.startswith(" Modified flow:"):
            current.nat_simulated = bool(line.partition(":")[2].strip())
        elif line.startswith("Flow: "):
            current.flow = parse_flow_fields(line[len("Flow: "):])
        elif line.startswith("Datapath actions: "):
            current.datapath_actions = line[len("Datapath actions: "):].strip()
        elif found := _HIT.match(line):
            current.hits.append((int(found["table"]), int(found["priority"])))
            current.cookies.append(int(found["cookie"], 16) if found["cookie"] else None)
        elif found := _MISS.match(line):
            current.hits.append((int(found["table"]), None))
            current.cookies.append(None)
    return passes


def parse_flow_fields(text: str) -> dict[str, str]:
    """`recirc_id=0x2,ct_state=new|trk,eth,tcp,reg0=0x1,...` as a dict (bare words map to '')."""
    out: dict[str, str] = {}
    for word in text.strip().split(","):
        name, _, value = word.partition("=")
        out[name.strip()] = value.strip()
    return out


def split_actions(text: str) -> list[str]:
    """Top-level datapath actions: `ct(zone=1,nat),recirc(0x5)` -> ['ct(zone=1,nat)', 'recirc(0x5)']."""
    actions: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "," and depth == 0:
            actions.append("".join(current).strip())
            current = []
            continue
        depth += (char == "(") - (char == ")")
        current.append(char)
    if current:
        actions.append("".join(current).strip())
    return [a for a in actions if a]


# --- comparing ---------------------------------------------------------------------------------
def pass_mismatch(sim_pass: SimPass, of_pass: OfPass, fields: Sequence[str] = ADDRESS_FIELDS) -> list[str]:
    """`fields` where the trace begins a pass from another packet or state than the simulator.

    Addresses and ports differ after a translation the trace cannot apply (then the pass
    is traced alone); registers and ct fields must not differ: the trace took them from
    the same flows and the `--ct-next` states the simulator gave.
    """
    start = sim_pass.start
    if start.packet is None:
        return []
    values: dict[str, int | None] = {n: getattr(start.packet, n) for n in fields if n in ADDRESS_FIELDS}
    if start.packet.nw_proto in ICMP_PROTOS or start.packet.dl_type == DL_TYPE_ARP:
        values = {n: v for n, v in values.items() if not n.startswith("tp_")}
    values.update({n: (start.metadata or {}).get(n, 0) for n in fields if n in STATE_FIELDS})
    differences = []
    for name, value in values.items():
        traced = _flow_value(of_pass.flow, name)
        if value is None or traced is None or traced == value:
            continue
        differences.append(f"{name}: simulator {format_value(name, value)}, trace {format_value(name, traced)}")
    return differences


def _flow_value(flow: Mapping[str, str], name: str) -> int | None:
    text = flow.get(name)
    if name == "ct_state":
        text = text or ""
        return sum(CT_STATE_BITS[f] for f in text.split("|") if f in CT_STATE_BITS)
    if text is None:
        return 0 if name in STATE_FIELDS else None
    return parse_value(name, text)


def compare_hits(sim_pass: SimPass, of_pass: OfPass) -> str | None:
    """None when the pass hit the same (table, priority) sequence, else a one-line diff."""
    if sim_pass.hits == of_pass.hits:
        return None
    return f"simulator {_hits(sim_pass.hits)}; trace {_hits(of_pass.hits)}"


def _hits(hits: Sequence[tuple[int, int | None]]) -> str:
    return " ".join(f"{t}/{'miss' if p is None else p}" for t, p in hits) or "nothing"


@dataclass(frozen=True)
class WalkComparison:
    """How a simulated walk and `ofproto/trace` compare, pass by pass."""

    passes: int
    retraced: tuple[int, ...]
    """Passes traced alone from the simulator's state (the trace could not follow a translation)."""
    output: tuple[str, ...]
    """Ports the traced packet leaves by (datapath outputs, named)."""
    problems: tuple[str, ...]
    notes: tuple[str, ...] = ()


Retrace = Callable[[str, str], str]
"""(flow, actions) -> the text of `ofproto/trace-packet-out BRIDGE FLOW ACTIONS`."""


def _beyond_the_trace(sim: Sequence[SimPass], traced: Sequence[OfPass], number: int) -> str | None:
    """Why the trace's own pass `number` cannot stand for the simulator's, from that pass on
    (then each is traced alone from the simulator's state); None when it can."""
    if number >= len(traced):
        last = traced[-1].datapath_actions if traced else ""
        return "a select group's bucket, chosen after a dp_hash recirculation the trace does not follow" \
            if "hash(" in last else None
    zones = [(p.start.metadata or {}).get("ct_zone", 0) for p in sim[number - 1:number + 1]]
    if number > 1 and zones[0] != zones[1]:
        return (f"conntrack zone {zones[1]} after zone {zones[0]}: the trace carries one zone's ct_mark "
                "and tuple across recirculations")
    return None


def compare_walks(trace: Trace, text: str, retrace: Retrace, dp_ports: Mapping[int, str]) -> WalkComparison:
    """Compare the simulator's walk with an `ofproto/trace` of the same packet (see the module
    docstring); `dp_ports` names datapath ports (leave the bridge's own port out). Where the trace
    cannot follow (a select group's dp_hash recirculation, a second conntrack zone), that pass and
    every later one are traced alone from the simulator's state."""
    sim, traced = sim_passes(trace), parse_trace(text)
    problems, notes, retraced, outputs = [], [], [], []
    alone: str | None = None
    for number, sim_pass in enumerate(sim):
        alone = alone or (_beyond_the_trace(sim, traced, number) if number else None)
        if alone is None and number >= len(traced):
            problems.append(f"{len(sim)} pass(es) in the simulator, {len(traced)} in the trace")
            break
        of_pass = traced[min(number, len(traced) - 1)]
        used = of_pass
        if alone is not None:
            used = parse_trace(retrace(*pass_request(sim_pass, of_pass)))[0]
            retraced.append(number)
            notes.append(f"pass {number} traced alone from the simulator's state ({alone})")
        elif number and (state := pass_mismatch(sim_pass, of_pass, STATE_FIELDS)):
            problems.append(f"pass {number} starts in another state: {'; '.join(state)}")
        if alone is None and number and (differences := pass_mismatch(sim_pass, of_pass)):
            used = parse_trace(retrace(*pass_request(sim_pass, of_pass)))[0]
            retraced.append(number)
            notes.append(f"pass {number} traced alone from the simulator's state ({'; '.join(differences)})")
        if (diff := compare_hits(sim_pass, used)) is not None:
            problems.append(f"pass {number}: {diff}")
        outputs += [dp_ports[p] for p in used.outputs if p in dp_ports]
    if alone is None and len(traced) > len(sim):
        problems.append(f"{len(sim)} pass(es) in the simulator, {len(traced)} in the trace")
    for of_pass in traced[len(sim):] if alone is None else ():
        outputs += [dp_ports[p] for p in of_pass.outputs if p in dp_ports]
    output = tuple(sorted(set(outputs)))
    if output != tuple(sorted(set(trace.output))):
        problems.append(f"output: simulator {sorted(set(trace.output))}, trace {list(output)}")
    return WalkComparison(len(traced), tuple(retraced), output, tuple(problems), tuple(notes))
