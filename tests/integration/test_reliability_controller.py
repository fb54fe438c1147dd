"""Controller mode when things go wrong: a controller that stops answering, and a soak run.

The unreachable controller is SIGSTOPped, not killed: its sockets stay open and
OVS's inactivity probes go unanswered, which is what a hung or partitioned
controller looks like to the switch (a SIGKILL closes the connection at once; that
case is in test_controller.py). OVS probes tcp: and ssl: controllers only (a unix:
one, a lab's default, needs none: `ovsmgr.controller.switchdb`), so the controller
runs in the switch's namespace and listens on its loopback. OVS 3.1 clamps `inactivity_probe` to at least 5 s
(`rconn_set_probe_interval`: MAX(5, seconds)), and ovsmgr sets exactly that minimum.
A bridge with `fail_mode=standalone` fails open 3 probe intervals after the last
message from its controller (`fail_open.c`, `trigger_duration`): it flushes every
flow and switches everything with a hidden `priority=15790320,actions=NORMAL` flow
(seen on this OVS when the same test ran with standalone). The test holds the
controller stopped past that point.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from ovsmgr.lab.ovs import Lab
from tests.support.soak import SOAK_POLICY, SOAK_PORTS, SoakConfig, run_soak

from .controller_helpers import OVSMGR, controller, eventually, probe_stream
from .traffic import converse, ping, server

pytestmark = pytest.mark.integration

PORTS, POLICY = SOAK_PORTS, SOAK_POLICY  # the soak's two-port firewall: blocklist, a reject, allow out
INSIDE, OUTSIDE = "10.0.0.10", "198.51.100.9"
PROBE_SECONDS = 5
"""OVS's effective inactivity probe: ovsmgr asks for 5000 ms, the smallest value OVS 3.1 honours."""
OPENFLOW_PORT = 6653
"""The controller's listener in the lab switch's namespace (its own loopback: no clash)."""
FAIL_OPEN_PRIORITY = 0xF0F0F0
"""The hidden `actions=NORMAL` flow of a bridge that failed open (above every OpenFlow priority)."""
STATS = ("duration=", "n_packets=", "n_bytes=", "idle_age=", "hard_age=")


