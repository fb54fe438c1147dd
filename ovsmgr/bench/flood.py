"""Method ``flood``: what established traffic keeps while new connections flood the switch.

A trial (`FloodTrials.run`) on a test bed whose pipeline is in place:

1. conntrack is flushed; an iperf3 TCP stream at ``stream`` (``-b``) and a ping (every
   10 ms, one ICMP identifier: one connection) start from the generator host to the sink;
   both are committed connections before anything else happens;
2. after ``warmup`` seconds the flood starts (a subject's trial; the baseline has none):
   trafgen sends TCP SYNs from random source addresses and ports to ``destinations`` at the
   flood rate, from a macvlan interface (`FLOOD_IFACE`) on the generator's link with a token
   bucket of its own, so the flood is paced without pacing the stream and the ping, which
   leave by the link itself;
3. the window is the flood's ``duration`` seconds: what the stream delivered in it (the iperf3
   server's intervals inside it), the pings sent in it and their answers, the SYNs offered
   (the macvlan's counters) and delivered (the sink's counter of the bench's drop rule), the
   connections conntrack holds at its end and, for a NAT, the share of its source ports per
   destination that they use; the switch's CPU share and, on DPDK, its cycles per packet.

The stream and the ping run at the bench's ``nice`` value, the flood at 0: on this one
generator CPU an attacker would otherwise slow the victims' own TCP stack, which a separate
attacking machine could not. The arithmetic (`ping_figures`, `stream_figures`) is pure and
unit-tested.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from ovsmgr.bench.measure import Load, cost_figures, cpu_figures, percentile, write_config
from ovsmgr.bench.methods import Task
from ovsmgr.bench.netns import (
    GENERATOR_CPU,
    Processes,
    in_netns,
    read_counters,
    run,
    steal_ticks,
    thread_cpu_ticks,
)
from ovsmgr.bench.testbed import Testbed, sink_load_counter
from ovsmgr.bench.traffic import _wait_listening, shaped, start_trafgen

FLOOD_IFACE = "flood0"
PING_INTERVAL = 0.01
STREAM_PORT = 5201
STREAM_INTERVAL = 0.25
"""Seconds per iperf3 interval: the window takes the intervals whose middle lies inside it."""
_PING_REPLY = re.compile(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+).*time=([\d.]+) ms")
_PING_SENT = re.compile(r"(\d+) packets transmitted")


def ping_figures(text: str, window: tuple[float, float]) -> dict[str, float]:
    """Ping figures for the echo requests sent inside ``window`` (epoch seconds), from the output
    of ``ping -D``: each reply's send time is its arrival time less its round trip; a request
    never answered is placed between its neighbours' send times."""
    sent_at: dict[int, float] = {}
    rtts: dict[int, float] = {}
    for line in text.splitlines():
        found = _PING_REPLY.match(line.strip())
        if found and int(found[2]) not in rtts:
            seq, rtt = int(found[2]), float(found[3])
            rtts[seq], sent_at[seq] = rtt, float(found[1]) - rtt / 1000
    total = _PING_SENT.search(text)
    count = int(total[1]) if total else max(rtts, default=0)
    known = sorted(sent_at)
    in_window, answered = 0, []
    for seq in range(1, count + 1):
        when = sent_at.get(seq, _interpolated(seq, known, sent_at))
        if when is not None and window[0] <= when <= window[1]:
            in_window += 1
            if seq in rtts:
                answered.append(rtts[seq])
    answered.sort()
    return {"ping_sent": float(in_window),
            "ping_loss": round(1 - len(answered) / in_window, 5) if in_window else math.nan,
            "ping_rtt_p50_ms": round(percentile(answered, 50), 3),
            "ping_rtt_p99_ms": round(percentile(answered, 99), 3),
            "ping_rtt_max_ms": round(answered[-1], 3) if answered else math.nan}


def _interpolated(seq: int, known: Sequence[int], sent_at: dict[int, float]) -> float | None:
    before = [s for s in known if s < seq]
    after = [s for s in known if s > seq]
    if before and after:
        a, b = before[-1], after[0]
        return sent_at[a] + (sent_at[b] - sent_at[a]) * (seq - a) / (b - a)
    if before:
        return sent_at[before[-1]] + (seq - before[-1]) * PING_INTERVAL
    if after:
        return sent_at[after[0]] - (after[0] - seq) * PING_INTERVAL
    return None


def stream_figures(server: dict[str, Any], client: dict[str, Any], window: tuple[float, float]) -> dict[str, float]:
    """What the stream delivered in ``window`` (seconds since the client started; iperf3's own
    clock starts a few milliseconds later, once connected): the iperf3 server's intervals whose
    middle lies inside it; and the stream's retransmissions over its whole run."""
    lo, hi = window
    inside = [i["sum"] for i in server.get("intervals", [])
              if lo <= (i["sum"]["start"] + i["sum"]["end"]) / 2 <= hi]
    seconds = sum(s["end"] - s["start"] for s in inside)
    delivered = sum(s["bytes"] for s in inside)
    sent = (client.get("end") or {}).get("sum_sent") or {}
    return {"stream_mbps": round(delivered * 8 / seconds / 1e6, 2) if seconds else math.nan,
            "stream_window_s": round(seconds, 3),
            "stream_retransmits": float(sent.get("retransmits", math.nan))}


def port_space_figures(connections: int | None, nat_ports: int, destinations: int) -> dict[str, float]:
    """Connections conntrack holds, and the share of the NAT's source ports they take: the NAT
    has ``nat_ports`` per destination (address, port), ``destinations`` of them."""
    if connections is None:
        return {}
    out = {"conntrack_connections": float(connections)}
    if nat_ports:
        out["port_space_used"] = round(connections / (nat_ports * destinations), 6)
    return out


