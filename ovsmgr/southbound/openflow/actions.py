"""Actions on the wire: ovsmgr's action model to OpenFlow 1.4 instructions and back.

Written as Open vSwitch 3.1 writes them in a flow-statistics reply (`encode_*` in
OVS's lib/ofp-actions.c): the actions in one APPLY_ACTIONS instruction, a last
`goto_table` as its own instruction, Nicira extensions (ct, nat, conjunction,
resubmit, reg_move, controller2, learn) with their padding. The structures
are fixed-size, so each is a `struct` format; os-ken's classes, which build the
same bytes, cost about 200 µs a flow and 0.25 s of import (tests check both agree).
"""

from __future__ import annotations

import functools
import struct

from ovsmgr.compiler.flows import (
    Action,
    Conjunction,
    Controller,
    Ct,
    GotoTable,
    Group,
    InPort,
    LearnMacBinding,
    Meter,
    Move,
    NatSpec,
    Normal,
    Output,
    PopVlan,
    PushVlan,
    Resubmit,
    SetField,
)
from ovsmgr.compiler.pipeline import HELPER_ALGS, CookieKind, Priority, Table, cookie
from ovsmgr.southbound.openflow.oxm import HEADERS

NX_VENDOR = 0x00002320
OFPAT_OUTPUT, OFPAT_GROUP, OFPAT_SET_FIELD, OFPAT_EXPERIMENTER = 0, 22, 25, 0xFFFF
OFPAT_PUSH_VLAN, OFPAT_POP_VLAN = 17, 18
ETH_TYPE_VLAN = 0x8100
OFPIT_GOTO_TABLE, OFPIT_APPLY_ACTIONS, OFPIT_METER = 1, 4, 6
NXAST_REG_MOVE, NXAST_RESUBMIT_TABLE, NXAST_LEARN = 6, 14, 16
NXAST_CONJUNCTION, NXAST_CT, NXAST_NAT, NXAST_CONTROLLER2 = 34, 35, 36, 37
OFPP_IN_PORT, OFPP_NORMAL = 0xFFFFFFF8, 0xFFFFFFFA
OFPP_IN_PORT_16 = 0xFFF8
NX_CT_F_COMMIT = 1
NX_CT_RECIRC_NONE = 0xFF
NX_NAT_F_SRC, NX_NAT_F_DST = 1, 2
NAT_IPV4_MIN, NAT_IPV4_MAX, NAT_IPV6_MIN, NAT_IPV6_MAX, NAT_PROTO_MIN, NAT_PROTO_MAX = 1, 2, 4, 8, 16, 32
NXAC2PT_USERDATA = 3
LEARN_SRC_IMMEDIATE, LEARN_DST_LOAD = 1 << 13, 1 << 11

_NX_HEADER = struct.Struct("!HHIH")  # type, len, vendor, subtype
_OUTPUT = struct.Struct("!HHIH6x")
_GROUP = struct.Struct("!HHI")
_PUSH = struct.Struct("!HHH2x")
_POP = struct.Struct("!HH4x")
_GOTO = struct.Struct("!HHB3x")
_RESUBMIT = struct.Struct("!HHIHHB3x")
_CONJUNCTION = struct.Struct("!HHIHBBI")
_REG_MOVE = struct.Struct("!HHIHHHHII")
_CT = struct.Struct("!HHIHHIHB3xH")
_NAT = struct.Struct("!HHIH2xHH")
_LEARN = struct.Struct("!HHIHHHHQHBxHH")


class ActionDecodeError(ValueError):
    """An action ovsmgr's model has no name for (a flow somebody else wrote)."""


def _nxm(oxm_class: int, field: int, width: int) -> int:
    return oxm_class << 16 | field << 9 | width


