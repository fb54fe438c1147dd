"""IPv6 NAT with real hosts: policies/ipv6-nat.yaml on netdev and DPDK.

The inside host's TCP and ping leave from one of the two public addresses of the SNAT
range, with a port of its range, and their answers come back; the outside reaches the
published server at its public address and port; the outside host learns the public
addresses from the switch's own neighbour advertisements (its kernel asks, the switch
answers with its MAC: no entry appears otherwise, and no reply would come back).
"""

from __future__ import annotations

import ipaddress

import pytest

from ovsmgr.lab.ovs import Lab, LabPort
from ovsmgr.switch.status import switch_status

from .switch import apply, compiled_file, settle_flow_stats, target_of
from .test_dpdk import _dpdk_skip_reason
from .traffic import converse, ping, server

pytestmark = pytest.mark.integration

PORTS = (LabPort("inside", 1, "fd00:0:0:1::5/64"), LabPort("outside", 2, "2001:db8:0:9::9/64"))
SERVER = "fd00:0:0:1::10/64"
OUTSIDE = "2001:db8:0:9::9"
PUBLIC_RANGE = ("2001:db8:0:80::240", "2001:db8:0:80::241")
PUBLISHED = "2001:db8:0:80::80"


@pytest.mark.parametrize("datapath", ["netdev", "dpdk"])
def test_ipv6_masquerade_to_a_range_and_a_port_forward_with_real_hosts(lab_factory, datapath: str) -> None:
    if datapath == "dpdk" and (reason := _dpdk_skip_reason()):
        pytest.skip(reason)
    lab = lab_factory(PORTS, datapath=datapath)
    lab.exec("inside", ["ip", "-6", "addr", "add", SERVER, "dev", "eth0", "nodad"], check=True)
    compiled = compiled_file("ipv6-nat.yaml")
    apply(lab, compiled)
    lab.announce()  # the published server is known before anyone talks to it

    assert _nat_packets(lab) == {"masquerade6": 0, "web-forward6": 0}
    with server(lab, "outside", "tcp", 443, bind="::"):
        out = converse(lab, "inside", "tcp", OUTSIDE, 443)
    assert out["ok"], out
    assert out["seen_as"] in PUBLIC_RANGE and 20000 <= out["seen_port"] <= 29999, out
    counted = _nat_packets(lab)
    assert counted["masquerade6"] >= 5 and counted["web-forward6"] == 0, counted  # each rule its own, IPv6 too
    assert ping(lab, "inside", OUTSIDE, count=2)
    masqueraded = _nat_packets(lab)["masquerade6"]
    assert masqueraded >= counted["masquerade6"] + 4, "two echoes and their replies"
    assert _neighbour_mac(lab, "outside", out["seen_as"]) == compiled.policy.mac, \
        "the outside host learned the public address from the switch's advertisement"

    with server(lab, "inside", "tcp", 80, bind="::"):
        forward = converse(lab, "outside", "tcp", PUBLISHED, 8080)
        direct = converse(lab, "outside", "tcp", "fd00:0:0:1::10", 80)
    assert forward["ok"] and forward["seen_as"] == OUTSIDE, forward
    assert not direct["ok"], "only the published address is allowed in"
    after = _nat_packets(lab)
    assert after["web-forward6"] >= 5 and after["masquerade6"] == masqueraded, after
    assert _neighbour_mac(lab, "outside", PUBLISHED) == compiled.policy.mac
    with server(lab, "inside", "tcp", 22, bind="::"):
        assert not converse(lab, "outside", "tcp", PUBLIC_RANGE[0], 22)["ok"], "nothing enters unasked"


def _nat_packets(lab: Lab) -> dict[str, int]:
    """Packets each NAT rule translated, both directions (`status`), all sent so far counted."""
    settle_flow_stats(lab)
    return {row["rule"]: row["packets"] for row in switch_status(target_of(lab), "br0")["nat_rules"]}


def _neighbour_mac(lab: Lab, port: str, address: str) -> str | None:
    """The MAC the host's kernel holds for `address` (from neighbour discovery), if any."""
    text = lab.exec(port, ["ip", "-6", "neigh", "show", str(ipaddress.IPv6Address(address))],
                    capture_output=True, text=True, check=True).stdout
    words = text.split()
    return words[words.index("lladdr") + 1] if "lladdr" in words else None
