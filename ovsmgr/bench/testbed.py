"""Test beds: where the load goes through. The embedded OVS lab here (`OvsTestbed`, an
`ovsmgr.lab.ovs.Lab`); an OVS that already runs in `systembed`; the Linux router in
`netfilter`.

Each has a generator host and a sink host; load frames leave the generator addressed
to `Testbed.next_hop_mac`. A `Config` (`pipelines`) is what the device under test
runs: an OVS pipeline or a Linux netfilter set-up. `configure` switches between them
in place, so a point and its baseline are measured on the same hosts minutes apart at
most.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ovsmgr.bench.netns import SWITCH_CPU, cpu_count, in_netns, pin_process_threads, run
from ovsmgr.bench.pipelines import (  # BLOCKLIST, policy_text: for bench.updates, which imports them from here
    BLOCKLIST,
    Config,
    lab_ports_for,
    policy_text,
    set_plain,
    switch_pipeline,
)
from ovsmgr.bench.spec import MAX_DESTINATION_PORTS, SPREAD_PORTS_FROM
from ovsmgr.lab.ovs import Lab
from ovsmgr.southbound.ovsdb import SwitchDB
from ovsmgr.southbound.target import SwitchTarget

__all__ = ["BLOCKLIST", "Config", "Host", "OvsTestbed", "Testbed", "drop_load_at_host", "parse_pmd_stats",
           "policy_text", "renice_threads"]


@dataclass(frozen=True)
class Host:
    netns: str
    iface: str
    address: str  # with prefix, e.g. 10.1.0.2/16
    mac: str

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_interface(self.address).ip)

    @property
    def network(self) -> str:
        return str(ipaddress.ip_interface(self.address).network)


class Testbed(Protocol):
    kind: str
    gen: Host
    sink: Host
    next_hop_mac: str
    """Destination MAC of load frames from the generator."""
    reply_mac: str
    """Destination MAC of mirrored replies from the sink."""
    nat_address: str | None
    """The SNAT address of the current pipeline: replies from the sink go there."""
    nat_ports: int
    """Source ports the current pipeline's SNAT has per destination (0: no SNAT)."""

    def configure(self, config: Config) -> dict[str, Any]: ...
    def switch_threads(self) -> tuple[int, str] | None:
        """(pid, thread name prefix) of what forwards: the DPDK PMD, or all of ovs-vswitchd."""
    def clear_state(self) -> None: ...
    def begin_point(self) -> None: ...
    def diagnostics(self) -> dict[str, Any]: ...
    def datapath_counters(self) -> dict[str, float]:
        """Cumulative datapath counters (DPDK PMD packets and processing cycles), for a
        trial's cost per packet."""
    def conntrack_count(self) -> int | None:
        """Connections the switch's conntrack holds now (None: it cannot tell)."""
    def close(self) -> None: ...


LOAD_PORT_DROP = """table netdev ovsmgr_bench {{
  chain ingress {{
    type filter hook ingress device "{iface}" priority -500; policy accept;
    meta l4proto {{ tcp, udp }} th dport {ports} counter drop
    meta l4proto {{ tcp, udp }} th sport {ports} drop
  }}
}}
"""


