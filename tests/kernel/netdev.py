"""The scenario suite on the userspace datapath, on any host: a private Open vSwitch.

``python -m tests.kernel.scenarios --datapath netdev`` (root) starts an ovsdb-server and
an ovs-vswitchd of its own in a network namespace of its own (``<prefix>sw``) with a
run directory of its own (``OVS_RUNDIR``, a short directory under /tmp: unix socket
paths are limited to 107 bytes), then runs the suite inside that namespace, as the
guest runs it in its root namespace on the system OVS. Nothing is shared with another
run or with the machine's own OVS (if any): the host namespaces have a prefix of their
own (``KT_NETNS_PREFIX``), ovsmgr keeps its state in the run directory
(``OVSMGR_STATE_DIR``), and the suite sees a copy-on-write /etc (the three-box
scenario runs Vagrant's provisioning scripts, which write there).

``--datapath dpdk`` starts the DPDK build of ovs-vswitchd instead (no NICs, hugepages,
one PMD thread on CPU 1), and the bed makes every port a DPDK af_packet device on its
veth: the userspace datapath with DPDK's packet I/O.

This is what ``ovsmgr.lab.ovs`` does for a lab, without the lab's fixed set of
ports: each scenario builds its own bridge and hosts (``tests/kernel/bed.py``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ovsmgr.lab.ovs import DPDK_VSWITCHD, reserve_hugepages

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
REPO = Path(__file__).resolve().parents[2]
DAEMONS = ("ovs-vswitchd", "ovsdb-server")  # stop order
INNER_ENV = "KT_SWITCH_NETNS"
"""Set for the suite once it runs inside the private switch's namespace."""


class PrivateSwitchError(RuntimeError):
    pass


