"""policies/vlans.yaml with real hosts and real packets: guests (VLAN 20) and staff (VLAN 30) on
one trunk port, its untagged management network, an untagged WAN; netdev and DPDK.

The trunk port's host has a VLAN subinterface per VLAN (the lab's, `LabPort.vlans`), so its own
IP stack sends tagged frames; the checks use the traffic agent (TCP, ICMP) and, to see the tags
and to send a VLAN no zone has, packet sockets on the hosts' eth0.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from ovsmgr.lab.ovs import Lab, lab_spec_from_policy
from ovsmgr.lab.taps import HostTaps, Received
from ovsmgr.sim.packet import parse_packet
from ovsmgr.sim.wire import WireExtras, decode, encode

from .switch import apply, compiled_file
from .test_dpdk import _dpdk_skip_reason
from .traffic import converse, ping, server

pytestmark = pytest.mark.integration

STAFF, GUEST, MGMT, WAN = "10.30.0.10", "10.20.0.10", "10.99.0.10", "198.51.100.10"
PUBLIC = "200.200.200.200"


@pytest.fixture(params=["netdev", "dpdk"])
def vlan_lab(request, lab_factory) -> Lab:  # type: ignore[no-untyped-def]
    if request.param == "dpdk" and (reason := _dpdk_skip_reason()):
        pytest.skip(reason)
    compiled = compiled_file("vlans.yaml")
    spec = lab_spec_from_policy(compiled.policy.model, request.param, {})
    lab = lab_factory(spec.ports, datapath=request.param, bridge=spec.bridge)
    ports = {p["name"]: p for p in lab.status()["ports"]}
    assert ports["trunk0"]["address"] == f"{MGMT}/24"
    assert ports["trunk0"]["vlans"] == [[20, f"{GUEST}/24"], [30, f"{STAFF}/24"]]
    apply(lab, compiled)
    lab.announce()
    return lab


def test_staff_and_guests_on_one_trunk_port_are_separate_zones(vlan_lab: Lab) -> None:
    lab = vlan_lab
    with server(lab, "wan0", "tcp", 443):
        staff = converse(lab, "trunk0", "tcp", WAN, 443, src=STAFF)
        guests = converse(lab, "trunk0", "tcp", WAN, 443, src=GUEST)
        mgmt = converse(lab, "trunk0", "tcp", WAN, 443, src=MGMT)
    assert staff["ok"] and staff["seen_as"] == PUBLIC, f"staff-out allows VLAN 30, masqueraded: {staff}"
    assert not guests["ok"], f"nothing lets VLAN 20 out: {guests}"
    assert not mgmt["ok"], f"the untagged zone may only ping: {mgmt}"
    assert ping(lab, "trunk0", WAN, src=STAFF)
    assert not ping(lab, "trunk0", WAN, deadline=1, src=GUEST)
    assert ping(lab, "trunk0", WAN, src=MGMT)
    with server(lab, "trunk0", "tcp", 22):
        assert not converse(lab, "wan0", "tcp", STAFF, 22)["ok"], "the WAN opens nothing toward staff"


def test_the_tag_is_popped_toward_the_wan_and_pushed_back_on_replies(vlan_lab: Lab) -> None:
    lab = vlan_lab
    with HostTaps.of_lab(lab) as taps:
        taps.drain()
        assert ping(lab, "trunk0", WAN, src=STAFF)
        seen = _frames(taps, lambda r: False, 0.3)
    out = [f for f in seen if f.port == "wan0" and f.packet.nw_proto == 1 and f.packet.icmp_type == 8]
    back = [f for f in seen if f.port == "trunk0" and f.packet.nw_proto == 1 and f.packet.icmp_type == 0]
    assert out and all(f.packet.vlan_vid is None and f.packet.nw_src == _ip(PUBLIC) for f in out), seen
    assert back and all(f.packet.vlan_vid == 0x1000 | 30 and f.packet.nw_dst == _ip(STAFF) for f in back), seen


def test_a_vlan_no_zone_has_is_dropped(vlan_lab: Lab) -> None:
    """The same echo request from the staff address, tagged 30 and tagged 99: the first reaches the
    WAN host (translated), the second nothing."""
    lab = vlan_lab
    macs = {p["name"]: p["mac"] for p in lab.status()["ports"]}
    with HostTaps.of_lab(lab) as taps:
        for vid, ident in ((30, 0x7301), (99, 0x7399)):
            spec = f"dl_vlan={vid},icmp,nw_src={STAFF},nw_dst={WAN}"
            packet = parse_packet(spec).replace(dl_src=_mac(macs["trunk0"]), dl_dst=_mac(macs["wan0"]))
            taps.drain()
            taps.send("trunk0", encode(packet, WireExtras(ident=ident, icmp_id=ident, icmp_seq=1)))
            arrived = [f for f in _frames(taps, lambda r, i=ident: decode(r.data).extras.ident == i, 1.0)
                       if f.port == "wan0" and f.extras.ident == ident]
            if vid == 30:
                assert arrived and arrived[0].packet.nw_src == _ip(PUBLIC), "VLAN 30 is staff: out, masqueraded"
            else:
                assert not arrived, "VLAN 99 is no zone's: dropped where it comes in"


class _Seen:
    def __init__(self, received: Received) -> None:
        frame = decode(received.data)
        self.port, self.packet, self.extras = received.port, frame.packet, frame.extras

    def __repr__(self) -> str:
        return f"{self.port}: {self.packet}"


def _frames(taps: HostTaps, wanted: Callable[[Received], bool], wait: float) -> list[_Seen]:
    return [_Seen(r) for r in taps.collect(wait, 0.2, wanted)]


def _ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def _mac(text: str) -> int:
    return int(text.replace(":", ""), 16)
