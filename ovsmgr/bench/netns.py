"""Network namespaces for the bench: interface counters, pinned processes, clean-up.

Counters are read from ``/proc/thread-self/net/dev`` after ``setns(2)`` into each
namespace in turn, so a snapshot of the generator's and the sink's interfaces
takes well under a millisecond: two ``ip netns exec`` calls would be tens of
milliseconds apart, which at 100 kpps is thousands of packets of error in a
zero-loss search.

Every process the bench starts goes through `Processes`: each gets a session
(and process group) of its own, because trafgen forks its senders and only a
signal to the whole group stops them all; `stop_all` kills every group still
running when a run ends or is interrupted (Ctrl-C does not reach them itself).

A host may also be another machine: a ``Host.netns`` of ``ssh:NAME`` (`REMOTE`) runs its
commands through ``ssh -F CONFIG -o BatchMode=yes NAME`` (`SshTransport`, set once per run
with `use_ssh`). A background process there runs under a watchdog (`_watched`) that
ends its process group when the ssh session's stdin closes, so stopping (or killing) the
local ssh client stops the remote process too; counters are ``/proc/net/dev`` read over
ssh, one session per host started at once (milliseconds apart, not microseconds: a remote
trial needs seconds of measurement, not fractions of one).
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovsmgr.lab import netns as lab_netns

GENERATOR_CPU = 0
"""trafgen, the probes and iperf3 run here; the switch gets the other CPU (DPDK's PMD is pinned to
CPU 1 by the lab, a netdev lab's ovs-vswitchd is moved there by the test bed)."""
SWITCH_CPU = 1

REMOTE = "ssh:"
"""``Host.netns`` prefix of a host reached over ssh: ``ssh:gen`` is the ssh host ``gen``."""
REMOTE_PYTHON = "/opt/ovsmgr/venv/bin/python"
"""The Python with ovsmgr on the Vagrant VMs (vagrant/provision/ovsmgr.sh)."""


@dataclass
class SshTransport:
    """How commands reach ``ssh:`` hosts; ``sessions`` counts the ssh commands made per host."""

    config: str | None = None
    python: str = REMOTE_PYTHON
    sessions: dict[str, int] = field(default_factory=dict)
    _pushed: dict[tuple[str, str], str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def argv(self, host: str, command: str) -> list[str]:
        with self._lock:
            self.sessions[host] = self.sessions.get(host, 0) + 1
        config = ["-F", self.config] if self.config else []
        return ["ssh", *config, "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-T", host, command]


ssh = SshTransport()


def use_ssh(config: str | None = None, python: str | None = None) -> SshTransport:
    """Set (and return) the run's ssh transport: the ssh config file, the remote Python."""
    global ssh
    ssh = SshTransport(config, python or REMOTE_PYTHON)
    return ssh


def is_remote(netns: str) -> bool:
    return netns.startswith(REMOTE)


def python_for(netns: str) -> str:
    """The Python that runs the bench's agents (``python -m ovsmgr.lab.probe``) on a host."""
    return ssh.python if is_remote(netns) else sys.executable


def push_file(netns: str, path: str | Path) -> None:
    """Copy a file the bench wrote for a host to the same path there (remote hosts only;
    skipped when that content was already sent)."""
    if not is_remote(netns):
        return
    text = Path(path).read_text()
    key = (netns, str(path))
    if ssh._pushed.get(key) == text:
        return
    remote = shlex.quote(str(path))
    run(in_netns(netns, ["sh", "-c", f"mkdir -p $(dirname {remote}) && cat > {remote}"]), input=text)
    ssh._pushed[key] = text


def _watched(command: str) -> str:
    """A remote command in a session of its own, ended (TERM, then KILL) when the ssh session's
    stdin closes: without a terminal, sshd leaves a command running when its client goes."""
    return (f"exec 3<&0; setsid {command} </dev/null 3<&- & p=$!; "
            "{ cat <&3 >/dev/null; kill -TERM -$p; sleep 2; kill -KILL -$p; } >/dev/null 2>&1 & w=$!; "
            "exec 3<&-; "
            "wait $p; rc=$?; kill $w 2>/dev/null; exit $rc")


@dataclass(frozen=True)
class IfCounters:
    rx_packets: int
    rx_dropped: int
    tx_packets: int
    tx_dropped: int
    rx_bytes: int
    tx_bytes: int


def parse_proc_net_dev(text: str) -> dict[str, IfCounters]:
    """``/proc/net/dev`` -> counters per interface."""
    out: dict[str, IfCounters] = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        f = [int(x) for x in rest.split()]
        out[name.strip()] = IfCounters(rx_packets=f[1], rx_dropped=f[3], tx_packets=f[9],
                                       tx_dropped=f[11], rx_bytes=f[0], tx_bytes=f[8])
    return out


def read_counters(targets: Sequence[tuple[str, str]]) -> tuple[float, list[IfCounters]]:
    """(monotonic time, counters) of each (namespace, interface), read back to back
    (``ssh:`` hosts over ssh, all at once; the time is then the middle of those reads)."""
    remote = {netns: subprocess.Popen(in_netns(netns, ["cat", "/proc/net/dev"]), text=True,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
              for netns, _ in targets if is_remote(netns)}
    sent = time.monotonic()
    local = [netns for netns, _ in targets if not is_remote(netns)]
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    fds = [os.open(f"/run/netns/{netns}", os.O_RDONLY) for netns in local]
    read: dict[str, str] = {}
    try:
        stamp = time.monotonic()
        for netns, fd in zip(local, fds, strict=True):
            lab_netns.setns(fd, netns)
            with open("/proc/thread-self/net/dev") as f:
                read[netns] = f.read()
    finally:
        lab_netns.setns(own, "the thread's own namespace")
        for fd in (own, *fds):
            os.close(fd)
    for netns, proc in remote.items():
        out_text, err = proc.communicate(timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"counters of {netns}: {err.strip()[-500:]}")
        read[netns] = out_text
    if remote:
        stamp = (sent + time.monotonic()) / 2 if not local else stamp
    texts = [read[netns] for netns, _ in targets]
    out = []
    for (netns, iface), text in zip(targets, texts, strict=True):
        counters = parse_proc_net_dev(text)
        if iface not in counters:
            raise RuntimeError(f"no interface {iface} in namespace {netns}")
        out.append(counters[iface])
    return stamp, out


def in_netns(netns: str, argv: Sequence[str], cpu: int | None = None) -> list[str]:
    """argv run inside a namespace (and pinned to one CPU)."""
    pinned = ["taskset", "-c", str(cpu), *argv] if cpu is not None else list(argv)
    if is_remote(netns):
        return ssh.argv(netns[len(REMOTE):], shlex.join(pinned))
    return ["ip", "netns", "exec", netns, *pinned]


def _is_ssh(argv: Sequence[str]) -> bool:
    return len(argv) > 2 and argv[0] == "ssh" and "BatchMode=yes" in argv


def run(argv: Sequence[str], timeout: float = 60, input: str | None = None) -> str:
    """Run a setup command; RuntimeError with its stderr when it fails."""
    stdin: dict[str, Any] = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False,
                          **stdin)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc.stdout


class Processes:
    """Background processes of a run; `stop_all` ends every one still running."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[str]] = []

    def start(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        if _is_ssh(argv):  # the remote end runs while this stdin stays open (`_watched`)
            argv = [*argv[:-1], _watched(argv[-1])]
            kwargs["stdin"] = subprocess.PIPE
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(list(argv), text=True, start_new_session=True, **kwargs)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str], sig: int = signal.SIGINT,
             timeout: float = 5.0) -> tuple[str, str]:
        """Signal a process's group (SIGINT lets trafgen print its totals), wait, return its output."""
        if proc not in self._procs:
            return "", ""  # already waited for
        if proc.stdin is not None and proc.poll() is None:
            try:  # an ssh session: closing its stdin ends the remote command (`_watched`)
                out, err = proc.communicate(timeout=timeout)
                self._procs.remove(proc)
                return out or "", err or ""
            except subprocess.TimeoutExpired:
                pass
        _signal_group(proc, sig)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            out, err = proc.communicate()
        _signal_group(proc, signal.SIGKILL)  # forked children the leader left behind
        if proc in self._procs:
            self._procs.remove(proc)
        return out or "", err or ""

    def wait(self, proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
        """Its output once it exits by itself (or, after ``timeout`` s, once it is killed)."""
        pipe, proc.stdin = proc.stdin, None  # an ssh session's open stdin keeps it running
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.stdin = pipe
            return self.stop(proc, signal.SIGKILL)
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
        if proc in self._procs:
            self._procs.remove(proc)
        return out or "", err or ""

    def stop_all(self) -> None:
        for proc in list(self._procs):
            self.stop(proc, signal.SIGKILL, timeout=2.0)


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next line a process writes to stdout, or '' after ``timeout`` s or at its exit
    (a plain readline would wait forever for a process that never writes)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


def _signal_group(proc: subprocess.Popen[str], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def pin_process_threads(pid: int, cpu: int) -> None:
    """Move every thread of a process to one CPU (``taskset -a -p``)."""
    run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)])


def thread_cpu_ticks(pid: int, prefix: str = "") -> int:
    """utime + stime (clock ticks) of a process's threads whose name starts with ``prefix``."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            if prefix and not (task / "comm").read_text().startswith(prefix):
                continue
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def steal_ticks() -> list[int]:
    """Clock ticks each CPU spent stolen by the hypervisor (the VM was not running)."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            out.append(int(line.split()[8]))
    return out


def cpu_count() -> int:
    return os.cpu_count() or 1
