"""apply as an operator lives it: drift, refused pushes, cut on removal, hitless changes, rollback."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ovsmgr.cli import main
from ovsmgr.compiler.flows import Ct, Flow, Match
from ovsmgr.compiler.pipeline import CookieKind, Table, cookie
from ovsmgr.lab.ovs import LabPort
from ovsmgr.southbound.openflow import OpenFlowError

from .switch import POLICIES, apply, compiled_file, compiled_text, flow_table, target_of
from .traffic import PY, converse, ping, server

pytestmark = pytest.mark.integration

PORTS = (LabPort("inside", 1, "10.0.0.10/24"), LabPort("outside", 2, "198.51.100.9/24"))

POLICY = """
version: 1
switch:
  bridge: br0
  datapath: netdev
  ports: {{inside: {{ofport: 1}}, outside: {{ofport: 2}}}}
  links: [[inside, outside]]
zones:
  inside: {{ports: [inside]}}
  outside: {{ports: [outside]}}
firewall:
  default: drop
  rules:
{rules}
"""


def policy(*rules: str) -> str:
    return POLICY.format(rules="\n".join(rules))


def rule(name: str, services: str | None = None, action: str = "allow", extra: str = "") -> str:
    svc = f", services: [{services}]" if services else ""
    return f"    - {{name: {name}, from: inside{svc}, action: {action}{extra}}}"


def test_drift_is_planned_and_repaired_foreign_flows_untouched(lab_factory):
    lab = lab_factory(PORTS)
    db = ["--db", lab.db_endpoint]
    seed = str(POLICIES / "seed-firewall.yaml")
    runner = CliRunner()
    assert runner.invoke(main, ["apply", seed, *db]).exit_code == 0
    assert runner.invoke(main, ["plan", seed, *db]).exit_code == 0
    lab.ofctl(["add-flow", "cookie=0x1234,table=0,priority=7,udp,tp_dst=9 actions=drop"])
    subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "--strict", "del-flows", f"unix:{lab.mgmt_socket('br0')}",
                    "table=40,priority=60000,ip,reg0=0x1"], check=True)
    result = runner.invoke(main, ["plan", seed, *db])
    assert result.exit_code == 2, result.output
    assert re.search(r"^\+ inside-out: 1 added", result.output, re.M), result.output
    assert "foreign flow" in result.output and "cookie=0x1234" in result.output
    assert runner.invoke(main, ["apply", seed, *db]).exit_code == 0
    assert runner.invoke(main, ["plan", seed, *db]).exit_code == 0
    assert "cookie=0x1234" in lab.ofctl(["dump-flows", "table=0"])
    status = runner.invoke(main, ["status", "br0", *db, "-o", "json"])
    assert '"drifted": false' in status.output and '"generation": 2' in status.output


def test_apply_reaches_a_switch_on_another_host_through_its_openflow_listener(lab_factory, tmp_path):
    """No management socket at hand (a remote switch): --openflow names a passive listener."""
    lab = lab_factory(PORTS)
    seed = tmp_path / "seed.yaml"
    seed.write_text((POLICIES / "seed-firewall.yaml").read_text())
    from ovsmgr.southbound.ovsdb import SwitchDB

    with SwitchDB(lab.db_endpoint) as db:
        db.ensure_bridge("br0", "netdev")
        db.set_controllers("br0", ["ptcp:6699:127.0.0.1"])  # a service listener, not a controller
    argv = [str(Path(sys.executable).parent / "ovsmgr"), "apply", str(seed), "--db", lab.db_endpoint,
            "--openflow", "tcp:127.0.0.1:6699"]
    state = {"OVSMGR_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    done = lab.switch_exec(argv, capture_output=True, text=True, timeout=60, env=state)
    assert done.returncode == 0, done.stderr
    assert "Applied generation 1" in done.stdout
    assert "ct(commit,table=60,zone=1," in lab.ofctl(["dump-flows", "table=50"])


def test_refused_push_leaves_flow_table_byte_identical(lab_factory):
    lab = lab_factory(PORTS)
    apply(lab, compiled_file("seed-firewall.yaml"))
    before = flow_table(lab).dump_text()
    bad = compiled_file("seed-nat.yaml")
    # ct(commit) on a flow that does not match IP: OVS refuses it (OFPBAC_MATCH_INCONSISTENT).
    bad.flowset.add(Flow(Table.NAT, 7, Match(), (Ct(commit=True, zone=1),), cookie(CookieKind.INFRA)))
    with pytest.raises(OpenFlowError, match=r"MATCH_INCONSISTENT|invalid"):
        apply(lab, bad)
    assert flow_table(lab).dump_text() == before


def test_cut_on_rule_removal_stops_an_open_session(lab_factory):
    lab = lab_factory(PORTS)
    apply(lab, compiled_text(policy(rule("web", "tcp/8080"), rule("other", "tcp/9090"))))
    echo = lab.popen("outside", [*PY, "echo", "8080", "--timeout", "60"], stdout=subprocess.PIPE, text=True)
    assert echo.stdout and "listening" in echo.stdout.readline()
    session = lab.popen("inside", [*PY, "session", "198.51.100.9", "8080", "--timeout", "1"],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert session.stdin and session.stdout and session.stdout.readline().strip() == "connected"

        def say(word: str) -> str:
            session.stdin.write(word + "\n")  # type: ignore[union-attr]
            session.stdin.flush()  # type: ignore[union-attr]
            return session.stdout.readline().strip()  # type: ignore[union-attr]

        assert say("one") == "reply one"
        apply(lab, compiled_text(policy(rule("web", "tcp/8080"), rule("other", "tcp/9091"))))
        assert say("two") == "reply two", "a change to another rule must not cut this session"
        apply(lab, compiled_text(policy(rule("other", "tcp/9091"))))
        assert say("three") == "timeout"
    finally:
        session.kill()
        echo.kill()


def test_hitless_apply_of_thousands_of_rules_loses_no_ping(lab_factory):
    lab = lab_factory(PORTS)

    def big(offset: int) -> str:
        filler = [rule(f"r{i}", f"tcp/{10000 + offset + i}", "drop") for i in range(3000)]
        return policy(*filler, rule("ping", "icmp/echo-request"))

    apply(lab, compiled_text(big(0)))
    assert ping(lab, "inside", "198.51.100.9")
    pinger = lab.popen("inside", ["ping", "-n", "-q", "-i", "0.01", "-c", "400", "198.51.100.9"],
                       stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    result = apply(lab, compiled_text(big(1500)))
    assert result.plan.counts()["add"] >= 1500
    out, _ = pinger.communicate(timeout=60)
    assert " 0% packet loss" in out, out


def test_confirm_rolls_back_unless_confirmed(lab_factory):
    lab = lab_factory(PORTS)
    allow = compiled_text(policy(rule("all", None)))
    deny = compiled_text(policy(rule("none", None, "drop")))
    apply(lab, allow)
    assert ping(lab, "inside", "198.51.100.9")
    result = apply(lab, deny, confirm=4.0)
    assert result.rollback_at is not None
    assert not ping(lab, "inside", "198.51.100.9", deadline=1)
    deadline = time.time() + 15
    while time.time() < deadline and not ping(lab, "inside", "198.51.100.9"):
        time.sleep(0.5)
    assert ping(lab, "inside", "198.51.100.9"), "the unconfirmed policy was not rolled back"
    apply(lab, deny, confirm=3.0)
    runner = CliRunner()
    assert runner.invoke(main, ["confirm", "br0", "--db", lab.db_endpoint]).exit_code == 0
    time.sleep(4)
    assert not ping(lab, "inside", "198.51.100.9", deadline=1), "a confirmed policy must stay"


def test_stateless_rule_needs_its_pair(lab_factory):
    lab = lab_factory(PORTS)
    one_way = rule("ntp-out", "udp/123", extra=", stateful: false")
    back = "    - {name: ntp-back, from: outside, services: [udp/123], action: allow, stateful: false}"
    apply(lab, compiled_text(policy(one_way)))
    with server(lab, "outside", "udp", 123):
        assert not converse(lab, "inside", "udp", "198.51.100.9", 123, sport=123)["ok"]
    apply(lab, compiled_text(policy(one_way, back)))
    with server(lab, "outside", "udp", 123):
        assert converse(lab, "inside", "udp", "198.51.100.9", 123, sport=123)["ok"]
    assert not any(line for line in lab.appctl(["dpctl/dump-conntrack"]).splitlines() if "dport=123" in line)


def test_plan_exit_codes_and_cli_errors(lab_factory, tmp_path):
    lab = lab_factory(PORTS)
    db = ["--db", lab.db_endpoint]
    seed = str(POLICIES / "seed-firewall.yaml")
    runner = CliRunner()
    assert runner.invoke(main, ["plan", seed, *db]).exit_code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nswitch: {bridge: br0}\nfirewall: {rules: [{name: x, from: nowhere, action: allow}]}\n")
    before = flow_table(lab).dump_text()
    result = runner.invoke(main, ["apply", str(bad), *db])
    assert result.exit_code == 1
    assert f"{bad}:3:" in result.output
    assert flow_table(lab).dump_text() == before
    assert sys.executable
    assert target_of(lab).appctl() is not None
