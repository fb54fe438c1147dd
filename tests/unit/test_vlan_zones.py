"""VLAN zones (`vlan:` on a zone): what only they compile to, the 802.1Q tag on the wire, and how
the lab's scenario runner places a table's addresses. Their behaviour with packets is in the
scenario table tests/scenarios/vlans.yaml (simulator here, a real switch in the integration tests)."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest

from ovsmgr.compiler import compile_policy
from ovsmgr.compiler.flows import PopVlan, PushVlan
from ovsmgr.compiler.pipeline import Table
from ovsmgr.lab.scenarios import lab_ports
from ovsmgr.lab.taps import PACKET_AUXDATA, SOL_PACKET, TP_STATUS_VLAN_VALID, with_tag
from ovsmgr.policy import load_policy, load_policy_text
from ovsmgr.sim.packet import parse_packet
from ovsmgr.sim.scenarios import load_table
from ovsmgr.sim.wire import decode, encode

ROOT = Path(__file__).resolve().parents[2]
PLAIN = [p for p in sorted((ROOT / "policies").glob("*.yaml")) if p.stem != "vlans"]
TRUNK = """
version: 1
switch:
  bridge: br0
  ports: {trunk0: {ofport: 1}, wan0: {ofport: 2}}
  links: [[trunk0, wan0]]
zones:
  guests: {ports: [trunk0], vlan: 20, networks: [10.20.0.0/24]}
  staff: {ports: [trunk0], vlan: 30, networks: [10.30.0.0/24, 10.30.5.0/28]}
  wan: {ports: [wan0]}
firewall: {default: drop}
"""


@pytest.mark.parametrize("path", PLAIN, ids=lambda p: p.stem)
def test_a_policy_without_vlan_zones_looks_at_no_tag(path: Path) -> None:
    flows = compile_policy(load_policy([path])).flows
    assert not [f for f in flows if f.match.get("vlan_vid") is not None or f.table == Table.VLAN_OUT
                or any(isinstance(a, PushVlan | PopVlan) for a in f.actions)]


def test_with_vlan_zones_every_port_is_classified_by_its_tag() -> None:
    flows = compile_policy(load_policy_text(TRUNK, "trunk.yaml")).flows
    classify = [f for f in flows if f.table == Table.CLASSIFY and f.match.get("in_port") is not None]
    assert classify and all(f.match.get("vlan_vid") is not None for f in classify)
    ports = {(f.match.get("in_port").value, f.match.get("vlan_vid").value)  # type: ignore[union-attr]
             for f in classify if len(f.match.items) == 2}
    assert ports == {(1, 0x1014), (1, 0x101E), (2, 0)}, "trunk0 has no untagged zone: its untagged frames drop"


def test_the_vlan_of_a_host_address_is_its_most_specific_vlan_zone() -> None:
    policy = load_policy_text(TRUNK, "trunk.yaml")
    assert policy.host_vlan("trunk0", ipaddress.ip_address("10.30.5.3")) == 30
    assert policy.host_vlan("trunk0", ipaddress.ip_address("10.20.0.9")) == 20
    assert policy.host_vlan("trunk0", ipaddress.ip_address("192.0.2.1")) is None
    assert policy.host_vlan("wan0", ipaddress.ip_address("10.20.0.9")) is None


def test_a_tagged_frame_keeps_its_tag_through_encode_and_decode() -> None:
    packet = parse_packet("dl_vlan=30,udp,nw_src=10.30.0.10,nw_dst=198.51.100.10,tp_dst=53")
    frame = encode(packet)
    assert frame[12:16] == struct.pack("!HH", 0x8100, 30) and frame[16:18] == b"\x08\x00"
    back = decode(frame).packet
    assert back.vlan_vid == 0x1000 | 30 and back.nw_dst == packet.nw_dst and back.tp_dst == 53
    assert decode(encode(packet.replace(vlan_vid=None))).packet.vlan_vid is None


def test_a_packet_socket_frame_gets_back_the_tag_the_kernel_took_off() -> None:
    untagged = encode(parse_packet("icmp,nw_src=198.51.100.10,nw_dst=10.30.0.10"))
    aux = struct.pack("=IIIHHHH", TP_STATUS_VLAN_VALID, len(untagged), len(untagged), 0, 14, 30, 0)
    tagged = with_tag(untagged, [(SOL_PACKET, PACKET_AUXDATA, aux)])
    assert decode(tagged).packet.vlan_vid == 0x1000 | 30
    assert with_tag(untagged, [(SOL_PACKET, PACKET_AUXDATA, struct.pack("=IIIHHHH", 0, 0, 0, 0, 0, 0, 0))]) \
        == untagged


def test_the_scenario_lab_puts_each_address_on_the_interface_of_its_vlan() -> None:
    table = load_table(ROOT / "tests" / "scenarios" / "vlans.yaml")
    ports = {p.name: p for p in lab_ports(table, load_policy(list(table.policy_files)))}
    assert ports["trunk0"].address == "10.99.0.10/24" and ports["wan0"].address == "198.51.100.10/24"
    assert ports["trunk0"].vlans == ((20, "10.20.0.10/24"), (30, "10.30.0.10/24"))
    assert ports["wan0"].vlans == ()
