"""policies/hosting.yaml with real hosts: DNAT+SNAT on one connection (hairpin), static NAT,
a load-balanced pool (select groups), and the pool's health checks in controller mode.

The office host (office0) holds the client 10.0.1.50, the two web servers 10.0.1.10 and
10.0.1.11 and the database 10.0.1.20; the wan host is 198.51.100.9. Servers answer with the
address and port they saw the client as, so each test knows how the switch translated the
connection without capturing packets.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ovsmgr.cli import main
from ovsmgr.compiler.flows import Ct, Flow, Match
from ovsmgr.compiler.pipeline import CookieKind, Table, cookie, is_our_group
from ovsmgr.lab.netns import free_port
from ovsmgr.lab.ovs import Lab, LabPort
from ovsmgr.southbound.openflow import OpenFlowError, SwitchConnection, SwitchFlowTable
from ovsmgr.switch.plan import desired_flows, make_plan
from ovsmgr.switch.status import switch_status

from .controller_helpers import controller
from .switch import (
    POLICIES,
    apply,
    compiled_file,
    compiled_text,
    flow_table,
    settle_flow_stats,
    target_of,
)
from .test_dpdk import _dpdk_skip_reason
from .traffic import PY, server

pytestmark = pytest.mark.integration

PORTS = (LabPort("office0", 1, "10.0.1.50/24"), LabPort("wan0", 2, "198.51.100.9/24"))
SERVERS = ("10.0.1.10", "10.0.1.11")
DATABASE = "10.0.1.20"
WAN = "198.51.100.9"
POOL, OFFICE_PUBLIC, DB_PUBLIC = "200.200.200.200", "200.200.200.1", "200.200.200.20"
WEIGHTS = {"10.0.1.10": 3, "10.0.1.11": 1}
"""hosting.yaml's web-pool: 10.0.1.10 weight 3, 10.0.1.11 weight 1."""


def _hosting_lab(lab_factory: Any, datapath: str = "netdev", policy: bool = True) -> Lab:
    lab = lab_factory(PORTS, datapath=datapath)
    for address in (*SERVERS, DATABASE):
        lab.exec("office0", ["ip", "addr", "add", f"{address}/24", "dev", "eth0"], check=True)
    if policy:
        apply(lab, compiled_file("hosting.yaml"))
        _announce(lab)
    return lab


def _announce(lab: Lab) -> None:
    """Every address announced, the office host's extra ones too (the switch learns the MAC a
    DNAT'd packet must carry from ARP)."""
    lab.announce()
    for address in (*SERVERS, DATABASE):
        out = lab.exec("office0", ["arping", "-U", "-c", "1", "-I", "eth0", "-s", address, address],
                       capture_output=True, text=True, timeout=10)
        assert "Sent 1 probe" in out.stdout, out


def _connect(lab: Lab, port: str, address: str, tport: int, src: str | None = None) -> dict[str, Any]:
    argv = [*PY, "connect", "tcp", address, str(tport), "--timeout", "3"] + (["--src", src] if src else [])
    out = lab.exec(port, argv, capture_output=True, text=True, timeout=20)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@contextmanager
def _pool_servers(lab: Lab, timeout: float = 60) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """A server on each backend's address and port; their stdout has a line per connection."""
    with ExitStack() as stack:
        yield {address: stack.enter_context(server(lab, "office0", "tcp", 8443, timeout=timeout, bind=address))
               for address in SERVERS}


def _nat_rules(lab: Lab) -> dict[str, dict[str, Any]]:
    """`status`'s NAT rule table: rule -> packets, bytes, connections, all sent so far counted."""
    settle_flow_stats(lab)
    return {row["rule"]: row for row in switch_status(target_of(lab), "br0")["nat_rules"]}


def _served(proc: subprocess.Popen[str], peer: str = WAN) -> int:
    """Connections from `peer` a (stopped) server answered."""
    assert proc.stdout is not None
    return sum(json.loads(line).get("peer") == peer for line in proc.stdout.read().splitlines() if line.startswith("{"))


