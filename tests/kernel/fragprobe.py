"""Fragmented UDP for the ``fragments`` scenario; stdlib only (run with ``python -I -S``).

``serve PORT... [--timeout S]``
    answer every datagram (IPv4 and IPv6) with a short JSON line, ``{"peer": IP, "len": N}``: the answer
    itself is never fragmented, so only the request's fragments cross the switch.
``send ADDRESS PORT --size N [--order kernel|reverse|overlap] [--timeout S]``
    one datagram of N payload bytes, then wait for the answer; prints
    ``{"ok": bool, "len": N the server got}``.

    - ``kernel``: from a UDP socket with ``IP_PMTUDISC_DONT``: the sender's kernel cuts it
      into fragments of the interface's MTU, in order. The only order for an IPv6 ADDRESS.
    - ``reverse``: the same fragments (1,480 bytes of IP payload each, the MTU of a veth),
      built by hand and sent last first, through a raw socket.
    - ``overlap``: three fragments by hand, the second of which overlaps the first by 280
      bytes (it rewrites the first's end): a datagram every IPv4 stack must refuse.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import struct
import sys
import time

FRAGMENT = 1480
"""IP payload bytes per fragment: a 1,500-byte MTU minus the 20-byte header (a multiple of 8)."""
IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DONT = 23, 0
"""<linux/in.h>, <linux/in6.h>; the socket module does not name them."""


def serve(ports: list[int], timeout: float) -> int:
    selector = selectors.DefaultSelector()
    for port in ports:
        for family, bind in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((bind, port))
            selector.register(sock, selectors.EVENT_READ)
    print(json.dumps({"listening": ports}), flush=True)
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        for key, _ in selector.select(left):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            data, peer = sock.recvfrom(65535)
            answer = {"peer": peer[0], "peer_port": peer[1], "port": sock.getsockname()[1],
                      "len": len(data)}
            sock.sendto(json.dumps(answer).encode(), peer)
            print(json.dumps(answer), flush=True)
    return 0


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    length = 8 + len(payload)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, length)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    checksum = _checksum(pseudo + header + payload) or 0xFFFF
    return struct.pack("!HHHH", sport, dport, length, checksum) + payload


def _fragment(src: str, dst: str, ident: int, offset: int, chunk: bytes, more: bool) -> bytes:
    """An IPv4 fragment: ``chunk`` of the datagram's IP payload at byte ``offset``."""
    flags_offset = (0x2000 if more else 0) | (offset // 8)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(chunk), ident, flags_offset, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + chunk


def send(address: str, port: int, size: int, order: str, timeout: float) -> int:
    payload = (b"fragments " * (size // 10 + 1))[:size]
    result: dict[str, object] = {"ok": False}
    v6 = ":" in address
    with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DONT)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        sock.settimeout(timeout)
        sock.connect((address, port))  # picks the source address and port the answer comes to
        src, sport = sock.getsockname()[:2]
        if order == "kernel" or v6:
            sock.send(payload)
        else:
            datagram = _udp(src, address, sport, port, payload)
            ident = int.from_bytes(os.urandom(2), "big") or 1
            if order == "reverse":
                pieces = [(off, datagram[off:off + FRAGMENT]) for off in range(0, len(datagram), FRAGMENT)]
                pieces.reverse()
            else:  # overlap: [0, 1480), then [1200, 2680) and the rest
                pieces = [(0, datagram[:FRAGMENT]), (1200, datagram[1200:1200 + FRAGMENT]),
                          (1200 + FRAGMENT, datagram[1200 + FRAGMENT:])]
            end = max(off + len(chunk) for off, chunk in pieces)
            with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
                for off, chunk in pieces:
                    raw.sendto(_fragment(src, address, ident, off, chunk, off + len(chunk) < end),
                               (address, 0))
        try:
            answer = json.loads(sock.recv(2048))
            result.update(ok=True, len=answer.get("len"), seen_as=answer.get("peer"))
        except (TimeoutError, OSError, ValueError) as exc:
            result["error"] = str(exc) or type(exc).__name__
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fragprobe")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("ports", type=int, nargs="+")
    s.add_argument("--timeout", type=float, default=900)
    c = sub.add_parser("send")
    c.add_argument("address")
    c.add_argument("port", type=int)
    c.add_argument("--size", type=int, default=3000)
    c.add_argument("--order", choices=["kernel", "reverse", "overlap"], default="kernel")
    c.add_argument("--timeout", type=float, default=4)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        return serve(args.ports, args.timeout)
    return send(args.address, args.port, args.size, args.order, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
