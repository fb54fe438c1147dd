"""ovsmgr's own OpenFlow model: matches, actions, flows and flow sets.

Small frozen dataclasses, so the compiler's output can be compared, hashed,
diffed, simulated and rendered. os-ken message objects are made only by the
OpenFlow southbound, ofctl text only by `ovsmgr.render`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ovsmgr.compiler.pipeline import TABLES, Table

FIELD_ORDER = (
    "in_port", "vlan_vid", "reg0", "reg1", "reg2", "reg3", "reg4", "reg5", "reg6", "conj_id", "ct_state", "ct_zone", "ct_mark",
    "dl_type", "arp_op", "arp_spa", "arp_tpa", "nw_proto", "nw_src", "nw_dst", "ipv6_src", "ipv6_dst",
    "nw_frag", "ct_nw_proto", "ct_tp_src", "ct_tp_dst",
    "tp_src", "tp_dst", "tcp_flags", "icmp_type", "icmp_code", "nd_target", "nd_sll", "ct_label",
)
_RANK = {name: i for i, name in enumerate(FIELD_ORDER)}


@dataclass(frozen=True, order=True, slots=True)
class MatchItem:
    """`field=value[/mask]`; addresses are ints here, rendered by the field's kind."""

    field: str
    value: int
    mask: int | None = None

    def matches(self, packet_value: int) -> bool:
        if self.mask is None:
            return packet_value == self.value
        return packet_value & self.mask == self.value & self.mask


@dataclass(frozen=True, slots=True)
class Match:
    """Items in FIELD_ORDER, each field at most once (so equal matches compare and hash equal)."""

    items: tuple[MatchItem, ...] = ()

    @staticmethod
    def of(*items: MatchItem) -> Match:
        return Match(_canonical(items))

    def __add__(self, other: Match) -> Match:
        mine, theirs = self.items, other.items
        if not mine or not theirs:
            return other if not mine else self
        if _RANK[mine[-1].field] < _RANK[theirs[0].field]:
            return Match(mine + theirs)  # already in order, no field twice: the usual case, kept cheap
        return Match(_canonical(mine + theirs))

    def fields(self) -> frozenset[str]:
        return frozenset(i.field for i in self.items)

    def get(self, name: str) -> MatchItem | None:
        return next((i for i in self.items if i.field == name), None)


def _rank(item: MatchItem) -> int:
    return _RANK[item.field]


def _canonical(items: tuple[MatchItem, ...]) -> tuple[MatchItem, ...]:
    """`items` in FIELD_ORDER; an item given twice is kept once, two values for one field are refused."""
    if len(items) < 2:
        return items
    out: list[MatchItem] = []
    for item in sorted(items, key=_rank):
        if out and out[-1].field == item.field:
            if out[-1] != item:
                raise ValueError(f"match sets {item.field} twice")
            continue
        out.append(item)
    return tuple(out)


# --- actions -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Output:
    port: int


@dataclass(frozen=True)
class InPort:
    """Send back out of the port the packet came in by (OpenFlow IN_PORT)."""


@dataclass(frozen=True)
class Normal:
    """OVS NORMAL: MAC-learning switching."""


@dataclass(frozen=True)
class PushVlan:
    """Put an 802.1Q header (TPID 0x8100, VLAN id 0) in front; a `vlan_vid` set_field gives its id."""


@dataclass(frozen=True)
class PopVlan:
    """Take the outer 802.1Q header off."""


@dataclass(frozen=True)
class GotoTable:
    table: Table


@dataclass(frozen=True)
class Resubmit:
    table: Table


@dataclass(frozen=True)
class SetField:
    field: str
    value: int


@dataclass(frozen=True)
class Move:
    """Copy one field (or register slice, `reg3` or `reg3[0..15]`) into another."""

    src: str
    dst: str


@dataclass(frozen=True)
class NatSpec:
    kind: str  # "src" | "dst"
    addr_lo: int
    addr_hi: int
    version: int
    port_lo: int | None = None
    port_hi: int | None = None


@dataclass(frozen=True)
class Ct:
    commit: bool = False
    table: Table | None = None
    zone: int | None = None
    nat: NatSpec | None = None
    apply_nat: bool = False
    """`nat` with no arguments: apply the existing translation of the connection."""
    exec: tuple[SetField | Move, ...] = ()
    alg: str | None = None
    """Conntrack helper the commit attaches (`ftp`, `tftp`; `pipeline.HELPER_ALGS`)."""


@dataclass(frozen=True)
class Meter:
    """Send the packet through meter `id` first (OpenFlow's meter instruction); it drops what is
    above the meter's rate. Always a flow's first action."""

    id: int


@dataclass(frozen=True)
class MeterConfig:
    """A meter ovsmgr puts on the switch for a rule's `limit:`: one drop band of `rate` (packets or
    kilobits per second, `unit`) with a burst of `burst` (packets or kilobits)."""

    id: int
    unit: str  # "pktps" | "kbps"
    rate: int
    burst: int
    rule: str


@dataclass(frozen=True)
class Conjunction:
    id: int
    clause: int
    n_clauses: int


@dataclass(frozen=True)
class Controller:
    """Packet-in to the controller with userdata (reason code and rule id) for reject/log."""

    userdata: bytes