@pytest.mark.parametrize("datapath", ["netdev", "dpdk"])
def test_hairpin_dnat_then_snat_and_static_nat_with_real_hosts(lab_factory: Any, datapath: str) -> None:
    if datapath == "dpdk" and (reason := _dpdk_skip_reason()):
        pytest.skip(reason)
    lab = _hosting_lab(lab_factory, datapath)
    with _pool_servers(lab):
        # the office reaches the pool at its public address: DNAT to a server, SNAT to the office's
        # public address in the second zone, back out of office0; the answer comes back as the pool
        hairpin = _connect(lab, "office0", POOL, 443, src="10.0.1.50")
        # one connection translated twice: its entry in each zone names its rule, and every one of
        # its packets, both ways, is counted for both
        counts = _nat_rules(lab)
        assert counts["web-pool-office"]["connections"] == counts["office-hairpin"]["connections"] == 1, counts
        assert counts["web-pool-office"]["packets"] == counts["office-hairpin"]["packets"] >= 5, counts
        assert counts["web-pool"]["packets"] == counts["office-masquerade"]["packets"] == 0, counts
        from_wan = _connect(lab, "wan0", POOL, 443)
        counts = _nat_rules(lab)
        assert counts["web-pool"]["connections"] == 1 and counts["web-pool"]["packets"] >= 5, counts
        assert counts["office-hairpin"]["connections"] == 1, "DNAT alone: no SNAT after it"
    assert hairpin["ok"] and hairpin["seen_as"] == OFFICE_PUBLIC, hairpin
    assert from_wan["ok"] and from_wan["seen_as"] == WAN, "DNAT alone: the server sees the client"

    with server(lab, "wan0", "tcp", 443):
        db_out = _connect(lab, "office0", WAN, 443, src=DATABASE)
        office_out = _connect(lab, "office0", WAN, 443, src="10.0.1.50")
    assert db_out["ok"] and db_out["seen_as"] == DB_PUBLIC, "static NAT: the database leaves as its own address"
    assert db_out["seen_port"] == db_out["local_port"], "one address to one: the port is kept"
    assert office_out["ok"] and office_out["seen_as"] == OFFICE_PUBLIC, "the rest of the office is masqueraded"

    with server(lab, "office0", "tcp", 5432, bind=DATABASE), server(lab, "office0", "tcp", 22, bind=DATABASE):
        db_in = _connect(lab, "wan0", DB_PUBLIC, 5432)
        ssh_in = _connect(lab, "wan0", DB_PUBLIC, 22)
        direct = _connect(lab, "wan0", DATABASE, 5432)
    assert db_in["ok"] and db_in["seen_as"] == WAN, "static NAT: the wan reaches the database at its public address"
    assert not ssh_in["ok"], "static NAT translates; only the firewall allows"
    assert not direct["ok"], "the inside address is not reachable from the wan"


def test_a_pool_spreads_connections_by_weight_and_each_sticks_to_its_server(lab_factory: Any) -> None:
    """Hundreds of connections from the wan, each from a new source port: 10.0.1.10's share is
    within 4 standard deviations of a 3:1 draw of that many connections of 0.75 (0.071 for 600
    connections, never tighter than 0.05). A long session keeps its server for every segment:
    a segment sent to the other address would be answered with a RST and end it."""
    lab = _hosting_lab(lab_factory)
    with _pool_servers(lab) as servers:
        out = lab.exec("wan0", [*PY, "tcp-stream", POOL, "443", "--interval", "0.01", "--duration", "10",
                                "--timeout", "3"], capture_output=True, text=True, timeout=90)
        summary = json.loads(out.stdout.strip().splitlines()[-1])
    served = {address: _served(proc) for address, proc in servers.items()}
    total = summary["ok"]
    assert total >= 200 and total == summary["attempts"], summary
    assert sum(served.values()) == total, (served, summary)
    share = served["10.0.1.10"] / total
    wanted = WEIGHTS["10.0.1.10"] / sum(WEIGHTS.values())
    tolerance = max(0.05, 4 * math.sqrt(wanted * (1 - wanted) / total))
    assert abs(share - wanted) <= tolerance, f"10.0.1.10 got {share:.3f} of {total} connections, not {wanted}"
    print(f"spread over {total} connections: {served} (share {share:.3f}, weights 3:1, tolerance {tolerance:.3f})")

    echo = lab.popen("office0", [*PY, "echo", "8443", "--timeout", "60"], stdout=subprocess.PIPE, text=True)
    assert echo.stdout is not None and "listening" in echo.stdout.readline()
    session = lab.popen("wan0", [*PY, "session", POOL, "443", "--timeout", "2"], stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, text=True)
    try:
        assert session.stdin is not None and session.stdout is not None
        assert session.stdout.readline().strip() == "connected"
        replies = []
        for n in range(50):
            session.stdin.write(f"segment {n}\n")
            session.stdin.flush()
            replies.append(session.stdout.readline().strip())
        entries = [line for line in lab.appctl(["dpctl/dump-conntrack", "zone=20"]).splitlines()
                   if "dport=443" in line and "ESTABLISHED" in line]
    finally:
        for proc in (session, echo):
            proc.kill()
            proc.wait()
    assert replies == [f"reply segment {n}" for n in range(50)], replies
    assert len(entries) == 1 and re.search(r"src=10\.0\.1\.1[01],dst=198\.51\.100\.9,sport=8443", entries[0]), entries


