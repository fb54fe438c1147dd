"""The Linux baselines of seed 000: a router namespace filtering with iptables, ipset or nftables.

Topology: ``<name>-gen`` (10.1.0.2/16) -- ``<name>-rt`` (ip_forward=1) -- ``<name>-sink``
(10.2.0.2/16), veth pairs with TX checksum offload off like the OVS lab's. The
router's forwarding runs in softirq; RPS on its ingress veth moves it to the
switch CPU, away from the generator's, as the OVS lab's datapath is.

Rule sets (N filler rules the benchmark traffic never matches, from the same
ranges as `ovsmgr generate`: TCP ports 20000-65535, sources in 100.64.0.0/10):

- ``iptables``: N rules in FORWARD, ``-p tcp --dport P -j DROP`` or ``-s ADDR -j DROP``,
  with the legacy x_tables backend the seed used (linear evaluation per packet);
- ``iptables-nft``: the same rules through Debian's default nf_tables backend;
- ``ipset``: one ``bitmap:port`` or ``hash:ip`` set and one iptables (legacy) rule;
- ``nftables``: one named set and one rule;
- ``linux``: no rules at all (plain forwarding).
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import secrets
import time
from pathlib import Path
from typing import Any

from ovsmgr.bench.netns import SWITCH_CPU, cpu_count, run
from ovsmgr.bench.pipelines import Config
from ovsmgr.bench.testbed import Host, drop_load_at_host
from ovsmgr.lab import netns
from ovsmgr.lab.spec import LabError
from ovsmgr.policy.generate import FILLER_PORTS, FILLER_SOURCES

GEN_ADDR, RT_GEN_ADDR = "10.1.0.2/16", "10.1.0.1/16"
SINK_ADDR, RT_SINK_ADDR = "10.2.0.2/16", "10.2.0.1/16"
IPSET_NAME = "ovsmgr-bench"


def filler_values(kind: str, count: int, seed: int = 0) -> list[str]:
    """N distinct ports (``dport``) or source addresses (``src``) the traffic never matches;
    ``mixed`` alternates both, like `ovsmgr generate`."""
    rng = random.Random(seed)
    if kind == "mixed":
        ports = filler_values("dport", count // 2, seed)
        sources = filler_values("src", count - count // 2, seed)
        return [f"port:{p}" for p in ports] + [f"src:{s}" for s in sources]
    if kind == "dport":
        if count > len(FILLER_PORTS):
            raise ValueError(f"at most {len(FILLER_PORTS)} port rules")
        return [str(p) for p in rng.sample(FILLER_PORTS, count)]
    base = int(FILLER_SOURCES.network_address)
    return [str(ipaddress.IPv4Address(base + o))
            for o in rng.sample(range(1, FILLER_SOURCES.num_addresses - 1), count)]


def _split(kind: str, values: list[str]) -> tuple[list[str], list[str]]:
    """(ports, sources) of a rule list."""
    if kind == "dport":
        return values, []
    if kind == "src":
        return [], values
    return ([v.removeprefix("port:") for v in values if v.startswith("port:")],
            [v.removeprefix("src:") for v in values if v.startswith("src:")])


def iptables_restore(kind: str, count: int) -> str:
    """An iptables-restore file with the linear rule set."""
    ports, sources = _split(kind, filler_values(kind, count))
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    lines += [f"-A FORWARD -p tcp -m tcp --dport {p} -j DROP" for p in ports]
    lines += [f"-A FORWARD -s {s}/32 -j DROP" for s in sources]
    return "\n".join([*lines, "COMMIT", ""])


def ipset_restore(kind: str, count: int) -> tuple[str, str]:
    """(ipset restore file, iptables-restore file): the sets and one rule per set."""
    ports, sources = _split(kind, filler_values(kind, count))
    sets, rules = [], []
    if kind in ("dport", "mixed"):
        sets.append(f"create {IPSET_NAME}-ports bitmap:port range 0-65535")
        sets += [f"add {IPSET_NAME}-ports {p}" for p in ports]
        rules.append(f"-A FORWARD -p tcp -m set --match-set {IPSET_NAME}-ports dst -j DROP")
    if kind in ("src", "mixed"):
        sets.append(f"create {IPSET_NAME}-src hash:ip family inet hashsize 4096 maxelem 200000")
        sets += [f"add {IPSET_NAME}-src {s}" for s in sources]
        rules.append(f"-A FORWARD -m set --match-set {IPSET_NAME}-src src -j DROP")
    table = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             *rules, "COMMIT", ""]
    return "\n".join([*sets, ""]), "\n".join(table)


def nft_ruleset(kind: str, count: int) -> str:
    """An ``nft -f`` file: one table, named sets, one rule per set, in the forward hook."""
    ports, sources = _split(kind, filler_values(kind, count))
    parts = ["table inet ovsmgr_bench {"]
    rules = []
    if kind in ("dport", "mixed"):
        elements = f" elements = {{ {', '.join(ports)} }}" if ports else ""
        parts.append(f"  set ports {{ type inet_service;{elements} }}")
        rules.append("    tcp dport @ports drop")
    if kind in ("src", "mixed"):
        elements = f" elements = {{ {', '.join(sources)} }}" if sources else ""
        parts.append(f"  set sources {{ type ipv4_addr; flags interval;{elements} }}")
        rules.append("    ip saddr @sources drop")
    parts += ["  chain forward {", "    type filter hook forward priority 0; policy accept;",
              *rules, "  }", "}", ""]
    return "\n".join(parts)


class LinuxRouter:
    """Generator, router and sink namespaces; see the module docstring."""

    kind = "linux"

    def __init__(self, workdir: Path) -> None:
        name = f"ob{secrets.token_hex(3)}"
        self.workdir = workdir
        self.namespaces: list[str] = []
        self.gen_ns, self.rt_ns, self.sink_ns = f"{name}-gen", f"{name}-rt", f"{name}-sink"
        self.current: Config | None = None
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        self.gen = Host(self.gen_ns, "eth0", GEN_ADDR, self._mac(self.gen_ns, "eth0"))
        self.sink = Host(self.sink_ns, "eth0", SINK_ADDR, self._mac(self.sink_ns, "eth0"))
        self.next_hop_mac = self._mac(self.rt_ns, "r-gen")
        self.reply_mac = self._mac(self.rt_ns, "r-sink")
        self.nat_address: str | None = None
        self.nat_ports = 0
        for host in (self.gen, self.sink):
            drop_load_at_host(host)

    def _build(self) -> None:
        for ns in (self.gen_ns, self.rt_ns, self.sink_ns):
            netns.add(ns, lambda ns=ns: self.namespaces.append(ns))  # type: ignore[misc]
            for key in ("all", "default"):
                run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"])
        for host_ns, rt_if, host_addr, rt_addr in ((self.gen_ns, "r-gen", GEN_ADDR, RT_GEN_ADDR),
                                                   (self.sink_ns, "r-sink", SINK_ADDR, RT_SINK_ADDR)):
            run(["ip", "-n", host_ns, "link", "add", "eth0", "type", "veth", "peer", "name", rt_if,
                 "netns", self.rt_ns])
            for ns, dev, addr in ((host_ns, "eth0", host_addr), (self.rt_ns, rt_if, rt_addr)):
                run(["ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"])
                run(["ip", "-n", ns, "addr", "add", addr, "dev", dev])
                run(["ip", "-n", ns, "link", "set", dev, "up"])
            gateway = str(ipaddress.ip_interface(rt_addr).ip)
            run(["ip", "-n", host_ns, "route", "add", "default", "via", gateway])
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0", "net.ipv4.conf.r-gen.rp_filter=0"):
            run(["ip", "netns", "exec", self.rt_ns, "sysctl", "-qw", key])
        if cpu_count() > 1:  # forward on the switch CPU, not the generator's
            run(["ip", "netns", "exec", self.rt_ns, "sh", "-c",
                 f"echo {1 << SWITCH_CPU:x} > /sys/class/net/r-gen/queues/rx-0/rps_cpus"])
        sink_ip = str(ipaddress.ip_interface(SINK_ADDR).ip)
        run(["ip", "-n", self.rt_ns, "neigh", "replace", sink_ip, "lladdr",
             self._mac(self.sink_ns, "eth0"), "dev", "r-sink", "nud", "permanent"])

    @staticmethod
    def _mac(ns: str, dev: str) -> str:
        out = run(["ip", "-n", ns, "-o", "link", "show", dev])
        return out.split("link/ether", 1)[1].split()[0]

    def _flush(self) -> None:
        for tool in ("iptables-legacy", "iptables-nft"):
            run(["ip", "netns", "exec", self.rt_ns, tool, "-F", "FORWARD"])
        run(["ip", "netns", "exec", self.rt_ns, "nft", "flush", "ruleset"])  # also iptables-nft's
        run(["ip", "netns", "exec", self.rt_ns, "ipset", "destroy"])

    def configure(self, config: Config) -> dict[str, Any]:
        start = time.perf_counter()
        self._flush()
        ns = ["ip", "netns", "exec", self.rt_ns]
        kind, n = config.rule_kind, config.rules
        if config.system == "iptables":
            run([*ns, "iptables-legacy-restore"], input=iptables_restore(kind, n))
        elif config.system == "iptables-nft":
            run([*ns, "iptables-nft-restore"], input=iptables_restore(kind, n))
        elif config.system == "ipset":
            sets, table = ipset_restore(kind, n)
            run([*ns, "ipset", "restore"], input=sets)
            run([*ns, "iptables-legacy-restore"], input=table)
        elif config.system == "nftables":
            path = self.workdir / "nft-ruleset.nft"
            path.write_text(nft_ruleset(kind, n))
            run([*ns, "nft", "-f", str(path)])
        elif config.system != "linux":
            raise ValueError(f"unknown Linux system {config.system!r}")
        self.current = config
        return {"configure_s": round(time.perf_counter() - start, 4)}

    def switch_threads(self) -> tuple[int, str] | None:
        return None  # the router forwards in softirq, no process of its own

    def datapath_counters(self) -> dict[str, float]:
        return {}

    def clear_state(self) -> None:
        """Nothing to clear: the rules match no state (no conntrack is loaded for them)."""

    def conntrack_count(self) -> int | None:
        return None  # the router's rules track no connections

    def begin_point(self) -> None:
        self._softnet_before = _softnet_dropped()

    def diagnostics(self) -> dict[str, Any]:
        before = getattr(self, "_softnet_before", None)
        now = _softnet_dropped()
        return {"softnet_backlog_drops": (now - before) if before is not None else None}

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            with contextlib.suppress(LabError):  # what a namespace still holds goes with the run
                netns.delete(ns)
        self.namespaces.clear()


def _softnet_dropped() -> int:
    """Packets dropped because a CPU's input backlog was full (all CPUs, all namespaces)."""
    total = 0
    for line in Path("/proc/net/softnet_stat").read_text().splitlines():
        total += int(line.split()[1], 16)
    return total
