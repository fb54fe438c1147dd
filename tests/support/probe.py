"""A stream of probe connections, to see (and time) when the dataplane obeys a change.

`send` sends one UDP datagram per interval, each from its own source port (a new
connection: a new connection that the firewall judges afresh, not traffic of
an established one that passes on its mark), carrying a sequence number and
the CLOCK_MONOTONIC time it was sent. `recv` prints one JSON line per datagram
with the time it arrived, when its duration is over. CLOCK_MONOTONIC is one clock for the whole machine,
network namespaces included, so a test compares these times with its own.

    ip netns exec LAB-outside python -m tests.support.probe recv 9000 --duration 10
    ip netns exec LAB-inside  python -m tests.support.probe send 198.51.100.9 9000 --interval 0.001
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time

FIRST_PORT = 10000
PORTS = 50000
"""Source ports cycle through 10000..59999: every probe is a connection conntrack has not seen
(the kernel's own choice repeats ports often enough to hit established entries)."""


def send(address: str, port: int, interval: float, duration: float) -> int:
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
    print(json.dumps({"sent": seq}), flush=True)
    return 0


def recv(port: int, duration: float) -> int:
    """Receive until `duration` passed or SIGTERM came, then print what arrived."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", port))
        print(json.dumps({"listening": port}), flush=True)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.probe")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send")
    s.add_argument("address")
    s.add_argument("port", type=int)
    s.add_argument("--interval", type=float, default=0.001)
    s.add_argument("--duration", type=float, default=10)
    r = sub.add_parser("recv")
    r.add_argument("port", type=int)
    r.add_argument("--duration", type=float, default=10)
    args = parser.parse_args(argv)
    if args.cmd == "send":
        return send(args.address, args.port, args.interval, args.duration)
    return recv(args.port, args.duration)


if __name__ == "__main__":
    sys.exit(main())
