"""The lab switch against real OVS: forwarding, the seed firewall, OVSDB, and clean teardown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ovsmgr.compiler.pipeline import Table
from ovsmgr.lab.instance import DPDK_VSWITCHD
from ovsmgr.lab.ovs import Lab, LabError, LabPort, LabSpec
from ovsmgr.southbound.conntrack import set_zone_limit
from ovsmgr.southbound.ovsdb import DEFAULT_PROTOCOLS, OvsdbError, SwitchDB
from ovsmgr.southbound.tools import OvsToolError

from .switch import apply, compiled_file

pytestmark = pytest.mark.integration

LAN_IP, WAN_IP = "10.0.0.10", "192.168.1.10"
PORTS = [LabPort("lan0", 1, f"{LAN_IP}/24"), LabPort("wan0", 2, f"{WAN_IP}/24")]

# shared/seeds/004, section 4.1: port 1 may open connections to port 2, not the reverse.
SEED_FIREWALL = """\
table=0,priority=1,action=drop
table=0,priority=10,arp,action=normal
table=0,priority=100,ip,ct_state=-trk,action=ct(table=1)
table=1,in_port=1,ip,ct_state=+trk+new,action=ct(commit),2
table=1,in_port=1,ip,ct_state=+trk+est,action=2
table=1,in_port=2,ip,ct_state=+trk+new,action=drop
table=1,in_port=2,ip,ct_state=+trk+est,action=1
"""

needs_dpdk = pytest.mark.skipif(
    not os.access(DPDK_VSWITCHD, os.X_OK) or (os.cpu_count() or 1) < 2,
    reason="needs openvswitch-switch-dpdk (apt-get install -y openvswitch-switch-dpdk dpdk) "
    "and 2 CPUs (pmd-cpu-mask=0x2)",
)
DATAPATHS = ["netdev", pytest.param("dpdk", marks=needs_dpdk)]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def lab_namespaces(lab: Lab) -> list[str]:
    netns_dir = Path("/run/netns")
    return sorted(p.name for p in netns_dir.glob(f"{lab.name}-*")) if netns_dir.exists() else []


def lab_processes(lab: Lab) -> list[int]:
    """Live processes whose command line names the lab's directory (its OVS daemons)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and str(lab.dir) in cmdline and alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def ping(lab: Lab, port: str, dst: str, deadline: int = 3) -> bool:
    """One echo reply within ``deadline`` seconds (ping resends every second until then)."""
    family = "-6" if ":" in dst else "-4"
    argv = ["ping", family, "-n", "-c1", f"-w{deadline}", dst]
    return lab.exec(port, argv, capture_output=True, timeout=deadline + 5).returncode == 0


def wait_listening(lab: Lab, port: str, tcp_port: int, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = lab.exec(port, ["ss", "-Hltn", f"sport = :{tcp_port}"], capture_output=True,
                       text=True, check=True).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}:{tcp_port}")