def _groups(lab: Lab) -> list[str]:
    return sorted(line.strip() for line in lab.ofctl(["dump-groups"]).splitlines() if "group_id=" in line)


def test_groups_ride_in_the_flows_bundle_and_a_refused_push_changes_neither(lab_factory: Any) -> None:
    lab = _hosting_lab(lab_factory, policy=False)
    lab.ofctl(["add-group", "group_id=7,type=select,bucket=output:2"])  # not ours: never touched
    hosting = compiled_file("hosting.yaml")
    apply(lab, hosting)
    ours = [g for g in _groups(lab) if is_our_group(int(g.split("group_id=")[1].split(",")[0]))]
    assert len(ours) == len(hosting.groups) == 2 and "weight:3" in ours[0], _groups(lab)
    with SwitchConnection(target_of(lab).openflow("br0")) as connection:
        table = SwitchFlowTable(connection)
        assert make_plan(table.read(), desired_flows(hosting.flows, groups=hosting.groups)).empty, \
            "groups read back equal the compiled ones; the foreign group is not ours"
    before = flow_table(lab).dump_text(), _groups(lab)

    # plan, status and restore know the groups: one deleted behind ovsmgr's back (OVS deletes the
    # flows that use it with it) is drift, and restore puts group and flows back
    db, policy_file = ["--db", lab.db_endpoint], str(POLICIES / "hosting.yaml")
    runner = CliRunner()
    assert runner.invoke(main, ["plan", policy_file, *db]).exit_code == 0
    gone = int(ours[0].split("group_id=")[1].split(",")[0])
    lab.ofctl(["del-groups", f"group_id={gone}"])
    drifted = runner.invoke(main, ["plan", policy_file, "-v", *db])
    assert drifted.exit_code == 2 and f"+ group_id={gone},type=select" in drifted.output, drifted.output
    assert '"drifted": true' in runner.invoke(main, ["status", "br0", *db, "-o", "json"]).output
    restored = runner.invoke(main, ["restore", "br0", *db])
    assert restored.exit_code == 0, restored.output
    assert (flow_table(lab).dump_text(), _groups(lab)) == before
    assert '"drifted": false' in runner.invoke(main, ["status", "br0", *db, "-o", "json"]).output

    text = (POLICIES / "hosting.yaml").read_text()
    reweighted = compiled_text(text.replace("weight: 3", "weight: 7"))
    # a flow OVS refuses (ct(commit) without an IP match) in the same bundle as the changed groups
    reweighted.flowset.add(Flow(Table.NAT, 7, Match(), (Ct(commit=True, zone=20),), cookie(CookieKind.INFRA)))
    with pytest.raises(OpenFlowError):
        apply(lab, reweighted)
    assert (flow_table(lab).dump_text(), _groups(lab)) == before, "a refused bundle leaves flows and groups"

    apply(lab, compiled_text(text.replace("weight: 3", "weight: 7")))
    assert sum("weight:7" in g for g in _groups(lab)) == 2
    without_pools = re.sub(r"  - name: web-pool\n(    .*\n|      .*\n)+", "", text)
    without_pools = re.sub(r"  - name: web-pool-office\n(    .*\n|      .*\n)+", "", without_pools)
    plain = compiled_text(without_pools)
    assert not plain.groups
    apply(lab, plain)
    left = _groups(lab)
    assert len(left) == 1 and left[0].startswith("group_id=7,"), f"ours deleted, the foreign one kept: {left}"


