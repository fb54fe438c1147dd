"""Test beds: where the load goes through. The OVS lab here; the Linux router in `netfilter`.

Both have a generator host and a sink host in namespaces of their own; load
frames leave the generator addressed to `Testbed.next_hop_mac`. A `Config` is
what the device under test runs: an OVS pipeline (plain port-to-port
forwarding, a seed policy, a policy file, or a generated policy of N rules, each
optionally with the bench's blocklist, see `with_blocklist`) or a Linux
netfilter set-up. `configure` switches between them in place, so a
point and its baseline are measured on the same hosts minutes apart at most.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, Protocol, cast

from ovsmgr.bench.netns import REMOTE, SWITCH_CPU, cpu_count, in_netns, pin_process_threads, run
from ovsmgr.compiler import CompiledPolicy, compile_policy
from ovsmgr.lab.ovs import Lab, LabPort, LabSpec, lab_spec_from_policy
from ovsmgr.policy import load_policy, load_policy_text
from ovsmgr.policy.generate import Kind, generate_policy
from ovsmgr.policy.loader import load_file
from ovsmgr.southbound.target import SYSTEM_DB, SwitchTarget, resolve_target
from ovsmgr.switch.apply import apply_policy

POLICY_DIR = Path(__file__).resolve().parents[2] / "policies"
BENCH_COOKIE = 0xBE0C
"""Cookie of the plain-forwarding flows the bench adds on top of a policy (ovsmgr ignores them)."""
PLAIN_PRIORITY = 65535
DEFAULT_PORTS = (LabPort("inside", 1, "10.1.0.2/16"), LabPort("outside", 2, "10.2.0.2/16"))
BLOCKLIST = "bench-blocklist"
"""Name of the address set and of the drop rule `with_blocklist` adds to a pipeline."""
BLOCKLIST_MEMBERS = ("203.0.113.1",)
"""The set's members in the policy (TEST-NET-3: no load, probe or NAT address is in it)."""


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


@dataclass(frozen=True)
class Config:
    """What the device under test runs.

    ``system``: ``ovs`` pipelines (``pipeline`` = plain | seed-firewall | seed-nat | a policy
    file | generated) or a Linux one (linux | iptables | iptables-nft | ipset | nftables).
    """

    system: str
    pipeline: str = "plain"
    rules: int = 0
    rule_kind: str = "dport"
    blocklist: str | None = None
    """The pipeline with the bench's blocklist added (`with_blocklist`) for the zone of this
    generator port ("": the test bed's default generator port); None: the pipeline as it is."""

    @property
    def testbed(self) -> Literal["ovs", "linux"]:
        return "ovs" if self.system == "ovs" else "linux"

    @property
    def label(self) -> str:
        if self.system == "ovs" and self.pipeline == "generated":
            return f"ovsmgr {self.rule_kind} x{self.rules}"
        if self.system == "ovs":
            name = Path(self.pipeline).stem if self.pipeline.endswith((".yaml", ".yml")) else self.pipeline
            return f"{name}+blocklist" if self.blocklist is not None else name
        if self.system == "linux":
            return "linux"
        return f"{self.system} {self.rule_kind} x{self.rules}"


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

    def configure(self, config: Config) -> dict[str, Any]: ...
    def switch_threads(self) -> tuple[int, str] | None:
        """(pid, thread name prefix) of what forwards: the DPDK PMD, or all of ovs-vswitchd."""
    def clear_state(self) -> None: ...
    def begin_point(self) -> None: ...
    def diagnostics(self) -> dict[str, Any]: ...
    def datapath_counters(self) -> dict[str, float]:
        """Cumulative datapath counters (DPDK PMD packets and processing cycles), for a
        trial's cost per packet."""
    def close(self) -> None: ...


