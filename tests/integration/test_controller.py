"""Controller mode against a real ovs-vswitchd with real packets (root, lab namespaces)."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest

from ovsmgr.lab.netns import free_port
from ovsmgr.lab.ovs import LabPort

from .controller_helpers import (
    controller,
    eventually,
    flows_with_duration,
    probe_stream,
    scrape,
)
from .traffic import converse, ping, server

pytestmark = pytest.mark.integration

PORTS = (LabPort("inside", 1, "10.0.0.10/24"), LabPort("outside", 2, "198.51.100.9/24"))
OUTSIDE = "198.51.100.9"

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
addresses:
  blocklist: [203.0.113.0/24]
firewall:
  default: drop
  rules:
    - {{name: blocked, from: inside, src: "@blocklist", action: drop}}
    - {{name: no-ssh, from: inside, services: [tcp/22], action: reject}}
    - {{name: logged, from: inside, services: [udp/5353], action: drop, log: true}}
{rules}
"""
ALLOW_OUT = "    - {name: allow-out, from: inside, action: allow}"


def write_policy(path: Path, rules: str = ALLOW_OUT) -> Path:
    path.write_text(POLICY.format(rules=rules))
    return path


def passed_after(received: list[dict[str, float]], moment: float) -> int:
    return sum(1 for r in received if r["sent"] > moment)


def test_blocklist_member_added_and_removed_through_the_cli_while_a_probe_runs(lab_factory, tmp_path):
    lab = lab_factory(PORTS)
    with controller(lab, [write_policy(tmp_path / "p.yaml")], tmp_path) as ctl:
        assert ping(lab, "inside", OUTSIDE, count=2)  # an unrelated, established flow that keeps counting
        untouched_before = flows_with_duration(lab)
        # long enough for two CLI runs even on a loaded machine, with time to spare after them
        with probe_stream(lab, "inside", "outside", OUTSIDE, 9000, duration=20) as received:
            time.sleep(1)
            out = ctl.cli("set", "add", "blocklist", "10.0.0.10")
            added = time.monotonic()  # the API call is the CLI's last act (its start-up takes a while)
            assert "1 flows added" in out.stdout
            time.sleep(1.5)
            removing = time.monotonic()
            ctl.cli("set", "remove", "blocklist", "10.0.0.10")
            removed = time.monotonic()
        assert passed_after(received, 0) > 0
        blocked = [r for r in received if added < r["sent"] < removing]
        assert not blocked, f"{len(blocked)} probes passed while their source was blocklisted"
        assert passed_after(received, removed) > 100, "probes did not pass again after the removal"
        refused = ctl.cli("set", "add", "blocklist", "10.0.0.300", check=False)
        assert refused.returncode == 1 and "10.0.0.300" in refused.stderr
        ctl.cli("set", "add", "blocklist", "198.51.100.77")
        ctl.wait_recorded()  # the record is written off the update path: wait for it
        status = ctl.cli("status", "br0").stdout
        assert "set blocklist + 198.51.100.77" in status and "runtime changes" in status
        # the same facts as for a bridge run by `apply`: one record, one writer
        assert re.search(r"conntrack zone \d+: \d+ \(no limit\) connections", status), status
        assert "drifted: no" in status and "by controller:" in status, status
    after = flows_with_duration(lab)
    for key, age in untouched_before.items():
        if "nw_src=10.0.0.10" in key or "nw_src=198.51.100.77" in key:
            continue
        assert key in after and after[key] >= age, f"flow {key} was replaced or removed"
    assert lab.ofctl(["dump-flows", "table=40"]).count("nw_src=10.0.0.10") == 0


def test_policy_file_change_is_live_and_a_broken_file_is_refused(lab_factory, tmp_path):
    lab = lab_factory(PORTS)
    path = write_policy(tmp_path / "p.yaml", "    - {name: web-only, from: inside, services: [tcp/80], action: allow}")
    with controller(lab, [path], tmp_path) as ctl, server(lab, "outside", "tcp", 8080):
        assert not converse(lab, "inside", "tcp", OUTSIDE, 8080, timeout=1)["ok"]
        write_policy(path, "    - {name: web-only, from: inside, services: [tcp/80, tcp/8080], action: allow}")
        assert eventually(lambda: converse(lab, "inside", "tcp", OUTSIDE, 8080, timeout=1)["ok"], 10)
        flows = lab.ofctl(["dump-flows", "--no-stats"])
        path.write_text(path.read_text().replace("from: inside, services: [tcp/80, tcp/8080]", "from: nowhere"))
        status = eventually(lambda: _status_if(ctl, lambda s: s["reload_failures"] >= 1), 10)
        assert any("nowhere" in line for line in status["last_error"])
        assert lab.ofctl(["dump-flows", "--no-stats"]) == flows
        assert converse(lab, "inside", "tcp", OUTSIDE, 8080, timeout=2)["ok"]
        metrics = ctl.api().call("GET", "/v1/status")
        assert metrics["generation"] >= 2


