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

The switch is an ``ovsmgr.lab.instance.OvsInstance``, as the lab's is, without the lab's
fixed set of ports: each scenario builds its own bridge and hosts (``tests/kernel/bed.py``).
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
from collections.abc import Iterator, Sequence
from pathlib import Path

from ovsmgr.lab import netns
from ovsmgr.lab.instance import OvsInstance
from ovsmgr.lab.spec import LabError

REPO = Path(__file__).resolve().parents[2]
INNER_ENV = "KT_SWITCH_NETNS"
"""Set for the suite once it runs inside the private switch's namespace."""


class PrivateSwitchError(RuntimeError):
    pass


class PrivateSwitch:
    """``with PrivateSwitch() as switch:`` ovsdb-server and ovs-vswitchd in ``switch.netns``."""

    def __init__(self, datapath: str = "netdev", prefix: str | None = None):
        if datapath not in ("netdev", "dpdk"):
            raise PrivateSwitchError(f"a private switch is netdev or dpdk, not {datapath}")
        self.datapath = datapath
        self.prefix = prefix or f"kt{secrets.token_hex(3)}-"
        self.netns = f"{self.prefix}sw"
        self.dir = Path(tempfile.mkdtemp(prefix=self.prefix, dir="/tmp"))
        self.ovs = OvsInstance(self.dir, self.netns, "dpdk" if datapath == "dpdk" else "netdev",
                               dpdk_prefix=f"ovsmgr-{self.prefix.rstrip('-')}")
        self.keep = False
        """Keep the directory (OVS's logs) after ``stop``: set when the suite failed."""

    def env(self) -> dict[str, str]:
        """What OVS's tools, ovsmgr and the bed need to find this switch."""
        return {**self.ovs.env(), "OVSMGR_STATE_DIR": f"{self.dir}/state", "KT_DATAPATH": self.datapath,
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
        """The switch (``ovsmgr.lab.instance``, as the lab's), and the tools the bed uses."""
        missing = [t for t in ("ovs-vsctl", "ethtool", "arping") if shutil.which(t) is None]
        missing += self.ovs.missing_tools()
        if missing:
            raise PrivateSwitchError(f"missing {', '.join(missing)} (scripts/install)")
        (self.dir / "state").mkdir()
        try:
            self.ovs.start()
        except LabError as exc:
            raise PrivateSwitchError(str(exc)) from exc

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
        problems = self.ovs.stop()
        # The suite's host namespaces are mounted in its own mount namespace (ip netns exec
        # makes it a slave of ours): only their files are left here once it is gone.
        for path in sorted(netns.NETNS_DIR.glob(f"{self.prefix}*")):
            try:
                netns.delete(path.name)
            except LabError as exc:
                problems.append(str(exc))
        for problem in problems:
            print(f"{self.datapath} switch: {problem}", file=sys.stderr)
        if self.keep:
            print(f"{self.datapath} switch: logs kept in {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def private_etc(scratch: Path) -> Iterator[None]:
    """A copy-on-write /etc for this (private) mount namespace: what the provisioning scripts
    write (udev .link files, ifupdown stanzas) lands in ``scratch``, not in the host's /etc."""
    upper, work = scratch / "etc-upper", scratch / "etc-work"
    upper.mkdir()
    work.mkdir()
    netns.run(["mount", "-t", "overlay", "overlay", "-o",
               f"lowerdir=/etc,upperdir={upper},workdir={work}", "/etc"])
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", "/etc"], capture_output=True, check=False)
