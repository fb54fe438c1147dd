"""An embedded lab switch: one OVS and one namespace per host, for machines with no OVS service.

Layout (``name`` is a prefix, so parallel labs do not clash)::

    netns <name>-sw      ovsdb-server + ovs-vswitchd, bridge (datapath_type=netdev),
                         one veth end per port, named after the policy's port
    netns <name>-<port>  a host: ``eth0`` (other veth end), its address, a default
                         route on-link through eth0 so all hosts share one L2 segment

The kernel here has no openvswitch module, so only the userspace ``netdev``
datapath (optionally DPDK-accelerated) works, and each OVS needs a namespace
of its own (two userspace OVS in one namespace both create ``ovs-netdev``).

State lives in ``Lab.dir`` (``$OVSMGR_LAB_DIR`` or ``/run/ovsmgr/lab-<name>``):
OVS's run/db/log files and ``lab.json``, which records every namespace and
daemon as soon as it exists, so ``down``/``status``/``exec`` work from another
process and after a half-failed ``up``.

ARP: ovsmgr's pipeline learns each host's MAC from the ARP it sends. ``up`` has
every IPv4 host send a gratuitous ARP, but an empty secure bridge drops it: call
``announce()`` again once a policy is applied.

Controllers: OVS inside ``<name>-sw`` cannot reach a controller on the host's
loopback, but the file system is shared between namespaces, so a controller on
the host should listen on a unix socket such as ``<dir>/controller.sock`` and
the bridge be given the target ``unix:<dir>/controller.sock`` (OVS connects
actively to ``unix:PATH`` targets), e.g. with ``SwitchDB.set_controllers``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from ovsmgr.lab.spec import (
    Datapath,
    LabError,
    LabPort,
    LabSpec,
    lab_spec_from_policy,
    validate_spec,
)
from ovsmgr.southbound.ovsdb import SwitchDB
from ovsmgr.switch.statefile import atomic_write

__all__ = [  # the spec half lives in lab_spec; these names are imported from here
    "DPDK_HUGEPAGES_MB", "DPDK_VSWITCHD", "Datapath", "Lab", "LabError", "LabPort", "LabSpec",
    "lab_spec_from_policy", "reserve_hugepages", "validate_spec",
]

DPDK_VSWITCHD = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk"
DPDK_HUGEPAGES_MB = 1024
"""Free hugepages a DPDK lab wants: dpdk-socket-mem (512 MB) and OVS's port mempools
(a two-port lab was seen holding 890 MB)."""
SCHEMA_FILE = "/usr/share/openvswitch/vswitch.ovsschema"
STATE_FILE = "lab.json"
DAEMONS = ("ovs-vswitchd", "ovsdb-server")  # stop order: vswitchd first
COMMAND_TIMEOUT = 60.0
LAB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")


def _pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pids: Sequence[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_pid_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


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


def _arping_commands(ports: list[dict[str, Any]]) -> list[list[str]]:
    """A gratuitous ARP (``arping -U``) from each IPv4 host of a lab (ports as in lab.json)."""
    commands = []
    for port in ports:
        iface = ipaddress.ip_interface(port["address"]) if port.get("address") else None
        if iface is not None and iface.version == 4:
            commands.append(["ip", "netns", "exec", port["netns"], "arping", "-U", "-c", "1",
                             "-I", "eth0", str(iface.ip)])
    return commands


class Lab:
    """A lab switch and its hosts, addressed by name; see the module docstring."""

    def __init__(self, name: str = "ovsmgr", directory: str | os.PathLike[str] | None = None):
        if not LAB_NAME.fullmatch(name):
            raise LabError(f"lab name {name!r} must match {LAB_NAME.pattern} (it names namespaces)")
        self.name = name
        default = os.environ.get("OVSMGR_LAB_DIR") or f"/run/ovsmgr/lab-{name}"
        self.dir = Path(directory or default)

    # -- paths and state ---------------------------------------------------------------------
    @property
    def switch_netns(self) -> str:
        return f"{self.name}-sw"

    @property
    def db_endpoint(self) -> str:
        return f"unix:{self.dir}/db.sock"

    def mgmt_socket(self, bridge: str) -> str:
        return f"{self.dir}/{bridge}.mgmt"

    def _state_path(self) -> Path:
        return self.dir / STATE_FILE

    def _load(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self._state_path().read_text()))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise LabError(f"lab {self.name}: unreadable {self._state_path()}: {exc}") from exc

    def _save(self, state: dict[str, Any]) -> None:
        atomic_write(self._state_path(), json.dumps(state, indent=2))

    def _ovs_env(self) -> dict[str, str]:
        """OVS finds its sockets through these; without them it looks in /var/run/openvswitch."""
        d = str(self.dir)
        return {**os.environ, "OVS_RUNDIR": d, "OVS_LOGDIR": d, "OVS_DBDIR": d,
                "OVS_SYSCONFDIR": d}

    # -- running commands --------------------------------------------------------------------
    def _run(self, argv: Sequence[str], netns: str | None = None, ovs_env: bool = False,
             input: str | None = None) -> str:
        """Run a setup command, raising LabError with its stderr when it fails."""
        full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
        try:
            proc = subprocess.run(full, input=input, capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT, check=False,
                                  env=self._ovs_env() if ovs_env else None)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LabError(f"{shlex.join(full)}: {exc}") from exc
        if proc.returncode != 0:
            raise LabError(f"{shlex.join(full)} failed ({proc.returncode}): "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def exec(self, port: str, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command in a port's host namespace; kwargs go to subprocess.run."""
        return subprocess.run(["ip", "netns", "exec", self._host_netns(port), *argv], **kwargs)

    def popen(self, port: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a background command (a server, a capture) in a port's host namespace."""
        return subprocess.Popen(["ip", "netns", "exec", self._host_netns(port), *argv], **kwargs)

    def switch_exec(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command in the switch namespace with OVS_RUNDIR etc. set (ovs-ofctl, -appctl)."""
        kwargs.setdefault("env", self._ovs_env())
        return subprocess.run(["ip", "netns", "exec", self.switch_netns, *argv], **kwargs)

    def ofctl(self, args: Sequence[str], input: str | None = None) -> str:
        """``ovs-ofctl -O OpenFlow15 CMD unix:<mgmt> ARGS...`` for ``args = [CMD, *ARGS]``.

        Example: ``lab.ofctl(["add-flows", "-"], input=flows_text)``.
        """
        if not args:
            raise LabError("ofctl needs a command, e.g. ['dump-flows']")
        target = f"unix:{self.mgmt_socket(self._require_state()['bridge'])}"
        argv = ["ovs-ofctl", "-O", "OpenFlow15", args[0], target, *args[1:]]
        return self._run(argv, netns=self.switch_netns, ovs_env=True, input=input)

    def appctl(self, args: Sequence[str]) -> str:
        """``ovs-appctl -t <ovs-vswitchd ctl socket> ARGS...``."""
        target = self.status()["appctl"]
        if target is None:
            raise LabError(f"lab {self.name}: ovs-vswitchd is not running")
        return self._run(["ovs-appctl", "-t", target, *args], ovs_env=True)

    def _host_netns(self, port: str) -> str:
        for p in self._require_state()["ports"]:
            if p["name"] == port:
                return str(p["netns"])
        raise LabError(f"lab {self.name} has no port {port!r}")

    def _require_state(self) -> dict[str, Any]:
        state = self._load()
        if not state:
            raise LabError(f"lab {self.name} is not up (no {self._state_path()})")
        return state

    # -- up ----------------------------------------------------------------------------------
    def up(self, spec: LabSpec) -> dict[str, Any]:
        """Build the lab; on any failure undo everything done so far and raise LabError."""
        if spec.name != self.name:
            raise LabError(f"spec is for lab {spec.name!r}, this is lab {self.name!r}")
        validate_spec(spec)
        self._check_tools(spec.datapath)
        if self._load():
            raise LabError(f"lab {self.name} is already up (or half down): run down first")
        state: dict[str, Any] = {"name": self.name, "bridge": spec.bridge,
                                 "datapath": spec.datapath, "status": "starting",
                                 "namespaces": [], "pids": {}, "ports": []}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "conf.db").unlink(missing_ok=True)
            self._save(state)
            self._build(spec, state)
            self._announce_in_background(state["ports"])
        except Exception as exc:
            self._undo_failed_up(exc)
        except BaseException:
            self.down()  # interrupted: leave nothing behind, then let the interrupt through
            raise
        state["status"] = "up"
        self._save(state)
        return self.status()

    def _build(self, spec: LabSpec, state: dict[str, Any]) -> None:
        self._add_netns(self.switch_netns, state)
        self._run(["ovsdb-tool", "create", f"{self.dir}/conf.db", SCHEMA_FILE])
        self._start_daemon("ovsdb-server", [
            "ovsdb-server", f"--remote=punix:{self.dir}/db.sock", f"{self.dir}/conf.db"], state)
        with SwitchDB(self.db_endpoint) as db:
            db.init_system(self._dpdk_config() if spec.datapath == "dpdk" else {})
            binary = "ovs-vswitchd"
            if spec.datapath == "dpdk":
                self._prepare_hugepages()
                binary = DPDK_VSWITCHD
            self._start_daemon("ovs-vswitchd", [binary, self.db_endpoint], state)
            self._link_dpdk_ctl(binary, state["pids"]["ovs-vswitchd"])
            db.ensure_bridge(spec.bridge, datapath_type="netdev", fail_mode="secure")
            for port in spec.ports:
                self._add_port(db, spec, port, state)

    def _undo_failed_up(self, exc: Exception) -> NoReturn:
        try:
            self.down()
        except LabError as cleanup:
            raise LabError(f"lab {self.name}: up failed: {exc}; cleaning up also failed: "
                           f"{cleanup}") from exc
        raise LabError(f"lab {self.name}: up failed: {exc}") from exc

    def _check_tools(self, datapath: Datapath) -> None:
        tools = ["ip", "ethtool", "sysctl", "ovsdb-tool", "ovsdb-server", "ovs-vswitchd"]
        missing = [t for t in tools if shutil.which(t) is None]
        if shutil.which("arping") is None:
            missing.append("arping (apt-get install -y iputils-arping)")
        if datapath == "dpdk" and not os.access(DPDK_VSWITCHD, os.X_OK):
            missing.append(f"{DPDK_VSWITCHD} (apt-get install -y openvswitch-switch-dpdk dpdk)")
        if missing:
            raise LabError(f"lab {self.name}: missing tools: {', '.join(missing)}")

    def _add_netns(self, netns: str, state: dict[str, Any]) -> None:
        """Create a namespace and record it; one that already exists is not ours to delete."""
        self._run(["ip", "netns", "add", netns])
        state["namespaces"].append(netns)
        self._save(state)
        self._run(["ip", "-n", netns, "link", "set", "lo", "up"])

    def _start_daemon(self, daemon: str, argv: list[str], state: dict[str, Any]) -> None:
        pidfile = self.dir / f"{daemon}.pid"
        pidfile.unlink(missing_ok=True)
        common = [f"--pidfile={pidfile}", "--detach", "--no-chdir",
                  f"--log-file={self.dir}/{daemon}.log", "-vconsole:off"]
        self._run([*argv, *common], netns=self.switch_netns, ovs_env=True)
        state["pids"][daemon] = int(pidfile.read_text().strip())
        self._save(state)

    def _link_dpdk_ctl(self, binary: str, pid: int) -> None:
        """The DPDK build names its control socket ovs-vswitchd-dpdk.PID.ctl; link the usual
        name to it so ``ovs-appctl -t ovs-vswitchd`` and ``status()['appctl']`` work alike."""
        program = Path(binary).name
        if program != "ovs-vswitchd":
            (self.dir / f"ovs-vswitchd.{pid}.ctl").symlink_to(self.dir / f"{program}.{pid}.ctl")

    def _dpdk_config(self) -> dict[str, str]:
        """DPDK with no NICs; --file-prefix keeps parallel DPDK labs' runtime files apart."""
        return {"dpdk-init": "true", "dpdk-socket-mem": "512", "pmd-cpu-mask": "0x2",
                "dpdk-extra": f"--no-pci --file-prefix={self._dpdk_prefix()}"}

    def _dpdk_prefix(self) -> str:
        return f"ovsmgr-{self.name}"

    def _prepare_hugepages(self) -> None:
        """Have DPDK_HUGEPAGES_MB of hugepages free and hugetlbfs mounted; both are left in
        place by ``down`` because they are shared by every DPDK lab on the machine."""
        reserve_hugepages()
        mounts = Path("/proc/mounts").read_text().split("\n")
        if not any(m.split()[1:3] == ["/dev/hugepages", "hugetlbfs"] for m in mounts if m):
            Path("/dev/hugepages").mkdir(exist_ok=True)
            self._run(["mount", "-t", "hugetlbfs", "nodev", "/dev/hugepages"])

    def _add_port(self, db: SwitchDB, spec: LabSpec, port: LabPort,
                  state: dict[str, Any]) -> None:
        host_ns = f"{self.name}-{port.name}"
        sw_if = f"v-{port.name}" if spec.datapath == "dpdk" else port.name
        self._add_netns(host_ns, state)
        for key in ("all", "default"):
            self._run(["sysctl", "-qw", f"net.ipv6.conf.{key}.accept_dad=0"], netns=host_ns)
        self._run(["ip", "-n", host_ns, "link", "add", "eth0", "address", port.mac,
                   "type", "veth", "peer", "name", sw_if, "netns", self.switch_netns])
        self._run(["sysctl", "-qw", f"net/ipv6/conf/{sw_if}/disable_ipv6=1"],
                  netns=self.switch_netns)
        for netns, dev in ((host_ns, "eth0"), (self.switch_netns, sw_if)):
            self._run(["ethtool", "-K", dev, "tx", "off"], netns=netns)
            self._run(["ip", "-n", netns, "link", "set", "dev", dev, "up"])
        if spec.datapath == "dpdk":
            options = {"dpdk-devargs": f"net_af_packet{port.ofport},iface={sw_if}"}
            iface_type = "dpdk"
        else:
            options, iface_type = {}, ""
        db.ensure_port(spec.bridge, port.name, port.ofport, iface_type, options)
        if port.address:
            self._address_host(host_ns, port.address)
        state["ports"].append({"name": port.name, "ofport": port.ofport, "netns": host_ns,
                               "address": port.address, "mac": port.mac,
                               "switch_iface": sw_if})
        self._save(state)

    def _address_host(self, host_ns: str, address: str) -> None:
        """Address eth0 and route everything else on-link, so hosts in different
        subnets reach each other through the bridge (NAT/firewall labs are one L2).
        An IPv4-only host has IPv6 off, so it sends nothing the test did not ask for."""
        iface = ipaddress.ip_interface(address)
        family = "-6" if iface.version == 6 else "-4"
        extra = ["nodad"] if iface.version == 6 else []
        if iface.version == 4:  # no IPv6 router/neighbour chatter in flow counters
            self._run(["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"], netns=host_ns)
        self._run(["ip", "-n", host_ns, family, "addr", "add", address, "dev", "eth0", *extra])
        self._run(["ip", "-n", host_ns, family, "route", "add", "default", "dev", "eth0"])

    # -- gratuitous ARP ----------------------------------------------------------------------
    def announce(self) -> None:
        """Make every IPv4 host send one gratuitous ARP; returns once they are sent.

        The compiled pipeline learns IPv4 -> MAC bindings from ARP (table MAC_BINDING)
        to set the destination MAC of DNAT'd and un-SNAT'd packets: a host that has sent
        no ARP yet (a DNAT target nobody talked to) would get frames addressed to the
        switch's MAC and ignore them. ``up`` announces too, but an empty secure
        bridge drops those frames, so run this after applying a policy.
        Takes about a second (arping's fixed interval); all hosts announce at once.
        """
        running = [(argv, subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True))
                   for argv in _arping_commands(self._require_state()["ports"])]
        errors = []
        for argv, proc in running:
            try:
                out, _ = proc.communicate(timeout=COMMAND_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            if proc.returncode != 0 or "Sent 1 probe" not in out:  # a down link sends 0, exits 0
                errors.append(f"{shlex.join(argv)} ({proc.returncode}): {' '.join(out.split())}")
        if errors:
            raise LabError(f"lab {self.name}: gratuitous ARP failed: " + "; ".join(errors))

    def _announce_in_background(self, ports: list[dict[str, Any]]) -> None:
        """``announce`` without the wait, for ``up``: arping is detached (sh -c '... &')
        so no child is left to reap, and ``down`` kills it if it still runs."""
        for argv in _arping_commands(ports):
            self._run(["sh", "-c", f"{shlex.join(argv)} </dev/null >/dev/null 2>&1 &"])

    # -- down / status -----------------------------------------------------------------------
    def down(self) -> None:
        """Stop the daemons, delete the namespaces (and with them the veths), drop the state.

        Idempotent; works after a half-failed ``up``. Every step is attempted and
        the failures are raised together at the end. Logs are kept in ``dir``.
        """
        state = self._load()
        errors: list[str] = []
        for daemon in DAEMONS:
            pid = state.get("pids", {}).get(daemon)
            if pid is not None:
                errors += self._stop_daemon(daemon, int(pid))
        for netns in reversed(state.get("namespaces", [])):
            errors += self._delete_netns(netns)
        if errors:
            raise LabError(f"lab {self.name}: down incomplete: " + "; ".join(errors))
        dpdk_runtime = Path(f"/var/run/dpdk/{self._dpdk_prefix()}")
        if state.get("datapath") == "dpdk" and dpdk_runtime.exists():
            shutil.rmtree(dpdk_runtime)  # DPDK's runtime files outlive the process
        for pattern in (STATE_FILE, "conf.db", ".conf.db.~lock~", "*.pid", "*.ctl", "*.sock",
                        "*.mgmt", "*.snoop", "ovsmgr-*.json"):
            for path in self.dir.glob(pattern):
                path.unlink(missing_ok=True)

    def _delete_netns(self, netns: str) -> list[str]:
        """Kill what still runs in a lab namespace (a forgotten ``nc -l``), then delete it:
        a namespace with processes in it outlives ``ip netns del``, and so do its veths."""
        if not Path(f"/run/netns/{netns}").exists():
            return []
        try:
            pids = [int(p) for p in self._run(["ip", "netns", "pids", netns]).split()]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _wait_gone(pids, 5.0)
            self._run(["ip", "netns", "del", netns])
        except LabError as exc:
            return [str(exc)]
        return []

    def _stop_daemon(self, daemon: str, pid: int) -> list[str]:
        """SIGTERM, then SIGKILL after 5 s; only if the pid still runs that daemon."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return []
        if str(self.dir) not in cmdline:
            return []  # pid was reused by an unrelated process
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return []
            if _wait_gone([pid], 5.0):
                return []
        return [f"{daemon} (pid {pid}) survived SIGKILL"]

    def status(self) -> dict[str, Any]:
        """What ``lab.json`` records, plus whether the daemons are alive right now."""
        state = self._load()
        pids: dict[str, int] = state.get("pids", {})
        daemons = {d: {"pid": pids.get(d), "alive": pids.get(d) is not None
                       and _pid_alive(int(pids[d]))} for d in DAEMONS}
        vswitchd = daemons["ovs-vswitchd"]
        bridge = state.get("bridge")
        return {
            "name": self.name,
            "dir": str(self.dir),
            "up": state.get("status") == "up" and all(d["alive"] for d in daemons.values()),
            "status": state.get("status", "down"),
            "bridge": bridge,
            "datapath": state.get("datapath"),
            "switch_netns": self.switch_netns if state else None,
            "db": self.db_endpoint if state else None,
            "mgmt": self.mgmt_socket(bridge) if bridge else None,
            "appctl": f"{self.dir}/ovs-vswitchd.{vswitchd['pid']}.ctl" if vswitchd["alive"] else None,
            "daemons": daemons,
            "ports": state.get("ports", []),
        }
