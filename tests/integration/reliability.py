"""Helpers for the reliability tests: hand-made packets, captures at the receiver, counters.

Packets are built here, byte by byte, and sent from a lab host's `eth0` through
an AF_PACKET socket, so a test can send what no socket API would (a SYN+ACK
nobody asked for, overlapping fragments). Captures run `tcpdump` in the
receiving host: what it saw is what reached the host, whatever the flows say.
"""

from __future__ import annotations

import ipaddress
import re
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ovsmgr.lab.ovs import Lab

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
MORE_FRAGMENTS = 0x2000

_SENDER = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
    "s.bind(('eth0', 0))\n"
    "for frame in sys.argv[1:]:\n"
    "    s.send(bytes.fromhex(frame))\n"
)


# --- packets -------------------------------------------------------------------------------------
def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int = 1, frag: int = 0) -> bytes:
    """An IPv4 header (with its checksum) and `payload`; `frag` is flags | offset / 8."""
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, 64, proto, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    return ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + struct.pack("!BBH", 0, proto, length)


def tcp(src: str, dst: str, sport: int, dport: int, flags: int, seq: int = 1000, ack: int = 0,
        payload: bytes = b"") -> bytes:
    segment = struct.pack("!HHIIHHHH", sport, dport, seq % 2**32, ack % 2**32, (5 << 12) | flags, 65535, 0, 0)
    segment += payload
    return segment[:16] + struct.pack("!H", checksum(_pseudo(src, dst, 6, len(segment)) + segment)) + segment[18:]


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    datagram = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    value = checksum(_pseudo(src, dst, 17, len(datagram)) + datagram) or 0xFFFF
    return datagram[:6] + struct.pack("!H", value) + datagram[8:]


def icmp(icmp_type: int, code: int, body: bytes) -> bytes:
    message = struct.pack("!BBHI", icmp_type, code, 0, 0) + body
    return message[:2] + struct.pack("!H", checksum(message)) + message[4:]


def ethernet(dst_mac: str, src_mac: str, packet: bytes) -> bytes:
    return bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00" + packet


def fragments(src: str, dst: str, proto: int, l4: bytes, pieces: list[tuple[int, int]], ident: int) -> list[bytes]:
    """IPv4 fragments of `l4`: (offset, length) in bytes; the piece reaching the end has MF clear."""
    out = []
    for offset, length in pieces:
        more = MORE_FRAGMENTS if offset + length < len(l4) else 0
        out.append(ipv4(src, dst, proto, l4[offset:offset + length], ident, more | offset // 8))
    return out


# --- lab hosts -----------------------------------------------------------------------------------
def host(lab: Lab, port: str) -> dict[str, str]:
    """`address` (without prefix) and `mac` of the lab host on `port`."""
    entry = next(p for p in lab.status()["ports"] if p["name"] == port)
    return {"address": str(ipaddress.ip_interface(entry["address"]).ip), "mac": entry["mac"]}


def send_frames(lab: Lab, port: str, frames: list[bytes]) -> None:
    lab.exec(port, [sys.executable, "-c", _SENDER, *(f.hex() for f in frames)], check=True, timeout=20)


@contextmanager
def capture(lab: Lab, port: str, bpf: str, settle: float = 0.5) -> Iterator[list[str]]:
    """tcpdump on the host of `port`; the list holds one line per packet it saw, after the block."""
    seen: list[str] = []
    proc = lab.popen(port, ["tcpdump", "-i", "eth0", "-n", "-l", "-U", "-S", bpf],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for _ in range(5):  # "tcpdump: verbose output suppressed...", then "listening on eth0..."
            if "listening on" in proc.stderr.readline():
                break
        yield seen
        time.sleep(settle)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        seen.extend(line for line in out.splitlines() if line.strip())


# --- switch counters -----------------------------------------------------------------------------
_FLOW = re.compile(r"table=(\d+), n_packets=(\d+),.*?(priority=\S+) actions=")


def flow_counts(lab: Lab) -> Counter[str]:
    """n_packets of every flow, keyed `table=T,priority=P[,MATCH]`."""
    counts: Counter[str] = Counter()
    for line in lab.ofctl(["dump-flows"]).splitlines():
        found = _FLOW.search(line)
        if found:
            counts[f"table={found[1]},{found[3]}"] += int(found[2])
    return counts


def grew(before: Counter[str], after: Counter[str]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def vswitchd_rss_kib(lab: Lab) -> int:
    pid = lab.status()["daemons"]["ovs-vswitchd"]["pid"]
    found = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert found
    return int(found[1])


def zone_limits(lab: Lab, zone: int) -> tuple[int, int]:
    """(limit, count) of a conntrack zone as `dpctl/ct-get-limits` reports it."""
    found = re.search(rf"zone={zone},limit=(\d+),count=(\d+)", lab.appctl(["dpctl/ct-get-limits", f"zone={zone}"]))
    assert found, "no such zone"
    return int(found[1]), int(found[2])


def coverage(lab: Lab) -> Counter[str]:
    """ovs-vswitchd's coverage counters (totals)."""
    return Counter({m[1]: int(m[2]) for m in re.finditer(r"^(\S+)\s.*total: (\d+)$",
                                                          lab.appctl(["coverage/show"]), re.M)})