def seed_policy_path(name: str) -> Path:
    path = POLICY_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} (the seed policies live in the repository's policies/)")
    return path


def pipeline_data(pipeline: str) -> dict[str, Any]:
    """The policy data (as in its YAML file) of a seed pipeline or a policy file."""
    path = seed_policy_path(pipeline) if pipeline in ("seed-firewall", "seed-nat") else Path(pipeline)
    return cast(dict[str, Any], copy.deepcopy(load_file(path).data))


def with_blocklist(data: dict[str, Any], generator_port: str = "") -> dict[str, Any]:
    """The policy plus an address set `BLOCKLIST` (members `BLOCKLIST_MEMBERS`) and, first in the
    firewall, a rule of that name dropping traffic from the generator port's zone to the set.
    The load (to the sink's address) is tested against the rule and never matches it; the
    ``updates`` method changes the set and the rule while the load runs. The generator port
    defaults as in `lab_ports_for`: ``inside`` when the policy has it, else the lowest ofport."""
    out = copy.deepcopy(data)
    ports: dict[str, Any] = out.get("switch", {}).get("ports", {})
    if not generator_port:
        generator_port = "inside" if {"inside", "outside"} <= set(ports) else min(
            ports, key=lambda name: int((ports[name] or {}).get("ofport", 1 << 30)), default="")
    zones: dict[str, Any] = out.get("zones") or {}
    zone = next((name for name, z in zones.items() if generator_port in ((z or {}).get("ports") or [])), None)
    if zone is None:
        raise ValueError(f"no zone holds the generator port {generator_port!r}: the blocklist rule "
                         "needs the zone the load enters from")
    if BLOCKLIST in (out.get("addresses") or {}):
        raise ValueError(f"the policy already has an address set named {BLOCKLIST!r}")
    out["addresses"] = {**(out.get("addresses") or {}), BLOCKLIST: list(BLOCKLIST_MEMBERS)}
    firewall = out.setdefault("firewall", {})
    firewall["rules"] = [{"name": BLOCKLIST, "from": zone, "dst": f"@{BLOCKLIST}", "action": "drop"},
                         *(firewall.get("rules") or [])]
    return out


def policy_text(config: Config) -> str:
    """The YAML of an OVS pipeline with the bench's blocklist (what its controller would load)."""
    import yaml

    if config.blocklist is None:
        raise ValueError(f"{config.label} is a pipeline without the blocklist")
    return str(yaml.safe_dump(with_blocklist(pipeline_data(config.pipeline), config.blocklist),
                              sort_keys=False))


@cache
def _compiled(pipeline: str, rules: int, kind: str, blocklist: str | None = None) -> tuple[CompiledPolicy, float]:
    """(compiled policy, seconds to load and compile), cached for the run."""
    start = time.perf_counter()
    if blocklist is not None:
        config = Config("ovs", pipeline, rules, kind, blocklist)
        policy = load_policy_text(policy_text(config), f"{config.label}.yaml")
    elif pipeline == "generated":
        policy = load_policy_text(generate_policy(rules, cast(Kind, kind)), f"generated-{kind}-{rules}.yaml")
    elif pipeline in ("seed-firewall", "seed-nat"):
        policy = load_policy([seed_policy_path(pipeline)])
    else:
        policy = load_policy([pipeline])
    compiled = compile_policy(policy)
    return compiled, time.perf_counter() - start


def compiled_for(config: Config) -> tuple[CompiledPolicy, float]:
    return _compiled(config.pipeline, config.rules, config.rule_kind, config.blocklist)



class _PipelineSwitch(Protocol):
    target: SwitchTarget
    nat_address: str | None

    def _plain(self, on: bool) -> None: ...


def switch_pipeline(bed: _PipelineSwitch, config: Config) -> tuple[dict[str, Any], bool]:
    """Put ``config``'s OVS pipeline on ``bed``'s switch: plain forwarding sits on top of
    whatever policy is applied (its flows at priority 65535 with the bench's cookie); a policy is
    applied by ovsmgr itself, as a difference against the one before. Sets ``bed.nat_address``;
    returns what it cost and whether the pipeline translates (its hosts must then announce
    themselves: the NAT pipeline learns MAC bindings from ARP)."""
    info: dict[str, Any] = {}
    bed.nat_address = None
    if config.pipeline == "plain":
        bed._plain(True)
        return info, False
    compiled, compile_s = compiled_for(config)
    bed._plain(False)
    applied = time.perf_counter()
    result = apply_policy(compiled, bed.target)
    info.update(compile_s=round(compile_s, 4), apply_s=round(time.perf_counter() - applied, 4),
                flows=len(compiled.flowset), changed=sum(result.plan.counts().values()))
    snat = [r for r in compiled.policy.nat if r.kind == "snat"]
    bed.nat_address = str(snat[0].translate_lo) if snat else None
    return info, bool(compiled.policy.nat)

def lab_ports_for(policy_file: str | None, datapath: str, name: str,
                  ports: tuple[str, str] | None) -> tuple[LabSpec, str, str]:
    """The lab for a pipeline: the default two-port layout, or a policy file's own ports.
    Returns (spec, generator port, sink port)."""
    if policy_file is None:
        return LabSpec("br0", cast(Any, datapath), list(DEFAULT_PORTS), name), "inside", "outside"
    policy = load_policy([policy_file])
    spec = lab_spec_from_policy(policy, cast(Any, datapath), {}, name)
    names = [p.name for p in sorted(spec.ports, key=lambda p: p.ofport)]
    if ports is None:
        ports = ("inside", "outside") if {"inside", "outside"} <= set(names) else (names[0], names[1])
    missing = [p for p in ports if p not in names]
    if missing or len(names) < 2:
        raise ValueError(f"{policy_file}: no port(s) {', '.join(missing)} (ports: {', '.join(names)})")
    return spec, ports[0], ports[1]


LOAD_PORT_DROP = """table netdev ovsmgr_bench {{
  chain ingress {{
    type filter hook ingress device "{iface}" priority -500; policy accept;
    meta l4proto {{ tcp, udp }} th dport {port} drop
    meta l4proto {{ tcp, udp }} th sport {port} drop
  }}
}}
"""


def renice_threads(pid: int, prefix: str, nice: int) -> None:
    """Set the nice value of a process's threads whose name starts with ``prefix``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        if (task / "comm").read_text().startswith(prefix):
            run(["renice", "-n", str(nice), "-p", task.name])


def drop_load_at_host(host: Host, port: int = 9) -> None:
    """Hosts drop the load (and its replies) as it arrives, after their interface counted it:
    no ICMP port unreachable or TCP RST goes back through the device under test."""
    run(in_netns(host.netns, ["nft", "-f", "-"]),
        input=LOAD_PORT_DROP.format(iface=host.iface, port=port))


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
        the device when its devargs change)."""
        for port in self.lab.status()["ports"]:
            devargs = f"net_af_packet{port['ofport']},iface={port['switch_iface']},framecnt={frames}"
            self.lab.switch_exec(["ovs-vsctl", f"--db={self.lab.db_endpoint}", "set", "Interface",
                                  port["name"], f"options:dpdk-devargs={devargs}"],
                                 capture_output=True, text=True, check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            out = self.lab.switch_exec(["ovs-vsctl", f"--db={self.lab.db_endpoint}", "--bare", "--columns",
                                        "ofport,error", "list", "Interface"], capture_output=True, text=True)
            if "-1" not in out.stdout.split() and "error" not in out.stdout.lower():
                return
            time.sleep(0.2)
        raise RuntimeError(f"DPDK ports did not come back with {frames}-frame rings: {out.stdout}")

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
        cookie = f"cookie={BENCH_COOKIE:#x}/-1"
        self.lab.ofctl(["del-flows", cookie])
        if on:
            flows = "".join(
                f"cookie={BENCH_COOKIE:#x},table=0,priority={PLAIN_PRIORITY},in_port={a} actions=output:{b}\n"
                for a, b in ((self.gen_ofport, self.sink_ofport), (self.sink_ofport, self.gen_ofport)))
            self.lab.ofctl(["add-flows", "-"], input=flows)

    def clear_state(self) -> None:
        self.lab.appctl(["dpctl/flush-conntrack"])

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


def host_from(spec: str, default_iface: str = "data0") -> Host:
    """A host named on the command line: ``ssh:NAME[:IFACE]`` (over ssh, see `netns.REMOTE`) or
    ``NETNS[:IFACE]`` (a local namespace). Its address and MAC are read from the interface."""
    import json

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
        self.gen_ofport, self.sink_ofport = (self._ofport(p) for p in ports)
        self.datapath = self._vsctl(["get", "Bridge", bridge, "datapath_type"]).strip().strip('"') or "system"
        self.next_hop_mac, self.reply_mac = sink.mac, gen.mac
        self.current: Config | None = None
        self.nat_address: str | None = None
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

    def _vsctl(self, args: list[str]) -> str:
        return run(["ovs-vsctl", f"--db={self.db}", *args])

    def _ofport(self, port: str) -> int:
        try:
            ofport = int(self._vsctl(["get", "Interface", port, "ofport"]).strip())
        except (RuntimeError, ValueError) as exc:
            raise RuntimeError(f"bridge {self.spec_bridge}: no port {port} with an ofport ({exc})") from None
        if ofport < 1:
            raise RuntimeError(f"bridge {self.spec_bridge}: port {port} has no ofport yet ({ofport})")
        return ofport

    def ofctl(self, args: list[str], input: str | None = None) -> str:
        return run(["ovs-ofctl", "-O", "OpenFlow15", args[0], self.target.mgmt(self.spec_bridge),
                    *args[1:]], input=input)

    def appctl(self, args: list[str]) -> str:
        ctl = self.target.appctl()
        return run(["ovs-appctl", *(["-t", ctl] if ctl else []), *args])

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
        self.ofctl(["del-flows", f"cookie={BENCH_COOKIE:#x}/-1"])
        if on:
            flows = "".join(
                f"cookie={BENCH_COOKIE:#x},table=0,priority={PLAIN_PRIORITY},in_port={a} actions=output:{b}\n"
                for a, b in ((self.gen_ofport, self.sink_ofport), (self.sink_ofport, self.gen_ofport)))
            self.ofctl(["add-flows", "-"], input=flows)

    def clear_state(self) -> None:
        self.appctl(["dpctl/flush-conntrack"])

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
