"""The traffic agent: all that the lab, the tests and the bench send and receive in a host.

``python -m ovsmgr.lab.probe CMD ...`` inside a host namespace, or, where a process start
is costly, ``python -I -S .../ovsmgr/lab/probe.py CMD ...`` (standard library only).
Every command is bounded by a timeout or a duration: it never hangs a test.

- ``announce``: an unsolicited neighbour advertisement for each global IPv6 address of an
  interface, so a switch learns where the host is (``arping -U`` does this for IPv4).
- ``serve``/``connect``: one message, one answer (TCP or UDP). The answer carries the peer
  address the server saw: the client learns how the switch translated the connection
  without capturing packets. ``echo``/``session``: a long-lived TCP connection, a line at
  a time (cut and hitless tests).
- ``stream-send``/``stream-recv``: a UDP datagram every interval, each from a fresh source
  port (a new connection the firewall judges), with its sequence number and CLOCK_MONOTONIC
  send time; one JSON line per datagram received, with its arrival time (one clock for
  the machine, namespaces included). ``tcp-stream``: a new TCP connection every interval.
- ``latency-send``/``latency-recv``: the bench's one-way latency probes beside the load:
  whole frames on a packet socket (``PACKET_QDISC_BYPASS``: the load's pacing queue does
  not delay them) stamped with CLOCK_REALTIME, received with the kernel's timestamp
  (``SO_TIMESTAMPNS``). ``rr-server``/``rr-client``: TCP request/response on one
  connection, like netperf's TCP_RR.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

FIRST_PORT, PORTS = 10000, 50000
"""stream-send's source ports cycle through 10000..59999: every probe is a connection conntrack
has not seen (the kernel's own choice repeats ports often enough to hit established entries)."""
HEADER = struct.Struct("!4sIq")  # magic, sequence number, send time (ns, CLOCK_REALTIME)
MAGIC, END = b"OVSB", 0xFFFFFFFF
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SOL_PACKET, PACKET_QDISC_BYPASS = 263, 20
IP_UDP_HEADERS = 14 + 20 + 8 + 4  # ethernet, IPv4, UDP, FCS


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _print(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def _listening(port: int, bind: str = "0.0.0.0", kind: int = socket.SOCK_STREAM, backlog: int = 16,
               timeout: float | None = None) -> socket.socket:
    """A server socket bound to ``port`` (listening, for TCP)."""
    sock = socket.socket(_family(bind), kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((bind, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(backlog)
    sock.settimeout(timeout)
    return sock


def _stop_on_sigterm() -> list[bool]:
    """A flag SIGTERM sets: the command stops early and still prints what it has."""
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    return stop


# --- one message, one answer ------------------------------------------------------------------
def serve(proto: str, port: int, timeout: float, bind: str) -> int:
    """Answer every TCP connection or UDP datagram with `peer=IP:PORT`, until timeout."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with _listening(port, bind, kind, backlog=64) as sock:
        _print({"listening": port})
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                if proto == "tcp":
                    conn, peer = sock.accept()
                    with conn:
                        conn.settimeout(2)
                        data = conn.recv(1024)
                        conn.sendall(_answer(peer, data))
                else:
                    data, peer = sock.recvfrom(2048)
                    sock.sendto(_answer(peer, data), peer)
            except TimeoutError:
                break
            except OSError:
                continue
            _print({"peer": peer[0], "peer_port": peer[1]})
    return 0


def _answer(peer: tuple[str, int], data: bytes) -> bytes:
    return f"peer={peer[0]}:{peer[1]} got={data.decode(errors='replace').strip()}\n".encode()


def connect(proto: str, address: str, port: int, timeout: float, message: str, sport: int | None,
            src: str | None = None) -> int:
    """Exchange one message; print `{"ok": bool, "reply": ...}`; exit 0 only with a reply."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    result: dict[str, object] = {"ok": False}
    try:
        with socket.socket(_family(address), kind) as sock:
            sock.settimeout(timeout)
            if sport or src:
                sock.bind((src or "", sport or 0))
            sock.connect((address, port))
            sock.sendall(message.encode() + b"\n") if proto == "tcp" else sock.send(message.encode())
            reply = sock.recv(1024).decode(errors="replace").strip()
            result = {"ok": bool(reply), "reply": reply, "local_port": sock.getsockname()[1]}
            for part in reply.split():
                if part.startswith("peer="):
                    host, _, seen_port = part[5:].rpartition(":")
                    result.update(seen_as=host, seen_port=int(seen_port))
    except OSError as exc:
        result["error"] = str(exc) or type(exc).__name__
    _print(result)
    return 0 if result["ok"] else 1


def echo(port: int, timeout: float) -> int:
    """Echo lines back on each TCP connection (a long-lived session for cut/hitless tests)."""
    import threading

    def handle(conn: socket.socket) -> None:
        with conn, conn.makefile("rwb", buffering=0) as stream:
            for line in stream:
                stream.write(line)

    with _listening(port, timeout=timeout) as sock:
        _print({"listening": port})
        try:
            while True:
                conn, _ = sock.accept()
                threading.Thread(target=handle, args=(conn,), daemon=True).start()
        except TimeoutError:
            return 0


def session(address: str, port: int, timeout: float) -> int:
    """Send each stdin line; print `reply LINE` or `timeout` per line; connection kept open."""
    with socket.create_connection((address, port), timeout=5) as sock:
        print("connected", flush=True)
        sock.settimeout(timeout)
        for line in sys.stdin:
            try:
                sock.sendall(line.encode())
                print(f"reply {sock.recv(1024).decode().strip()}", flush=True)
            except TimeoutError:
                print("timeout", flush=True)
            except OSError as exc:
                print(f"error {exc}", flush=True)
    return 0


# --- streams of new connections ---------------------------------------------------------------
def stream_send(address: str, port: int, interval: float, duration: float) -> int:
    """Send until `duration` seconds passed; the schedule does not drift when a send is late."""
    start = time.monotonic()
    seq = 0
    while (now := time.monotonic()) - start < duration:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", FIRST_PORT + seq % PORTS))
            sock.sendto(f"{seq} {now:.6f}".encode(), (address, port))
        seq += 1
        delay = start + seq * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    _print({"sent": seq})
    return 0


def stream_recv(port: int, duration: float) -> int:
    """Receive until `duration` passed or SIGTERM came, then print what arrived."""
    stop = _stop_on_sigterm()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", port))
        _print({"listening": port})
        deadline = time.monotonic() + duration
        got: list[tuple[bytes, float]] = []
        while (left := deadline - time.monotonic()) > 0 and not stop:
            sock.settimeout(min(left, 0.1))
            try:
                data, _ = sock.recvfrom(256)
            except TimeoutError:
                continue
            except InterruptedError:
                break
            got.append((data, time.monotonic()))
    for data, arrived in got:  # printed at the end: a full pipe must not stall the receiver
        seq, sent = data.decode().split()
        print(json.dumps({"seq": int(seq), "sent": float(sent), "recv": arrived}))
    return 0


def tcp_stream(address: str, port: int, interval: float, duration: float, timeout: float = 5.0) -> int:
    """Open a new connection every `interval` until `duration` passed; each sends a line and must get
    an answer. Prints one JSON summary line at the end (counts, and the first errors with their time)."""
    counts = {"attempts": 0, "ok": 0, "refused": 0, "timeout": 0, "other": 0}
    errors: list[dict[str, Any]] = []
    error: BaseException | None
    start = time.monotonic()
    stop = _stop_on_sigterm()
    while not stop and (now := time.monotonic()) - start < duration:
        counts["attempts"] += 1
        kind, error = "ok", None
        try:
            with socket.create_connection((address, port), timeout=timeout) as sock:
                sock.sendall(f"soak {counts['attempts']}\n".encode())
                if not sock.recv(1024):
                    raise ConnectionResetError("closed without an answer")
        except ConnectionRefusedError as exc:
            kind, error = "refused", exc
        except TimeoutError as exc:
            kind, error = "timeout", exc
        except OSError as exc:
            kind, error = ("refused" if isinstance(exc, ConnectionResetError) else "other"), exc
        counts[kind] += 1
        if kind != "ok" and len(errors) < 20:
            errors.append({"t": round(now - start, 3), "kind": kind, "error": str(error) or type(error).__name__})
        delay = start + counts["attempts"] * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    _print({**counts, "errors": errors})
    return 0


# --- telling the segment where an IPv6 host is ----------------------------------------------------
ALL_NODES = socket.inet_pton(socket.AF_INET6, "ff02::1")


def _global_ipv6(iface: str) -> list[bytes]:
    """The interface's global IPv6 addresses (/proc/net/if_inet6: address, index, length, scope...)."""
    with open("/proc/net/if_inet6") as table:
        rows = [line.split() for line in table]
    return [bytes.fromhex(row[0]) for row in rows if len(row) == 6 and row[5] == iface and row[3] == "00"]


def neighbour_advertisement(mac: bytes, address: bytes) -> bytes:
    """An unsolicited advertisement of `address` at `mac` to all nodes (override set), as a frame."""
    icmp = struct.pack("!BBHI", 136, 0, 0, 0x2000_0000) + address + struct.pack("!BB", 2, 1) + mac
    pseudo = address + ALL_NODES + struct.pack("!I3xB", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", _checksum(pseudo + icmp)) + icmp[4:]
    ip = struct.pack("!IHBB", 6 << 28, len(icmp), 58, 255) + address + ALL_NODES
    return b"\x33\x33\x00\x00\x00\x01" + mac + b"\x86\xdd" + ip + icmp


def announce(iface: str) -> int:
    """Advertise every global IPv6 address of `iface` (an IPv4 host has `arping -U` for this)."""
    with open(f"/sys/class/net/{iface}/address") as text:
        mac = bytes.fromhex(text.read().strip().replace(":", ""))
    addresses = _global_ipv6(iface)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((iface, 0))
        for address in addresses:
            sock.send(neighbour_advertisement(mac, address))
    _print({"announced": [socket.inet_ntop(socket.AF_INET6, a) for a in addresses]})
    return 0


# --- one-way latency -----------------------------------------------------------------------------
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


def latency_send(iface: str, src_mac: str, dst_mac: str, src_ip: str, host: str, port: int, rate: float,
                 duration: float, size: int, sport: int) -> dict[str, object]:
    """Frames of ``size`` bytes (FCS included) at ``rate`` for ``duration`` s, then an end marker."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    sock.bind((iface, 0))
    pad = b"\0" * (max(HEADER.size, size - IP_UDP_HEADERS) - HEADER.size)
    prefix = udp_frame(src_mac, dst_mac, src_ip, host, sport, port, HEADER.pack(MAGIC, 0, 0) + pad)
    header_at = len(prefix) - len(pad) - HEADER.size
    frame = bytearray(prefix)

    def emit(seq: int, stamp: int) -> None:
        frame[header_at:header_at + HEADER.size] = HEADER.pack(MAGIC, seq, stamp)
        sock.send(frame)

    sent: list[int] = []
    _print({"ready": True})
    start = next_at = time.monotonic()
    while (now := time.monotonic()) - start < duration:
        if now < next_at:
            time.sleep(next_at - now)
        stamp = time.time_ns()
        try:
            emit(len(sent), stamp)
            sent.append(stamp)
        except OSError:
            sent.append(-stamp)  # not even sent: counts as lost
        next_at += 1.0 / rate
    time.sleep(0.3)  # let the last probes arrive before the end marker
    for _ in range(3):
        emit(END, 0)
        time.sleep(0.02)
    return {"sent": sent}


def latency_recv(port: int, timeout: float) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind(("", port))
    _print({"ready": True})
    received: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, ancdata, _, _ = sock.recvmsg(2048, socket.CMSG_SPACE(16))
        except TimeoutError:
            break
        if len(data) < HEADER.size or (header := HEADER.unpack_from(data))[0] != MAGIC:
            continue
        _, seq, sent_ns = header
        if seq == END:
            break
        arrived = time.time_ns()
        for level, kind, value in ancdata:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                sec, nsec = struct.unpack("qq", value[:16])
                arrived = sec * 1_000_000_000 + nsec
        received.append((seq, arrived - sent_ns))
    return {"received": received}


# --- request/response ------------------------------------------------------------------------------
def _read_exact(conn: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = conn.recv(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def rr_server(port: int, response: int, timeout: float) -> dict[str, object]:
    listener = _listening(port, "", backlog=1, timeout=timeout)
    _print({"ready": True})
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


def rr_client(host: str, port: int, request: int, response: int, duration: float) -> dict[str, object]:
    conn = socket.create_connection((host, port), timeout=5)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.sendall(request.to_bytes(4, "big"))
    payload = b"q" * request
    latencies: list[int] = []
    start = time.monotonic()
    try:
        while time.monotonic() < start + duration:
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


# --- the command line --------------------------------------------------------------------------------
_F, _I, _S, _PROTO = float, int, str, ("tcp", "udp")
COMMANDS: dict[str, tuple[Callable[..., Any], str, list[tuple[str, Any, Any]]]] = {
    # name: (function, help, [(argument, type or choices, default: ... is required)])
    "serve": (serve, "answer each connection or datagram with the peer address seen", [
        ("proto", _PROTO, ...), ("port", _I, ...), ("--timeout", _F, 30), ("--bind", _S, "0.0.0.0")]),
    "connect": (connect, "one message, one answer expected", [
        ("proto", _PROTO, ...), ("address", _S, ...), ("port", _I, ...), ("--timeout", _F, 2),
        ("--message", _S, "hello"), ("--sport", _I, None), ("--src", _S, None)]),
    "announce": (announce, "an unsolicited neighbour advertisement for each global IPv6 address", [
        ("iface", _S, ...)]),
    "echo": (echo, "TCP server echoing lines on every connection, until timeout", [
        ("port", _I, ...), ("--timeout", _F, 60)]),
    "session": (session, "TCP client: each stdin line is sent, its echo printed", [
        ("address", _S, ...), ("port", _I, ...), ("--timeout", _F, 1)]),
    "stream-send": (stream_send, "a UDP datagram every interval, each from a fresh source port", [
        ("address", _S, ...), ("port", _I, ...), ("--interval", _F, 0.001), ("--duration", _F, 10)]),
    "stream-recv": (stream_recv, "print each datagram of stream-send with its arrival time, at the end", [
        ("port", _I, ...), ("--duration", _F, 10)]),
    "tcp-stream": (tcp_stream, "a new TCP connection every interval; a JSON summary at the end", [
        ("address", _S, ...), ("port", _I, ...), ("--interval", _F, 0.2), ("--duration", _F, 60),
        ("--timeout", _F, 5.0)]),
    "latency-send": (latency_send, "timestamped frames on a packet socket, past the load's queue", [
        ("iface", _S, ...), ("src_mac", _S, ...), ("dst_mac", _S, ...), ("src_ip", _S, ...), ("host", _S, ...),
        ("port", _I, ...), ("--rate", _F, 500), ("--duration", _F, ...), ("--size", _I, 64), ("--sport", _I, 7001)]),
    "latency-recv": (latency_recv, "one-way latencies of latency-send's frames", [
        ("port", _I, ...), ("--timeout", _F, ...)]),
    "rr-server": (rr_server, "TCP request/response server (one connection)", [
        ("port", _I, ...), ("--response", _I, 200), ("--timeout", _F, 30)]),
    "rr-client": (rr_client, "TCP request/response client: per-transaction latency", [
        ("host", _S, ...), ("port", _I, ...), ("--request", _I, 100), ("--response", _I, 200),
        ("--duration", _F, ...)]),
}
"""Each command's arguments are its function's parameters, by name."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovsmgr.lab.probe")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, (_, text, arguments) in COMMANDS.items():
        command = sub.add_parser(name, help=text)
        for arg, kind, default in arguments:
            options: dict[str, Any] = {"choices": kind} if isinstance(kind, tuple) else {"type": kind}
            if arg.startswith("--"):
                options.update({"required": True} if default is ... else {"default": default})
            command.add_argument(arg, **options)
    args = vars(parser.parse_args(argv))
    result = COMMANDS[args.pop("cmd")][0](**args)
    if isinstance(result, dict):  # the bench's commands print their one result at the end
        _print(result)
        return 0
    return int(result)


if __name__ == "__main__":
    sys.exit(main())