def tcp_exchange(lab: Lab, server: str, client: str, dst: str, tcp_port: int) -> tuple[int, str, str]:
    """Client sends "ping", server answers "pong"; returns (client rc, client got, server got)."""
    reply, feed = os.pipe()
    os.write(feed, b"pong\n")
    os.close(feed)
    proc = lab.popen(server, ["nc", "-l", "-N", str(tcp_port)], stdin=reply,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(reply)
    try:
        wait_listening(lab, server, tcp_port)
        result = lab.exec(client, ["nc", "-N", "-w", "2", dst, str(tcp_port)], input="ping\n",
                          capture_output=True, text=True, timeout=10)
        if result.returncode == 0:
            proc.wait(timeout=5)
    finally:
        proc.kill()
        server_got, _ = proc.communicate()
    return result.returncode, result.stdout, server_got


def flow_packets(lab: Lab, match: str) -> int:
    """n_packets of the one flow whose text contains ``match``."""
    lines = [line for line in lab.ofctl(["dump-flows"]).splitlines() if match in line]
    assert len(lines) == 1, lines
    return int(lines[0].split("n_packets=")[1].split(",")[0])


@pytest.mark.parametrize("addresses", [
    ("10.0.0.10/24", "192.168.1.10/24"),
    ("fd00:1::10/64", "fd00:2::10/64"),
], ids=["ipv4", "ipv6"])
def test_empty_table_drops_and_normal_forwards(lab_factory, addresses: tuple[str, str]) -> None:
    lab = lab_factory([LabPort("lan0", 1, addresses[0]), LabPort("wan0", 2, addresses[1])])
    dst = addresses[1].split("/")[0]
    assert lab.ofctl(["dump-flows"]).strip().splitlines()[1:] == []  # fail_mode=secure: empty
    assert not ping(lab, "lan0", dst, deadline=1)
    lab.ofctl(["add-flow", "priority=0,actions=NORMAL"])
    assert ping(lab, "lan0", dst)
    assert flow_packets(lab, "actions=NORMAL") > 0


@pytest.mark.parametrize("datapath", DATAPATHS)
def test_seed_firewall_allows_inside_out_and_blocks_outside_in(lab_factory, datapath: str) -> None:
    lab = lab_factory(PORTS, datapath=datapath)
    lab.ofctl(["add-flows", "-"], input=SEED_FIREWALL)

    rc, client_got, server_got = tcp_exchange(lab, "wan0", "lan0", WAN_IP, 5001)
    assert (rc, client_got, server_got) == (0, "pong\n", "ping\n")
    assert "dport=5001" in lab.appctl(["dpctl/dump-conntrack"])

    blocked_before = flow_packets(lab, "in_port=2 actions=drop")
    rc, client_got, server_got = tcp_exchange(lab, "lan0", "wan0", LAN_IP, 5002)
    assert rc != 0 and server_got == "" and client_got == ""
    assert flow_packets(lab, "in_port=2 actions=drop") > blocked_before


def test_announce_teaches_the_pipeline_every_ipv4_host(lab_factory) -> None:
    """After apply, ``announce`` makes the pipeline learn each IPv4 host's MAC (MAC_BINDING),
    which DNAT'd and un-SNAT'd packets need. (No check that the table starts empty: the
    gratuitous ARPs ``up`` sends in the background may, rarely, arrive after the apply.)"""
    hosts = [LabPort("inside", 1, "10.0.0.10/24"), LabPort("outside", 2, "198.51.100.9/24"),
             LabPort("v6", 3, "fd00:1::10/64"), LabPort("bare", 4, None)]
    lab = lab_factory(hosts)
    apply(lab, compiled_file("seed-nat.yaml"))
    lab.announce()
    learned = lab.ofctl(["dump-flows", "--no-stats", f"table={int(Table.MAC_BINDING)}"])
    for host in hosts[:2]:
        assert f"nw_dst={host.address.split('/')[0]} actions=set_field:{host.mac}->eth_dst" in learned
    assert learned.count("nw_dst=") == 2


def test_switchdb_on_the_lab_bridge(lab_factory) -> None:
    lab = lab_factory(PORTS)
    status = lab.status()
    lab.ofctl(["add-flow", "priority=0,actions=NORMAL"])
    with SwitchDB(status["db"]) as db:
        db.ensure_bridge("br0", "netdev", "secure")
        db.ensure_bridge("br0", "netdev", "secure")
        info = db.bridge_info("br0")
        assert info["datapath_type"] == "netdev" and info["fail_mode"] == "secure"
        assert info["protocols"] == sorted(DEFAULT_PROTOCOLS)
        assert info["ports"] == db.ofports("br0") == {"lan0": 1, "wan0": 2}
        # an unchanged fail_mode is not rewritten, so the flow table survives
        assert "actions=NORMAL" in lab.ofctl(["dump-flows"])
        assert db.ensure_port("br0", "lan0", 1) == 1

        db.set_external_ids("br0", {"ovsmgr-policy": "abc"})
        db.set_external_ids("br0", {"ovsmgr-cookie": "0x1", "ovsmgr-policy": "def"})
        assert db.get_external_ids("br0") == {"ovsmgr-policy": "def", "ovsmgr-cookie": "0x1"}

        target = f"unix:{lab.dir}/controller.sock"
        db.set_controllers("br0", [target])
        assert db.get_controllers("br0") == db.bridge_info("br0")["controllers"] == [target]
        db.set_controllers("br0", [])
        assert db.get_controllers("br0") == []

        with pytest.raises(OvsdbError, match="nosuch"):
            db.ensure_port("br0", "nosuch", 9)
        with pytest.raises(OvsdbError, match="nobr"):
            db.get_external_ids("nobr")
        db.ensure_bridge("br0", "netdev", "standalone")
        assert db.bridge_info("br0")["fail_mode"] == "standalone"
        db.ensure_bridge("br1", "netdev")
        assert db.bridges() == ["br0", "br1"]
        db.delete_bridge("br1")
        assert db.bridges() == ["br0"]

    set_zone_limit(status["appctl"], 5, 100)
    assert "zone=5,limit=100" in lab.appctl(["dpctl/ct-get-limits", "zone=5"])
    with pytest.raises(OvsToolError, match="ct-set-limits"):
        set_zone_limit(f"{lab.dir}/no-such.ctl", 5, 100)


def test_down_leaves_no_namespace_and_no_process(lab_factory) -> None:
    # "a" is also an `ip` keyword abbreviation, "d.1" has a dot (sysctl separator): both must work
    lab = lab_factory([*PORTS, LabPort("a", 3, None), LabPort("d.1", 4, "10.0.0.12/24")])
    status = lab.status()
    pids = [d["pid"] for d in status["daemons"].values()]
    assert status["up"] and all(alive(p) for p in pids)
    names = ("sw", "lan0", "wan0", "a", "d.1")
    assert lab_namespaces(lab) == sorted(f"{lab.name}-{n}" for n in names)
    forgotten = lab.popen("wan0", ["sleep", "60"])  # a process left in a host namespace

    Lab(lab.name, lab.dir).down()  # a fresh object: everything comes from lab.json

    assert lab_namespaces(lab) == []
    assert not any(alive(p) for p in pids) and lab_processes(lab) == []
    assert forgotten.wait(timeout=5) != 0
    assert not (lab.dir / "lab.json").exists()
    assert lab.status()["up"] is False and lab.status()["status"] == "down"
    lab.down()  # idempotent


def test_half_failed_up_leaves_nothing(lab_factory) -> None:
    lab = lab_factory(up=False)
    foreign = f"{lab.name}-wan0"  # not the lab's: up must fail on it and must not delete it
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    try:
        with pytest.raises(LabError, match=rf"ip netns add {foreign} failed"):
            lab.up(LabSpec("br0", "netdev", PORTS, lab.name))
        assert lab_namespaces(lab) == [foreign]
        assert lab_processes(lab) == []
        assert not (lab.dir / "lab.json").exists()
    finally:
        subprocess.run(["ip", "netns", "del", foreign], check=True)


def test_invalid_spec_creates_nothing(lab_factory) -> None:
    lab = lab_factory(up=False)
    bad = [LabPort("lan0", 1, "10.0.0.300/24"), LabPort("lan0", 1, None)]
    with pytest.raises(LabError, match="invalid lab spec") as info:
        lab.up(LabSpec("br0", "netdev", bad, lab.name))
    assert "10.0.0.300" in str(info.value) and "not unique" in str(info.value)
    assert lab_namespaces(lab) == [] and not (lab.dir / "lab.json").exists()


def run_cli(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a separate process, finding the lab through $OVSMGR_LAB_DIR."""
    argv = [sys.executable, "-c", "from ovsmgr.cli import main; main()", *args]
    env = {**os.environ, "OVSMGR_LAB_DIR": str(lab.dir)}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)


def test_cli_status_and_exec_from_another_process(lab_factory) -> None:
    lab = lab_factory(PORTS)
    status = json.loads(run_cli(lab, "lab", "status", "--name", lab.name, "-o", "json").stdout)
    assert status["up"] and status["appctl"] == lab.status()["appctl"]
    addr = run_cli(lab, "lab", "exec", "--name", lab.name, "wan0", "--", "ip", "-4", "-br", "addr",
                   "show", "dev", "eth0")
    assert addr.returncode == 0 and f"{WAN_IP}/24" in addr.stdout
    assert run_cli(lab, "lab", "exec", "--name", lab.name, "wan0", "--", "false").returncode == 1
    assert "no port 'dmz0'" in run_cli(lab, "lab", "exec", "--name", lab.name, "dmz0", "true").stderr


def test_cli_up_from_a_policy_and_down(lab_factory, tmp_path: Path) -> None:
    lab = lab_factory(up=False)
    policy = tmp_path / "lab.yaml"
    policy.write_text(textwrap.dedent("""\
        version: 1
        switch:
          bridge: br0
          datapath: netdev
          ports:
            inside: {ofport: 1}
            outside: {ofport: 2}
        zones:
          inside: {ports: [inside], networks: [10.0.0.0/24]}
          outside: {ports: [outside], networks: [fd00:1::/64]}
        """))
    up = run_cli(lab, "lab", "up", str(policy), "--name", lab.name, "--host", "outside=192.168.1.20/24")
    assert up.returncode == 0, up.stderr
    ports = {p["name"]: p["address"] for p in lab.status()["ports"]}
    assert ports == {"inside": "10.0.0.10/24", "outside": "192.168.1.20/24"}
    assert run_cli(lab, "lab", "down", "--name", lab.name).returncode == 0
    assert lab_namespaces(lab) == []
