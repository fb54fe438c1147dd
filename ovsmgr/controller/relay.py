"""A unix-socket OpenFlow listener in front of os-ken's TCP one.

A lab switch runs in its own network namespace and cannot reach the host's
loopback, but it shares the file system: OVS connects actively to a
`unix:PATH` controller target. os-ken listens on TCP only (its unix-socket
path breaks on TCP_NODELAY), so this relay accepts on PATH and pipes each
connection to os-ken on 127.0.0.1. It adds one local hop, no parsing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from pathlib import Path

log = logging.getLogger("ovsmgr.controller")


class UnixRelay:
    def __init__(self, path: Path, tcp_port: int) -> None:
        self.path = path
        self.tcp_port = tcp_port
        path.unlink(missing_ok=True)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        os.chmod(path, 0o600)
        self.server.listen(16)
        self._thread = threading.Thread(target=self._accept, name="ovsmgr-relay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.close()
        self.path.unlink(missing_ok=True)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.tcp_port), timeout=5)
            except OSError as exc:
                log.error("relay: cannot reach os-ken on 127.0.0.1:%d: %s", self.tcp_port, exc)
                client.close()
                continue
            upstream.settimeout(None)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(src, dst), daemon=True).start()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy until either side closes, then close both (the other pipe then ends too)."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
