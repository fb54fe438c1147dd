"""``ovsmgr bench run --switch system``: bench an Open vSwitch that already runs (the Vagrant
dut's, `target.SYSTEM_DB`) with a generator and a sink host of its own (usually other
machines, ``ssh:NAME``). Its bridge and ports are read through OVSDB (`SwitchDB`), flows
and daemon commands go through `southbound.tools`.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from ovsmgr.bench.netns import REMOTE, in_netns, run
from ovsmgr.bench.pipelines import Config, set_plain, switch_pipeline
from ovsmgr.bench.testbed import Host, conntrack_count, drop_load_at_host
from ovsmgr.southbound.ovsdb import SwitchDB
from ovsmgr.southbound.target import SYSTEM_DB, resolve_target
from ovsmgr.southbound.tools import appctl, run_tool


def host_from(spec: str, default_iface: str = "data0") -> Host:
    """A host named on the command line: ``ssh:NAME[:IFACE]`` (over ssh, see `netns.REMOTE`) or
    ``NETNS[:IFACE]`` (a local namespace). Its address and MAC are read from the interface."""
    remote = spec.startswith(REMOTE)
    name, _, iface = spec.removeprefix(REMOTE).partition(":")
    if not name:
        raise ValueError(f"host {spec!r}: expected ssh:NAME[:IFACE] or NETNS[:IFACE]")
    netns = f"{REMOTE}{name}" if remote else name
    iface = iface or default_iface
    try:
        links = json.loads(run(in_netns(netns, ["ip", "-j", "addr", "show", "dev", iface])) or "[]")
    except RuntimeError as exc:
        raise RuntimeError(f"host {spec}: cannot read interface {iface}: {exc}") from None
    addrs = [a for link in links for a in link.get("addr_info", []) if a.get("family") == "inet"]
    if not links or not addrs:
        raise RuntimeError(f"host {spec}: interface {iface} has no IPv4 address")
    return Host(netns, iface, f"{addrs[0]['local']}/{addrs[0]['prefixlen']}", links[0]["address"])


@dataclass(frozen=True)
class SystemSwitch:
    """``--switch system``: bench this running OVS bridge with these hosts (`host_from` specs)."""

    gen: str
    sink: str
    bridge: str = "br0"
    db: str = SYSTEM_DB
    ports: tuple[str, str] = ("inside", "outside")


class SystemTestbed:
    """An Open vSwitch that already runs (the Vagrant dut's system OVS, `target.SYSTEM_DB`) with
    a generator and a sink host of its own (usually other machines, ``ssh:NAME``).

    Pipelines are applied by ovsmgr to ``bridge`` as ``ovsmgr apply`` would (its state in the
    target's state directory); plain forwarding is the lab bed's pair of priority-65535 flows
    between the two ports. Only OVS pipelines: a Linux-netfilter baseline needs the lab's Linux
    router (`netfilter.LinuxRouter`) and is refused. The switch keeps the last pipeline applied.
    """

    kind = "ovs"

    def __init__(self, gen: Host, sink: Host, bridge: str = "br0", db: str = SYSTEM_DB,
                 ports: tuple[str, str] = ("inside", "outside")) -> None:
        self.gen, self.sink, self.db = gen, sink, db
        self.spec_bridge = bridge
        self.target = resolve_target(db)
        self.gen_port, self.sink_port = ports
        with SwitchDB(db) as switch_db:
            info = switch_db.bridge_info(bridge)
        self.gen_ofport, self.sink_ofport = (self._ofport(info["ports"], p) for p in ports)
        self.datapath = info["datapath_type"] or "system"
        self.next_hop_mac, self.reply_mac = sink.mac, gen.mac
        self.current: Config | None = None
        self.nat_address: str | None = None
        self.nat_ports = 0
        self.warnings: list[str] = []
        for host in (gen, sink):
            if _has_bench_table(host):  # left by a run that was killed
                run(in_netns(host.netns, ["nft", "delete", "table", "netdev", "ovsmgr_bench"]))
            try:
                drop_load_at_host(host)
            except RuntimeError as exc:  # no nftables there: the hosts answer the load (ICMP, RST)
                self.warnings.append(f"{host.netns}: load not dropped at the host: {str(exc)[-200:]}")

    @property
    def bridge(self) -> str:
        return self.spec_bridge

    def _ofport(self, ofports: dict[str, int], port: str) -> int:
        if port not in ofports:
            raise RuntimeError(f"bridge {self.spec_bridge}: no port {port} (ports: {', '.join(sorted(ofports))})")
        if ofports[port] < 1:
            raise RuntimeError(f"bridge {self.spec_bridge}: port {port} has no ofport yet ({ofports[port]})")
        return ofports[port]

    def ofctl(self, args: list[str], input: str | None = None) -> str:
        return run_tool(["ovs-ofctl", "-O", "OpenFlow15", args[0], self.target.openflow(self.spec_bridge),
                         *args[1:]], input=input)

    def appctl(self, args: list[str]) -> str:
        ctl = self.target.appctl()
        return appctl(ctl, args[0], *args[1:]) if ctl else run_tool(["ovs-appctl", *args])

    def configure(self, config: Config) -> dict[str, Any]:
        if config.testbed != "ovs":
            raise ValueError(f"{config.label}: the {self.spec_bridge} test bed is an Open vSwitch; "
                             "Linux-netfilter baselines need the embedded lab (drop --switch system)")
        start = time.perf_counter()
        info, nat = switch_pipeline(self, config)
        if nat:
            self._announce()
        self.clear_state()
        self.current = config
        info["configure_s"] = round(time.perf_counter() - start, 4)
        return info

    def _announce(self) -> None:
        """A gratuitous ARP from each host: the NAT pipeline learns MAC bindings from ARP."""
        for host in (self.gen, self.sink):
            run(in_netns(host.netns, ["arping", "-U", "-c", "1", "-I", host.iface, host.ip]))

    def _plain(self, on: bool) -> None:
        set_plain(self.ofctl, on, (self.gen_ofport, self.sink_ofport))

    def clear_state(self) -> None:
        self.appctl(["dpctl/flush-conntrack"])

    def conntrack_count(self) -> int | None:
        return conntrack_count(self.appctl)

    def begin_point(self) -> None:
        pass

    def datapath_counters(self) -> dict[str, float]:
        return {}

    def diagnostics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"datapath": self.datapath}
        if self.warnings:
            out["warnings"] = list(self.warnings)
        for key, args in (("conntrack", ["dpctl/ct-stats-show"]), ("upcalls", ["upcall/show"])):
            try:
                out[key] = self.appctl(args)
            except Exception as exc:  # diagnostics must never fail a measurement
                out[key] = f"unavailable: {exc}"
        return out

    def vswitchd_pid(self) -> int:
        if self.target.rundir is None:
            raise RuntimeError(f"{self.db}: no run directory, so no ovs-vswitchd pid")
        return int((self.target.rundir / "ovs-vswitchd.pid").read_text().strip())

    def switch_threads(self) -> tuple[int, str] | None:
        """ovs-vswitchd forwards on a userspace (netdev) bridge; the kernel does on a system one."""
        if self.datapath != "netdev":
            return None
        try:
            return self.vswitchd_pid(), ""
        except (OSError, ValueError, RuntimeError):
            return None

    def close(self) -> None:
        self._plain(False)
        for host in (self.gen, self.sink):
            subprocess.run(in_netns(host.netns, ["nft", "delete", "table", "netdev", "ovsmgr_bench"]),
                           stdin=subprocess.DEVNULL, capture_output=True, check=False)


def _has_bench_table(host: Host) -> bool:
    probe = subprocess.run(in_netns(host.netns, ["nft", "list", "table", "netdev", "ovsmgr_bench"]),
                           stdin=subprocess.DEVNULL, capture_output=True, check=False)
    return probe.returncode == 0
