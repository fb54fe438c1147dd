"""`ovsmgr bench run --switch system --hosts gen=ssh:...,sink=ssh:...`: the bench drives its
hosts over ssh and an OVS it did not start, as on the Vagrant VMs (vagrant/README.md).

An embedded lab stands in for the three VMs: its OVS is "the system OVS" (``--db`` points at
the lab's socket) and each host namespace runs an ``sshd`` of its own on its loopback, reached
with ``ProxyCommand ip netns exec NS nc 127.0.0.1 22`` (a throwaway host key and client key in a
temporary directory, ``UsePAM no``). Every command the bench runs on gen and sink must then
go through ssh: sshd's logs count the sessions, and trafgen, tc, nft and the probes only
exist in the namespaces if they did.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ovsmgr.bench.pipelines import DEFAULT_PORTS
from ovsmgr.lab.ovs import Lab, LabSpec

pytestmark = pytest.mark.integration

TOOLS = ("ovs-vswitchd", "trafgen", "tc", "nft", "taskset", "nc", "ssh", "ssh-keygen")
SSHD = "/usr/sbin/sshd"
SPEC = """version: 1
name: ssh
datapath: netdev
duration: 0.5
warmup: 0.2
probe_rate: 200
experiments:
  - {name: sweep, method: sweep, pipelines: [seed-firewall], flows: [10], sizes: [64],
     rates: [2kpps]}
  - {name: tcp, method: rules, systems: [ovsmgr], rule_kinds: [dport], rules: [0], flows: [10],
     measures: [tcp], traffic: {proto: tcp}}
  - {name: linux, method: rules, systems: [linux], rule_kinds: [dport], rules: [0],
     flows: [10], measures: [ndr]}