# NXM headers (as reg_move and learn write them): ovsmgr's field name -> header.
NXM_HEADERS: dict[str, int] = {
    "dl_dst": _nxm(0, 1, 6), "dl_src": _nxm(0, 2, 6), "dl_type": _nxm(0, 3, 2), "nw_src": _nxm(0, 7, 4),
    "nw_dst": _nxm(0, 8, 4), "arp_op": _nxm(0, 15, 2), "arp_spa": _nxm(0, 16, 4), "arp_tpa": _nxm(0, 17, 4),
    "arp_sha": _nxm(1, 17, 6), "arp_tha": _nxm(1, 18, 6), "ipv6_src": _nxm(1, 19, 16),
    "ipv6_dst": _nxm(1, 20, 16), "ct_mark": _nxm(1, 107, 4), "ct_label": _nxm(1, 108, 16),
    **{f"reg{i}": _nxm(1, i, 4) for i in range(16)},
}
_NXM_NAMES = {header: name for name, header in NXM_HEADERS.items()}
_HELPER_NAMES = {number: name for name, number in HELPER_ALGS.items()}
_SET_FIELD_NAMES = {(h.oxm_class, h.field): name for name, h in HEADERS.items()
                    if name in ("dl_src", "dl_dst", "arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha",
                                "ipv6_src", "ipv6_dst", "icmpv6_type", "nd_sll", "nd_tll", "nd_reserved",
                                "nd_options_type", "ct_mark", "ct_label", "vlan_vid") or name.startswith("reg")}
LEARN_COOKIE = cookie(CookieKind.LEARNED)


def _pad8(data: bytes) -> bytes:
    return data + bytes(-len(data) % 8)


# --- encoding ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1 << 16)
def encode_instructions(actions: tuple[Action, ...]) -> bytes:
    """The instruction set of a flow with these actions (empty for `drop`); a first `Meter` is the
    meter instruction, which OVS writes before the others."""
    out = b""
    if actions and isinstance(actions[0], Meter):
        out, actions = struct.pack("!HHI", OFPIT_METER, 8, actions[0].id), actions[1:]
    goto = actions[-1] if actions and isinstance(actions[-1], GotoTable) else None
    apply = actions[:-1] if goto is not None else actions
    if apply:
        body = b"".join(encode_action(a) for a in apply)
        out += struct.pack("!HH4x", OFPIT_APPLY_ACTIONS, 8 + len(body)) + body
    if goto is not None:
        out += _GOTO.pack(OFPIT_GOTO_TABLE, 8, int(goto.table))
    return out


def encode_action(action: Action) -> bytes:
    match action:
        case Output(port):
            return _OUTPUT.pack(OFPAT_OUTPUT, 16, port, 0)
        case InPort():
            return _OUTPUT.pack(OFPAT_OUTPUT, 16, OFPP_IN_PORT, 0)
        case Normal():
            return _OUTPUT.pack(OFPAT_OUTPUT, 16, OFPP_NORMAL, 0)
        case Group(group_id):
            return _GROUP.pack(OFPAT_GROUP, 8, group_id)
        case PushVlan():
            return _PUSH.pack(OFPAT_PUSH_VLAN, 8, ETH_TYPE_VLAN)
        case PopVlan():
            return _POP.pack(OFPAT_POP_VLAN, 8)
        case Resubmit(table):
            return _RESUBMIT.pack(OFPAT_EXPERIMENTER, 16, NX_VENDOR, NXAST_RESUBMIT_TABLE, OFPP_IN_PORT_16,
                                  int(table))
        case SetField(field, value):
            header = HEADERS[field]
            tlv = header.pack(False) + value.to_bytes(header.width, "big")
            return _pad8(struct.pack("!HH", OFPAT_SET_FIELD, len(_pad8(b"    " + tlv))) + tlv)
        case Move(src, dst):
            return _reg_move(src, dst)
        case Conjunction(cid, clause, n):
            return _CONJUNCTION.pack(OFPAT_EXPERIMENTER, 16, NX_VENDOR, NXAST_CONJUNCTION, clause - 1, n, cid)
        case Ct():
            return _ct(action)
        case Controller(userdata):
            prop = _pad8(struct.pack("!HH", NXAC2PT_USERDATA, 4 + len(userdata)) + userdata)
            return _NX_HEADER.pack(OFPAT_EXPERIMENTER, 16 + len(prop), NX_VENDOR, NXAST_CONTROLLER2) \
                + bytes(6) + prop
        case LearnMacBinding(table, idle, version):
            return _learn(table, idle, version)
    raise TypeError(f"cannot encode {action!r}")