def _run(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, env=env,
                          check=False)
    if proc.returncode != 0:
        raise PrivateSwitchError(f"{' '.join(argv)} failed ({proc.returncode}): "
                                 f"{(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


class PrivateSwitch:
    """``with PrivateSwitch() as switch:`` ovsdb-server and ovs-vswitchd in ``switch.netns``."""

    def __init__(self, datapath: str = "netdev", prefix: str | None = None):
        if datapath not in ("netdev", "dpdk"):
            raise PrivateSwitchError(f"a private switch is netdev or dpdk, not {datapath}")
        self.datapath = datapath
        self.prefix = prefix or f"kt{secrets.token_hex(3)}-"
        self.netns = f"{self.prefix}sw"
        self.dir = Path(tempfile.mkdtemp(prefix=self.prefix, dir="/tmp"))
        self.keep = False
        """Keep the directory (OVS's logs) after ``stop``: set when the suite failed."""

    def env(self) -> dict[str, str]:
        """What OVS's tools, ovsmgr and the bed need to find this switch."""
        d = str(self.dir)
        return {**os.environ, "OVS_RUNDIR": d, "OVS_LOGDIR": d, "OVS_DBDIR": d,
                "OVS_SYSCONFDIR": d, "OVSMGR_STATE_DIR": f"{d}/state", "KT_DATAPATH": self.datapath,
                "KT_NETNS_PREFIX": self.prefix, INNER_ENV: self.netns}

    def __enter__(self) -> PrivateSwitch:
        try:
            self.start()
        except BaseException:
            self.keep = True
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        missing = [t for t in ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ip",
                               "ethtool", "arping") if shutil.which(t) is None]
        if self.datapath == "dpdk" and not os.access(DPDK_VSWITCHD, os.X_OK):
            missing.append(DPDK_VSWITCHD)
        if missing:
            raise PrivateSwitchError(f"missing {', '.join(missing)} (scripts/install)")
        env = self.env()
        (self.dir / "state").mkdir()
        _run(["ip", "netns", "add", self.netns])
        _run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        _run(["ovsdb-tool", "create", f"{self.dir}/conf.db", SCHEMA])
        self._daemon("ovsdb-server", [f"--remote=punix:{self.dir}/db.sock", f"{self.dir}/conf.db"])
        _run(["ovs-vsctl", "--no-wait", "init"], env=env)
        if self.datapath == "dpdk":
            self._prepare_dpdk()
            self._daemon("ovs-vswitchd", [f"unix:{self.dir}/db.sock"], DPDK_VSWITCHD)
            # Its control socket is named after the binary; tools look for ovs-vswitchd.PID.ctl.
            pid = int((self.dir / "ovs-vswitchd.pid").read_text().strip())
            (self.dir / f"ovs-vswitchd.{pid}.ctl").symlink_to(self.dir / f"ovs-vswitchd-dpdk.{pid}.ctl")
        else:
            self._daemon("ovs-vswitchd", [f"unix:{self.dir}/db.sock"])

    def _prepare_dpdk(self) -> None:
        """Hugepages and DPDK's settings, as the DPDK lab has them (ovsmgr.lab.ovs)."""
        reserve_hugepages()
        mounts = Path("/proc/mounts").read_text().splitlines()
        if not any(m.split()[1:3] == ["/dev/hugepages", "hugetlbfs"] for m in mounts if m):
            Path("/dev/hugepages").mkdir(exist_ok=True)
            _run(["mount", "-t", "hugetlbfs", "nodev", "/dev/hugepages"])
        _run(["ovs-vsctl", "--no-wait", "set", "Open_vSwitch", ".", "other_config:dpdk-init=true",
              "other_config:dpdk-socket-mem=512", "other_config:pmd-cpu-mask=0x2",
              f'other_config:dpdk-extra="--no-pci --file-prefix={self._dpdk_prefix()}"'],
             env=self.env())

    def _dpdk_prefix(self) -> str:
        return f"ovsmgr-{self.prefix.rstrip('-')}"

    def _daemon(self, name: str, args: list[str], binary: str | None = None) -> None:
        common = [f"--pidfile={self.dir}/{name}.pid", "--detach", "--no-chdir",
                  f"--log-file={self.dir}/{name}.log", "-vconsole:off"]
        _run(["ip", "netns", "exec", self.netns, binary or name, *args, *common], env=self.env())

    def run_inside(self, argv: Sequence[str]) -> int:
        """Run ``argv`` in the switch's namespace with its environment; its exit status.
        ``ip netns exec`` gives it a mount namespace of its own too (its /sys shows the
        namespace's interfaces), where the suite mounts its copy-on-write /etc."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.netns, *argv], env=self.env(),
                                cwd=REPO, start_new_session=True)
        try:
            return proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            # What the suite started and left (it was killed, or a scenario failed badly):
            # everything of its process group, never anything else.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def stop(self) -> None:
        """Stop the daemons and remove every namespace of this run; idempotent."""
        for name in DAEMONS:
            with contextlib.suppress(OSError, ValueError):
                pid = int((self.dir / f"{name}.pid").read_text().strip())
                _stop(pid, str(self.dir))
        # The suite's host namespaces are mounted in its own mount namespace (ip netns exec
        # makes it a slave of ours): only their files are left here once it is gone.
        names = sorted(p.name for p in Path("/run/netns").glob(f"{self.prefix}*"))
        for name in names:
            _kill_netns(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        runtime = Path(f"/var/run/dpdk/{self._dpdk_prefix()}")
        if self.datapath == "dpdk" and runtime.exists():
            shutil.rmtree(runtime, ignore_errors=True)  # DPDK's runtime files outlive it
        if self.keep:
            print(f"{self.datapath} switch: logs kept in {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def _stop(pid: int, marker: str) -> None:
    """SIGTERM, then SIGKILL, a daemon of this run (its command line names the run directory)."""
    try:
        if marker not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return
    except OSError:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if _zombie(pid):
                return
            time.sleep(0.02)
        if not Path(f"/proc/{pid}").exists():
            return


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _kill_netns(name: str) -> None:
    """SIGKILL whatever still runs in a namespace of this run (a server a failed scenario left)."""
    try:
        inode = os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    os.kill(int(entry), signal.SIGKILL)


@contextlib.contextmanager
def private_etc(scratch: Path) -> Iterator[None]:
    """A copy-on-write /etc for this (private) mount namespace: what the provisioning scripts
    write (udev .link files, ifupdown stanzas) lands in ``scratch``, not in the host's /etc."""
    upper, work = scratch / "etc-upper", scratch / "etc-work"
    upper.mkdir()
    work.mkdir()
    _run(["mount", "-t", "overlay", "overlay", "-o",
          f"lowerdir=/etc,upperdir={upper},workdir={work}", "/etc"])
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", "/etc"], capture_output=True, check=False)
