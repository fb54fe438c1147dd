"""Flows as ovs-ofctl text, written the way `ovs-ofctl dump-flows` prints them.

Writing OVS's own canonical spelling means a flow read back from the switch
compares equal to the compiled one by text, so plan/diff needs no guesswork.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

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
    MeterConfig,
    Move,
    NatSpec,
    Normal,
    Output,
    PopVlan,
    PushVlan,
    Resubmit,
    SelectGroup,
    SetField,
)
from ovsmgr.compiler.pipeline import (
    COOKIE_MAGIC,
    COOKIE_MASK,
    CT_STATE_BITS,
    TCP_FLAG_BITS,
    CookieKind,
    Priority,
    cookie,
)

PROTO_NAMES = {
    (0x0800, None): "ip", (0x86DD, None): "ipv6", (0x0806, None): "arp",
    (0x0800, 6): "tcp", (0x0800, 17): "udp", (0x0800, 1): "icmp", (0x0800, 132): "sctp",
    (0x86DD, 6): "tcp6", (0x86DD, 17): "udp6", (0x86DD, 58): "icmp6", (0x86DD, 132): "sctp6",
}
NXM = {
    "dl_src": "NXM_OF_ETH_SRC[]", "dl_dst": "NXM_OF_ETH_DST[]", "arp_sha": "NXM_NX_ARP_SHA[]",
    "arp_tha": "NXM_NX_ARP_THA[]", "arp_spa": "NXM_OF_ARP_SPA[]", "arp_tpa": "NXM_OF_ARP_TPA[]",
    "ct_mark": "NXM_NX_CT_MARK[]", "ct_label": "NXM_NX_CT_LABEL[]", "nw_dst": "NXM_OF_IP_DST[]", "ipv6_src": "NXM_NX_IPV6_SRC[]",
    "ipv6_dst": "NXM_NX_IPV6_DST[]",
    **{f"reg{i}": f"NXM_NX_REG{i}[]" for i in range(16)},
}
SET_FIELD_NAMES = {"dl_src": "eth_src", "dl_dst": "eth_dst"}
_REST_ORDER = {name: i for i, name in enumerate((
    "in_port", "vlan_vid", "arp_spa", "arp_tpa", "nw_src", "nw_dst", "ipv6_src", "ipv6_dst", "nw_proto", "nw_frag", "arp_op",
    "tp_src", "tp_dst", "tcp_flags", "icmp_type", "icmp_code", "nd_target", "nd_sll",
))}
"""The order `ovs-ofctl dump-flows` prints fields in after the protocol shorthand and registers."""
FRAG_NAMES = {(0, 1): "no", (1, 1): "yes", (1, 3): "first", (3, 3): "later", (0, 2): "not_later"}
"""`nw_frag` value/mask pairs by the names ovs-ofctl reads and prints."""
CT_FLAG_ORDER = sorted(CT_STATE_BITS.items(), key=lambda kv: kv[1])
TCP_FLAG_ORDER = sorted(TCP_FLAG_BITS.items(), key=lambda kv: kv[1])


def mac_text(value: int) -> str:
    raw = value.to_bytes(6, "big")
    return ":".join(f"{b:02x}" for b in raw)


def _ip_text(value: int, version: int) -> str:
    if version == 4:  # ipaddress's str() is a measurable share of rendering 100k-rule policies
        return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"
    return str(ipaddress.IPv6Address(value))


def _prefix_text(item: MatchItem, version: int) -> str:
    address = _ip_text(item.value, version)
    if item.mask is None:
        return address
    bits = 32 if version == 4 else 128
    length = bin(item.mask).count("1")
    if item.mask == ((1 << bits) - 1) ^ ((1 << (bits - length)) - 1):
        return f"{address}/{length}"
    return f"{address}/{_ip_text(item.mask, version)}"


def _flags_text(item: MatchItem, order: list[tuple[str, int]]) -> str:
    mask = item.mask if item.mask is not None else sum(bit for _, bit in order)
    return "".join(("+" if item.value & bit else "-") + name for name, bit in order if mask & bit)


def _ct_state_text(item: MatchItem) -> str:
    return _flags_text(item, CT_FLAG_ORDER)


@functools.lru_cache(maxsize=262144)
def _item_text(item: MatchItem) -> str:
    name = item.field
    if name in ("nw_src", "nw_dst", "arp_spa", "arp_tpa"):
        return f"{name}={_prefix_text(item, 4)}"
    if name in ("ipv6_src", "ipv6_dst", "nd_target"):
        return f"{name}={_prefix_text(item, 6)}"
    if name == "nd_sll":
        return f"{name}={mac_text(item.value)}"
    if name == "ct_state":
        return f"ct_state={_ct_state_text(item)}"
    if name == "vlan_vid":  # as ovs-ofctl prints it: a VLAN, or no tag at all
        return f"dl_vlan={item.value & 0xFFF}" if item.value else "vlan_tci=0x0000/0x1fff"
    if name == "nw_frag":
        return f"nw_frag={FRAG_NAMES[(item.value, item.mask or 3)]}"
    if name == "tcp_flags":
        return f"tcp_flags={_flags_text(item, TCP_FLAG_ORDER)}"
    if name.startswith("reg") or name in ("ct_mark", "ct_label", "dl_type"):
        masked = f"/{item.mask:#x}" if item.mask is not None else ""
        return f"{name}={item.value:#x}{masked}" if item.value else f"{name}=0{masked}"
    if item.mask is not None:
        return f"{name}={item.value:#x}/{item.mask:#x}"
    return f"{name}={item.value}"


def match_text(match: Match) -> str:
    """Match fields in OVS's print order: registers and ct fields, protocol, then the rest."""
    dl = match.get("dl_type")
    proto = match.get("nw_proto")
    shorthand = PROTO_NAMES.get((dl.value, proto.value if proto else None)) if dl else None
    if dl and shorthand is None:
        shorthand = PROTO_NAMES.get((dl.value, None))
        proto_item = proto
    else:
        proto_item = None
    meta = [i for i in match.items if i.field == "conj_id" or i.field.startswith("ct_")]
    regs = [i for i in match.items if i.field.startswith("reg")]
    rest = sorted((i for i in match.items if i.field in _REST_ORDER), key=lambda i: _REST_ORDER[i.field])
    parts = [_item_text(i) for i in meta]
    if shorthand:
        parts.append(shorthand)
    parts += [_item_text(i) for i in regs]
    parts += [_item_text(i) for i in rest if i.field != "nw_proto" or proto_item is not None]
    return ",".join(parts)