def _slice(ref: str) -> tuple[str, int, int]:
    """`reg3[0..30]` -> ("reg3", 0, 31 bits); `reg4[1]` -> ("reg4", 1, 1); `dl_src` -> whole field."""
    name, _, bits = ref.partition("[")
    if not bits:
        return name, 0, (NXM_HEADERS[name] & 0xFF) * 8
    lo, _, hi = bits.rstrip("]").partition("..")
    return name, int(lo), int(hi or lo) - int(lo) + 1


def _reg_move(src: str, dst: str) -> bytes:
    src_name, src_ofs, n_bits = _slice(src)
    dst_name, dst_ofs, _ = _slice(dst)
    return _REG_MOVE.pack(OFPAT_EXPERIMENTER, 24, NX_VENDOR, NXAST_REG_MOVE, n_bits, src_ofs, dst_ofs,
                          NXM_HEADERS[src_name], NXM_HEADERS[dst_name])


def _ct(ct: Ct) -> bytes:
    nested = b""
    if ct.nat is not None:
        nested += _nat(ct.nat)
    elif ct.apply_nat:
        nested += _NAT.pack(OFPAT_EXPERIMENTER, 16, NX_VENDOR, NXAST_NAT, 0, 0)
    nested += b"".join(encode_action(a) for a in ct.exec)
    table = NX_CT_RECIRC_NONE if ct.table is None else int(ct.table)
    alg = 0 if ct.alg is None else HELPER_ALGS[ct.alg]
    return _CT.pack(OFPAT_EXPERIMENTER, 24 + len(nested), NX_VENDOR, NXAST_CT,
                    NX_CT_F_COMMIT if ct.commit else 0, 0, ct.zone or 0, table, alg) + nested


def _nat(nat: NatSpec) -> bytes:
    """Like `ovs-ofctl` parses `nat(src=LO[-HI][:PLO[-PHI]])`: a maximum only when it differs."""
    width = 4 if nat.version == 4 else 16
    present = NAT_IPV4_MIN if nat.version == 4 else NAT_IPV6_MIN
    ranges = nat.addr_lo.to_bytes(width, "big")
    if nat.addr_hi != nat.addr_lo:
        present |= NAT_IPV4_MAX if nat.version == 4 else NAT_IPV6_MAX
        ranges += nat.addr_hi.to_bytes(width, "big")
    if nat.port_lo:
        present |= NAT_PROTO_MIN
        ranges += nat.port_lo.to_bytes(2, "big")
        if nat.port_hi is not None and nat.port_hi != nat.port_lo:
            present |= NAT_PROTO_MAX
            ranges += nat.port_hi.to_bytes(2, "big")
    flags = NX_NAT_F_SRC if nat.kind == "src" else NX_NAT_F_DST
    body = _pad8(bytes(16) + ranges)[16:]
    return _NAT.pack(OFPAT_EXPERIMENTER, 16 + len(body), NX_VENDOR, NXAST_NAT, flags, present) + body


_LEARNED_FROM = {4: (0x0800, "arp_spa", "nw_dst", 32), 6: (0x86DD, "ipv6_src", "ipv6_dst", 128)}
"""By IP version: the learned flow's eth_type, the field the address is taken from, the field the
learned flow matches it in, and its width."""


def _learn(table: Table, idle: int, version: int = 4) -> bytes:
    """`learn(table=T,idle_timeout=I,priority=..,cookie=..,eth_type=0x800,
    NXM_OF_IP_DST[]=NXM_OF_ARP_SPA[],load:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[])` (IPv6: eth_type=0x86dd,
    NXM_NX_IPV6_DST[]=NXM_NX_IPV6_SRC[])."""
    eth_type, src, dst, bits = _LEARNED_FROM[version]
    specs = (struct.pack("!HHIH", LEARN_SRC_IMMEDIATE | 16, eth_type, NXM_HEADERS["dl_type"], 0)
             + struct.pack("!HIHIH", bits, NXM_HEADERS[src], 0, NXM_HEADERS[dst], 0)
             + struct.pack("!HIHIH", LEARN_DST_LOAD | 48, NXM_HEADERS["dl_src"], 0, NXM_HEADERS["dl_dst"], 0))
    body = _pad8(bytes(32) + specs)[32:]
    return _LEARN.pack(OFPAT_EXPERIMENTER, 32 + len(body), NX_VENDOR, NXAST_LEARN, idle, 0,
                       int(Priority.MAC_BINDING_LEARNED), LEARN_COOKIE, 0, int(table), 0, 0) + body


