"""Select groups on the wire: ovsmgr's `SelectGroup` to OpenFlow group_mod messages and back.

A plan, a bundle, a record and a drift check handle a switch's groups as they handle its
flows: each is a `FlowMod` whose key is `GROUP_TABLE` (a table number no flow has), `GROUP_MARK`
and the group id, and whose body is a cookie made from the group id (groups have none: ovsmgr's are
known by the magic in their id, `pipeline.GROUP_ID_MAGIC`), the group type and its buckets
exactly as Open vSwitch 3.1 reports them in a group description reply (ofp_bucket, its
actions as `actions` encodes them for flows). So a group read back from the switch equals the
compiled one byte for byte, and every part of plan/apply/status/restore/rollback that
compares, packs and pushes flows does the same with groups. The messages (group_mod, the
group description request and its reply) are the same in OpenFlow 1.3 and 1.4.
"""

from __future__ import annotations

import struct

from ovsmgr.compiler.flows import Bucket, SelectGroup
from ovsmgr.compiler.pipeline import CookieKind, Table, cookie, is_our_group
from ovsmgr.southbound.openflow import messages as m
from ovsmgr.southbound.openflow.actions import ActionDecodeError, decode_actions, encode_action

GROUP_TABLE = 0xFF
"""The key's table byte of a group (OpenFlow's OFPTT_ALL: no flow is in it), shared with meters
(`meters.METER_TABLE`); the next two bytes tell them apart (`GROUP_MARK`; a meter's are 0)."""
GROUP_MARK = 1
OFPT_GROUP_MOD = 15
OFPGC_ADD, OFPGC_MODIFY, OFPGC_DELETE = 0, 1, 2
OFPGT_SELECT = 1
OFPMP_GROUP_DESC = 7
OFPP_ANY = OFPG_ANY = 0xFFFFFFFF
_KEY = struct.Struct("!BHI")
_BUCKET = struct.Struct("!HHII4x")
_GROUP_MOD = struct.Struct("!HBxI")
_DESC = struct.Struct("!HBxI")


def is_group(mod: m.FlowMod) -> bool:
    return mod.key[0] == GROUP_TABLE and len(mod.key) == _KEY.size and _KEY.unpack(mod.key)[1] == GROUP_MARK


def group_key(group_id: int) -> bytes:
    return _KEY.pack(GROUP_TABLE, GROUP_MARK, group_id)


def group_id_of(mod: m.FlowMod) -> int:
    return int(_KEY.unpack(mod.key)[2])


def _entry(group_id: int, kind: int, buckets: bytes) -> m.FlowMod:
    return m.FlowMod(group_key(group_id), struct.pack("!QB", cookie(CookieKind.GROUP, group_id), kind) + buckets)


def encode_group(group: SelectGroup) -> m.FlowMod:
    """The group as a plan and a record keep it."""
    buckets = b""
    for bucket in group.buckets:
        actions = b"".join(encode_action(a) for a in bucket.actions)
        buckets += _BUCKET.pack(_BUCKET.size + len(actions), bucket.weight, OFPP_ANY, OFPG_ANY) + actions
    return _entry(group.group_id, OFPGT_SELECT, buckets)


def decode_group(mod: m.FlowMod) -> SelectGroup | None:
    """The group in ovsmgr's model; None when it is not one ovsmgr writes."""
    body = mod.body[8:]
    if not body or body[0] != OFPGT_SELECT:
        return None
    buckets, offset = [], 1
    try:
        while offset < len(body):
            length, weight, _, _ = _BUCKET.unpack_from(body, offset)
            if length < _BUCKET.size or offset + length > len(body):
                return None
            actions = tuple(decode_actions(body[offset + _BUCKET.size:offset + length]))
            buckets.append(Bucket(weight, actions))
            offset += length
    except (ActionDecodeError, struct.error, ValueError):
        return None
    return SelectGroup(group_id_of(mod), Table.NAT, tuple(buckets))


def group_mod(mod: m.FlowMod, command: int, xid: int, version: int = m.OFP14) -> bytes:
    """OFPT_GROUP_MOD adding, modifying (its buckets replaced) or deleting the group."""
    body = mod.body[8:]
    kind, buckets = (body[0], body[1:]) if command != OFPGC_DELETE else (OFPGT_SELECT, b"")
    return m.message(OFPT_GROUP_MOD, xid, _GROUP_MOD.pack(command, kind, group_id_of(mod)) + buckets, version)


def group_desc_request(xid: int, version: int = m.OFP14) -> bytes:
    return m.message(m.OFPT_MULTIPART_REQUEST, xid, struct.pack("!HH4x", OFPMP_GROUP_DESC, 0), version)


def group_desc_entries(reply: bytes) -> list[m.FlowMod]:
    """ovsmgr's groups in one OFPMP_GROUP_DESC reply (header included in `reply`)."""
    out, offset = [], 16
    while offset + _DESC.size <= len(reply):
        length, kind, group_id = _DESC.unpack_from(reply, offset)
        if length < _DESC.size:
            break
        if is_our_group(group_id):
            out.append(_entry(group_id, kind, reply[offset + _DESC.size:offset + length]))
        offset += length
    return out
