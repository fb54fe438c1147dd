"""One measurement on a test bed: a fixed-rate trial, or a TCP throughput and latency run.

A trial (`run_trial`) sends the load at one rate with the latency probe
alongside; after ``warmup`` seconds it reads the generator's and the sink's
interface counters, again ``duration`` seconds later, and stops. Offered load is
what the generator's interface sent or refused in that window, delivered load
what the sink's interface received; loss is 1 - delivered/offered. Latency is
the probes sent in the window: p50/p75/p99/max of their one-way delay, and
their loss. The CPU time the switch's forwarding threads got in the window
(``switch_cpu_share``: a DPDK PMD should have 1.0) and the hypervisor's steal
time say whether other tenants of the machine took the switch's CPU.

The arithmetic (`trial_figures`, `latency_figures`, `percentile`) is pure and
unit-tested; the rest drives processes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from ovsmgr.bench.netns import (
    GENERATOR_CPU,
    IfCounters,
    Processes,
    in_netns,
    is_remote,
    python_for,
    read_counters,
    read_line,
    steal_ticks,
    thread_cpu_ticks,
)
from ovsmgr.bench.spec import ONE_DESTINATION, Destinations
from ovsmgr.bench.testbed import Testbed
from ovsmgr.bench.traffic import (
    Endpoints,
    LoadMode,
    iperf3,
    send_for,
    shaped,
    start_trafgen,
    trafgen_config,
)

PROBE_PORT = 7000
PROBE_SPORT = 7001
RR_PORT = 7002
PY = [sys.executable, "-m", "ovsmgr.lab.probe"]


def agent(netns: str) -> list[str]:
    """The traffic agent (``python -m ovsmgr.lab.probe``) with the host's Python (a remote host's ovsmgr venv)."""
    return [python_for(netns), *PY[1:]]


PRIME_PPS = 20000.0
"""Rate of the priming packets: slow enough for any pipeline to set up every connection."""
REMOTE_PROBE_SLACK = 2.0
GENERATOR_LIMIT = 0.97
"""A trial whose offered load is below this share of the requested rate hit the generator's limit."""


@dataclass(frozen=True)
class Load:
    proto: Literal["udp", "tcp"]
    dport: int
    size: int
    flows: int
    mode: LoadMode = "flows"
    destinations: Destinations = ONE_DESTINATION


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def latency_figures(sent_ns: Sequence[int], received: Sequence[Sequence[int]], window: tuple[int, int]
                    ) -> dict[str, float]:
    """Probe figures for the probes sent inside ``window`` (CLOCK_REALTIME ns): latency
    percentiles in microseconds and the probes' loss. ``sent_ns[seq]`` is the send time (negative
    when the send itself failed); ``received`` is ``[seq, one-way latency ns]`` pairs."""
    lo, hi = window
    in_window = {seq for seq, t in enumerate(sent_ns) if lo <= abs(t) <= hi}
    latencies = sorted(lat / 1000 for seq, lat in received if seq in in_window)
    out = {f"latency_{name}_us": round(percentile(latencies, q), 1)
           for name, q in (("p50", 50), ("p75", 75), ("p99", 99))}
    out["latency_max_us"] = round(latencies[-1], 1) if latencies else math.nan
    out["probe_sent"] = float(len(in_window))
    out["probe_loss"] = round(1 - len(latencies) / len(in_window), 5) if in_window else math.nan
    return out


def trial_figures(requested_pps: float, elapsed: float, gen: tuple[IfCounters, IfCounters],
                  sink: tuple[IfCounters, IfCounters], frame_size: int) -> dict[str, float]:
    """Offered and delivered rates and loss from two counter snapshots ``elapsed`` s apart."""
    offered = (gen[1].tx_packets - gen[0].tx_packets) + (gen[1].tx_dropped - gen[0].tx_dropped)
    delivered = sink[1].rx_packets - sink[0].rx_packets
    loss = 1 - delivered / offered if offered else math.nan
    return {
        "requested_pps": round(requested_pps, 1),
        "offered_pps": round(offered / elapsed, 1),
        "delivered_pps": round(delivered / elapsed, 1),
        "delivered_mbps": round(delivered / elapsed * frame_size * 8 / 1e6, 2),
        "loss": round(max(0.0, loss), 6) if offered else math.nan,
        "generator_refused_pps": round((gen[1].tx_dropped - gen[0].tx_dropped) / elapsed, 1),
        "generator_limited": float(offered / elapsed < GENERATOR_LIMIT * requested_pps),
        "window_s": round(elapsed, 3),
    }


