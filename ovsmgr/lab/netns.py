"""Network namespaces of the lab, the kernel-test beds and the bench: entering one, the
processes in one, creating and deleting them, and the set-up commands run in them.

`entered` moves the calling *thread* into a namespace (``setns(2)`` through ctypes)
and back: a socket made there stays in that namespace, and ``/proc/thread-self/net``
shows its interfaces, without a process per look. `run` is every set-up command
(``ip``, ``ethtool``, the OVS daemons), through `ovsmgr.southbound.tools.run_tool`
(a timeout, the command in the message), failing with `LabError`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from ovsmgr.lab.spec import LabError

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
COMMAND_TIMEOUT = 60.0

_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int, what: str) -> None:
    """Move this thread into the network namespace open at ``fd`` (``what`` names it)."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise LabError(f"cannot enter network namespace {what}: {os.strerror(errno)}")


def enter(netns: str) -> None:
    """Move this thread into the named namespace (for good: `entered` comes back)."""
    try:
        target = os.open(NETNS_DIR / netns, os.O_RDONLY)
    except OSError as exc:
        raise LabError(f"cannot enter network namespace {netns}: {exc.strerror}") from None
    try:
        setns(target, netns)
    finally:
        os.close(target)


@contextlib.contextmanager
def entered(netns: str) -> Iterator[None]:
    """This thread inside the named namespace for the block, back in its own afterwards."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        enter(netns)
        try:
            yield
        finally:
            setns(own, "the thread's own namespace")
    finally:
        os.close(own)


def run(argv: Sequence[str], netns: str | None = None, env: Mapping[str, str] | None = None,
        input: str | None = None, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run a set-up command (in ``netns``), returning its stdout; LabError with its stderr."""
    from ovsmgr.southbound.tools import OvsToolError, run_tool  # the ovs library: not at import

    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    try:
        return run_tool(full, input=input, timeout=timeout, env=env)
    except OvsToolError as exc:
        raise LabError(str(exc)) from exc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick), in the calling
    thread's network namespace: for a listener on loopback (a store member, os-ken behind a relay)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def exists(netns: str) -> bool:
    return (NETNS_DIR / netns).exists()


def add(netns: str, created: Callable[[], None] = lambda: None) -> None:
    """Create a namespace with its loopback up; LabError if it exists already. ``created`` is
    called as soon as it exists, so the caller can record it before anything else can fail."""
    run(["ip", "netns", "add", netns])
    created()
    run(["ip", "-n", netns, "link", "set", "lo", "up"])


def pids(netns: str) -> list[int]:
    """Processes in a named namespace (what ``ip netns pids`` says, without forking it)."""
    try:
        inode = os.stat(NETNS_DIR / netns).st_ino
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    found.append(int(entry))
    return found


def delete(netns: str) -> None:
    """Kill what still runs in a namespace (a forgotten ``nc -l``), then delete it: a namespace
    with processes in it outlives ``ip netns del``, and so do its veths. Nothing if it is gone."""
    if not exists(netns):
        return
    inside = pids(netns)
    for pid in inside:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_gone(inside, 5.0)
    run(["ip", "netns", "del", netns])


def pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(processes: Sequence[int], timeout: float) -> bool:
    """Wait until none of ``processes`` runs (zombies count as gone); False after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in processes):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def stop_process(pid: int, marker: str, what: str) -> str | None:
    """SIGTERM, then SIGKILL after 5 s, but only while `pid` still runs a command line containing
    `marker` (else it is gone, or the pid was reused by another process); the problem, if any."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    if marker not in cmdline:
        return None
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return None
        if wait_gone([pid], 5.0):
            return None
    return f"{what} (pid {pid}) survived SIGKILL"