# --- decoding ------------------------------------------------------------------------------------
def decode_instructions(data: bytes | memoryview) -> tuple[Action, ...]:
    """An instruction set back to ovsmgr's actions; raises `ActionDecodeError`."""
    actions: list[Action] = []
    offset = 0
    while offset < len(data):
        kind, length = struct.unpack_from("!HH", data, offset)
        if length < 8 or offset + length > len(data):
            raise ActionDecodeError("bad instruction length")
        if kind == OFPIT_METER and length == 8 and not actions:
            actions.append(Meter(struct.unpack_from("!I", data, offset + 4)[0]))
        elif kind == OFPIT_APPLY_ACTIONS:
            actions += decode_actions(data[offset + 8:offset + length])
        elif kind == OFPIT_GOTO_TABLE:
            actions.append(GotoTable(_table(data[offset + 4])))
        else:
            raise ActionDecodeError(f"instruction type {kind}")
        offset += length
    return tuple(actions)


def decode_actions(data: bytes | memoryview) -> list[Action]:
    out: list[Action] = []
    offset = 0
    while offset < len(data):
        kind, length = struct.unpack_from("!HH", data, offset)
        if length < 8 or length % 8 or offset + length > len(data):
            raise ActionDecodeError("bad action length")
        out.append(_decode_one(kind, bytes(data[offset:offset + length])))
        offset += length
    return out


def _table(number: int) -> Table:
    try:
        return Table(number)
    except ValueError:
        raise ActionDecodeError(f"table {number} is not one of ovsmgr's") from None


def _decode_one(kind: int, raw: bytes) -> Action:
    if kind == OFPAT_OUTPUT:
        port = _OUTPUT.unpack(raw)[2]
        return InPort() if port == OFPP_IN_PORT else Normal() if port == OFPP_NORMAL else Output(port)
    if kind == OFPAT_GROUP:
        return Group(_GROUP.unpack(raw)[2])
    if kind == OFPAT_PUSH_VLAN and len(raw) == 8 and _PUSH.unpack(raw)[2] == ETH_TYPE_VLAN:
        return PushVlan()
    if kind == OFPAT_POP_VLAN and len(raw) == 8:
        return PopVlan()
    if kind == OFPAT_SET_FIELD:
        oxm_class, field_mask, width = struct.unpack_from("!HBB", raw, 4)
        name = _SET_FIELD_NAMES.get((oxm_class, field_mask >> 1))
        if name is None or field_mask & 1:
            raise ActionDecodeError(f"set_field of class {oxm_class:#06x} field {field_mask >> 1}")
        return SetField(name, int.from_bytes(raw[8:8 + width], "big"))
    if kind != OFPAT_EXPERIMENTER or _NX_HEADER.unpack_from(raw)[2] != NX_VENDOR:
        raise ActionDecodeError(f"action type {kind}")
    subtype = _NX_HEADER.unpack_from(raw)[3]
    decoder = _NX_DECODERS.get(subtype)
    if decoder is None:
        raise ActionDecodeError(f"Nicira action subtype {subtype}")
    return decoder(raw)


def _decode_resubmit(raw: bytes) -> Action:
    *_, in_port, table = _RESUBMIT.unpack(raw)
    if in_port != OFPP_IN_PORT_16:
        raise ActionDecodeError("resubmit to another in_port")
    return Resubmit(_table(table))


def _decode_conjunction(raw: bytes) -> Action:
    *_, clause, n, cid = _CONJUNCTION.unpack(raw)
    return Conjunction(cid, clause + 1, n)


def _ref(header: int, ofs: int, n_bits: int) -> str:
    name = _NXM_NAMES.get(header)
    if name is None:
        raise ActionDecodeError(f"field header {header:#010x}")
    if ofs == 0 and n_bits == (header & 0xFF) * 8:
        return name
    return f"{name}[{ofs}]" if n_bits == 1 else f"{name}[{ofs}..{ofs + n_bits - 1}]"