def test_controller_unreachable_past_three_inactivity_probes_keeps_the_bridge_secure(lab_factory, tmp_path):
    lab = lab_factory(PORTS)
    lab.appctl(["vlog/set", "rconn:file:dbg"])  # the probes OVS sends, in the log a failure keeps
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    in_switch_netns = ["ip", "netns", "exec", lab.switch_netns, OVSMGR]  # `ip` execs: the pid is ovsmgr's
    listen = ["--listen", f"tcp:127.0.0.1:{OPENFLOW_PORT}"]
    with controller(lab, [policy], tmp_path, listen, in_switch_netns) as ctl, \
            server(lab, "inside", "tcp", 22, timeout=300), server(lab, "outside", "tcp", 22, timeout=300), \
            server(lab, "outside", "tcp", 8080, timeout=300):
        assert ctl.proc is not None
        pid = ctl.proc.pid
        row = eventually(lambda: _row_if(lab, lambda r: r["is_connected"]), 30)
        assert row, f"OVS never reported the controller connected: {controller_row(lab)}"
        assert row["inactivity_probe"] == PROBE_SECONDS * 1000 and row["max_backoff"] == 1000, row
        assert row["connection_mode"] == "out-of-band", row
        assert ping(lab, "inside", OUTSIDE, count=2)  # both hosts' MACs learned before the snapshot
        _denied_and_allowed(lab, controller_up=True)
        flows_before = _flows(lab)
        hidden_before = _bridge_flows(lab)
        generation = ctl.api().call("GET", "/v1/status")["generation"]
        connects_before = ctl.log().count("switch br0 connected")

        duration = 50.0  # 2 s before the stop, 23 s stopped, about 5 s of checks, the reconnection, after it
        with probe_stream(lab, "inside", "outside", OUTSIDE, 9000, duration=duration, interval=0.01) as received:
            time.sleep(2)
            stopped_at = time.monotonic()
            os.kill(pid, signal.SIGSTOP)
            try:
                row = eventually(lambda: _row_if(lab, lambda r: not r["is_connected"]), 3 * PROBE_SECONDS + 15)
                assert row, f"OVS still reports the stopped controller connected: {controller_row(lab)}"
                assert row["status"].get("state") in ("BACKOFF", "CONNECTING"), row
                disconnected_after = time.monotonic() - stopped_at
                # past the point where a standalone bridge fails open, with margin
                time.sleep(max(0.0, stopped_at + 3 * PROBE_SECONDS + 8 - time.monotonic()))
                held = time.monotonic() - stopped_at
                assert ctl.proc.poll() is None
                assert _vsctl(lab, "get", "bridge", "br0", "fail_mode") == "secure"
                assert _flows(lab) == flows_before, "the flow table changed while the controller was unreachable"
                hidden = _bridge_flows(lab)
                assert hidden == hidden_before, f"flows appeared or went: {set(hidden) ^ set(hidden_before)}"
                assert not [f for f in hidden if _priority(f) > 0xFFFF], \
                    f"a hidden flow appeared (fail-open is priority={FAIL_OPEN_PRIORITY}, in-band above 65535)"
                assert not [f for f in _flows(lab) if "cookie=0xf5a" not in f], "a foreign flow appeared"
                vswitchd_log = (lab.dir / "ovs-vswitchd.log").read_text()
                assert "no response to inactivity probe" in vswitchd_log
                assert "failing open" not in vswitchd_log
                _denied_and_allowed(lab, controller_up=False)
                assert time.monotonic() - stopped_at < duration - 12, "no time left in the probe stream to see it resume"
            finally:
                os.kill(pid, signal.SIGCONT)
            resumed_at = time.monotonic()
            row = eventually(lambda: _row_if(lab, lambda r: r["is_connected"]), 20)
            assert row, f"OVS did not reconnect to the resumed controller: {controller_row(lab)}\n{ctl.log()[-2000:]}"
            reconnected_at = time.monotonic()
            reconnected_after = reconnected_at - resumed_at
            assert eventually(lambda: ctl.log().count("switch br0 connected") > connects_before, 10), ctl.log()[-2000:]

        stopped = [r for r in received if stopped_at <= r["sent"] <= resumed_at]
        loss_all, gap_all = _loss(received)
        loss_stopped, gap_stopped = _loss(stopped)
        print(f"disconnect seen after {disconnected_after:.1f} s, held {held:.1f} s, reconnected "
              f"{reconnected_after:.1f} s after SIGCONT; probes: {len(received)} received, loss {loss_all:.2%} "
              f"(longest gap {gap_all}), while stopped {len(stopped)}, loss {loss_stopped:.2%} "
              f"(longest gap {gap_stopped})")
        assert len(stopped) >= 0.9 * (resumed_at - stopped_at) / 0.01, "probes did not keep passing"
        assert sum(1 for r in received if r["sent"] > reconnected_at) > 100, "probes stopped after the reconnection"
        assert loss_all <= 0.03 and loss_stopped <= 0.03
        assert gap_stopped <= 100, f"{gap_stopped} probes in a row lost (1 s at 100/s)"

        # back, and clean: nothing pushed, nothing drifted, the packet-in path works again
        status = eventually(lambda: _status_if(ctl, lambda s: s["connected"]), 10)
        assert status and status["generation"] == generation, status
        assert _flows(lab) == flows_before
        text = ctl.cli("status", "br0").stdout
        assert "drifted: no" in text and "switch connected" in text and "fail_mode secure" in text, text
        answer = converse(lab, "inside", "tcp", OUTSIDE, 22, timeout=3)
        assert not answer["ok"] and "refused" in answer["error"].lower(), answer
        out = ctl.cli("set", "add", "blocklist", "192.0.2.77")
        assert "1 flows added" in out.stdout