"""
SSHD_CONFIG = """Port 22
ListenAddress 127.0.0.1
HostKey {dir}/host_key
AuthorizedKeysFile {dir}/authorized_keys
PidFile {dir}/sshd-{name}.pid
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
LogLevel VERBOSE
"""
CLIENT_CONFIG = """Host {name}
  User root
  IdentityFile {dir}/id_ed25519
  ProxyCommand ip netns exec {netns} nc 127.0.0.1 22
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
"""


@pytest.fixture(scope="module")
def ssh_lab() -> Iterator[tuple[Lab, Path, dict[str, str]]]:
    if os.geteuid() != 0:
        pytest.skip("bench needs root")
    missing = [t for t in TOOLS if shutil.which(t) is None] + ([] if os.path.exists(SSHD) else [SSHD])
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (scripts/install: openssh-server, netcat-openbsd)")
    name = f"os{secrets.token_hex(3)}"
    keys = Path(tempfile.mkdtemp(prefix="ovsmgr-bench-ssh-"))
    lab = Lab(name, tempfile.mkdtemp(prefix=f"ovsmgr-{name}-", dir="/tmp"))
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        lab.up(LabSpec("br0", "netdev", list(DEFAULT_PORTS), name))
        netns = {p["name"]: p["netns"] for p in lab.status()["ports"]}
        for key in ("host_key", "id_ed25519"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / key)], check=True)
        shutil.copy(keys / "id_ed25519.pub", keys / "authorized_keys")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        client = []
        for host, port in (("gen", "inside"), ("sink", "outside")):
            ns = netns[port]
            (keys / f"sshd-{host}.conf").write_text(SSHD_CONFIG.format(dir=keys, name=host))
            subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
            daemons.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, SSHD, "-D", "-f", str(keys / f"sshd-{host}.conf"),
                 "-E", str(keys / f"sshd-{host}.log")], stdin=subprocess.DEVNULL))
            client.append(CLIENT_CONFIG.format(name=f"{name}-{host}", dir=keys, netns=ns))
        (keys / "config").write_text("".join(client))
        for host in ("gen", "sink"):  # sshd is listening once a command gets through
            for _ in range(50):
                probe = subprocess.run(["ssh", "-F", str(keys / "config"), "-o", "BatchMode=yes",
                                        f"{name}-{host}", "true"], capture_output=True, check=False)
                if probe.returncode == 0:
                    break
                time.sleep(0.1)
            else:
                pytest.fail(f"sshd in {host}'s namespace did not answer: {probe.stderr!r}")
        yield lab, keys, {"gen": f"{name}-gen", "sink": f"{name}-sink"}
    finally:
        for daemon in daemons:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=5)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        try:
            lab.down()
        finally:
            shutil.rmtree(lab.dir, ignore_errors=True)
            shutil.rmtree(keys, ignore_errors=True)


def _commands_in(netns: str) -> set[str]:
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                          check=True).stdout.split()
    comms = set()
    for pid in pids:
        try:
            comms.add(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            continue
    return comms


def _sessions(keys: Path, host: str) -> int:
    return (keys / f"sshd-{host}.log").read_text().count("Accepted publickey")


@pytest.fixture(scope="module")
def ssh_run(ssh_lab: tuple[Lab, Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[dict, dict[str, int], Lab]:  # type: ignore[type-arg]
    lab, keys, names = ssh_lab
    before = {host: _sessions(keys, host) for host in names}
    out = tmp_path_factory.mktemp("bench") / "ssh"
    spec = out.parent / "ssh.yaml"
    spec.write_text(SPEC)
    ovsmgr = [sys.executable, "-c", "import sys; from ovsmgr.cli import main; sys.exit(main())"]
    proc = subprocess.run(
        [*ovsmgr, "bench", "run", str(spec), "--out", str(out), "--switch", "system",
         "--db", lab.db_endpoint, "--bridge", "br0",
         "--hosts", f"gen=ssh:{names['gen']}:eth0,sink=ssh:{names['sink']}:eth0",
         "--ssh-config", str(keys / "config"), "--remote-python", sys.executable],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sessions = {host: _sessions(keys, host) - before[host] for host in names}
    return json.loads((out / "results.json").read_text()), sessions, lab


def test_the_points_were_measured_through_the_ssh_hosts(ssh_run: tuple[dict, dict[str, int], Lab]) -> None:  # type: ignore[type-arg]
    data, _, _ = ssh_run
    status = {e["name"]: e["status"] for e in data["experiments"]}
    assert status["sweep"] == "done" and status["tcp"] == "done"
    sweep = next(p for p in data["points"] if p["method"] == "sweep")
    assert sweep["params"]["pipeline"] == "seed-firewall" and sweep["params"]["datapath"] == "netdev"
    assert sweep["figures"]["delivered_pps"] > 0
    assert sweep["baseline"]["params"]["pipeline"] == "plain"
    assert sweep["baseline"]["figures"]["delivered_pps"] > 0
    assert sweep["figures"]["probe_sent"] > 0 and sweep["figures"]["probe_loss"] < 1  # agents ran remotely
    tcp = next(p for p in data["points"] if p["params"].get("measure") == "tcp")
    assert tcp["figures"]["tcp_gbps"] > 0 and tcp["figures"]["rr_tps"] > 0


def test_linux_baselines_are_refused_on_a_system_switch(ssh_run: tuple[dict, dict[str, int], Lab]) -> None:  # type: ignore[type-arg]
    data, _, _ = ssh_run
    linux = next(e for e in data["experiments"] if e["name"] == "linux")
    assert linux["status"] == "failed" and "--switch system" in linux["error"]


def test_every_host_command_went_over_ssh_and_nothing_was_left_running(
        ssh_run: tuple[dict, dict[str, int], Lab]) -> None:  # type: ignore[type-arg]
    _, sessions, lab = ssh_run
    # per trial: tc, trafgen, the probe agent, counters twice; plus nft, ip addr, iperf3 ...
    assert sessions["gen"] >= 10 and sessions["sink"] >= 10, sessions
    for port in lab.status()["ports"]:
        # the watchdogs' cat and sleep go within their 2 s grace; load and agents are gone already
        assert not _commands_in(port["netns"]) & {"trafgen", "iperf3", "python", "python3"}
        deadline = time.monotonic() + 5
        while (left := _commands_in(port["netns"]) & {"cat", "sleep"}) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, left
        tables = subprocess.run(["ip", "netns", "exec", port["netns"], "nft", "list", "tables"],
                                capture_output=True, text=True, check=True).stdout
        assert "ovsmgr_bench" not in tables  # the bed took its drop rules away again
