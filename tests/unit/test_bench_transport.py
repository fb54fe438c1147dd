"""The bench's host transport: local namespaces through ``ip netns exec``, ``ssh:`` hosts
through ``ssh -F CONFIG -o BatchMode=yes``, remote background processes under a watchdog."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import click
import pytest

from ovsmgr.bench import netns
from ovsmgr.bench.measure import agent
from ovsmgr.cli.bench import _system_switch


@pytest.fixture(autouse=True)
def transport() -> Iterator[netns.SshTransport]:
    previous = netns.ssh
    try:
        yield netns.use_ssh("/etc/cfg", "/opt/venv/bin/python")
    finally:
        netns.ssh = previous


def test_local_namespaces_are_unchanged() -> None:
    assert netns.in_netns("ns1", ["tc", "qdisc"], cpu=0) == [
        "ip", "netns", "exec", "ns1", "taskset", "-c", "0", "tc", "qdisc"]
    assert agent("ns1") == [sys.executable, "-m", "ovsmgr.lab.probe"]
    assert netns.ssh.sessions == {}


def test_ssh_hosts_get_one_quoted_command_and_are_counted(transport: netns.SshTransport) -> None:
    argv = netns.in_netns("ssh:gen", ["nft", "-f", "-", "a b"], cpu=1)
    assert argv[:5] == ["ssh", "-F", "/etc/cfg", "-o", "BatchMode=yes"]
    assert argv[-2:] == ["gen", "taskset -c 1 nft -f - 'a b'"]
    netns.in_netns("ssh:gen", ["true"])
    assert transport.sessions == {"gen": 2}
    assert agent("ssh:sink") == ["/opt/venv/bin/python", "-m", "ovsmgr.lab.probe"]


def test_without_a_config_ssh_uses_its_own() -> None:
    netns.use_ssh()
    assert "-F" not in netns.in_netns("ssh:gen", ["true"])
    assert netns.ssh.python == netns.REMOTE_PYTHON


def test_the_watchdog_ends_the_command_when_stdin_closes() -> None:
    script = netns._watched("sh -c 'trap \"echo term; exit 3\" TERM; echo up; while :; do sleep 0.05; done'")
    proc = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    assert proc.poll() is None  # runs while the session's stdin is open
    out, _ = proc.communicate(timeout=5)
    assert out.split() == ["up", "term"] and proc.returncode == 3


def test_the_watchdog_passes_output_and_status_of_a_command_that_ends_itself() -> None:
    # stdin stays open until the command is done (closing it is the stop signal)
    proc = subprocess.Popen(["sh", "-c", netns._watched("sh -c 'echo done; exit 4'")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    out = proc.stdout.read()
    assert proc.wait(5) == 4 and out == "done\n"
    proc.stdin.close()


def test_processes_wait_keeps_an_ssh_session_open_until_the_command_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """`Processes.start` wraps ssh commands; `wait` must not close stdin (that would stop them)."""
    procs = netns.Processes()
    monkeypatch.setattr(netns, "_is_ssh", lambda argv: True)
    proc = procs.start(["sh", "-c", "sleep 0.3; echo finished"])
    out, _ = procs.wait(proc, 5)
    assert out == "finished\n"
    proc = procs.start(["sh", "-c", "sleep 30"])
    start = time.monotonic()
    procs.stop(proc)
    assert time.monotonic() - start < 3 and proc.returncode is not None


def test_files_reach_a_remote_host_once(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    calls: list[tuple[list[str], str | None]] = []
    monkeypatch.setattr(netns, "run", lambda argv, input=None, timeout=60: calls.append((argv, input)) or "")
    path = tmp_path / "trafgen.cfg"
    path.write_text("{ eth() }\n")
    netns.push_file("ns1", path)
    assert calls == []
    netns.push_file("ssh:gen", path)
    netns.push_file("ssh:gen", path)
    assert len(calls) == 1 and calls[0][1] == "{ eth() }\n" and f"cat > {path}" in calls[0][0][-1]
    path.write_text("{ eth(), udp() }\n")
    netns.push_file("ssh:gen", path)
    assert len(calls) == 2


def test_system_switch_options() -> None:
    assert _system_switch("lab", "br0", None, None) is None
    system = _system_switch("system", "br1", None, "gen=ssh:gen,sink=ssh:sink:eth1")
    assert (system.gen, system.sink, system.bridge, system.db) == (
        "ssh:gen", "ssh:sink:eth1", "br1", "unix:/var/run/openvswitch/db.sock")
    with pytest.raises(click.BadParameter):
        _system_switch("system", "br0", None, "gen=ssh:gen")
    with pytest.raises(click.UsageError):
        _system_switch("lab", "br0", None, "gen=ssh:gen,sink=ssh:sink")
