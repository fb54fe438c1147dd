"""A test bed on one Open vSwitch: one bridge and one host namespace per port.

The switch is chosen by the environment (``KT_DATAPATH``); the bed is the same on each:

- ``system`` (the kernel-test guest): the system Open vSwitch, started by ``ovs-ctl``,
  bridges on the kernel datapath (``datapath_type=system``); ovsmgr talks to
  ``unix:/var/run/openvswitch/db.sock`` and keeps its state in /var/lib/ovsmgr, as on an
  operator's machine.
- ``netdev`` (any host, ``tests/kernel/netdev.py``): a private ovsdb-server and
  ovs-vswitchd in a network namespace of their own, found through ``OVS_RUNDIR``;
  bridges on the userspace datapath; state in ``OVSMGR_STATE_DIR``. The suite runs
  inside that namespace, so everything below is the same as in the guest.
- ``dpdk``: the same with the DPDK build of ovs-vswitchd; every port the bed adds is a
  DPDK af_packet device on its veth (``v-PORT`` on the switch's side), as in the lab.

Each host namespace (``KT_NETNS_PREFIX`` + port name) has ``eth0`` (the lab's fixed
MAC for its ofport, its address, an on-link default route, as in
``ovsmgr.lab.ovs``); the other veth end, named after the policy port, is a
port of the bridge in the switch's namespace.

Everything is slow under TCG (a process start costs about a second), so the bed
starts few processes: ``ip -batch``, one shell per host namespace, one traffic
server per service kept for the whole scenario, the stdlib-only traffic agent
run with ``python -I -S``, and ``ovsmgr`` commands run in this process through
click's runner (the same command code; ``ovsmgr_process`` runs the installed
command where that is the point).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import ovsmgr.lab.probe
from ovsmgr.lab import netns as lab_netns
from ovsmgr.lab.spec import LabPort
from ovsmgr.southbound.ovsdb import SwitchDB

DATAPATH = os.environ.get("KT_DATAPATH") or "system"
"""system (the kernel datapath: the kernel-test guest), netdev (the userspace datapath) or
dpdk (the userspace datapath with DPDK ports); the last two from tests/kernel/netdev.py."""
if DATAPATH not in ("system", "netdev", "dpdk"):
    raise SystemExit(f"KT_DATAPATH={DATAPATH!r}: system, netdev or dpdk")
BRIDGE_TYPE = "system" if DATAPATH == "system" else "netdev"
"""The bridges' ``datapath_type``: DPDK is the userspace datapath with ports of type dpdk."""
DPIF = f"{BRIDGE_TYPE}@ovs-{BRIDGE_TYPE}"
"""The datapath as ``dpctl/show`` names it: one per network namespace (system) or per
ovs-vswitchd (netdev), shared by every bridge of that type."""
_DPDK_DEVICES = itertools.count(1)
"""DPDK device numbers (``net_pcapN``): unique in the ovs-vswitchd's life. The bed's DPDK ports are
libpcap devices on the veths, not af_packet ones: DPDK's af_packet driver lets the kernel reassemble
fragments before it reads them (docs/datapaths.md, "Fragments on DPDK test ports")."""
DB = f"unix:{os.environ.get('OVS_RUNDIR') or '/var/run/openvswitch'}/db.sock"
"""The switch's OVSDB, as ovs-vsctl finds it by default (``OVS_RUNDIR``)."""
STATE_DIR = Path(os.environ.get("OVSMGR_STATE_DIR") or "/var/lib/ovsmgr")
NETNS_PREFIX = os.environ.get("KT_NETNS_PREFIX") or "kt-"
AGENT = [sys.executable, "-I", "-S", ovsmgr.lab.probe.__file__]
"""ovsmgr's traffic agent (stdlib only), without site-packages: starts in half the time."""
TIMEOUT = 120.0
SLOW = float(os.environ.get("KT_TRACE_SLOW", "0.5"))


T = TypeVar("T")


class BedError(AssertionError):
    """A step of the bed or a check failed; the message says which and why."""


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: str
    output: str
    """stdout and stderr, as a person would see them."""


def trace(what: str, started: float) -> None:
    """Slow steps go to stderr (the guest's console log, not the results): under TCG
    everything is slow, and this says where the minutes went."""
    seconds = time.monotonic() - started
    if seconds >= SLOW:
        print(f"kt-trace: {seconds:5.1f} s  {what[:160]}", file=sys.stderr, flush=True)