def _nat_text(nat: NatSpec) -> str:
    lo, hi = _ip_text(nat.addr_lo, nat.version), _ip_text(nat.addr_hi, nat.version)
    if nat.version == 6 and nat.port_lo is not None:  # as OVS prints it: brackets keep the port apart
        lo, hi = f"[{lo}]", f"[{hi}]"
    addr = lo if lo == hi else f"{lo}-{hi}"
    ports = ""
    if nat.port_lo is not None:
        ports = f":{nat.port_lo}" if nat.port_lo == nat.port_hi else f":{nat.port_lo}-{nat.port_hi}"
    return f"nat({nat.kind}={addr}{ports})"


def _set_field_text(action: SetField) -> str:
    name = SET_FIELD_NAMES.get(action.field, action.field)
    if action.field in ("dl_src", "dl_dst", "arp_sha", "arp_tha", "nd_sll", "nd_tll"):
        value = mac_text(action.value)
    elif action.field in ("arp_spa", "arp_tpa"):
        value = _ip_text(action.value, 4)
    elif action.field in ("ipv6_src", "ipv6_dst"):
        value = _ip_text(action.value, 6)
    elif action.field in ("arp_op", "icmpv6_type", "nd_reserved", "nd_options_type", "vlan_vid"):
        value = str(action.value)
    else:
        value = f"{action.value:#x}"
    return f"set_field:{value}->{name}"


def _nxm(ref: str) -> str:
    """`reg3[0..30]` -> `NXM_NX_REG3[0..30]`; a bare name is the whole field."""
    name, _, bits = ref.partition("[")
    return NXM[name].replace("[]", f"[{bits}" if bits else "[]")


