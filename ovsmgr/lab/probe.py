"""A tiny traffic agent for lab hosts: a server that tells each client what it saw, and a client.

Run inside a host namespace (`ovsmgr lab exec PORT -- python -m ovsmgr.lab.probe ...`).
The server's answer carries the peer address it saw, so a test on the client
side learns how the switch translated the connection (SNAT, DNAT) without
capturing packets. Everything is bounded by timeouts: it never hangs a test.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def serve(proto: str, port: int, timeout: float, bind: str) -> int:
    """Answer every TCP connection or UDP datagram with `peer=IP:PORT`, until timeout."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(_family(bind), kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind, port))
        if proto == "tcp":
            sock.listen(64)
        print(json.dumps({"listening": port}), flush=True)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                if proto == "tcp":
                    conn, peer = sock.accept()
                    with conn:
                        conn.settimeout(2)
                        data = conn.recv(1024)
                        conn.sendall(f"peer={peer[0]}:{peer[1]} got={data.decode(errors='replace').strip()}\n".encode())
                else:
                    data, peer = sock.recvfrom(2048)
                    sock.sendto(f"peer={peer[0]}:{peer[1]} got={data.decode(errors='replace').strip()}\n".encode(), peer)
            except TimeoutError:
                break
            except OSError:
                continue
            print(json.dumps({"peer": peer[0], "peer_port": peer[1]}), flush=True)
    return 0


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
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


def echo(port: int, timeout: float) -> int:
    """Echo lines back on each TCP connection (a long-lived session for cut/hitless tests)."""
    import threading

    def handle(conn: socket.socket) -> None:
        with conn, conn.makefile("rwb", buffering=0) as stream:
            for line in stream:
                stream.write(line)

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(16)
        sock.settimeout(timeout)
        print(json.dumps({"listening": port}), flush=True)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovsmgr.lab.probe")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("proto", choices=["tcp", "udp"])
    s.add_argument("port", type=int)
    s.add_argument("--timeout", type=float, default=30)
    s.add_argument("--bind", default="0.0.0.0")
    c = sub.add_parser("connect")
    c.add_argument("proto", choices=["tcp", "udp"])
    c.add_argument("address")
    c.add_argument("port", type=int)
    c.add_argument("--timeout", type=float, default=2)
    c.add_argument("--message", default="hello")
    c.add_argument("--sport", type=int, default=None)
    c.add_argument("--src", default=None, help="source address to bind")
    e = sub.add_parser("echo", help="TCP server echoing lines on every connection, until timeout")
    e.add_argument("port", type=int)
    e.add_argument("--timeout", type=float, default=60)
    t = sub.add_parser("session", help="TCP client: each stdin line is sent, its echo printed")
    t.add_argument("address")
    t.add_argument("port", type=int)
    t.add_argument("--timeout", type=float, default=1)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        return serve(args.proto, args.port, args.timeout, args.bind)
    if args.cmd == "echo":
        return echo(args.port, args.timeout)
    if args.cmd == "session":
        return session(args.address, args.port, args.timeout)
    return connect(args.proto, args.address, args.port, args.timeout, args.message, args.sport, args.src)


if __name__ == "__main__":
    sys.exit(main())
