"""The load: trafgen configurations for N flows, trafgen runs, and iperf3.

Flows are distinct 5-tuples made by two runtime counters in one trafgen packet:
the source port cycles through P values and the low bits of the source address
through A values, both advancing by one per packet. With A and P coprime the
pair runs through all A x P combinations before repeating (Chinese remainder
theorem), so N = A x P flows each get one packet in every N. `flow_layout`
picks A (a power of two) and P (odd, at most `MAX_PORTS`) for N.

trafgen's ``-b RATEpps`` keeps the average rate (checked: 10k-150k pps within
0.5 %, and only when it runs until interrupted, so runs end with SIGINT rather
than ``-n``), but it sends in bursts: up to 1,500 back-to-back packets at 5 kpps,
~1,000 at 20 kpps, which overflow any switch's input queue at rates it would
otherwise carry. So trafgen goes through the qdisc (``-q``) and `shaped` puts a
token bucket (tbf, 2 % above the rate, two frames of burst) on the generator's
interface for the trial: the wire sees the packets evenly spaced (checked with
tcpdump: gaps within 3x nominal for 99 % of packets up to 165 kpps; htb could not
pass more than 44 kpps here, and this kernel has no prio or fq qdisc). The latency
probe bypasses the bucket's queue (``PACKET_QDISC_BYPASS``, see ``ovsmgr.lab.probe``), so its
delay is the switch's, not the generator's.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from ovsmgr.bench.netns import GENERATOR_CPU, Processes, in_netns, push_file, run
from ovsmgr.bench.spec import ONE_DESTINATION, SPREAD_PORTS_FROM, Destinations

MAX_PORTS = 64000
FIRST_SPORT = 1024
FCS = 4
HEADERS = {"udp": 14 + 20 + 8, "tcp": 14 + 20 + 20}
LoadMode = Literal["flows", "random", "mirror", "syn", "synack"]
SYN_SEQ, SYNACK_SEQ = 1000, 5000
"""Sequence numbers of the handshake `Trials.prime` plays for TCP loads, so the data segments
(seq 1001, ack 5001) belong to established connections: ovsmgr drops TCP that starts without a SYN."""


@dataclass(frozen=True)
class FlowLayout:
    addresses: int
    ports: int

    @property
    def flows(self) -> int:
        return self.addresses * self.ports


def flow_layout(flows: int, max_addresses: int = 65000) -> FlowLayout:
    """A x P = flows exactly when possible (A a power of two, P odd, P <= MAX_PORTS), else the
    smallest such product above ``flows``."""
    if flows < 1:
        raise ValueError("at least one flow")
    if flows <= MAX_PORTS:
        return FlowLayout(1, flows)
    addresses = 2
    while addresses <= max_addresses:
        ports, rest = divmod(flows, addresses)
        if ports <= MAX_PORTS and not rest and ports % 2:
            return FlowLayout(addresses, ports)
        addresses *= 2
    addresses = 2
    while -(-flows // addresses) > MAX_PORTS:
        addresses *= 2
    if addresses > max_addresses:
        raise ValueError(f"{flows} flows need more than {max_addresses} source addresses")
    ports = -(-flows // addresses)
    return FlowLayout(addresses, ports + (1 - ports % 2))


@dataclass(frozen=True)
class Endpoints:
    """Who sends to whom: MACs on the generator's link, addresses, the generator's network."""

    src_mac: str
    dst_mac: str
    src_ip: str
    dst_ip: str
    src_network: str
    dst_network: str = ""
    """Where SYNs to several destination addresses go (``random`` mode); default: ``dst_ip``."""


def _address_field(field: str, endpoints: Endpoints, layout: FlowLayout, mode: LoadMode) -> str:
    """The source address (or, mirrored, destination) with its low bits counting or random."""
    network = ipaddress.ip_network(endpoints.src_network, strict=False)
    base = ipaddress.ip_address(endpoints.src_ip)
    if mode == "random" or layout.addresses > 1:
        if network.prefixlen == 32:
            raise ValueError(f"replies to {layout.addresses} source addresses cannot all go to "
                             f"the one NAT address {base}: use at most {MAX_PORTS} flows")
        if network.prefixlen <= 16:
            lo, hi, index = 256, 256 + layout.addresses - 1, f"{field}[2:2]"
            if mode == "random":
                hi = 65279
        else:
            lo, hi, index = 1, min(layout.addresses, 254), f"{field}[3]"
            if mode == "random":
                hi = 254
            elif layout.addresses > 254:
                raise ValueError(f"a /{network.prefixlen} generator network has room for 254 "
                                 f"source addresses, not {layout.addresses}")
        func = f"drnd({lo}, {hi})" if mode == "random" else f"dinc({lo}, {hi})"
        return f"{field}={network.network_address}, {index}={func}"
    return f"{field}={base}"


def _destination_fields(endpoints: Endpoints, dport: int, destinations: Destinations) -> tuple[str, str]:
    """(address, port) fields of SYNs to ``destinations``: random addresses of the sink's network
    (above its first 256 in a /16 or wider) and random ports from `SPREAD_PORTS_FROM` up."""
    port = (f"dp=drnd({SPREAD_PORTS_FROM}, {SPREAD_PORTS_FROM + destinations.ports - 1})"
            if destinations.ports > 1 else f"dp={dport}")
    if destinations.addresses == 1:
        return f"da={endpoints.dst_ip}", port
    network = ipaddress.ip_network(endpoints.dst_network or endpoints.dst_ip, strict=False)
    if network.prefixlen <= 16:
        return f"da={network.network_address}, da[2:2]=drnd(256, {256 + destinations.addresses - 1})", port
    if network.prefixlen <= 24 and destinations.addresses <= 254:
        return f"da={network.network_address}, da[3]=drnd(1, {destinations.addresses})", port
    raise ValueError(f"the sink's network {network} has no room for {destinations.addresses} "
                     "destination addresses (a /16 has 65,280, a /24 254)")


def trafgen_config(endpoints: Endpoints, proto: Literal["udp", "tcp"], dport: int, frame_size: int,
                   flows: int = 1, mode: LoadMode = "flows", destinations: Destinations = ONE_DESTINATION) -> str:
    """One trafgen packet of ``frame_size`` bytes on the wire (FCS included) cycling through
    ``flows`` distinct 5-tuples. Modes: ``flows`` the load (UDP, or TCP ACK segments with data);
    ``syn`` the flows' SYNs; ``synack`` and ``mirror`` the sink's SYN-ACKs or UDP replies to them
    (``endpoints`` then describe the sink's side); ``random`` a random source address and port
    per packet to random ``destinations`` (TCP SYNs: new connections per second)."""
    layout = flow_layout(flows)
    pad = frame_size - FCS - HEADERS[proto]
    if pad < 0:
        raise ValueError(f"a {proto} frame needs at least {HEADERS[proto] + FCS} bytes")
    sports = (f"drnd({FIRST_SPORT}, 65535)" if mode == "random"
              else f"dinc({FIRST_SPORT}, {FIRST_SPORT + layout.ports - 1})")
    if mode in ("mirror", "synack"):
        ip = f"ipv4({_address_field('da', endpoints, layout, mode)}, sa={endpoints.dst_ip}, ttl=64, df)"
        ports = f"sp={dport}, dp={sports}"
    elif mode == "random":
        da, dp = _destination_fields(endpoints, dport, destinations)
        ip = f"ipv4({_address_field('sa', endpoints, layout, mode)}, {da}, ttl=64, df)"
        ports = f"sp={sports}, {dp}"
    else:
        ip = f"ipv4({_address_field('sa', endpoints, layout, mode)}, da={endpoints.dst_ip}, ttl=64, df)"
        ports = f"sp={sports}, dp={dport}"
    if proto == "udp":
        l4 = f"udp({ports})"
    elif mode == "random":
        l4 = f"tcp({ports}, seq=drnd(), syn, win=65535)"
    elif mode == "syn":
        l4 = f"tcp({ports}, seq={SYN_SEQ}, syn, win=65535)"
    elif mode == "synack":
        l4 = f"tcp({ports}, seq={SYNACK_SEQ}, aseq={SYN_SEQ + 1}, syn, ack, win=65535)"
    else:
        l4 = f"tcp({ports}, seq={SYN_SEQ + 1}, aseq={SYNACK_SEQ + 1}, ack, win=65535)"
    fill = f", fill(0x00, {pad})" if pad else ""
    return f"{{ eth(da={endpoints.dst_mac}, sa={endpoints.src_mac}), {ip}, {l4}{fill} }}\n"


def trafgen_argv(netns: str, iface: str, config_path: str, pps: float, nice: int = 0) -> list[str]:
    """trafgen on the generator CPU: one process (``-P 1`` pins it to CPU 0), paced by ``-b``."""
    return in_netns(netns, ["nice", "-n", str(nice), "trafgen", "-o", iface, "-i", config_path,
                            "-P", "1", "-q", "-b", f"{max(1, round(pps))}pps", "--no-sock-mem", "-C",
                            "-Q"], cpu=GENERATOR_CPU)


def start_trafgen(procs: Processes, netns: str, iface: str, config_path: str,
                  pps: float, nice: int = 0) -> subprocess.Popen[str]:
    push_file(netns, config_path)
    proc = procs.start(trafgen_argv(netns, iface, config_path, pps, nice))
    time.sleep(0.05)
    if proc.poll() is not None:
        out, err = procs.stop(proc)
        raise RuntimeError(f"trafgen exited at once: {(err or out).strip()[-500:]}")
    return proc


SHAPER_HEADROOM = 1.02
SHAPER_QUEUE = 4096  # frames: trafgen's largest bursts, with room to spare


def shaper_command(iface: str, pps: float, frame_size: int) -> list[str]:
    """A token bucket pacing ``iface`` at ``pps`` (+2 %), two frames of burst."""
    length = frame_size - FCS
    rate = int(pps * SHAPER_HEADROOM * length * 8) + 1
    return ["tc", "qdisc", "replace", "dev", iface, "root", "tbf", "rate", f"{rate}bit",
            "burst", str(2 * max(length, 1514)), "limit", str(SHAPER_QUEUE * max(length, 64))]


@contextmanager
def shaped(netns: str, iface: str, pps: float, frame_size: int) -> Iterator[None]:
    """The generator's interface paced at ``pps`` for the duration of the block."""
    run(in_netns(netns, shaper_command(iface, pps, frame_size)))
    try:
        yield
    finally:
        subprocess.run(in_netns(netns, ["tc", "qdisc", "del", "dev", iface, "root"]),
                       stdin=subprocess.DEVNULL, capture_output=True, check=False)


def send_for(procs: Processes, netns: str, iface: str, config_path: str, pps: float,
             seconds: float, frame_size: int) -> None:
    """Send at a rate for a while (priming flows, establishing connections)."""
    with shaped(netns, iface, pps, frame_size):
        proc = start_trafgen(procs, netns, iface, config_path, pps)
        time.sleep(seconds)
        procs.stop(proc)


def iperf3(procs: Processes, server_ns: str, client_ns: str, server_ip: str, seconds: float,
           port: int = 5201) -> dict[str, float]:
    """One TCP stream for ``seconds`` (whole seconds, at least one: iperf3 reads ``-t 0.4`` as 0,
    which means forever): Gbit/s received and retransmits (iperf3 -J)."""
    server = procs.start(in_netns(server_ns, ["iperf3", "-s", "-1", "-p", str(port)],
                                  cpu=GENERATOR_CPU))
    try:
        _wait_listening(server, server_ns, port)
        client = subprocess.run(
            in_netns(client_ns, ["iperf3", "-c", server_ip, "-p", str(port), "-t", str(max(1, round(seconds))),
                                 "-J", "--connect-timeout", "3000"], cpu=GENERATOR_CPU),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=seconds + 30, check=False)
    finally:
        procs.stop(server)
    data = json.loads(client.stdout or "{}")
    if "error" in data or client.returncode != 0:
        raise RuntimeError(f"iperf3: {data.get('error') or client.stderr.strip()}")
    end = data["end"]
    return {"tcp_gbps": end["sum_received"]["bits_per_second"] / 1e9,
            "tcp_retransmits": float(end["sum_sent"].get("retransmits", 0))}


def _wait_listening(server: subprocess.Popen[str], netns: str, port: int, timeout: float = 5.0) -> None:
    """Until a TCP socket listens on ``port`` in ``netns`` (iperf3 buffers what it prints)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        listening = subprocess.run(in_netns(netns, ["ss", "-Hltn", f"sport = :{port}"]),
                                   stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                   check=False).stdout
        if listening.strip():
            return
        time.sleep(0.05)
    why = server.stderr.read() if server.poll() is not None and server.stderr else "timed out"
    raise RuntimeError(f"iperf3 server did not start: {why}")