def _decode_reg_move(raw: bytes) -> Action:
    *_, n_bits, src_ofs, dst_ofs, src, dst = _REG_MOVE.unpack(raw)
    return Move(_ref(src, src_ofs, n_bits), _ref(dst, dst_ofs, n_bits))


def _decode_ct(raw: bytes) -> Action:
    _, _, _, _, flags, zone_src, zone, table, alg = _CT.unpack_from(raw)
    helper = _HELPER_NAMES.get(alg) if alg else None
    if flags & ~NX_CT_F_COMMIT or zone_src or (alg and helper is None):
        raise ActionDecodeError("ct with flags, a zone field or an ALG ovsmgr does not write")
    nat: NatSpec | None = None
    apply_nat = False
    nested = decode_actions(raw[_CT.size:]) if len(raw) > _CT.size else []
    if nested and isinstance(nested[0], _NatAction):
        nat, apply_nat = nested[0].spec, nested[0].spec is None
        nested = nested[1:]
    if not all(isinstance(a, SetField | Move) for a in nested):
        raise ActionDecodeError("ct exec with actions ovsmgr does not write")
    return Ct(commit=bool(flags & NX_CT_F_COMMIT), table=None if table == NX_CT_RECIRC_NONE else _table(table),
              zone=zone or None, nat=nat, apply_nat=apply_nat, exec=tuple(nested),  # type: ignore[arg-type]
              alg=helper)


class _NatAction:
    """A decoded `nat(...)`, only ever inside a `ct(...)`; `spec` None: plain `nat`."""

    def __init__(self, spec: NatSpec | None):
        self.spec = spec


def _decode_nat(raw: bytes) -> Action:
    *_, flags, present = _NAT.unpack_from(raw)
    if not present and not flags:
        return _NatAction(None)  # type: ignore[return-value]
    if flags not in (NX_NAT_F_SRC, NX_NAT_F_DST):
        raise ActionDecodeError(f"nat flags {flags:#x}")
    offset, values = _NAT.size, {}
    for bit, width in ((NAT_IPV4_MIN, 4), (NAT_IPV4_MAX, 4), (NAT_IPV6_MIN, 16), (NAT_IPV6_MAX, 16),
                       (NAT_PROTO_MIN, 2), (NAT_PROTO_MAX, 2)):
        if present & bit:
            values[bit] = int.from_bytes(raw[offset:offset + width], "big")
            offset += width
    version = 4 if present & (NAT_IPV4_MIN | NAT_IPV4_MAX) else 6
    lo = values.get(NAT_IPV4_MIN if version == 4 else NAT_IPV6_MIN, 0)
    hi = values.get(NAT_IPV4_MAX if version == 4 else NAT_IPV6_MAX, lo)
    port_lo = values.get(NAT_PROTO_MIN)
    port_hi = values.get(NAT_PROTO_MAX, port_lo)
    spec = NatSpec("src" if flags == NX_NAT_F_SRC else "dst", lo, hi, version, port_lo, port_hi)
    return _NatAction(spec)  # type: ignore[return-value]


def _decode_controller2(raw: bytes) -> Action:
    offset, userdata = 16, None
    while offset + 4 <= len(raw):
        kind, length = struct.unpack_from("!HH", raw, offset)
        if length < 4:
            break
        if kind != NXAC2PT_USERDATA:
            raise ActionDecodeError(f"controller property {kind}")
        userdata = raw[offset + 4:offset + length]
        offset += (length + 7) // 8 * 8
    if userdata is None:
        raise ActionDecodeError("controller action without userdata")
    return Controller(userdata)


def _decode_learn(raw: bytes) -> Action:
    table = _LEARN.unpack_from(raw)[9]
    idle = _LEARN.unpack_from(raw)[4]
    for version in _LEARNED_FROM:
        if raw == _learn(_table(table), idle, version):
            return LearnMacBinding(_table(table), idle, version)
    raise ActionDecodeError("a learn action ovsmgr does not write")


_NX_DECODERS = {
    NXAST_RESUBMIT_TABLE: _decode_resubmit, NXAST_CONJUNCTION: _decode_conjunction,
    NXAST_REG_MOVE: _decode_reg_move, NXAST_CT: _decode_ct, NXAST_NAT: _decode_nat,
    NXAST_CONTROLLER2: _decode_controller2, NXAST_LEARN: _decode_learn,
}
