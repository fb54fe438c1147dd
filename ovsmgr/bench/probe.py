"""Latency and request/response probes, run inside the bench's host namespaces.

``python -m ovsmgr.bench.probe recv|send|rr-server|rr-client ...``; each prints one
JSON line when done.

- ``send``/``recv``: a timestamped UDP stream alongside the load. The sender writes
  its sequence number and ``CLOCK_REALTIME`` send time into each datagram; the
  receiver takes the kernel's receive timestamp (``SO_TIMESTAMPNS``, same clock:
  the namespaces share the host's clocks) and reports one-way latencies, so no
  reply has to cross the switch. Both report per-packet data; the runner keeps the
  packets sent inside the measurement window. The sender writes whole Ethernet
  frames to a packet socket with ``PACKET_QDISC_BYPASS``: the load's pacing queue
  on the generator's interface must not delay the probes.
- ``rr-server``/``rr-client``: TCP request/response (100-byte request, 200-byte
  response by default, one connection, like netperf's TCP_RR): transactions per
  second and per-transaction latency.

Imports only the standard library: it starts once per trial.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time

HEADER = struct.Struct("!4sIq")  # magic, sequence number, send time (ns, CLOCK_REALTIME)
MAGIC = b"OVSB"
END = 0xFFFFFFFF
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20
IP_UDP_HEADERS = 14 + 20 + 8 + 4  # ethernet, IPv4, UDP, FCS


def _payload_size(frame_size: int) -> int:
    return max(HEADER.size, frame_size - IP_UDP_HEADERS)


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, sport: int, dport: int,
              payload: bytes) -> bytes:
    """An Ethernet/IPv4/UDP frame (UDP checksum 0: none, which IPv4 allows)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00"
    return eth + ip + udp


def send(iface: str, src_mac: str, dst_mac: str, src_ip: str, host: str, port: int, rate: float,
         duration: float, frame_size: int, sport: int) -> dict[str, object]:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    sock.bind((iface, 0))
    pad = b"\0" * (_payload_size(frame_size) - HEADER.size)
    prefix = udp_frame(src_mac, dst_mac, src_ip, host, sport, port, HEADER.pack(MAGIC, 0, 0) + pad)
    header_at = len(prefix) - len(pad) - HEADER.size
    frame = bytearray(prefix)

    def emit(seq: int, stamp: int) -> None:
        frame[header_at:header_at + HEADER.size] = HEADER.pack(MAGIC, seq, stamp)
        sock.send(frame)

    interval = 1.0 / rate
    sent: list[int] = []
    print(json.dumps({"ready": True}), flush=True)
    start = time.monotonic()
    next_at = start
    seq = 0
    while True:
        now = time.monotonic()
        if now - start >= duration:
            break
        if now < next_at:
            time.sleep(next_at - now)
        stamp = time.time_ns()
        try:
            emit(seq, stamp)
            sent.append(stamp)
        except OSError:
            sent.append(-stamp)  # not even sent: counts as lost
        seq += 1
        next_at += interval
    time.sleep(0.3)  # let the last probes arrive before the end marker
    for _ in range(3):
        emit(END, 0)
        time.sleep(0.02)
    return {"sent": sent}


def recv(port: int, timeout: float) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind(("", port))
    print(json.dumps({"ready": True}), flush=True)
    received: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, ancdata, _, _ = sock.recvmsg(2048, socket.CMSG_SPACE(16))
        except TimeoutError:
            break
        if len(data) < HEADER.size:
            continue
        magic, seq, sent_ns = HEADER.unpack_from(data)
        if magic != MAGIC:
            continue
        if seq == END:
            break
        arrived = time.time_ns()
        for level, kind, value in ancdata:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                sec, nsec = struct.unpack("qq", value[:16])
                arrived = sec * 1_000_000_000 + nsec
        received.append((seq, arrived - sent_ns))
    return {"received": received}


def rr_server(port: int, response: int, timeout: float) -> dict[str, object]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("", port))
    listener.listen(1)
    listener.settimeout(timeout)
    print(json.dumps({"ready": True}), flush=True)
    served = 0
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        return {"served": 0}
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.settimeout(timeout)
    reply = b"r" * response
    size = int.from_bytes(_read_exact(conn, 4) or b"\0\0\0\0", "big")
    try:
        while (request := _read_exact(conn, size)) is not None and request:
            conn.sendall(reply)
            served += 1
    except OSError:
        pass
    return {"served": served}


def _read_exact(conn: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = conn.recv(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def rr_client(host: str, port: int, request: int, response: int, duration: float) -> dict[str, object]:
    conn = socket.create_connection((host, port), timeout=5)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.sendall(request.to_bytes(4, "big"))
    payload = b"q" * request
    latencies: list[int] = []
    start = time.monotonic()
    end = start + duration
    try:
        while time.monotonic() < end:
            t0 = time.perf_counter_ns()
            conn.sendall(payload)
            if _read_exact(conn, response) is None:
                break
            latencies.append(time.perf_counter_ns() - t0)
    except OSError as exc:
        return {"error": str(exc), "latencies_ns": latencies, "elapsed": time.monotonic() - start}
    elapsed = time.monotonic() - start
    conn.close()
    return {"latencies_ns": latencies, "elapsed": elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovsmgr.bench.probe")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send")
    s.add_argument("iface")
    s.add_argument("src_mac")
    s.add_argument("dst_mac")
    s.add_argument("src_ip")
    s.add_argument("host")
    s.add_argument("port", type=int)
    s.add_argument("--rate", type=float, default=500)
    s.add_argument("--duration", type=float, required=True)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--sport", type=int, default=7001)
    r = sub.add_parser("recv")
    r.add_argument("port", type=int)
    r.add_argument("--timeout", type=float, required=True)
    rs = sub.add_parser("rr-server")
    rs.add_argument("port", type=int)
    rs.add_argument("--response", type=int, default=200)
    rs.add_argument("--timeout", type=float, default=30)
    rc = sub.add_parser("rr-client")
    rc.add_argument("host")
    rc.add_argument("port", type=int)
    rc.add_argument("--request", type=int, default=100)
    rc.add_argument("--response", type=int, default=200)
    rc.add_argument("--duration", type=float, required=True)
    a = parser.parse_args(argv)
    if a.cmd == "send":
        result = send(a.iface, a.src_mac, a.dst_mac, a.src_ip, a.host, a.port, a.rate, a.duration,
                      a.size, a.sport)
    elif a.cmd == "recv":
        result = recv(a.port, a.timeout)
    elif a.cmd == "rr-server":
        result = rr_server(a.port, a.response, a.timeout)
    else:
        result = rr_client(a.host, a.port, a.request, a.response, a.duration)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
