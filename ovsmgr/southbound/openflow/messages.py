"""OpenFlow messages ovsmgr sends and reads: framing, flow_mod, bundles, flow statistics, errors.

Only the messages a flow push needs, at the byte level (see `actions` for why not
os-ken's classes on this path). Numbers are from the OpenFlow 1.4 specification.
Two versions: 1.4 (`apply`'s own connection), and 1.3 with the ONF bundle extension
(EXT-230, the same bundle in an experimenter message) for the controller's os-ken
connection, which stays at 1.3 because os-ken parses Nicira's packet-in2 (what
`reject` and `log` rules send) only there. Every other message is the same in both.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from ovsmgr.compiler.flows import Flow
from ovsmgr.compiler.pipeline import COOKIE_MAGIC, COOKIE_MASK
from ovsmgr.southbound.openflow.actions import encode_instructions
from ovsmgr.southbound.openflow.oxm import encode_match

OFP13, OFP14 = 0x04, 0x05
OFP_VERSION = OFP14
OFPT_HELLO, OFPT_ERROR, OFPT_ECHO_REQUEST, OFPT_ECHO_REPLY, OFPT_EXPERIMENTER = 0, 1, 2, 3, 4
ONF_EXPERIMENTER_ID = 0x4F4E4600
ONF_ET_BUNDLE_CONTROL, ONF_ET_BUNDLE_ADD_MESSAGE = 2300, 2301
OFPT_FLOW_MOD, OFPT_MULTIPART_REQUEST, OFPT_MULTIPART_REPLY = 14, 18, 19
OFPT_BARRIER_REQUEST, OFPT_BARRIER_REPLY = 20, 21
OFPT_BUNDLE_CONTROL, OFPT_BUNDLE_ADD_MESSAGE = 33, 34
OFPFC_ADD, OFPFC_DELETE_STRICT = 0, 4
OFPMP_FLOW = 1
OFPMPF_REPLY_MORE = 1
OFPTT_ALL = 0xFF
OFP_NO_BUFFER = OFPP_ANY = OFPG_ANY = 0xFFFFFFFF
OFPBCT_OPEN_REQUEST, OFPBCT_COMMIT_REQUEST, OFPBCT_DISCARD_REQUEST = 0, 4, 6
OFPBF_ATOMIC, OFPBF_ORDERED = 1, 2
OFPHET_VERSIONBITMAP = 1
OURS = COOKIE_MAGIC << 48

HEADER = struct.Struct("!BBHI")
_FLOW_MOD = struct.Struct("!QQBBHHHIIIHH")
_FLOW_STATS = struct.Struct("!HBxIIHHHHH2xQQQ")
_FLOW_STATS_REQUEST = struct.Struct("!HH4xB3xII4xQQ")
_EMPTY_MATCH = struct.pack("!HH4x", 1, 4)


def header(msg_type: int, length: int, xid: int, version: int = OFP14) -> bytes:
    return HEADER.pack(version, msg_type, length, xid)


def message(msg_type: int, xid: int, body: bytes = b"", version: int = OFP14) -> bytes:
    return header(msg_type, 8 + len(body), xid, version) + body


def hello(xid: int) -> bytes:
    """HELLO offering OpenFlow 1.4 only (a version bitmap with bit 5)."""
    return message(OFPT_HELLO, xid, struct.pack("!HHI", OFPHET_VERSIONBITMAP, 8, 1 << OFP_VERSION))


def _ofp_match(oxm: bytes) -> bytes:
    raw = struct.pack("!HH", 1, 4 + len(oxm)) + oxm
    return raw + bytes(-len(raw) % 8)


class FlowMod(NamedTuple):
    """One flow as the switch keeps it: `key` identifies it (table, priority, match: what a strict
    delete names), `body` is the rest that must be equal for the flow to be unchanged (cookie and
    instructions). Two byte strings, not a dataclass of fields: a dump makes one per flow, a plan
    compares and hashes them by the thousand, and a tuple of two strings is the cheapest to do
    all of that with."""

    key: bytes
    """table (1 byte), priority (2), the match's OXM fields."""
    body: bytes
    """cookie (8 bytes), the instructions."""

    @staticmethod
    def of(table: int, priority: int, oxm: bytes, cookie: int, instructions: bytes) -> FlowMod:
        return FlowMod(_KEY_HEAD.pack(table, priority) + oxm, _COOKIE.pack(cookie) + instructions)

    @property
    def table(self) -> int:
        return self.key[0]

    @property
    def priority(self) -> int:
        return int.from_bytes(self.key[1:3], "big")

    @property
    def oxm(self) -> bytes:
        return self.key[3:]

    @property
    def cookie(self) -> int:
        return int.from_bytes(self.body[:8], "big")

    @property
    def instructions(self) -> bytes:
        return self.body[8:]


_KEY_HEAD = struct.Struct("!BH")
_COOKIE = struct.Struct("!Q")


_PACKED = struct.Struct("!HH")


def pack_flows(mods: Iterable[FlowMod]) -> bytes:
    """Flows as one byte string (each: key length, body length, key, body), for files."""
    pack = _PACKED.pack
    return b"".join(part for key, body in mods for part in (pack(len(key), len(body)), key, body))