def renice_threads(pid: int, prefix: str, nice: int) -> None:
    """Set the nice value of a process's threads whose name starts with ``prefix``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        if (task / "comm").read_text().startswith(prefix):
            run(["renice", "-n", str(nice), "-p", task.name])


def sink_load_counter(host: Host) -> int:
    """Load packets a host's drop rule has counted (the destination-port rule of
    `LOAD_PORT_DROP`); -1 when it cannot be read."""
    try:
        listed = json.loads(run(in_netns(host.netns, ["nft", "-j", "list", "chain", "netdev", "ovsmgr_bench",
                                                      "ingress"])))
    except (RuntimeError, ValueError):
        return -1
    for item in listed.get("nftables", []):
        for expr in (item.get("rule") or {}).get("expr", []):
            if "counter" in expr:
                return int(expr["counter"]["packets"])  # the first rule: destination ports
    return -1


def drop_load_at_host(host: Host, port: int = 9) -> None:
    """Hosts drop the load (and its replies) as it arrives, after their interface counted it:
    no ICMP port unreachable or TCP RST goes back through the device under test. SYN loads to
    several ports go to `SPREAD_PORTS_FROM` up (`Destinations`)."""
    spread = f"{SPREAD_PORTS_FROM}-{SPREAD_PORTS_FROM + MAX_DESTINATION_PORTS - 1}"
    run(in_netns(host.netns, ["nft", "-f", "-"]),
        input=LOAD_PORT_DROP.format(iface=host.iface, ports=f"{{ {port}, {spread} }}"))


class OvsTestbed:
    """An embedded OVS lab (`ovsmgr.lab.ovs`) with a generator and a sink host."""

    kind = "ovs"

    def __init__(self, datapath: str, policy_file: str | None = None,
                 ports: tuple[str, str] | None = None, pin_switch: bool = False,
                 dpdk_ring: int = 0, nice: int = 0) -> None:
        name = f"ob{secrets.token_hex(3)}"
        self.datapath = datapath
        self.spec, self.gen_port, self.sink_port = lab_ports_for(policy_file, datapath, name, ports)
        self.lab = Lab(name, tempfile.mkdtemp(prefix=f"ovsmgr-{name}-", dir="/tmp"))
        self.target = SwitchTarget(self.lab.db_endpoint, self.lab.dir, self.lab.dir, lab=name)
        self.current: Config | None = None
        self.nat_address: str | None = None
        self.nat_ports = 0
        self.announced = False
        try:
            self.lab.up(self.spec)
            if pin_switch and datapath == "netdev" and cpu_count() > 1:
                pin_process_threads(self.lab.status()["daemons"]["ovs-vswitchd"]["pid"], SWITCH_CPU)
            if datapath == "dpdk" and dpdk_ring:
                self._deepen_rings(dpdk_ring)
            if nice:
                pid, prefix = self.vswitchd_pid(), "pmd" if datapath == "dpdk" else ""
                renice_threads(pid, prefix, nice)
        except BaseException:
            self.close()
            raise
        by_name = {p.name: p for p in self.spec.ports}
        state = {p["name"]: p for p in self.lab.status()["ports"]}
        self.gen = Host(state[self.gen_port]["netns"], "eth0", by_name[self.gen_port].address or "",
                        by_name[self.gen_port].mac)
        self.sink = Host(state[self.sink_port]["netns"], "eth0", by_name[self.sink_port].address or "",
                         by_name[self.sink_port].mac)
        self.next_hop_mac, self.reply_mac = self.sink.mac, self.gen.mac
        self.gen_ofport = by_name[self.gen_port].ofport
        self.sink_ofport = by_name[self.sink_port].ofport
        for host in (self.gen, self.sink):
            drop_load_at_host(host)

    def _deepen_rings(self, frames: int) -> None:
        """Re-plug each DPDK af_packet port with ``frames`` frames per ring (OVS re-attaches
        the device when its devargs change; `ensure_port` waits for it and checks its ofport)."""
        with SwitchDB(self.lab.db_endpoint) as db:
            for port in self.lab.status()["ports"]:
                devargs = f"net_af_packet{port['ofport']},iface={port['switch_iface']},framecnt={frames}"
                db.ensure_port(self.bridge, port["name"], port["ofport"], "dpdk", {"dpdk-devargs": devargs})

    @property
    def bridge(self) -> str:
        return self.spec.bridge

    def configure(self, config: Config) -> dict[str, Any]:
        """Switch pipelines: plain forwarding sits on top of whatever policy is applied (its
        flows at priority 65535 with the bench's cookie); a policy is applied by ovsmgr itself,
        as a difference against the one before."""
        start = time.perf_counter()
        info, nat = switch_pipeline(self, config)
        if nat and not self.announced:
            self.lab.announce()  # the NAT pipeline learns MAC bindings from ARP
            self.announced = True
        self.clear_state()
        self.current = config
        info["configure_s"] = round(time.perf_counter() - start, 4)
        return info

    def _plain(self, on: bool) -> None:
        set_plain(self.lab.ofctl, on, (self.gen_ofport, self.sink_ofport))

    def ofctl(self, args: list[str], input: str | None = None) -> str:
        return self.lab.ofctl(args, input=input)

    def clear_state(self) -> None:
        self.lab.appctl(["dpctl/flush-conntrack"])

    def conntrack_count(self) -> int | None:
        return conntrack_count(self.lab.appctl)

    def begin_point(self) -> None:
        self.lab.appctl(["dpif-netdev/pmd-stats-clear"])

    def datapath_counters(self) -> dict[str, float]:
        if self.datapath != "dpdk":
            return {}  # the netdev main thread reports no cycles
        try:
            stats = parse_pmd_stats(self.lab.appctl(["dpif-netdev/pmd-stats-show"]))
        except Exception:
            return {}
        return {k: stats.get(k, 0.0) for k in ("packets received", "processing cycles")}

    def diagnostics(self) -> dict[str, Any]:
        """Datapath statistics after a point: PMD/main-thread counters (EMC, SMC, megaflow hits,
        upcalls, cycles per packet), the megaflow count, conntrack totals."""
        out: dict[str, Any] = {}
        for key, args in (("pmd_stats", ["dpif-netdev/pmd-stats-show"]),
                          ("conntrack", ["dpctl/ct-stats-show"]),
                          ("upcalls", ["upcall/show"])):
            try:
                out[key] = self.lab.appctl(args)
            except Exception as exc:  # diagnostics must never fail a measurement
                out[key] = f"unavailable: {exc}"
        try:
            megaflows = self.lab.appctl(["dpctl/dump-flows"]).splitlines()
            out["megaflows"] = len([m for m in megaflows if m.strip() and not m.startswith("flow-dump")])
        except Exception as exc:
            out["megaflows"] = f"unavailable: {exc}"
        out["pmd"] = parse_pmd_stats(str(out.get("pmd_stats", "")))
        return out

    def switch_threads(self) -> tuple[int, str] | None:
        return self.vswitchd_pid(), "pmd" if self.datapath == "dpdk" else ""

    def vswitchd_pid(self) -> int:
        return int(self.lab.status()["daemons"]["ovs-vswitchd"]["pid"])

    def close(self) -> None:
        try:
            self.lab.down()
        finally:
            shutil.rmtree(self.lab.dir, ignore_errors=True)


def conntrack_count(appctl: Any) -> int | None:
    """``dpctl/ct-get-nconns`` through a bed's ``appctl(args)`` (a count, not a dump: cheap with
    millions of connections); the kernel datapath has no such count, so there the entries of
    ``dpctl/dump-conntrack`` are counted; None when the switch cannot say."""
    try:
        return int(appctl(["dpctl/ct-get-nconns"]).strip())
    except Exception:  # OvsToolError, LabError, ValueError: a count must never fail a measurement
        pass
    try:
        return sum(1 for line in appctl(["dpctl/dump-conntrack"]).splitlines() if line.strip())
    except Exception:
        return None


_PMD_FIELD = re.compile(r"^\s*([a-z. ]+?):\s+([0-9.]+)", re.MULTILINE)


def parse_pmd_stats(text: str) -> dict[str, float]:
    """Sum of the numeric fields of ``dpif-netdev/pmd-stats-show`` over all threads; averages
    (``avg ...``) are recomputed from the sums where possible."""
    totals: dict[str, float] = {}
    for name, value in _PMD_FIELD.findall(text):
        if name.startswith("avg"):
            continue
        totals[name] = totals.get(name, 0.0) + float(value)
    received = totals.get("packets received", 0.0)
    if received:
        cycles = totals.get("processing cycles", 0.0)
        totals["processing cycles per packet"] = round(cycles / received, 1)
        for hit in ("emc hits", "smc hits", "megaflow hits", "miss with success upcall"):
            passes = received + totals.get("packet recirculations", 0.0)
            totals[f"{hit} share"] = round(totals.get(hit, 0.0) / passes, 4) if passes else 0.0
    return totals