def test_controller_kill_keeps_enforcing_restart_is_lossless_and_sweeps_stale_flows(lab_factory, tmp_path):
    lab = lab_factory(PORTS)
    path = write_policy(tmp_path / "p.yaml")
    with controller(lab, [path], tmp_path) as ctl:
        with probe_stream(lab, "inside", "outside", OUTSIDE, 9000, duration=9, interval=0.01) as received:
            time.sleep(1)
            ctl.kill(signal.SIGKILL)
            assert lab.switch_exec(["ovs-vsctl", "get", "bridge", "br0", "fail_mode"], capture_output=True,
                                   text=True).stdout.strip() == "secure"
            time.sleep(1)
            assert not converse(lab, "outside", "tcp", "10.0.0.10", 22, timeout=1)["ok"]  # no NORMAL fallback
            stale = "cookie=0xf5a000100000099,table=40,priority=59990,udp,reg0=0x1,tp_dst=7777 actions=drop"
            lab.ofctl(["add-flow", stale])
            write_policy(path, ALLOW_OUT + "\n    - {name: extra, from: outside, services: [tcp/25], action: allow}")
            ctl.start()
            time.sleep(0.5)
            write_policy(path)
        sent = 9 / 0.01
        assert len(received) >= sent * 0.97, f"lost {sent - len(received):.0f} of {sent:.0f} probes over the restart"
        assert eventually(lambda: "tp_dst=25" not in lab.ofctl(["dump-flows", "table=40"]), 10)
        assert "tp_dst=7777" not in lab.ofctl(["dump-flows", "table=40"])
        flows_before = managed_flows(lab)
        assert len(flows_before) > 30
        lab.restart_vswitchd()
        assert eventually(lambda: managed_flows(lab) == flows_before, 15), ctl.log()[-2000:]
        assert ping(lab, "inside", OUTSIDE, count=1, deadline=5)


def test_reject_answers_with_rst_and_logged_matches_are_rate_limited(lab_factory, tmp_path):
    lab = lab_factory(PORTS)
    match_log = tmp_path / "matches.jsonl"
    extra = ["--match-log", str(match_log), "--log-rate", "2", "--log-burst", "3"]
    with controller(lab, [write_policy(tmp_path / "p.yaml")], tmp_path, extra) as ctl:
        started = time.monotonic()
        answer = converse(lab, "inside", "tcp", OUTSIDE, 22, timeout=3)
        assert not answer["ok"] and "refused" in answer["error"].lower(), answer
        assert time.monotonic() - started < 2.5
        with probe_stream(lab, "inside", "outside", OUTSIDE, 5353, duration=2, interval=0.005) as received:
            pass
        assert not received
        status = eventually(lambda: _status_if(ctl, lambda s: s["packet_ins"]["log"] >= 300), 10)
        lines = [json.loads(line) for line in match_log.read_text().splitlines()]
        assert 3 <= len(lines) <= 3 + 2 * 4, f"{len(lines)} log lines for {status['packet_ins']['log']} matches"
        assert all(line["rule"] == "logged" and line["dport"] == 5353 for line in lines)
        assert status["log_suppressed"] > 200
        assert status["packet_ins"]["reject"] >= 1


def managed_flows(lab) -> list[str]:  # type: ignore[no-untyped-def]
    """Our flows as text, without those the switch learned (they do not survive a restart)."""
    return sorted(line for line in lab.ofctl(["dump-flows", "--no-stats"]).splitlines()
                  if "cookie=0xf5a" in line and "cookie=0xf5a0004" not in line)


def _status_if(ctl, predicate):  # type: ignore[no-untyped-def]
    status = ctl.api().call("GET", "/v1/status")
    return status if predicate(status) else None



def test_a_limited_rule_s_meter_goes_with_its_flows_and_its_drops_are_exported(lab_factory, tmp_path):
    """The controller pushes the meter before the flows that use it (else the switch refuses the
    bundle), finds it unchanged when it reconnects, puts it back after a switch restart, and exports
    what it dropped."""
    lab = lab_factory(PORTS)
    path = write_policy(tmp_path / "p.yaml", ALLOW_OUT.replace("action: allow}", "action: allow, limit: 50/s}"))
    metrics = f"127.0.0.1:{free_port()}"
    with controller(lab, [path], tmp_path, ["--metrics", metrics]) as ctl:
        meters = lab.ofctl(["dump-meters"])
        assert "pktps" in meters and "rate=50 burst_size=5" in meters, meters
        with probe_stream(lab, "inside", "outside", OUTSIDE, 9000, duration=2, interval=0.002) as received:
            pass
        assert 0 < len(received) < 1000 / 2, f"{len(received)} of 1,000 datagrams passed a limit of 50/s"
        samples = scrape(metrics).get("ovsmgr_limit_dropped_packets_total", [])
        dropped = [value for labels, value in samples if labels == {"bridge": "br0", "rule": "allow-out"}]
        assert dropped and dropped[0] > 500, samples
        ctl.kill(signal.SIGKILL)
        before = len(ctl.log())
        ctl.start()
        assert "reconciled" not in ctl.log()[before:], "a restarted controller finds the meter and flows as they are"
        lab.restart_vswitchd()
        assert eventually(lambda: "rate=50 burst_size=5" in lab.ofctl(["dump-meters"]), 15), \
            ctl.log()[-2000:]
        assert eventually(lambda: "meter:" in lab.ofctl(["dump-flows", "table=40"]), 15)
