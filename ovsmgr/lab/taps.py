"""Raw frames in and out of lab hosts: a packet socket on each host's eth0, and a guard
that keeps the hosts' kernels quiet.

The scenario runner (`ovsmgr.lab.scenarios`) must put exact packets on the wire
(a SYN+ACK out of the blue, an ICMP error quoting a translated packet) and see
exactly what reaches each host. So it does not use the hosts' IP stacks at all:

- `HostTaps` opens one AF_PACKET socket per host, created inside the host's
  network namespace (`ovsmgr.lab.netns.entered`: the thread enters it with setns(2);
  the socket stays in the namespace it was made in), and sends and receives frames on it.
  A packet socket sees every frame the veth delivers, also frames addressed to
  another MAC, which the host's IP stack would ignore.
- `guard_hosts` loads an nftables table into each host namespace that drops all
  IPv4 and IPv6 the kernel receives or sends. Without it the host answers an
  injected SYN with a RST, a UDP datagram with port unreachable, and those
  packets change the switch's conntrack state. ARP is not IP, so the kernel still
  answers ARP, and packet sockets are not filtered by nftables.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from ovsmgr.lab import netns
from ovsmgr.lab.ovs import Lab, LabError

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
PACKET_IGNORE_OUTGOING = 23
SOL_PACKET = 263
PACKET_AUXDATA = 8
AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata
TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_TPID_VALID = 1 << 4, 1 << 6
ETH_P_8021Q = 0x8100
GUARD_TABLE = "ovsmgr_scenarios"
GUARD_RULES = f"""table inet {GUARD_TABLE} {{
    chain ingress {{ type filter hook prerouting priority -500; policy drop; }}
    chain egress {{ type filter hook output priority -500; policy drop; }}
}}
"""


@dataclass(frozen=True)
class Received:
    """A frame that arrived at a host (never one the host sent)."""

    port: str
    data: bytes
    at: float


def packet_socket_in(netns_name: str, iface: str = "eth0") -> socket.socket:
    """An AF_PACKET socket bound to `iface` inside network namespace `netns_name` (root only)."""
    with netns.entered(netns_name):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((iface, ETH_P_ALL))
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)  # the 802.1Q tag the kernel took off (`with_tag`)
    with contextlib.suppress(OSError):  # Linux >= 4.20: the kernel skips our own frames
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    return sock


class HostTaps:
    """One packet socket per lab host; `send` a frame from a host, `collect` what arrives."""

    def __init__(self, netns_by_port: Mapping[str, str], iface: str = "eth0"):
        self.sockets: dict[str, socket.socket] = {}
        try:
            for port, netns in netns_by_port.items():
                self.sockets[port] = packet_socket_in(netns, iface)
        except BaseException:
            self.close()
            raise
        self._ports = {sock.fileno(): port for port, sock in self.sockets.items()}

    @staticmethod
    def of_lab(lab: Lab) -> HostTaps:
        return HostTaps({p["name"]: p["netns"] for p in lab.status()["ports"]})

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()

    def __enter__(self) -> HostTaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, port: str, frame: bytes) -> None:
        self.sockets[port].send(frame)

    def drain(self) -> list[Received]:
        """Everything that has arrived and not been read yet."""
        return self._read(0.0)

    def collect(self, wait: float, grace: float, wanted: Callable[[Received], bool]) -> list[Received]:
        """Frames arriving within `wait` seconds; once a `wanted` one came, only `grace` more
        (copies of a flooded frame arrive together)."""
        deadline = time.monotonic() + wait
        got: list[Received] = []
        while (left := deadline - time.monotonic()) > 0:
            batch = self._read(left)
            got += batch
            if any(wanted(r) for r in batch):
                deadline = min(deadline, time.monotonic() + grace)
        return got

    def wait_for(self, wait: float, done: Callable[[list[Received]], bool]) -> list[Received]:
        """Frames arriving until `done(frames so far)` or `wait` seconds have passed."""
        deadline = time.monotonic() + wait
        got: list[Received] = []
        while not done(got) and (left := deadline - time.monotonic()) > 0:
            got += self._read(left)
        return got

    def _read(self, timeout: float) -> list[Received]:
        ready, _, _ = select.select(list(self.sockets.values()), [], [], timeout)
        got = []
        for sock in ready:
            port = self._ports[sock.fileno()]
            while True:
                try:
                    data, ancillary, _, address = sock.recvmsg(65535, socket.CMSG_SPACE(AUXDATA.size),
                                                               socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                if address[2] != PACKET_OUTGOING:
                    got.append(Received(port, with_tag(data, ancillary), time.monotonic()))
        return got


def with_tag(frame: bytes, ancillary: list[tuple[int, int, bytes]]) -> bytes:
    """The frame as it was on the wire: Linux takes an 802.1Q tag off every frame it receives and
    hands it to a packet socket beside the frame (PACKET_AUXDATA); put it back where it was."""
    for level, kind, data in ancillary:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= AUXDATA.size:
            status, _, _, _, _, tci, tpid = AUXDATA.unpack_from(data)
            if status & TP_STATUS_VLAN_VALID:
                tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else ETH_P_8021Q
                return frame[:12] + struct.pack("!HH", tpid, tci) + frame[12:]
    return frame


@contextlib.contextmanager
def guarded_hosts(lab: Lab) -> Iterator[None]:
    """Hosts whose kernels neither answer nor send IP while the block runs (see the module
    docstring); the guard is removed afterwards so the lab can be used for real traffic."""
    ports = [p["name"] for p in lab.status()["ports"]]
    for port in ports:
        _nft(lab, port, ["-f", "-"], GUARD_RULES)
    try:
        yield
    finally:
        for port in ports:
            with contextlib.suppress(LabError):
                _nft(lab, port, ["delete", "table", "inet", GUARD_TABLE])


def _nft(lab: Lab, port: str, args: list[str], text: str | None = None) -> None:
    try:
        done = lab.exec(port, ["nft", *args], input=text, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"nft in host {port}: {exc}") from exc
    if done.returncode != 0:
        raise LabError(f"nft {' '.join(args)} in host {port} failed: {done.stderr.strip()}")
