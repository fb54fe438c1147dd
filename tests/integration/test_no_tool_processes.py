"""No `ovs-ofctl`, `ovs-vsctl` or `ovs-appctl` behind ovsmgr's flows: counted, not assumed.

`apply`, `plan` and `status` talk OpenFlow and OVSDB themselves, and the controller
pushes runtime changes over its own OpenFlow connection: each is run here under an
audit hook that logs every program the process starts (`tests.support.execlog`), and
the log must stay empty while real flows change on a real switch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ovsmgr.controller.client import ApiClient
from tests.support.policies import two_ports

from .controller_helpers import controller

EXECLOG = [sys.executable, "-m", "tests.support.execlog"]

POLICY = two_ports("""
addresses:
  blocklist: [203.0.113.0/24]
conntrack: {zone: 5, max_connections: 1000}
firewall:
  default: drop
  rules:
    - {name: blocked, from: wan, src: "@blocklist", action: drop}
    - {name: web, from: lan, to: wan, services: [tcp/80, tcp/443], action: allow}
""", ports=("lan0", "wan0"), zones=("lan", "wan"))


def _started(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_apply_plan_and_status_start_no_program(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lab = lab_factory()
    log, policy = tmp_path / "exec.log", tmp_path / "policy.yaml"

    def ovsmgr(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*EXECLOG, str(log), *args, "--db", lab.db_endpoint], capture_output=True,
                              text=True, timeout=120, check=False)

    policy.write_text(POLICY)
    first = ovsmgr("apply", str(policy))
    assert first.returncode == 0, first.stderr
    policy.write_text(POLICY.replace("tcp/443", "tcp/8443"))
    assert ovsmgr("plan", str(policy)).returncode == 2
    second = ovsmgr("apply", str(policy), "-o", "json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["changes"]["add"] >= 2, second.stdout
    status = ovsmgr("status", "br0")
    assert status.returncode == 0 and "conntrack zone 5: 0 of 1000 connections" in status.stdout, status.stdout
    assert "tp_dst=8443" in lab.ofctl(["dump-flows", "table=40"])  # the flows really changed
    assert _started(log) == []


def test_runtime_changes_through_the_controller_start_no_program(lab_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lab = lab_factory()
    log, policy = tmp_path / "exec.log", tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with controller(lab, [policy], tmp_path, command=[*EXECLOG, str(log)]) as running:
        api: ApiClient = running.api()
        for i in range(20):
            api.call("POST", "/v1/sets/blocklist/add", {"addresses": [f"198.51.100.{i}"]})
        api.call("POST", "/v1/rules/web/disable")
        api.call("POST", "/v1/rules/web/enable")
        flows = lab.ofctl(["dump-flows", "table=40"])
        assert all(f"nw_src=198.51.100.{i}" in flows for i in range(20)), flows
        assert _started(log) == [], running.log()