def unpack_flows(data: bytes, offset: int = 0) -> list[FlowMod]:
    """`pack_flows` backwards, from `offset`; ValueError for bytes that are not that."""
    out = []
    end, size, unpack = len(data), _PACKED.size, _PACKED.unpack_from
    while offset + size <= end:
        n_key, n_body = unpack(data, offset)
        offset += size
        out.append(FlowMod(data[offset:offset + n_key], data[offset + n_key:offset + n_key + n_body]))
        offset += n_key + n_body
    if offset != end:
        raise ValueError("packed flows cut short")
    return out


def encode_flow(flow: Flow) -> FlowMod:
    return FlowMod(_KEY_HEAD.pack(flow.table, flow.priority) + encode_match(flow.match),
                   _COOKIE.pack(flow.cookie) + encode_instructions(flow.actions))


def flow_mod_add(flow: FlowMod, xid: int, version: int = OFP14) -> bytes:
    fixed = _FLOW_MOD.pack(flow.cookie, 0, flow.table, OFPFC_ADD, 0, 0, flow.priority, OFP_NO_BUFFER,
                           OFPP_ANY, OFPG_ANY, 0, 0)
    return message(OFPT_FLOW_MOD, xid, fixed + _ofp_match(flow.oxm) + flow.body[8:], version)


def flow_mod_delete(flow: FlowMod, xid: int, version: int = OFP14) -> bytes:
    """Strict delete of ovsmgr's flow at this key only (cookie-masked: never somebody else's)."""
    fixed = _FLOW_MOD.pack(OURS, COOKIE_MASK, flow.table, OFPFC_DELETE_STRICT, 0, 0, flow.priority,
                           OFP_NO_BUFFER, OFPP_ANY, OFPG_ANY, 0, 0)
    return message(OFPT_FLOW_MOD, xid, fixed + _ofp_match(flow.oxm), version)


def _bundle(version: int, xid: int, onf_type: int, of14_type: int, body: bytes) -> bytes:
    if version == OFP13:
        return message(OFPT_EXPERIMENTER, xid, struct.pack("!II", ONF_EXPERIMENTER_ID, onf_type) + body, version)
    return message(of14_type, xid, body, version)


def bundle_control(xid: int, bundle_id: int, kind: int, version: int = OFP14) -> bytes:
    body = struct.pack("!IHH", bundle_id, kind, OFPBF_ATOMIC | OFPBF_ORDERED)
    return _bundle(version, xid, ONF_ET_BUNDLE_CONTROL, OFPT_BUNDLE_CONTROL, body)


def bundle_add(xid: int, bundle_id: int, inner: bytes, version: int = OFP14) -> bytes:
    """Wrap a message (whose xid must be `xid`) into the bundle."""
    body = struct.pack("!I2xH", bundle_id, OFPBF_ATOMIC | OFPBF_ORDERED) + inner
    return _bundle(version, xid, ONF_ET_BUNDLE_ADD_MESSAGE, OFPT_BUNDLE_ADD_MESSAGE, body)


def is_bundle_reply(msg: bytes) -> bool:
    if msg[1] == OFPT_BUNDLE_CONTROL:
        return True
    return msg[1] == OFPT_EXPERIMENTER and struct.unpack_from("!II", msg, 8) == (ONF_EXPERIMENTER_ID,
                                                                              ONF_ET_BUNDLE_CONTROL)


def flow_stats_request(xid: int, cookie: int = 0, cookie_mask: int = 0, version: int = OFP14) -> bytes:
    body = _FLOW_STATS_REQUEST.pack(OFPMP_FLOW, 0, OFPTT_ALL, OFPP_ANY, OFPG_ANY, cookie, cookie_mask)
    return message(OFPT_MULTIPART_REQUEST, xid, body + _EMPTY_MATCH, version)


class FlowStats(NamedTuple):
    """One entry of a flow-statistics reply: the flow and its counters."""

    mod: FlowMod
    packets: int
    bytes: int

    @property
    def cookie(self) -> int:
        return self.mod.cookie


_ENTRY = struct.Struct("!H30xQQ2xH")
"""An entry's length, packet and byte counts, and its match's length (the rest is taken as bytes)."""


def flow_stats_entries(reply: bytes) -> list[FlowStats]:
    """The entries of one OFPMP_FLOW reply message (header included in `reply`)."""
    out = []
    unpack = _ENTRY.unpack_from
    offset, end = 16, len(reply)
    while offset + 48 <= end:
        length, packets, nbytes, match_len = unpack(reply, offset)
        instructions = offset + 48 + (match_len + 7) // 8 * 8
        # key: table, priority, OXM fields; body: cookie, instructions (see FlowMod)
        key = reply[offset + 2:offset + 3] + reply[offset + 12:offset + 14] + reply[offset + 52:offset + 48 + match_len]
        out.append(FlowStats(FlowMod(key, reply[offset + 24:offset + 32] + reply[instructions:offset + length]),
                             packets, nbytes))
        offset += length
    return out