@dataclass(frozen=True)
class LearnMacBinding:
    """Learn where an address lives into `table`: from an ARP packet `nw_dst=arp_spa -> dl_dst=dl_src`
    (version 4), from an IPv6 neighbour solicitation or advertisement `ipv6_dst=ipv6_src ->
    dl_dst=dl_src` (version 6)."""

    table: Table
    idle_timeout: int = 300
    version: int = 4


@dataclass(frozen=True)
class Group:
    """Hand the packet to select group `group_id` (`FlowSet.groups`): one of its buckets' actions run."""

    group_id: int


Action = (
    Output | InPort | Normal | GotoTable | Resubmit | SetField | Move | Ct | Conjunction | Controller
    | LearnMacBinding | Meter | Group | PushVlan | PopVlan
)


@dataclass(frozen=True)
class Bucket:
    weight: int
    actions: tuple[Action, ...]


@dataclass(frozen=True)
class SelectGroup:
    """An OpenFlow select group: each packet sent to it runs the actions of one bucket, picked by a
    hash of its addresses and ports, weighted (OVS 3.1: `dp_hash` of the symmetric 5-tuple). Group
    ids carry ovsmgr's magic (`pipeline.GROUP_ID_MAGIC`), as cookies do, since groups have none;
    `table` is the table whose flows send packets here (what the buckets' actions may do is that
    table's declaration)."""

    group_id: int
    table: Table
    buckets: tuple[Bucket, ...]
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class Flow:
    table: Table
    priority: int
    match: Match
    actions: tuple[Action, ...]
    cookie: int
    rule: str | None = field(default=None, compare=False)
    """The policy rule that made this flow (None for the pipeline's own flows)."""

    @property
    def key(self) -> tuple[int, int, Match]:
        """What OpenFlow identifies a flow by (strict match): table, priority and match."""
        return (int(self.table), self.priority, self.match)


class FlowError(ValueError):
    """A flow breaks the pipeline declaration (a compiler bug, never a user mistake)."""


def _targets(actions: Iterable[Action]) -> Iterator[Table]:
    for action in actions:
        target = action.table if isinstance(action, GotoTable | Resubmit | Ct) else None
        if target is not None:
            yield target


def check_flow(flow: Flow) -> None:
    spec = TABLES[flow.table]
    for item in flow.match.items:
        if item.field not in spec.matches:
            extra = flow.match.fields() - spec.matches
            raise FlowError(f"table {flow.table.name} may not match on {sorted(extra)}: {flow}")
    _check_targets(flow.table, flow.actions, flow)
    if not 0 <= flow.priority <= 65535:
        raise FlowError(f"priority {flow.priority} out of range: {flow}")


def _check_targets(table: Table, actions: Iterable[Action], what: object) -> None:
    for target in _targets(actions):
        if target not in TABLES[table].next_tables:
            raise FlowError(f"table {table.name} may not go to {target.name}: {what}")


def check_group(group: SelectGroup) -> None:
    for bucket in group.buckets:
        _check_targets(group.table, bucket.actions, group)
        if not 1 <= bucket.weight <= 0xFFFF:
            raise FlowError(f"bucket weight {bucket.weight} out of range: {group}")


@dataclass
class FlowSet:
    """The compiled flows of a policy, in a deterministic order, with a key -> flow index; and the
    select groups its flows use, by id."""

    flows: dict[tuple[int, int, Match], Flow] = field(default_factory=dict)
    groups: dict[int, SelectGroup] = field(default_factory=dict)

    def add(self, flow: Flow) -> None:
        check_flow(flow)
        key = flow.key
        existing = self.flows.setdefault(key, flow)
        if existing is not flow:
            self.flows[key] = _merge_conjunctions(existing, flow)

    def extend(self, flows: Iterable[Flow]) -> None:
        for flow in flows:
            self.add(flow)

    def add_group(self, group: SelectGroup) -> None:
        check_group(group)
        if self.groups.setdefault(group.group_id, group) != group:
            raise FlowError(f"two different groups with id {group.group_id:#x}")

    def sorted_groups(self) -> list[SelectGroup]:
        return [self.groups[gid] for gid in sorted(self.groups)]

    def sorted(self) -> list[Flow]:
        return sorted(self.flows.values(), key=_sort_key)

    def __len__(self) -> int:
        return len(self.flows)

    def __iter__(self) -> Iterator[Flow]:
        return iter(self.sorted())


def _sort_key(flow: Flow) -> tuple[int, int, tuple[tuple[int, int, int, int], ...]]:
    return (int(flow.table), -flow.priority,
            tuple((_RANK[i.field], i.value, -1 if i.mask is None else i.mask, 0) for i in flow.match.items))


def _merge_conjunctions(a: Flow, b: Flow) -> Flow:
    """Two clause flows with the same match and priority become one flow with both conjunctions."""
    if all(isinstance(x, Conjunction) for x in (*a.actions, *b.actions)):
        actions = tuple(sorted({*a.actions, *b.actions}, key=lambda c: (c.id, c.clause)))  # type: ignore[union-attr]
        return Flow(a.table, a.priority, a.match, actions, a.cookie, a.rule)
    if a.actions == b.actions or _is_fragment_follower(a):
        return a
    raise FlowError(f"two different flows with one match: {a} / {b}")


def _is_fragment_follower(flow: Flow) -> bool:
    """A FILTER flow for later fragments (`filter._fragment_followers`): disjoint rules of one level
    can make the same one, and the first rule's stands."""
    item = flow.match.get("nw_frag")
    return flow.table == Table.FILTER and item is not None and item.value == 3