def test_soak_steady_traffic_and_updates_loses_nothing_and_memory_stays_flat(lab_factory, tmp_path):
    """One minute of `tests.support.soak` (benchmarks/soak.py runs it for longer): see its docstring."""
    lab = lab_factory(SOAK_PORTS)
    policy = tmp_path / "soak.yaml"
    policy.write_text(SOAK_POLICY)
    with controller(lab, [policy], tmp_path) as ctl:
        assert ctl.proc is not None
        config = SoakConfig(duration=60, warmup=10, sample_interval=2)
        result = run_soak(lab, ctl.proc.pid, ctl.api(), [policy], config)
    summary = result.to_json()
    print(json.dumps(summary, indent=2))
    assert not result.failures, "\n".join(result.failures) + "\n" + ctl.log()[-2000:]
    assert summary["updates"]["applied"] >= 0.5 * config.duration * config.update_rate, summary["updates"]
    assert summary["tcp"]["ok"] >= 0.5 * config.duration / config.tcp_interval, summary["tcp"]


# --- helpers -------------------------------------------------------------------------------------
def _denied_and_allowed(lab: Lab, controller_up: bool) -> None:
    """Outside to inside's listening tcp/22 is dropped (default drop); inside to tcp/22 is rejected
    (RST from the controller when it runs, a silent drop when it does not); tcp/8080 passes."""
    assert not converse(lab, "outside", "tcp", INSIDE, 22, timeout=2)["ok"], "outside reached inside's tcp/22"
    answer = converse(lab, "inside", "tcp", OUTSIDE, 22, timeout=2)
    assert not answer["ok"], "the rejected tcp/22 passed"
    assert ("refused" in answer["error"].lower()) == controller_up, answer
    assert converse(lab, "inside", "tcp", OUTSIDE, 8080, timeout=3)["ok"], "an allowed TCP connection failed"


def _vsctl(lab: Lab, *args: str) -> str:
    proc = lab.switch_exec(["ovs-vsctl", *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return str(proc.stdout.strip())


def controller_row(lab: Lab) -> dict[str, Any]:
    """The bridge's one Controller row, columns decoded from ovs-vsctl's JSON."""
    columns = ["is_connected", "status", "inactivity_probe", "max_backoff", "connection_mode"]
    table = json.loads(_vsctl(lab, "--format=json", f"--columns={','.join(columns)}", "list", "controller"))
    (row,) = table["data"]
    return {name: _ovsdb_value(value) for name, value in zip(table["headings"], row, strict=True)}


def _ovsdb_value(value: Any) -> Any:
    if isinstance(value, list) and value and value[0] == "map":
        return {k: v for k, v in value[1]}
    if isinstance(value, list) and value and value[0] == "set":
        return value[1][0] if len(value[1]) == 1 else None if not value[1] else value[1]
    return value


def _row_if(lab: Lab, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    row = controller_row(lab)
    return row if predicate(row) else None


def _flows(lab: Lab) -> list[str]:
    """Every OpenFlow flow of the bridge (ours, learned, anyone's) as text without counters."""
    return sorted(line for line in lab.ofctl(["dump-flows", "--no-stats"]).splitlines() if "actions=" in line)


def _bridge_flows(lab: Lab) -> list[str]:
    """`bridge/dump-flows`: the OpenFlow tables plus the hidden flows (fail-open, in-band), no counters."""
    out = []
    for line in lab.appctl(["bridge/dump-flows", "br0"]).splitlines():
        fields = [f.strip() for f in line.split(",")]
        out.append(",".join(f for f in fields if not f.startswith(STATS)))
    return sorted(out)


def _priority(flow: str) -> int:
    for field in flow.split(","):
        if field.startswith("priority="):
            return int(field.removeprefix("priority="))
    return 0


def _loss(received: list[dict[str, Any]]) -> tuple[float, int]:
    """Share of probes lost between the first and the last received one (by sequence number),
    and the longest run of consecutive losses."""
    seqs = sorted({int(r["seq"]) for r in received})
    if len(seqs) < 2:
        return 1.0, 0
    span = seqs[-1] - seqs[0] + 1
    gap = max(b - a - 1 for a, b in itertools.pairwise(seqs))
    return 1 - len(seqs) / span, gap


def _status_if(ctl, predicate):  # type: ignore[no-untyped-def]
    status = ctl.api().call("GET", "/v1/status")
    return status if predicate(status) else None