def run(argv: Sequence[str], check: bool = True, timeout: float = TIMEOUT,
        input: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input,
                          env=env, check=False)
    trace(shlex.join(argv), started)
    if check and proc.returncode != 0:
        raise BedError(f"{shlex.join(argv)} exited {proc.returncode}: "
                       f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


class Bed:
    """``with Bed("br0", ports) as bed:`` builds the bridge and hosts and removes them after."""

    def __init__(self, bridge: str, ports: Sequence[LabPort]):
        self.bridge = bridge
        self.ports = list(ports)
        self.servers: dict[tuple[str, object], subprocess.Popen[str]] = {}
        self._serving = threading.Lock()

    # -- set-up and tear-down ---------------------------------------------------------------
    def __enter__(self) -> Bed:
        self.down(leftovers_only=True)  # what a failed scenario before may have left
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def switch_iface(self, port: LabPort) -> str:
        """The veth end on the switch's side: named after the policy's port, or ``v-PORT`` on
        dpdk, where the OVS port of that name is a DPDK af_packet device on it (as in the lab)."""
        return f"v-{port.name}" if DATAPATH == "dpdk" else port.name

    def up(self) -> None:
        batch = []
        for port in self.ports:
            ns = self.netns(port.name)
            batch += [f"netns add {ns}", f"link add {self.switch_iface(port)} type veth peer name "
                      f"eth0 address {port.mac} netns {ns}"]
        run(["ip", "-batch", "-"], input="\n".join(batch) + "\n")
        for port in self.ports:
            iface = self.switch_iface(port)
            Path(f"/proc/sys/net/ipv6/conf/{iface}/disable_ipv6").write_text("1\n")
            # Needed on the userspace datapath only (docs/datapaths.md); on the kernel datapath
            # it must simply do no harm, so the bed does what the embedded lab does.
            run(["ethtool", "-K", iface, "tx", "off"])
            run(["ip", "link", "set", "dev", iface, "up"])
            run(["ip", "netns", "exec", self.netns(port.name), "sh", "-ec", _host_script(port)])
        with SwitchDB(DB) as db:
            db.ensure_bridge(self.bridge, datapath_type=BRIDGE_TYPE, fail_mode="secure")
            for port in self.ports:
                if DATAPATH == "dpdk":
                    devargs = f"net_pcap{next(_DPDK_DEVICES)},iface={self.switch_iface(port)}"
                    db.ensure_port(self.bridge, port.name, port.ofport, "dpdk", {"dpdk-devargs": devargs})
                else:
                    db.ensure_port(self.bridge, port.name, port.ofport)

    def down(self, leftovers_only: bool = False) -> None:
        """Stop the servers, remove the bridge, its conntrack entries, the hosts and ovsmgr's
        record of the bridge. ``leftovers_only``: only what is there (no commands for a bridge
        that does not exist, the usual case before a scenario)."""
        for proc in self.servers.values():
            proc.kill()
            proc.wait()
        self.servers.clear()
        for port in self.ports:
            for pid in lab_netns.pids(self.netns(port.name)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        # The bridge first: a DPDK port must let go of its veth before the veth goes.
        if not leftovers_only or Path(f"/sys/class/net/{self.bridge}").exists():
            # (a bridge has an internal port of its name: a tap device on netdev)
            run(["ovs-vsctl", "--timeout=30", "--if-exists", "del-br", self.bridge])
            run(["ovs-appctl", "dpctl/flush-conntrack"], check=False)
        batch = []
        for port in self.ports:
            for iface in dict.fromkeys((port.name, self.switch_iface(port))):
                if Path(f"/sys/class/net/{iface}").exists():
                    batch.append(f"link del {iface}")  # both veth ends, at once
            if Path(f"/run/netns/{self.netns(port.name)}").exists():
                batch.append(f"netns del {self.netns(port.name)}")
        if batch:
            run(["ip", "-batch", "-"], input="\n".join(batch) + "\n")
        for path in STATE_DIR.glob(f"ovsmgr-{self.bridge}.*"):
            path.unlink()

    @staticmethod
    def netns(port: str) -> str:
        return f"{NETNS_PREFIX}{port}"

    # -- commands ---------------------------------------------------------------------------
    def exec(self, port: str, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", TIMEOUT)
        full = ["ip", "netns", "exec", self.netns(port), *argv]
        started = time.monotonic()
        proc = subprocess.run(full, check=False, **kwargs)
        trace(shlex.join(full), started)
        return proc

    def popen(self, port: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        kwargs.setdefault("text", True)
        return subprocess.Popen(["ip", "netns", "exec", self.netns(port), *argv], **kwargs)

    def ovsmgr(self, *args: str, expect: int | None = 0) -> CommandResult:
        """``ovsmgr ARGS --db <the switch's socket>`` in this process (click's runner: the command's
        own code, exit status and output); raises unless it exits ``expect`` (None: any)."""
        from click.testing import CliRunner

        from ovsmgr.cli import main

        started = time.monotonic()
        result = CliRunner().invoke(main, [*args, "--db", DB])
        trace(f"ovsmgr {' '.join(args)} (in process)", started)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise BedError(f"ovsmgr {' '.join(args)} raised {result.exception!r}:\n{result.output}")
        found = CommandResult(result.exit_code, result.stdout, result.output)
        _expect(found, args, expect)
        return found

    def ovsmgr_process(self, *args: str, expect: int | None = 0) -> CommandResult:
        """The same through the installed ``ovsmgr`` command, as an operator runs it."""
        argv = [str(Path(sys.executable).with_name("ovsmgr")), *args, "--db", DB]
        proc = run(argv, check=False, timeout=900)
        found = CommandResult(proc.returncode, proc.stdout, proc.stdout + proc.stderr)
        _expect(found, args, expect)
        return found

    def apply(self, policy: str | Path) -> dict[str, Any]:
        """``ovsmgr apply POLICY -o json``: what changed, the generation, the seconds it took."""
        return dict(json.loads(self.ovsmgr("apply", str(policy), "-o", "json").stdout))

    def ofctl(self, *args: str) -> str:
        return run(["ovs-ofctl", "-O", "OpenFlow15", args[0], self.bridge, *args[1:]]).stdout

    def announce(self, extra: dict[str, list[str]] | None = None) -> None:
        """A gratuitous ARP from every IPv4 host, as hosts send when they come up: the pipeline
        learns the MACs it writes into translated packets from ARP. ``extra``: more addresses
        a host has (port name -> addresses), announced too."""
        calls = []
        for port in self.ports:
            iface = ipaddress.ip_interface(port.address) if port.address else None
            addresses = [str(iface.ip)] if iface is not None and iface.version == 4 else []
            addresses += (extra or {}).get(port.name, [])
            if addresses:  # arping -U takes a second; all of them at once
                script = "".join(f"arping -q -U -c 1 -I eth0 {a} & " for a in addresses) + "wait"
                calls.append(partial(self.exec, port.name, ["sh", "-c", script]))
        concurrently(*calls)

    def serve(self, port: str, proto: str, tport: int) -> None:
        """A traffic server (``ovsmgr.lab.probe serve``) on ``port``'s host, kept until ``down``:
        it answers every connection or datagram with the peer address it saw."""
        self.server(port, [*AGENT, "serve", proto, str(tport), "--timeout", "900"], (proto, tport))

    def server(self, port: str, argv: Sequence[str], key: object = None) -> subprocess.Popen[str]:
        """Start a server (``argv``, printing a line with ``listening`` once it is ready) on
        ``port``'s host, once per ``key``; it runs until ``down``."""
        full_key = (port, key if key is not None else tuple(argv))
        with self._serving:
            if full_key in self.servers:
                return self.servers[full_key]
            proc = self.popen(port, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.servers[full_key] = proc
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if "listening" not in line:
                raise BedError(f"server {shlex.join(argv)} on {port} did not start: {line!r}")
            return proc

    # -- the datapath ------------------------------------------------------------------------
    def assert_datapath(self) -> str:
        """The bridge is on this run's datapath and its ports are in it (``dpctl/show``);
        returns what that shows: ``system@ovs-system``, ``netdev@ovs-netdev``, or
        ``netdev@ovs-netdev, DPDK ports`` when every port is a DPDK device."""
        dtype = run(["ovs-vsctl", "get", "bridge", self.bridge, "datapath_type"]).stdout.strip()
        if dtype.strip('"') != BRIDGE_TYPE:
            raise BedError(f"bridge {self.bridge} has datapath_type {dtype}, not {BRIDGE_TYPE}")
        show = run(["ovs-appctl", "dpctl/show"]).stdout
        block = re.search(rf"^{re.escape(DPIF)}:\n((?:[ \t].*\n?)*)", show, re.M)
        if block is None:
            raise BedError(f"no datapath {DPIF} in dpctl/show:\n{show}")
        lines = {p.name: re.search(rf"^\s*port \d+: {re.escape(p.name)}\b.*$", block[1], re.M)
                 for p in self.ports}
        missing = [name for name, line in lines.items() if line is None]
        if missing:
            raise BedError(f"ports {missing} are not in {DPIF}:\n{show}")
        if all("(dpdk" in line[0] for line in lines.values() if line):
            return f"{DPIF}, DPDK ports"
        return DPIF

    def conntrack_entries(self, needle: str = "", zone: int | None = None) -> list[str]:
        """The datapath's conntrack entries (``dpctl/dump-conntrack``: the kernel's table on
        system, ovs-vswitchd's own on netdev) whose text contains needle, of one zone."""
        argv = ["ovs-appctl", "dpctl/dump-conntrack", *([f"zone={zone}"] if zone is not None else [])]
        return [line for line in run(argv).stdout.splitlines() if needle in line]


def _host_script(port: LabPort) -> str:
    """What a host namespace needs, in one shell: no IPv6 chatter for IPv4 hosts (flow
    counters stay the test's own), eth0 up with its address and an on-link default route."""
    lines = ["echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad",
             "echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad",
             "ethtool -K eth0 tx off"]
    batch = ["link set lo up", "link set eth0 up"]
    if port.address:
        iface = ipaddress.ip_interface(port.address)
        if iface.version == 4:
            lines.append("echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6")
            batch += [f"addr add {port.address} dev eth0", "route add 0.0.0.0/0 dev eth0"]
        else:
            batch += [f"addr add {port.address} dev eth0 nodad", "route add ::/0 dev eth0"]
    lines.append("ip -batch - <<'EOF'\n" + "\n".join(batch) + "\nEOF")
    return "\n".join(lines)


def _expect(result: CommandResult, args: Sequence[str], expect: int | None) -> None:
    if expect is not None and result.exit_code != expect:
        raise BedError(f"ovsmgr {' '.join(args)} exited {result.exit_code}, expected {expect}:\n"
                       f"{result.output.strip()[-3000:]}")


# -- traffic ---------------------------------------------------------------------------------
def concurrently(*calls: Callable[[], T]) -> list[T]:
    """Run the calls at once and return their results in order: checks that wait for traffic
    that must not come overlap their waits instead of adding them up."""
    with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        return [future.result() for future in [pool.submit(call) for call in calls]]


def ping(bed: Bed, port: str, address: str, count: int = 1, deadline: float = 3, size: int = 56) -> bool:
    """True when ``count`` echo replies come back within ``deadline`` seconds (``size``: payload
    bytes; above 1,472 the request leaves the host in fragments)."""
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-w", str(deadline), "-s", str(size), address]
    return bed.exec(port, argv, timeout=deadline + 30).returncode == 0


PASS_TIMEOUT = 10.0
"""Seconds a client waits for an answer that should come (a first packet takes upcalls)."""
BLOCK_TIMEOUT = 2.0
"""Seconds a client waits for an answer that should not come; an answer that does comes within
a second here (handshake through upcalls included), so this does not hide one."""


def exchange(bed: Bed, src: str, dst: str, service: str, address: str, dial: int | None = None,
             from_addr: str | None = None, timeout: float = PASS_TIMEOUT) -> dict[str, Any]:
    """One request and answer of ``service`` (tcp/N, udp/N) from host ``src`` to the server on
    host ``dst`` listening on N, dialled at ``address`` port ``dial`` (default N). ``ok``
    says whether the answer came, ``seen_as``/``seen_port`` whom the server saw."""
    proto, _, number = service.partition("/")
    bed.serve(dst, proto, int(number))
    return connect(bed, src, proto, address, dial or int(number), from_addr, timeout)


def blocked(bed: Bed, src: str, dst: str, service: str, address: str, dial: int | None = None,
            from_addr: str | None = None) -> bool:
    """True when ``exchange`` gets no answer (the server is there: no answer means the switch)."""
    return not exchange(bed, src, dst, service, address, dial, from_addr, BLOCK_TIMEOUT)["ok"]


def connect(bed: Bed, src: str, proto: str, address: str, port: int, from_addr: str | None = None,
            timeout: float = PASS_TIMEOUT) -> dict[str, Any]:
    """The traffic agent's client: one message to ``address:port``, one answer expected."""
    argv = [*AGENT, "connect", proto, address, str(port), "--timeout", str(timeout)]
    if from_addr:
        argv += ["--src", from_addr]
    out = bed.exec(src, argv, timeout=timeout + 60)
    lines = out.stdout.strip().splitlines()
    if not lines:
        raise BedError(f"the traffic agent printed nothing: {out.stderr.strip()}")
    return dict(json.loads(lines[-1]))