def cpu_figures(before: tuple[int, list[int]], after: tuple[int, list[int]], elapsed: float,
                key: str = "switch_cpu_share") -> dict[str, float]:
    """How much CPU the switch got in the window (the DPDK PMD thread should have a whole CPU:
    less means other tenants of the machine took it) and the hypervisor's steal per CPU."""
    hz = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    if before[0] >= 0 and after[0] >= 0:
        out[key] = round((after[0] - before[0]) / hz / elapsed, 3)
    for cpu, (a, b) in enumerate(zip(before[1], after[1], strict=False)):
        out[f"steal_ms_cpu{cpu}"] = round((b - a) * 1000 / hz, 1)
    return out


def cost_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU cycles the DPDK PMD spent per packet in the window (OVS's own accounting: processing,
    not polling, cycles). Unlike loss, this cost hardly moves when other tenants take the CPU."""
    packets = after.get("packets received", 0.0) - before.get("packets received", 0.0)
    cycles = after.get("processing cycles", 0.0) - before.get("processing cycles", 0.0)
    return {"pmd_cycles_per_packet": round(cycles / packets, 1)} if packets > 0 and cycles > 0 else {}


def endpoints(bed: Testbed, mode: LoadMode) -> Endpoints:
    """Who sends to whom; replies from the sink go to the NAT address when there is one."""
    if mode in ("mirror", "synack"):
        if bed.nat_address:
            return Endpoints(bed.sink.mac, bed.reply_mac, bed.nat_address, bed.sink.ip,
                             f"{bed.nat_address}/32")
        return Endpoints(bed.sink.mac, bed.reply_mac, bed.gen.ip, bed.sink.ip, bed.gen.network)
    return Endpoints(bed.gen.mac, bed.next_hop_mac, bed.gen.ip, bed.sink.ip, bed.gen.network, bed.sink.network)


def write_config(bed: Testbed, load: Load, workdir: Path) -> Path:
    text = trafgen_config(endpoints(bed, load.mode), load.proto, load.dport, load.size, load.flows, load.mode,
                          load.destinations)
    path = workdir / f"trafgen-{bed.kind}-{load.proto}-{load.size}-{load.flows}-{load.mode}-{load.destinations}.cfg"
    path.write_text(text)
    return path


class Trials:
    """Runs trials on one test bed; holds the processes so Ctrl-C can stop them."""

    def __init__(self, bed: Testbed, procs: Processes, workdir: Path, warmup: float,
                 duration: float, probe_rate: int, nice: int = 0):
        self.bed, self.procs, self.workdir = bed, procs, workdir
        self.warmup, self.duration, self.probe_rate, self.nice = warmup, duration, probe_rate, nice

    def prime(self, load: Load, establish: bool = False, pps: float = PRIME_PPS) -> None:
        """Open every flow before measuring, so a point measures the traffic of connections,
        not their set-up: TCP flows get a SYN and the sink's SYN-ACK (ovsmgr drops TCP that
        starts without one); UDP flows get one packet, and with ``establish`` a reply."""
        if load.proto == "tcp":
            self._send(replace(load, mode="syn"), pps, from_sink=False)
            self._send(replace(load, mode="synack"), pps, from_sink=True)
            return
        self._send(load, pps, from_sink=False)
        if establish:
            self._send(replace(load, mode="mirror"), pps, from_sink=True)

    def _send(self, load: Load, pps: float, from_sink: bool) -> None:
        host = self.bed.sink if from_sink else self.bed.gen
        send_for(self.procs, host.netns, host.iface, str(write_config(self.bed, load, self.workdir)),
                 pps, load.flows / pps + 0.3, load.size)

    def rate(self, load: Load, pps: float) -> dict[str, Any]:
        """One fixed-rate trial (see the module docstring)."""
        config = write_config(self.bed, load, self.workdir)
        with ExitStack() as stack:
            receiver = sender = None
            if self.probe_rate:  # both start at once: only probes sent after the warm-up count
                receiver, sender = self._probe_receiver(), self._probe_sender(load.size)
                stack.callback(self.procs.stop, receiver)
                stack.callback(self.procs.stop, sender)
                _wait_ready(receiver)
                _wait_ready(sender)
            with shaped(self.bed.gen.netns, self.bed.gen.iface, pps, load.size):
                trafgen = start_trafgen(self.procs, self.bed.gen.netns, self.bed.gen.iface, str(config),
                                        pps, self.nice)
                try:
                    time.sleep(self.warmup)
                    targets = [(self.bed.gen.netns, self.bed.gen.iface),
                               (self.bed.sink.netns, self.bed.sink.iface)]
                    cpu0, dp0 = self._cpu_snapshot(), self.bed.datapath_counters()
                    t0, c0 = read_counters(targets)
                    w0 = time.time_ns()
                    time.sleep(self.duration)
                    t1, c1 = read_counters(targets)
                    w1 = time.time_ns()
                    cpu1, dp1 = self._cpu_snapshot(), self.bed.datapath_counters()
                finally:
                    self.procs.stop(trafgen)
            figures: dict[str, Any] = trial_figures(pps, t1 - t0, (c0[0], c1[0]), (c0[1], c1[1]), load.size)
            threads = self.bed.switch_threads()
            pmd = threads is not None and threads[1] == "pmd"
            figures.update(cpu_figures(cpu0, cpu1, t1 - t0, "pmd_cpu_share" if pmd else "switch_cpu_share"))
            figures.update(cost_figures(dp0, dp1))
            if sender is not None and receiver is not None:
                sent = _json_tail(self.procs.wait(sender, 10)[0]).get("sent", [])
                got = _json_tail(self.procs.wait(receiver, 10)[0]).get("received", [])
                figures.update(latency_figures(sent, got, (w0, w1)))
        return figures

    def _cpu_snapshot(self) -> tuple[int, list[int]]:
        threads = self.bed.switch_threads()
        return (thread_cpu_ticks(*threads) if threads else -1), steal_ticks()

    def _probe_receiver(self) -> Any:
        receiver = self.procs.start(in_netns(self.bed.sink.netns, [
            *agent(self.bed.sink.netns), "latency-recv", str(PROBE_PORT), "--timeout", f"{self.warmup + self.duration + 15:g}"],
            cpu=GENERATOR_CPU))
        return receiver

    def _slack(self) -> float:
        """Seconds the probe stream runs past warm-up and window: the load's set-up and the
        counter reads take ssh sessions (each a round trip or more) on ``ssh:`` hosts."""
        return REMOTE_PROBE_SLACK if is_remote(self.bed.gen.netns) or is_remote(self.bed.sink.netns) else 0.3

    def _probe_sender(self, frame_size: int) -> Any:
        """The probe stream starts before the load and runs past the measurement window."""
        sender = self.procs.start(in_netns(self.bed.gen.netns, [
            *agent(self.bed.gen.netns), "latency-send", self.bed.gen.iface, self.bed.gen.mac, self.bed.next_hop_mac,
            self.bed.gen.ip, self.bed.sink.ip, str(PROBE_PORT), "--rate", str(self.probe_rate),
            "--duration", f"{self.warmup + self.duration + self._slack():g}", "--size", str(frame_size),
            "--sport", str(PROBE_SPORT)], cpu=GENERATOR_CPU))
        return sender

    def tcp(self) -> dict[str, Any]:
        """TCP throughput (one iperf3 stream) and request/response latency (100-byte requests,
        200-byte responses, one connection), each for ``duration`` seconds."""
        figures: dict[str, Any] = {}
        for attempt in (1, 2):  # a stuck iperf3 (seen once in a hundred) gets one more chance
            try:
                figures = dict(iperf3(self.procs, self.bed.sink.netns, self.bed.gen.netns,
                                      self.bed.sink.ip, self.duration))
                break
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                figures = {"tcp_gbps": math.nan, "tcp_error": f"attempt {attempt}: {exc}"[:300]}
        server = self.procs.start(in_netns(self.bed.sink.netns, [*agent(self.bed.sink.netns), "rr-server", str(RR_PORT),
                                                                 "--timeout", "15"], cpu=GENERATOR_CPU))
        try:
            _wait_ready(server)
            client = self.procs.start(in_netns(self.bed.gen.netns, [
                *agent(self.bed.gen.netns), "rr-client", self.bed.sink.ip, str(RR_PORT), "--duration", f"{self.duration:g}"],
                cpu=GENERATOR_CPU))
            result = _json_tail(self.procs.wait(client, self.duration + 20)[0])
        finally:
            self.procs.stop(server)
        latencies = sorted(v / 1000 for v in result.get("latencies_ns", []))
        elapsed = float(result.get("elapsed") or self.duration)
        figures.update(rr_tps=round(len(latencies) / elapsed, 1),
                       rr_p50_us=round(percentile(latencies, 50), 1),
                       rr_p99_us=round(percentile(latencies, 99), 1))
        if "error" in result:
            figures["rr_error"] = result["error"]
        return figures


def _wait_ready(proc: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        line = read_line(proc, left)
        if '"ready"' in line:
            return
        if not line and proc.poll() is not None:
            raise RuntimeError(f"probe did not start: {proc.stderr.read()[-500:]}")
    raise RuntimeError("probe did not start in time")


def _json_tail(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}
