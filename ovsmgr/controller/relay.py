"""A unix-socket OpenFlow listener in front of os-ken's TCP one.

A lab switch runs in its own network namespace and cannot reach the host's
loopback, but it shares the file system: OVS connects actively to a
`unix:PATH` controller target. os-ken listens on TCP only (its unix-socket
path breaks on TCP_NODELAY), so this relay accepts on PATH and pipes each
connection to os-ken on 127.0.0.1. It adds one local hop, no parsing.

Any local process can connect to that TCP port and say it is a switch. So the
relay remembers the local address of each connection it opens to os-ken
(bound before it connects), and the controller closes every OpenFlow
connection whose peer is not one of them (`is_relayed`, checked by the os-ken
app as soon as os-ken sees the connection). The unix socket is mode 0600.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("ovsmgr.controller")


class UnixRelay:
    def __init__(self, path: Path, tcp_port: int, host: str = "127.0.0.1") -> None:
        self.path = path
        self.host = host
        self.tcp_port = tcp_port
        self._relayed: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        path.unlink(missing_ok=True)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            self.server.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.server.listen(16)
        self._thread = threading.Thread(target=self._accept, name="ovsmgr-relay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.close()
        self.path.unlink(missing_ok=True)

    def is_relayed(self, peer: object) -> bool:
        """Whether `peer` (the address os-ken saw a connection come from) is one of the relay's."""
        if not isinstance(peer, tuple | list) or len(peer) < 2:
            return False
        with self._lock:
            return (str(peer[0]), peer[1]) in self._relayed

    def _forget(self, local: tuple[str, int]) -> None:
        with self._lock:
            self._relayed.discard(local)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            local: tuple[str, int] = ("", 0)
            try:
                upstream.bind((self.host, 0))  # the source address is known (and allowed) before os-ken sees it
                local = upstream.getsockname()[:2]
                with self._lock:
                    self._relayed.add(local)
                upstream.settimeout(5)
                upstream.connect((self.host, self.tcp_port))
            except OSError as exc:
                log.error("relay: cannot reach os-ken on %s:%d: %s", self.host, self.tcp_port, exc)
                self._forget(local)
                upstream.close()
                client.close()
                continue
            upstream.settimeout(None)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(src, dst, lambda local=local: self._forget(local)),
                                 daemon=True).start()


def _pipe(src: socket.socket, dst: socket.socket, done: Callable[[], None] = lambda: None) -> None:
    """Copy until either side closes, then close both (the other pipe then ends too)."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        done()
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
