"""One Open vSwitch of its own: ovsdb-server and ovs-vswitchd in a network namespace and a
directory of their own, on the userspace datapath (``netdev``, or DPDK's build of it).

The lab switch (`ovsmgr.lab.ovs.Lab`, which the bench's test bed uses too) and the
kernel-test suite's host runs (``tests/kernel/netdev.py``) start their OVS through
`OvsInstance`. The machine's kernel has no openvswitch module, so only userspace
datapaths work, and two userspace OVS in one namespace clash (both create a tap
named ``ovs-netdev``): each instance gets a namespace of its own, so instances run
side by side and go with their namespace. OVS finds its sockets through
``OVS_RUNDIR`` (`env`); without it the tools look in /var/run/openvswitch.

DPDK (no NICs): hugepages are reserved and mounted, DPDK's settings written before
ovs-vswitchd starts (it reads ``dpdk-init`` once), its one PMD thread on CPU 1, and
``--file-prefix`` keeps parallel instances' runtime files apart.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ovsmgr.lab import netns
from ovsmgr.lab.spec import Datapath, LabError

DPDK_VSWITCHD = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk"
DPDK_HUGEPAGES_MB = 1024
"""Free hugepages a DPDK lab wants: dpdk-socket-mem (512 MB) and OVS's port mempools
(a two-port lab was seen holding 890 MB)."""
SCHEMA_FILE = "/usr/share/openvswitch/vswitch.ovsschema"
DAEMONS = ("ovs-vswitchd", "ovsdb-server")
"""Stop order: ovs-vswitchd first."""
OVS_TOOLS = ("ip", "ovsdb-tool", "ovsdb-server", "ovs-vswitchd")
TLS_FROM_DB = ("--private-key=db:Open_vSwitch,SSL,private_key", "--certificate=db:Open_vSwitch,SSL,certificate",
               "--ca-cert=db:Open_vSwitch,SSL,ca_cert")
"""As Open vSwitch's own start scripts do: the daemons take their TLS files from the SSL table
(`SwitchDB.set_ssl`), and ovsdb-server its listeners from the Manager table (`SwitchDB.add_manager`)."""


def _meminfo_kb(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise LabError(f"no {field} in /proc/meminfo")


def reserve_hugepages(megabytes: int = DPDK_HUGEPAGES_MB) -> None:
    """Make `megabytes` of hugepages free, raising vm.nr_hugepages by what other DPDK
    processes (another lab) hold; LabError if the kernel cannot provide them."""
    nr = Path("/proc/sys/vm/nr_hugepages")
    page_kb = _meminfo_kb("Hugepagesize")
    short = -(-(megabytes * 1024 - _meminfo_kb("HugePages_Free") * page_kb) // page_kb)
    if short > 0:
        try:
            nr.write_text(f"{int(nr.read_text()) + short}\n")
        except OSError as exc:
            raise LabError(f"cannot reserve hugepages ({nr}): {exc}") from exc
    free_mb = _meminfo_kb("HugePages_Free") * page_kb // 1024
    if free_mb < megabytes:
        raise LabError(f"only {free_mb} MB of hugepages free (vm.nr_hugepages="
                       f"{nr.read_text().strip()}), a DPDK lab needs {megabytes} MB: "
                       "memory too small or too fragmented")


def mount_hugepages() -> None:
    """hugetlbfs on /dev/hugepages, unless it is there; left in place for every DPDK user."""
    mounts = Path("/proc/mounts").read_text().splitlines()
    if not any(m.split()[1:3] == ["/dev/hugepages", "hugetlbfs"] for m in mounts if m):
        Path("/dev/hugepages").mkdir(exist_ok=True)
        netns.run(["mount", "-t", "hugetlbfs", "nodev", "/dev/hugepages"])


class OvsInstance:
    """ovsdb-server and ovs-vswitchd in namespace ``netns`` with their files in ``directory``.

    ``pids`` and ``netns_created`` say what exists; ``on_change`` is called whenever they
    change, so an owner can record them at once (a later ``stop`` from another process).
    """

    def __init__(self, directory: str | os.PathLike[str], netns_name: str, datapath: Datapath = "netdev",
                 dpdk_prefix: str | None = None, on_change: Callable[[], None] | None = None):
        if datapath not in ("netdev", "dpdk"):
            raise LabError(f"an OVS of its own runs netdev or dpdk, not {datapath}")
        self.dir = Path(directory)
        self.netns = netns_name
        self.datapath: Datapath = datapath
        self.dpdk_prefix = dpdk_prefix or f"ovsmgr-{netns_name}"
        self.on_change = on_change or (lambda: None)
        self.pids: dict[str, int] = {}
        self.netns_created = False

    # -- where things are ------------------------------------------------------------------
    @property
    def db_endpoint(self) -> str:
        return f"unix:{self.dir}/db.sock"

    def mgmt_socket(self, bridge: str) -> str:
        """The bridge's OpenFlow management socket (``ovs-ofctl ... unix:PATH``)."""
        return f"{self.dir}/{bridge}.mgmt"

    def appctl_target(self) -> str | None:
        """ovs-vswitchd's control socket while it runs (what ``ovs-appctl -t`` takes)."""
        pid = self.pids.get("ovs-vswitchd")
        if pid is None or not netns.pid_alive(pid):
            return None
        return f"{self.dir}/ovs-vswitchd.{pid}.ctl"

    def env(self) -> dict[str, str]:
        """The environment OVS's tools need to find this instance."""
        d = str(self.dir)
        return {**os.environ, "OVS_RUNDIR": d, "OVS_LOGDIR": d, "OVS_DBDIR": d, "OVS_SYSCONFDIR": d}

    def missing_tools(self) -> list[str]:
        missing = [t for t in OVS_TOOLS if shutil.which(t) is None]
        if self.datapath == "dpdk" and not os.access(DPDK_VSWITCHD, os.X_OK):
            missing.append(f"{DPDK_VSWITCHD} (apt-get install -y openvswitch-switch-dpdk dpdk)")
        return missing

    # -- start -----------------------------------------------------------------------------
    def start(self) -> None:
        """Namespace, database, ovsdb-server, ovs-vswitchd. On failure what was started stays
        recorded (``pids``, ``netns_created``): the caller stops it."""
        from ovsmgr.southbound.ovsdb import SwitchDB

        missing = self.missing_tools()
        if missing:
            raise LabError(f"missing tools: {', '.join(missing)}")
        self.dir.mkdir(parents=True, exist_ok=True)
        netns.add(self.netns, self._netns_added)
        (self.dir / "conf.db").unlink(missing_ok=True)
        netns.run(["ovsdb-tool", "create", f"{self.dir}/conf.db", SCHEMA_FILE])
        self._start_daemon("ovsdb-server", ["ovsdb-server", f"--remote=punix:{self.dir}/db.sock",
                                            "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
                                            *TLS_FROM_DB, f"{self.dir}/conf.db"])
        with SwitchDB(self.db_endpoint) as db:
            db.init_system(self._dpdk_config() if self.datapath == "dpdk" else {})
        if self.datapath == "dpdk":
            reserve_hugepages()
            mount_hugepages()
        self.start_vswitchd()

    def _netns_added(self) -> None:
        self.netns_created = True
        self.on_change()

    def start_vswitchd(self) -> None:
        """Start ovs-vswitchd (again: it reads its bridges from the database, not its flows)."""
        binary = DPDK_VSWITCHD if self.datapath == "dpdk" else "ovs-vswitchd"
        self._start_daemon("ovs-vswitchd", [binary, self.db_endpoint, *TLS_FROM_DB])
        program = Path(binary).name
        if program != "ovs-vswitchd":
            # The DPDK build names its control socket after itself: link the usual name to it,
            # so `ovs-appctl -t ovs-vswitchd` and `appctl_target` work alike.
            pid = self.pids["ovs-vswitchd"]
            (self.dir / f"ovs-vswitchd.{pid}.ctl").symlink_to(self.dir / f"{program}.{pid}.ctl")

    def _start_daemon(self, daemon: str, argv: list[str]) -> None:
        pidfile = self.dir / f"{daemon}.pid"
        pidfile.unlink(missing_ok=True)
        common = [f"--pidfile={pidfile}", "--detach", "--no-chdir",
                  f"--log-file={self.dir}/{daemon}.log", "-vconsole:off"]
        netns.run([*argv, *common], netns=self.netns, env=self.env())
        self.pids[daemon] = int(pidfile.read_text().strip())
        self.on_change()

    def _dpdk_config(self) -> dict[str, str]:
        """DPDK with no NICs, one PMD thread on CPU 1, runtime files of its own."""
        return {"dpdk-init": "true", "dpdk-socket-mem": "512", "pmd-cpu-mask": "0x2",
                "dpdk-extra": f"--no-pci --file-prefix={self.dpdk_prefix}"}

    # -- stop ------------------------------------------------------------------------------
    def stop_daemon(self, daemon: str) -> list[str]:
        """SIGTERM, then SIGKILL after 5 s, only if the pid still runs this instance's daemon;
        the problems, if any."""
        pid = self.pids.get(daemon)
        if pid is None:
            return []
        problem = netns.stop_process(pid, str(self.dir), daemon)
        if problem:
            return [problem]
        del self.pids[daemon]
        self.on_change()
        return []

    def stop(self) -> list[str]:
        """Stop the daemons, delete the namespace (if this instance made it) and DPDK's runtime
        files; every step is tried, the problems are returned. Idempotent."""
        errors = [e for daemon in DAEMONS for e in self.stop_daemon(daemon)]
        if self.netns_created:
            try:
                netns.delete(self.netns)
                self.netns_created = False
                self.on_change()
            except LabError as exc:
                errors.append(str(exc))
        runtime = Path(f"/var/run/dpdk/{self.dpdk_prefix}")
        if self.datapath == "dpdk" and runtime.exists():
            shutil.rmtree(runtime, ignore_errors=True)  # DPDK's runtime files outlive it
        return errors