def _backends(ctl: Any) -> dict[str, bool]:
    status = ctl.api().call("GET", "/v1/status")
    return {f"{b['address']}": b["up"] for b in status.get("backends", ()) if b["rule"] == "web-pool"}


def _wait(predicate: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)


def _pool_buckets(lab: Lab) -> int:
    """Buckets of the web-pool group (the pool for connections from the wan)."""
    (gid,) = [g.group_id for g in compiled_file("hosting.yaml").groups if g.rule == "web-pool"]
    (line,) = [g for g in _groups(lab) if g.startswith(f"group_id={gid},")]
    return line.count("bucket=")


def test_health_checks_take_a_dead_backend_out_and_bring_it_back(lab_factory: Any, tmp_path: Path) -> None:
    """Controller mode: hosting.yaml's web-pool is checked every second (one failure takes a
    backend out). The checks connect from the office host's namespace, where the servers are."""
    lab = _hosting_lab(lab_factory, policy=False)
    metrics = f"127.0.0.1:{free_port()}"
    extra = ["--health-netns", f"{lab.name}-office0", "--metrics", metrics]
    with ExitStack() as stack:
        ctl = stack.enter_context(controller(lab, [POLICIES / "hosting.yaml"], tmp_path, extra))
        good = stack.enter_context(server(lab, "office0", "tcp", 8443, timeout=120, bind=SERVERS[0]))
        dying = stack.enter_context(server(lab, "office0", "tcp", 8443, timeout=120, bind=SERVERS[1]))
        _announce(lab)
        _wait(lambda: _backends(ctl) == {SERVERS[0]: True, SERVERS[1]: True}, "both backends checked up")
        assert _pool_buckets(lab) == 2

        dying.kill()
        dying.wait()
        _wait(lambda: _backends(ctl).get(SERVERS[1]) is False, "10.0.1.11 taken out")
        _wait(lambda: _pool_buckets(lab) == 1, "the group without 10.0.1.11's bucket")
        status = ctl.cli("status", "br0").stdout
        assert "backend 10.0.1.11:8443 of web-pool: DOWN" in status, status
        scraped = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10).read().decode()
        assert re.search(r'ovsmgr_backend_up\{[^}]*backend="10\.0\.1\.11:8443"[^}]*\} 0\.0', scraped), scraped
        assert re.search(r'ovsmgr_backend_up\{[^}]*backend="10\.0\.1\.10:8443"[^}]*\} 1\.0', scraped), scraped
        # with both buckets, 20 connections would all miss 10.0.1.11 only 0.75^20 = 0.3 % of the time
        answers = [_connect(lab, "wan0", POOL, 443) for _ in range(20)]
        assert all(a["ok"] for a in answers), "no new connection goes to the dead backend"
        assert _served_now(good) == 20, "all 20 went to 10.0.1.10"

        for address in SERVERS:  # 10.0.1.10's server was stopped to count what it served
            stack.enter_context(server(lab, "office0", "tcp", 8443, timeout=120, bind=address))
        _wait(lambda: _backends(ctl) == {SERVERS[0]: True, SERVERS[1]: True}, "10.0.1.11 back")
        _wait(lambda: _pool_buckets(lab) == 2, "the group with both buckets again")
        scraped = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10).read().decode()
        assert re.search(r'ovsmgr_backend_up\{[^}]*backend="10\.0\.1\.11:8443"[^}]*\} 1\.0', scraped), scraped


def _served_now(proc: subprocess.Popen[str]) -> int:
    """Connections a running server has answered so far (its lines are flushed one by one)."""
    proc.kill()
    proc.wait()
    return _served(proc)
