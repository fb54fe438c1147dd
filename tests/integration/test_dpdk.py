"""The seed firewall and NAT applied by ovsmgr on the DPDK datapath, with real packets.

The same checks as test_apply_seed.py, but the lab's ovs-vswitchd is the DPDK build
and its ports are DPDK af_packet devices on the veth ends (see ovsmgr.lab.ovs).
"""

from __future__ import annotations

import os

import pytest

from ovsmgr.lab.instance import DPDK_VSWITCHD, reserve_hugepages
from ovsmgr.lab.ovs import LabError, LabPort

from .switch import apply, compiled_file
from .traffic import converse, ping, server

pytestmark = pytest.mark.integration

SEED_PORTS = (LabPort("inside", 1, "10.0.0.10/24"), LabPort("outside", 2, "198.51.100.9/24"))


def _dpdk_skip_reason() -> str | None:
    """Why the DPDK datapath cannot run here, or None. Reserves the hugepages the lab needs
    (as the lab itself would), so a machine that cannot have them skips instead of failing."""
    if not os.access(DPDK_VSWITCHD, os.X_OK):
        return (f"no DPDK build of ovs-vswitchd at {DPDK_VSWITCHD} "
                "(apt-get install -y openvswitch-switch-dpdk dpdk)")
    if (os.cpu_count() or 1) < 2:
        return "the DPDK lab pins its PMD thread to CPU 1 (pmd-cpu-mask=0x2): needs 2 CPUs"
    if os.geteuid() != 0:
        return "DPDK labs need root"
    try:
        reserve_hugepages()
    except LabError as exc:
        return f"no hugepages for DPDK: {exc}"
    return None


@pytest.fixture
def dpdk_lab(lab_factory):  # type: ignore[no-untyped-def]
    reason = _dpdk_skip_reason()
    if reason:
        pytest.skip(reason)
    return lab_factory(SEED_PORTS, datapath="dpdk")


def test_seed_firewall_on_dpdk_inside_opens_outside_cannot(dpdk_lab):
    lab = dpdk_lab
    assert lab.status()["datapath"] == "dpdk"
    iface_type = lab.switch_exec(["ovs-vsctl", f"--db={lab.db_endpoint}", "get", "Interface",
                                  "inside", "type"], capture_output=True, text=True, check=True)
    assert iface_type.stdout.strip() == "dpdk"
    assert not ping(lab, "inside", "198.51.100.9", deadline=1), "an empty secure bridge must drop everything"
    apply(lab, compiled_file("seed-firewall.yaml"))
    lab.announce()
    assert ping(lab, "inside", "198.51.100.9", count=3)
    for proto in ("tcp", "udp"):
        with server(lab, "outside", proto, 8080):
            reply = converse(lab, "inside", proto, "198.51.100.9", 8080)
        assert reply["ok"], reply
        assert reply["seen_as"] == "10.0.0.10"
    with server(lab, "inside", "tcp", 8081):
        assert not converse(lab, "outside", "tcp", "10.0.0.10", 8081)["ok"]
    with server(lab, "inside", "udp", 8081):
        assert not converse(lab, "outside", "udp", "10.0.0.10", 8081)["ok"]
    assert not ping(lab, "outside", "10.0.0.10")
    assert "dport=8080" in lab.appctl(["dpctl/dump-conntrack"])


def test_seed_nat_on_dpdk_translates_to_public_address(dpdk_lab):
    lab = dpdk_lab
    apply(lab, compiled_file("seed-nat.yaml"))
    lab.announce()
    with server(lab, "outside", "tcp", 8080):
        reply = converse(lab, "inside", "tcp", "198.51.100.9", 8080)
    assert reply["ok"], reply
    assert reply["seen_as"] == "200.200.200.200"
    with server(lab, "outside", "udp", 5353):
        assert converse(lab, "inside", "udp", "198.51.100.9", 5353)["seen_as"] == "200.200.200.200"
    assert ping(lab, "inside", "198.51.100.9", count=2)
    with server(lab, "inside", "tcp", 8081):
        assert not converse(lab, "outside", "tcp", "10.0.0.10", 8081)["ok"]