def action_text(action: Action) -> str:
    match action:
        case Output(port):
            return f"output:{port}"
        case InPort():
            return "IN_PORT"
        case Normal():
            return "NORMAL"
        case PushVlan():
            return "push_vlan:0x8100"
        case PopVlan():
            return "pop_vlan"
        case Group(group_id):
            return f"group:{group_id}"
        case GotoTable(table):
            return f"goto_table:{int(table)}"
        case Resubmit(table):
            return f"resubmit(,{int(table)})"
        case SetField():
            return _set_field_text(action)
        case Move(src, dst):
            return f"move:{_nxm(src)}->{_nxm(dst)}"
        case Conjunction(cid, clause, n):
            return f"conjunction({cid},{clause}/{n})"
        case Controller(userdata):
            return f"controller(userdata={'.'.join(f'{b:02x}' for b in userdata)})"
        case LearnMacBinding(table, idle, version):
            learned = ("eth_type=0x800,NXM_OF_IP_DST[]=NXM_OF_ARP_SPA[]" if version == 4
                       else "eth_type=0x86dd,NXM_NX_IPV6_DST[]=NXM_NX_IPV6_SRC[]")
            return (f"learn(table={int(table)},idle_timeout={idle},priority={int(Priority.MAC_BINDING_LEARNED)},"
                    f"cookie={cookie(CookieKind.LEARNED):#x},{learned},"
                    "load:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[])")
        case Ct():
            return _ct_text(action)
        case Meter(meter):
            return f"meter:{meter}"
    raise TypeError(f"cannot render {action!r}")


def meter_text(meter: MeterConfig) -> str:
    """A meter as `ovs-ofctl add-meter` takes it (and `dump-meters` prints it)."""
    return (f"meter={meter.id} {meter.unit} burst stats bands=type=drop rate={meter.rate} "
            f"burst_size={meter.burst}")


def _ct_text(ct: Ct) -> str:
    args = []
    if ct.commit:
        args.append("commit")
    if ct.table is not None:
        args.append(f"table={int(ct.table)}")
    if ct.zone is not None:
        args.append(f"zone={ct.zone}")
    if ct.nat is not None:
        args.append(_nat_text(ct.nat))
    elif ct.apply_nat:
        args.append("nat")
    if ct.exec:
        args.append(f"exec({','.join(action_text(a) for a in ct.exec)})")
    if ct.alg is not None:
        args.append(f"alg={ct.alg}")
    return f"ct({','.join(args)})"


@functools.lru_cache(maxsize=65536)
def actions_text(actions: tuple[Action, ...]) -> str:
    """Cached: a policy's flows share few distinct action lists (one per rule at most)."""
    return ",".join(action_text(a) for a in actions) or "drop"


def flow_text(flow: Flow, with_cookie: bool = True) -> str:
    """One flow in add-flows syntax (as dump-flows prints it, table and priority always written)."""
    head = f"cookie={flow.cookie:#x}," if with_cookie else ""
    match = match_text(flow.match)
    sep = "," if match else ""
    return f"{head}table={int(flow.table)},priority={flow.priority}{sep}{match} actions={actions_text(flow.actions)}"


def group_text(group: SelectGroup) -> str:
    """A select group in add-groups syntax, as `ovs-ofctl dump-groups` prints it (a bucket's weight
    only when it is not 1, the default)."""
    buckets = "".join(f",bucket={f'weight:{b.weight},' if b.weight != 1 else ''}actions={actions_text(b.actions)}"
                      for b in group.buckets)
    return f"group_id={group.group_id},type=select{buckets}"


def flow_json(flow: Flow) -> dict[str, object]:
    return {
        "table": int(flow.table), "table_name": flow.table.name, "priority": flow.priority,
        "cookie": f"{flow.cookie:#x}", "rule": flow.rule, "match": match_text(flow.match),
        "actions": actions_text(flow.actions),
    }


def bundle_text(adds: Iterable[Flow], deletes: Iterable[Flow]) -> str:
    """`ovs-ofctl --bundle add-flows` input: strict, cookie-masked deletes, then adds. What a person
    (or a benchmark's raw baseline) feeds `ovs-ofctl` to make the same change ovsmgr pushes."""
    ours = f"cookie={COOKIE_MAGIC << 48:#x}/{COOKIE_MASK:#x}"
    lines = []
    for flow in deletes:
        match = match_text(flow.match)
        lines.append(f"delete_strict {ours},table={int(flow.table)},priority={flow.priority}"
                     f"{',' if match else ''}{match}")
    lines += [f"add {flow_text(flow)}" for flow in adds]
    return "".join(f"{line}\n" for line in lines)
