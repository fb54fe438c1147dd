"""Meters on the wire: a rule's meter (`limit:`) as an entry of the flow table, meter_mod messages,
and the meter configuration and statistics the switch reports (OpenFlow 1.3/1.4, the same in both).

A meter travels with the flows as a `FlowMod` whose table byte is 255 (`METER_TABLE`, which no flow
can have): its key is the meter id, its body a cookie (`CookieKind.METER`, the meter id in the low
bits, so it is known again when read back: meters have no cookie on the switch) and the meter's
flags and band exactly as the switch reports them in a meter configuration reply. So plans, the
applied-state record, drift, restore and the controller's entries by owner carry meters without
knowing them, and `table.SwitchFlowTable.push` sends them as meter_mods around the flows' bundle.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ovsmgr.compiler.flows import MeterConfig
from ovsmgr.compiler.pipeline import METER_IDS, CookieKind, cookie
from ovsmgr.southbound.openflow import messages as m

METER_TABLE = 0xFF
OFPT_METER_MOD = 29
OFPMC_ADD, OFPMC_MODIFY, OFPMC_DELETE = 0, 1, 2
OFPMF_KBPS, OFPMF_PKTPS, OFPMF_BURST, OFPMF_STATS = 1, 2, 4, 8
OFPMBT_DROP = 1
OFPMP_METER, OFPMP_METER_CONFIG = 9, 10
OFPM_ALL = 0xFFFFFFFF
_UNITS = {"pktps": OFPMF_PKTPS, "kbps": OFPMF_KBPS}
_KEY = struct.Struct("!BHI")
_BAND = struct.Struct("!HHII4x")
_MULTIPART = struct.Struct("!HH4xI4x")
_CONFIG_HEAD = struct.Struct("!HHI")
_STATS_HEAD = struct.Struct("!IH6xIQQII")
_BAND_STATS = struct.Struct("!QQ")


def meter_entry(meter: MeterConfig) -> m.FlowMod:
    """The meter as an entry of the flow table (see the module docstring)."""
    flags = _UNITS[meter.unit] | OFPMF_BURST | OFPMF_STATS
    return m.FlowMod(_KEY.pack(METER_TABLE, 0, meter.id),
                     struct.pack("!QH", cookie(CookieKind.METER, meter.id), flags)
                     + _BAND.pack(OFPMBT_DROP, _BAND.size, meter.rate, meter.burst))


def is_meter(mod: m.FlowMod) -> bool:
    """A meter's entry (a select group's shares the table byte, with 1 where a meter has 0)."""
    return mod.key[0] == METER_TABLE and mod.key[1:3] == b"\0\0"


def meter_id(mod: m.FlowMod) -> int:
    return _KEY.unpack(mod.key)[2]


def meter_text(mod: m.FlowMod) -> str:
    """`meter=ID pktps burst stats bands=type=drop rate=R burst_size=B`, as `ovs-ofctl dump-meters`."""
    flags = struct.unpack_from("!H", mod.body, 8)[0]
    words = [f"meter={meter_id(mod)}"] + [name for bit, name in ((OFPMF_KBPS, "kbps"), (OFPMF_PKTPS, "pktps"),
                                                                   (OFPMF_BURST, "burst"), (OFPMF_STATS, "stats"))
                                          if flags & bit]
    bands = []
    for offset in range(10, len(mod.body) - _BAND.size + 1, _BAND.size):
        kind, _, rate, burst = _BAND.unpack_from(mod.body, offset)
        bands.append(f"type={'drop' if kind == OFPMBT_DROP else kind} rate={rate} burst_size={burst}")
    return " ".join([*words, "bands=" + ",".join(bands)])


def meter_mod(command: int, mod: m.FlowMod, xid: int, version: int = m.OFP14) -> bytes:
    """ADD or MODIFY the meter of `mod` (an entry of `meter_entry`) as it says, or DELETE it."""
    if command == OFPMC_DELETE:
        return m.message(OFPT_METER_MOD, xid, struct.pack("!HHI", command, 0, meter_id(mod)), version)
    return m.message(OFPT_METER_MOD, xid, struct.pack("!HHI", command, *struct.unpack_from("!H", mod.body, 8),
                                                      meter_id(mod)) + mod.body[10:], version)


def meter_request(xid: int, kind: int, version: int = m.OFP14) -> bytes:
    """A multipart request for the configuration (`OFPMP_METER_CONFIG`) or statistics (`OFPMP_METER`)
    of every meter."""
    return m.message(m.OFPT_MULTIPART_REQUEST, xid, _MULTIPART.pack(kind, 0, OFPM_ALL), version)


def meter_config_entries(reply: bytes) -> list[m.FlowMod]:
    """ovsmgr's meters (ids in `METER_IDS`) of one OFPMP_METER_CONFIG reply, as entries."""
    out = []
    offset = 16
    while offset + _CONFIG_HEAD.size <= len(reply):
        length, flags, meter = _CONFIG_HEAD.unpack_from(reply, offset)
        if length < _CONFIG_HEAD.size:
            break
        if meter in METER_IDS:
            out.append(m.FlowMod(_KEY.pack(METER_TABLE, 0, meter),
                                 struct.pack("!QH", cookie(CookieKind.METER, meter), flags)
                                 + reply[offset + _CONFIG_HEAD.size:offset + length]))
        offset += length
    return out


class MeterStats(NamedTuple):
    """A meter's counters: packets that reached it, and those its drop band dropped."""

    packets: int
    bytes: int
    dropped_packets: int
    dropped_bytes: int


def meter_stats_entries(reply: bytes) -> dict[int, MeterStats]:
    """Counters of ovsmgr's meters in one OFPMP_METER reply, by meter id."""
    out = {}
    offset = 16
    while offset + _STATS_HEAD.size <= len(reply):
        meter, length, _, packets, nbytes, _, _ = _STATS_HEAD.unpack_from(reply, offset)
        if length < _STATS_HEAD.size:
            break
        dropped = [_BAND_STATS.unpack_from(reply, at)
                   for at in range(offset + _STATS_HEAD.size, offset + length - _BAND_STATS.size + 1,
                                   _BAND_STATS.size)]
        if meter in METER_IDS:
            out[meter] = MeterStats(packets, nbytes, sum(p for p, _ in dropped), sum(b for _, b in dropped))
        offset += length
    return out
