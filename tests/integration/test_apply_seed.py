"""The seed thesis's firewall and NAT, applied by ovsmgr to a real OVS, with real packets."""

from __future__ import annotations

import subprocess

import pytest

from ovsmgr.bench.pipelines import BENCH_COOKIE, set_handwritten, set_plain
from ovsmgr.lab.ovs import LabPort

from .switch import apply, compiled_file, counter
from .traffic import converse, ping, server

pytestmark = pytest.mark.integration

SEED_PORTS = (LabPort("inside", 1, "10.0.0.10/24"), LabPort("outside", 2, "198.51.100.9/24"))


def test_seed_firewall_inside_opens_outside_cannot(lab_factory):
    lab = lab_factory(SEED_PORTS)
    assert not ping(lab, "inside", "198.51.100.9"), "an empty secure bridge must drop everything"
    apply(lab, compiled_file("seed-firewall.yaml"))
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


def test_seed_hand_written_firewall_as_the_bench_pushes_it(lab_factory):
    """The bench's baseline, the seed's own flows (bench/handwritten/), in place of ovsmgr's:
    inside opens, outside cannot, and the bench's cookie takes them all away again."""
    lab = lab_factory(SEED_PORTS)
    apply(lab, compiled_file("seed-firewall.yaml"))
    set_handwritten(lab.ofctl, "seed-firewall-handwritten", (1, 2))
    cookies = {line.split(",")[0].strip() for line in lab.ofctl(["dump-flows"]).splitlines() if "cookie=" in line}
    assert cookies == {f"cookie={BENCH_COOKIE:#x}"}, cookies  # ovsmgr's flows are gone
    assert ping(lab, "inside", "198.51.100.9", count=2)
    for proto in ("tcp", "udp"):
        with server(lab, "outside", proto, 8080):
            reply = converse(lab, "inside", proto, "198.51.100.9", 8080)
        assert reply["ok"], reply
        with server(lab, "inside", proto, 8081):
            assert not converse(lab, "outside", proto, "10.0.0.10", 8081)["ok"]
    assert not ping(lab, "outside", "10.0.0.10")
    set_plain(lab.ofctl, False, (1, 2))
    assert "cookie=" not in lab.ofctl(["dump-flows"])


def test_invalid_tcp_is_dropped_even_from_the_allowed_side(lab_factory):
    """SYN+FIN is +inv to conntrack: dropped (and counted) although inside may open anything.

    (A bare ACK is not +inv here: OVS conntrack picks up mid-stream TCP as +new,
    like Linux with nf_conntrack_tcp_loose=1; from outside it is dropped as new.)
    """
    lab = lab_factory(SEED_PORTS)
    apply(lab, compiled_file("seed-firewall.yaml"))
    before = counter(lab, 30, "ct_state=+inv+trk")
    passed = counter(lab, 60, "reg2=0x2")
    lab.exec("inside", ["hping3", "-q", "-S", "-F", "-c", "3", "-i", "u10000", "-p", "8080", "198.51.100.9"],
             capture_output=True, timeout=20)
    assert counter(lab, 30, "ct_state=+inv+trk") - before == 3
    assert counter(lab, 60, "reg2=0x2") == passed


def test_seed_nat_translates_to_public_address_and_back(lab_factory):
    lab = lab_factory(SEED_PORTS)
    compiled = compiled_file("seed-nat.yaml")
    apply(lab, compiled)
    with server(lab, "outside", "tcp", 8080):
        reply = converse(lab, "inside", "tcp", "198.51.100.9", 8080)
    assert reply["ok"], reply
    assert reply["seen_as"] == "200.200.200.200"
    with server(lab, "outside", "udp", 5353):
        assert converse(lab, "inside", "udp", "198.51.100.9", 5353)["seen_as"] == "200.200.200.200"
    assert ping(lab, "inside", "198.51.100.9", count=2)
    with server(lab, "inside", "tcp", 8081):
        assert not converse(lab, "outside", "tcp", "10.0.0.10", 8081)["ok"]
    arping = lab.exec("outside", ["arping", "-c", "1", "-w", "3", "-I", "eth0", "200.200.200.200"],
                      capture_output=True, text=True, timeout=10)
    assert arping.returncode == 0, arping.stdout + arping.stderr
    assert compiled.policy.mac in arping.stdout.lower()


def test_ofctl_bundle_of_compiled_text_loads_as_is(lab_factory, tmp_path):
    """`ovsmgr compile` output is loadable with ovs-ofctl --bundle add-flows, unchanged."""
    from ovsmgr.render.text import render_flows

    lab = lab_factory(SEED_PORTS)
    compiled = compiled_file("seed-nat.yaml")
    path = tmp_path / "seed-nat.flows"
    path.write_text(render_flows(compiled))
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "--bundle", "add-flows",
                          f"unix:{lab.mgmt_socket('br0')}", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    with server(lab, "outside", "tcp", 8080):
        assert converse(lab, "inside", "tcp", "198.51.100.9", 8080)["seen_as"] == "200.200.200.200"