@contextmanager
def flood_interface(netns: str, iface: str) -> Iterator[str]:
    """A macvlan on the generator's link: frames sent on it leave by the link, after a qdisc of
    its own."""
    subprocess.run(in_netns(netns, ["ip", "link", "del", FLOOD_IFACE]), capture_output=True, check=False)
    run(in_netns(netns, ["ip", "link", "add", FLOOD_IFACE, "link", iface, "type", "macvlan", "mode", "private"]))
    try:
        run(in_netns(netns, ["ip", "link", "set", FLOOD_IFACE, "up"]))
        yield FLOOD_IFACE
    finally:
        subprocess.run(in_netns(netns, ["ip", "link", "del", FLOOD_IFACE]), capture_output=True, check=False)


class FloodTrials:
    """Runs flood trials on one test bed; holds the processes so Ctrl-C can stop them."""

    def __init__(self, bed: Testbed, procs: Processes, workdir: Path, warmup: float, duration: float,
                 nice: int, dport: int):
        self.bed, self.procs, self.workdir = bed, procs, workdir
        self.warmup, self.duration, self.nice, self.dport = warmup, duration, nice, dport

    def run(self, task: Task) -> dict[str, Any]:
        """One trial (see the module docstring); a flood when ``task.rate`` is set."""
        bed = self.bed
        bed.clear_state()
        seconds = self.warmup + self.duration + 1.0
        server = self.procs.start(in_netns(bed.sink.netns, ["iperf3", "-s", "-1", "-J", "-p", str(STREAM_PORT),
                                                             "-i", str(STREAM_INTERVAL)],
                                           cpu=GENERATOR_CPU))
        try:
            _wait_listening(server, bed.sink.netns, STREAM_PORT)
            started = time.time()
            client = self.procs.start(self._victim(bed.gen.netns, [
                "iperf3", "-c", bed.sink.ip, "-p", str(STREAM_PORT), "-t", f"{math.ceil(seconds)}", "-J",
                "-i", str(STREAM_INTERVAL), "-b", f"{int(task.stream.value if task.stream else 100e6)}",
                "--connect-timeout", "3000"]))
            pinger = self.procs.start(self._victim(bed.gen.netns, [
                "ping", "-n", "-D", "-i", str(PING_INTERVAL), "-w", f"{math.ceil(seconds)}", bed.sink.ip]))
            figures = self._window(task, started)
            client_out = self.procs.wait(client, seconds + 30)[0]
            ping_out = self.procs.wait(pinger, seconds + 30)[0]
            server_out = self.procs.wait(server, 30)[0]
        finally:
            self.procs.stop(server)
        window = figures.pop("_window")
        figures.update(stream_figures(_json(server_out), _json(client_out), (window[0] - started, window[1] - started)))
        figures.update(ping_figures(ping_out, window))
        return figures

    def _victim(self, netns: str, argv: list[str]) -> list[str]:
        return in_netns(netns, ["nice", "-n", str(self.nice), *argv], cpu=GENERATOR_CPU)

    def _window(self, task: Task, started: float) -> dict[str, Any]:
        """Warm-up, then the window (with the flood for a subject); the figures of the window."""
        bed = self.bed
        with flood_interface(bed.gen.netns, bed.gen.iface) as iface:
            load = Load("tcp", self.dport, task.size, 1, "random", task.destinations)
            config = str(write_config(bed, load, self.workdir))
            time.sleep(max(0.0, started + self.warmup - time.time()))
            targets = [(bed.gen.netns, iface), (bed.sink.netns, bed.sink.iface)]
            trafgen = None
            pps = task.rate.pps(task.size) if task.rate else 0.0
            with shaped(bed.gen.netns, iface, pps, task.size) if pps else nullcontext():
                threads = bed.switch_threads()
                cpu0, dp0 = _cpu(threads), bed.datapath_counters()
                t0, c0 = read_counters(targets)
                syn0, w0 = sink_load_counter(bed.sink), time.time()
                if pps:
                    trafgen = start_trafgen(self.procs, bed.gen.netns, iface, config, pps, 0)
                try:
                    time.sleep(self.duration)
                    t1, c1 = read_counters(targets)
                    syn1, w1 = sink_load_counter(bed.sink), time.time()
                    cpu1, dp1 = _cpu(threads), bed.datapath_counters()
                    connections = bed.conntrack_count()
                finally:
                    if trafgen is not None:
                        self.procs.stop(trafgen)
        elapsed = t1 - t0
        offered = (c1[0].tx_packets - c0[0].tx_packets) + (c1[0].tx_dropped - c0[0].tx_dropped)
        figures: dict[str, Any] = {
            "_window": (w0, w1), "flood_requested_pps": round(pps, 1),
            "flood_offered_pps": round(offered / elapsed, 1),
            "flood_delivered_pps": round((syn1 - syn0) / elapsed, 1) if syn0 >= 0 and syn1 >= 0 else math.nan,
        }
        pmd = threads is not None and threads[1] == "pmd"
        figures.update(cpu_figures(cpu0, cpu1, elapsed, "pmd_cpu_share" if pmd else "switch_cpu_share"))
        figures.update(cost_figures(dp0, dp1))
        figures.update(port_space_figures(connections, bed.nat_ports, task.destinations.count))
        return figures


def _cpu(threads: tuple[int, str] | None) -> tuple[int, list[int]]:
    return (thread_cpu_ticks(*threads) if threads else -1), steal_ticks()


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