def multipart_more(reply: bytes) -> bool:
    return bool(struct.unpack_from("!H", reply, 10)[0] & OFPMPF_REPLY_MORE)


@dataclass(frozen=True)
class ErrorMsg:
    xid: int
    type: int
    code: int
    data: bytes
    """The start of the message the error is about."""
    experimenter: int | None = None

    def describe(self) -> str:
        if self.experimenter is not None:
            vendor = "Nicira" if self.experimenter == 0x2320 else f"experimenter {self.experimenter:#x}"
            return f"{vendor} error {self.code}"
        name = ERROR_NAMES.get((self.type, self.code))
        if name is None:
            return f"{ERROR_TYPES.get(self.type, 'OpenFlow error')} (type {self.type}, code {self.code})"
        return f"{name} (type {self.type}, code {self.code})"

    @property
    def failed_xid(self) -> int | None:
        """The xid of the message the error is about (its header starts `data`)."""
        return HEADER.unpack_from(self.data)[3] if len(self.data) >= HEADER.size else None


def parse_error(msg: bytes) -> ErrorMsg:
    xid = HEADER.unpack_from(msg)[3]
    kind, code = struct.unpack_from("!HH", msg, 8)
    if kind == 0xFFFF and len(msg) >= 16:
        return ErrorMsg(xid, kind, code, msg[16:], struct.unpack_from("!I", msg, 12)[0])
    return ErrorMsg(xid, kind, code, msg[12:])


ERROR_TYPES = {
    0: "OFPET_HELLO_FAILED", 1: "OFPET_BAD_REQUEST", 2: "OFPET_BAD_ACTION", 3: "OFPET_BAD_INSTRUCTION",
    4: "OFPET_BAD_MATCH", 5: "OFPET_FLOW_MOD_FAILED", 6: "OFPET_GROUP_MOD_FAILED", 7: "OFPET_PORT_MOD_FAILED",
    8: "OFPET_TABLE_MOD_FAILED", 9: "OFPET_QUEUE_OP_FAILED", 10: "OFPET_SWITCH_CONFIG_FAILED",
    11: "OFPET_ROLE_REQUEST_FAILED", 12: "OFPET_METER_MOD_FAILED", 13: "OFPET_TABLE_FEATURES_FAILED",
    14: "OFPET_BAD_PROPERTY", 16: "OFPET_FLOW_MONITOR_FAILED", 17: "OFPET_BUNDLE_FAILED",
}
_CODES = {
    0: "INCOMPATIBLE EPERM",
    1: "BAD_VERSION BAD_TYPE BAD_MULTIPART BAD_EXPERIMENTER BAD_EXP_TYPE EPERM BAD_LEN BUFFER_EMPTY "
       "BUFFER_UNKNOWN BAD_TABLE_ID IS_SLAVE BAD_PORT BAD_PACKET MULTIPART_BUFFER_OVERFLOW",
    2: "BAD_TYPE BAD_LEN BAD_EXPERIMENTER BAD_EXP_TYPE BAD_OUT_PORT BAD_ARGUMENT EPERM TOO_MANY BAD_QUEUE "
       "BAD_OUT_GROUP MATCH_INCONSISTENT UNSUPPORTED_ORDER BAD_TAG BAD_SET_TYPE BAD_SET_LEN BAD_SET_ARGUMENT",
    3: "UNKNOWN_INST UNSUP_INST BAD_TABLE_ID UNSUP_METADATA UNSUP_METADATA_MASK BAD_EXPERIMENTER "
       "BAD_EXP_TYPE BAD_LEN EPERM",
    4: "BAD_TYPE BAD_LEN BAD_TAG BAD_DL_ADDR_MASK BAD_NW_ADDR_MASK BAD_WILDCARDS BAD_FIELD BAD_VALUE "
       "BAD_MASK BAD_PREREQ DUP_FIELD EPERM",
    5: "UNKNOWN TABLE_FULL BAD_TABLE_ID OVERLAP EPERM BAD_TIMEOUT BAD_COMMAND BAD_FLAGS",
    12: "UNKNOWN METER_EXISTS INVALID_METER UNKNOWN_METER BAD_COMMAND BAD_FLAGS BAD_RATE BAD_BURST BAD_BAND "
        "BAD_BAND_VALUE OUT_OF_METERS OUT_OF_BANDS",
    17: "UNKNOWN EPERM BAD_ID BUNDLE_EXIST BUNDLE_CLOSED OUT_OF_BUNDLES BAD_TYPE BAD_FLAGS MSG_BAD_LEN "
        "MSG_BAD_XID MSG_UNSUP MSG_CONFLICT MSG_TOO_MANY MSG_FAILED TIMEOUT BUNDLE_IN_PROGRESS",
}
_PREFIX = {0: "OFPHFC", 1: "OFPBRC", 2: "OFPBAC", 3: "OFPBIC", 4: "OFPBMC", 5: "OFPFMFC", 12: "OFPMMFC", 17: "OFPBFC"}
ERROR_NAMES = {(kind, code): f"{_PREFIX[kind]}_{name}"
               for kind, names in _CODES.items() for code, name in enumerate(names.split())}
