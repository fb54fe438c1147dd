"""A short-lived OpenFlow 1.4 connection to one bridge, as `ovs-ofctl` makes one.

`apply`, `plan`, `status`, `restore` and rollbacks reach the bridge's management
socket (`unix:RUNDIR/BRIDGE.mgmt`, which every Open vSwitch bridge listens on) or,
for a remote switch, a passive listener configured on the bridge (`tcp:HOST:PORT`
for a `ptcp:` target, `ssl:HOST:PORT` for a `pssl:` one: TLS with the process's TLS files,
`southbound.tls`). The connection says HELLO with OpenFlow 1.4 only (bundles
need 1.4), answers the switch's echo requests, and hands every other message to
the exchanges in `channel`.
"""

from __future__ import annotations

import itertools
import random
import socket
import struct
import time
from types import TracebackType

from ovsmgr.southbound.openflow import messages as m
from ovsmgr.southbound.openflow.channel import OpenFlowError

CONNECT_TIMEOUT = 10.0


def _open_socket(target: str, timeout: float) -> socket.socket:
    kind, _, where = target.partition(":")
    try:
        if kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(where)
            return sock
        if kind in ("tcp", "ssl"):
            host, _, port = where.rpartition(":")
            sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock if kind == "tcp" else _tls(sock)
    except (OSError, ValueError) as exc:
        raise OpenFlowError(f"cannot connect to {target}: {exc}") from None
    raise OpenFlowError(f"cannot connect to {target}: an OpenFlow target is unix:PATH, tcp:HOST:PORT or "
                        f"ssl:HOST:PORT")


def _tls(sock: socket.socket) -> socket.socket:
    """The TLS handshake on a connected socket, with the process's TLS files (`southbound.tls`): a switch
    whose certificate the CA did not sign is refused here."""
    from ovsmgr.southbound.tls import (  # the ovs library: only for ssl: targets
        TlsError,
        client_context,
    )

    try:
        return client_context().wrap_socket(sock)
    except TlsError as exc:
        sock.close()
        raise OpenFlowError(str(exc)) from None
    except OSError:
        sock.close()
        raise


class SwitchConnection:
    """One OpenFlow connection to a switch (a `channel.Channel`); use it as a context manager."""

    version = m.OFP14

    def __init__(self, target: str, timeout: float = CONNECT_TIMEOUT):
        self.target = target
        self._sock = _open_socket(target, timeout)
        self._buffer = bytearray()
        self._xids = itertools.count(random.randrange(1 << 31))
        try:
            self._handshake(time.monotonic() + timeout)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> SwitchConnection:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def next_xid(self) -> int:
        return next(self._xids) & 0xFFFFFFFF

    def send(self, data: bytes) -> None:
        try:
            self._sock.settimeout(None)
            self._sock.sendall(data)
        except OSError as exc:
            raise OpenFlowError(f"{self.target}: connection lost while sending: {exc}") from None

    def receive(self, deadline: float) -> bytes:
        while True:
            msg = self._read_message(deadline)
            kind = msg[1]
            if kind == m.OFPT_ECHO_REQUEST:
                self.send(m.header(m.OFPT_ECHO_REPLY, len(msg), m.HEADER.unpack_from(msg)[3]) + msg[8:])
            elif kind not in (m.OFPT_HELLO, m.OFPT_ECHO_REPLY):
                return msg

    def _handshake(self, deadline: float) -> None:
        self.send(m.hello(self.next_xid()))
        msg = self._read_message(deadline)
        if msg[1] == m.OFPT_ERROR:
            raise OpenFlowError(f"{self.target} refused OpenFlow 1.4 ({m.parse_error(msg).describe()}): "
                                f"the bridge's protocols must include OpenFlow14")
        if msg[1] != m.OFPT_HELLO:
            raise OpenFlowError(f"{self.target}: expected HELLO, got message type {msg[1]}")
        offered = _offered_versions(msg)
        if not (m.OFP_VERSION in offered if offered is not None else msg[0] >= m.OFP_VERSION):
            raise OpenFlowError(f"{self.target} does not speak OpenFlow 1.4: the bridge's protocols must "
                                f"include OpenFlow14")

    def _read_message(self, deadline: float) -> bytes:
        while True:
            if len(self._buffer) >= 8:
                length = struct.unpack_from("!H", self._buffer, 2)[0]
                if length < 8:
                    raise OpenFlowError(f"{self.target}: malformed OpenFlow message (length {length})")
                if len(self._buffer) >= length:
                    msg = bytes(self._buffer[:length])
                    del self._buffer[:length]
                    return msg
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OpenFlowError(f"{self.target}: no answer from the switch in time")
            try:
                self._sock.settimeout(remaining)
                chunk = self._sock.recv(1 << 20)
            except TimeoutError:
                raise OpenFlowError(f"{self.target}: no answer from the switch in time") from None
            except OSError as exc:
                raise OpenFlowError(f"{self.target}: connection lost: {exc}") from None
            if not chunk:
                raise OpenFlowError(f"{self.target}: the switch closed the connection")
            self._buffer += chunk


def _offered_versions(hello: bytes) -> set[int] | None:
    """The versions a HELLO's version bitmap offers (None: it has no bitmap)."""
    offset = 8
    while offset + 4 <= len(hello):
        kind, length = struct.unpack_from("!HH", hello, offset)
        if kind == m.OFPHET_VERSIONBITMAP and length >= 8:
            bitmap = int.from_bytes(hello[offset + 4:offset + 8], "big")
            return {v for v in range(32) if bitmap >> v & 1}
        offset += max(8, (length + 7) // 8 * 8)
    return None
