"""ovsmgr's OpenFlow encoding, checked against itself (round trips) and against os-ken's parser.

The strongest check is the switch itself (tests/integration/test_openflow_wire.py); these
run without one: every flow of every example policy decodes back to itself, and os-ken, an
independent implementation of the same wire format, parses each of ovsmgr's flow_mods and
writes it out again byte for byte (its NXActionNAT serializer pads only at the end of the
message, so for NAT the parsed fields are compared instead).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from os_ken.ofproto import ofproto_parser, ofproto_protocol, ofproto_v1_3, ofproto_v1_4

from ovsmgr.compiler import compile_policy
from ovsmgr.compiler.flows import Ct, Flow
from ovsmgr.policy import load_policy
from ovsmgr.southbound.openflow import FlowMod, decode_flow, encode_flow
from ovsmgr.southbound.openflow.messages import (
    OFP13,
    OFP14,
    flow_mod_add,
    flow_stats_entries,
    pack_flows,
    unpack_flows,
)

ROOT = Path(__file__).resolve().parents[2]
POLICIES = sorted((ROOT / "policies").glob("*.yaml"))


def flows_of(path: Path) -> list[Flow]:
    return compile_policy(load_policy([path])).flows


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.stem)
def test_every_flow_decodes_back_to_itself(path: Path) -> None:
    for flow in flows_of(path):
        assert decode_flow(encode_flow(flow)) == flow


@pytest.mark.parametrize("version", [OFP13, OFP14])
@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.stem)
def test_os_ken_reads_every_flow_mod_as_ovsmgr_wrote_it(path: Path, version: int) -> None:
    dp = ofproto_protocol.ProtocolDesc(ofproto_v1_3.OFP_VERSION if version == OFP13 else ofproto_v1_4.OFP_VERSION)
    for flow in flows_of(path):
        mod = encode_flow(flow)
        raw = flow_mod_add(mod, 7, version)
        parsed = ofproto_parser.msg(dp, *ofproto_parser.header(raw), raw)
        assert (parsed.table_id, parsed.priority, parsed.cookie) == (flow.table, flow.priority, flow.cookie)
        if any(isinstance(a, Ct) and a.nat is not None for a in flow.actions):
            _same_nat(parsed, flow)
            continue
        parsed.serialize()
        assert bytes(parsed.buf) == raw, flow


def _same_nat(parsed: object, flow: Flow) -> None:
    ct = next(a for a in flow.actions if isinstance(a, Ct) and a.nat is not None)
    actions = [a for inst in parsed.instructions for a in getattr(inst, "actions", [])]  # type: ignore[attr-defined]
    nat = next(n for a in actions if type(a).__name__ == "NXActionCT"  # the ct() that translates
               for n in a.actions if type(n).__name__ == "NXActionNAT")
    assert ct.nat is not None
    assert nat.flags == (1 if ct.nat.kind == "src" else 2)
    family = "ipv4" if ct.nat.version == 4 else "ipv6"
    assert getattr(nat, f"range_{family}_min") == str(ipaddress.ip_address(ct.nat.addr_lo))
    if ct.nat.addr_hi != ct.nat.addr_lo:  # a range: both ends, whatever the family
        assert getattr(nat, f"range_{family}_max") == str(ipaddress.ip_address(ct.nat.addr_hi))
    if ct.nat.port_lo is not None:
        assert nat.range_proto_min == ct.nat.port_lo
    if ct.nat.port_hi not in (None, ct.nat.port_lo):
        assert nat.range_proto_max == ct.nat.port_hi


def test_flows_pack_and_read_back_from_a_flow_stats_reply() -> None:
    mods = [encode_flow(f) for path in POLICIES for f in flows_of(path)]
    assert unpack_flows(pack_flows(mods)) == mods
    with pytest.raises(ValueError, match="cut short"):
        unpack_flows(pack_flows(mods)[:-3])
    # a reply built as OVS builds one (entry: length, table, durations, priority, timeouts,
    # flags, cookie, counters, match, instructions) reads back as the same flows
    body = b"".join(_stats_entry(mod, packets=i) for i, mod in enumerate(mods[:50]))
    reply = bytes(8) + (1).to_bytes(2, "big") + bytes(6) + body
    entries = flow_stats_entries(reply)
    assert [e.mod for e in entries] == mods[:50] and [e.packets for e in entries] == list(range(50))


def _stats_entry(mod: FlowMod, packets: int) -> bytes:
    match = (1).to_bytes(2, "big") + (4 + len(mod.oxm)).to_bytes(2, "big") + mod.oxm
    match += bytes(-len(match) % 8)
    head = (bytes([mod.table, 0]) + bytes(8) + mod.priority.to_bytes(2, "big") + bytes(10)
            + mod.cookie.to_bytes(8, "big") + packets.to_bytes(8, "big") + bytes(8))
    entry = head + match + mod.instructions
    return (len(entry) + 2).to_bytes(2, "big") + entry
