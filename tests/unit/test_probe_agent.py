"""The traffic agent (ovsmgr.lab.probe) over the loopback: each command's output as its callers
read it, started as the kernel-test bed starts it (``python -I -S FILE``: no site-packages)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from ovsmgr.lab import probe
from ovsmgr.sim.wire import checksum, decode

AGENT = [sys.executable, "-I", "-S", probe.__file__]


def free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENT, *args], capture_output=True, text=True, timeout=timeout, check=False)


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@contextmanager
def server(*args: str, ready: str = "listening") -> Iterator[subprocess.Popen[str]]:
    """An agent server, once it said it is ready; its output is read when the block ends."""
    proc = subprocess.Popen([*AGENT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert ready in first, f"{first!r} {proc.stderr.read() if proc.stderr else ''}"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()


def test_every_command_starts_without_site_packages() -> None:
    help_text = run("--help").stdout
    for name in probe.COMMANDS:
        assert name in help_text
        assert run(name, "--help").returncode == 0


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_connect_learns_whom_the_server_saw(proto: str) -> None:
    port = free_port(socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    with server("serve", proto, str(port), "--timeout", "30", "--bind", "127.0.0.1") as srv:
        done = run("connect", proto, "127.0.0.1", str(port), "--timeout", "5", "--message", "hi")
        srv.kill()
        seen = lines(srv.communicate()[0])
    answer = lines(done.stdout)[-1]
    assert done.returncode == 0 and answer["ok"] and answer["seen_as"] == "127.0.0.1"
    assert answer["seen_port"] == answer["local_port"] and "got=hi" in answer["reply"]
    assert seen == [{"peer": "127.0.0.1", "peer_port": answer["local_port"]}]


def test_connect_without_a_server_says_so_and_fails() -> None:
    done = run("connect", "tcp", "127.0.0.1", str(free_port(socket.SOCK_STREAM)), "--timeout", "2")
    answer = lines(done.stdout)[-1]
    assert done.returncode == 1 and answer["ok"] is False and "refused" in answer["error"]


def test_a_session_gets_each_line_echoed() -> None:
    port = free_port(socket.SOCK_STREAM)
    with server("echo", str(port), "--timeout", "30"):
        done = subprocess.run([*AGENT, "session", "127.0.0.1", str(port), "--timeout", "5"], input="one\ntwo\n",
                              capture_output=True, text=True, timeout=30, check=False)
    assert done.stdout.splitlines() == ["connected", "reply one", "reply two"]


def test_the_udp_stream_arrives_whole_each_datagram_from_its_own_port() -> None:
    port = free_port(socket.SOCK_DGRAM)
    with server("stream-recv", str(port), "--duration", "4") as receiver:
        sent = lines(run("stream-send", "127.0.0.1", str(port), "--interval", "0.01", "--duration", "0.2").stdout)
        got = lines(receiver.communicate(timeout=30)[0])
    count = sent[-1]["sent"]
    assert count > 0 and [g["seq"] for g in got] == list(range(count))
    assert all(g["sent"] <= g["recv"] for g in got)


def test_the_tcp_stream_counts_answers_and_refusals() -> None:
    port = free_port(socket.SOCK_STREAM)
    with server("serve", "tcp", str(port), "--timeout", "30", "--bind", "127.0.0.1"):
        answered = lines(run("tcp-stream", "127.0.0.1", str(port), "--interval", "0.05", "--duration", "0.2").stdout)[-1]
    refused = lines(run("tcp-stream", "127.0.0.1", str(port), "--interval", "0.05", "--duration", "0.2").stdout)[-1]
    assert answered["attempts"] > 0 and answered["ok"] == answered["attempts"] and answered["errors"] == []
    assert refused["attempts"] > 0 and refused["refused"] == refused["attempts"] and refused["ok"] == 0
    assert refused["errors"][0]["kind"] == "refused"


def test_request_response_counts_every_transaction_on_both_ends() -> None:
    port = free_port(socket.SOCK_STREAM)
    with server("rr-server", str(port), "--timeout", "30", ready='"ready"') as srv:
        client = lines(run("rr-client", "127.0.0.1", str(port), "--duration", "0.2").stdout)[-1]
        served = lines(srv.communicate(timeout=30)[0])[-1]
    assert "error" not in client and len(client["latencies_ns"]) > 0
    assert served == {"served": len(client["latencies_ns"])}


def test_latency_frames_are_valid_udp_in_ipv4() -> None:
    payload = probe.HEADER.pack(probe.MAGIC, 7, 123) + b"\0" * 7
    frame = probe.udp_frame("02:00:00:00:00:01", "02:00:00:00:00:02", "10.1.0.2", "10.2.0.2", 7001, 7000, payload)
    read = decode(frame)
    assert (read.packet.dl_src, read.packet.dl_dst) == (0x020000000001, 0x020000000002)
    assert (read.packet.nw_src, read.packet.nw_dst) == (0x0A010002, 0x0A020002)
    assert (read.packet.tp_src, read.packet.tp_dst, read.extras.payload) == (7001, 7000, payload)
    assert checksum(read.l3[:20]) == 0  # the IPv4 header checksum holds
