"""Real traffic between lab hosts: servers that report what they saw, clients, ping."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ovsmgr.lab.ovs import Lab

PY = [sys.executable, "-m", "ovsmgr.lab.probe"]


@contextmanager
def server(lab: Lab, port: str, proto: str, tport: int, timeout: float = 30,
           bind: str = "0.0.0.0") -> Iterator[subprocess.Popen[str]]:
    """A traffic agent server (`ovsmgr.lab.probe serve`) in `port`'s host, ready when the block starts,
    stopped after; `bind` "::" for IPv6."""
    proc = lab.popen(port, [*PY, "serve", proto, str(tport), "--timeout", str(timeout), "--bind", bind],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening" in line, f"server did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def converse(lab: Lab, port: str, proto: str, address: str, tport: int, timeout: float = 2,
             sport: int | None = None, src: str | None = None) -> dict[str, Any]:
    """One request/response from `port`'s host (from its address `src`, if given); `ok` tells whether
    an answer came back."""
    argv = [*PY, "connect", proto, address, str(tport), "--timeout", str(timeout)]
    if sport:
        argv += ["--sport", str(sport)]
    if src:
        argv += ["--src", src]
    out = lab.exec(port, argv, capture_output=True, text=True, timeout=timeout + 10)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


class Pinged:
    """The outcome of `ping`: true when every reply came back; its repr says what ping printed
    (an assertion on it then shows why it failed)."""

    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.ok = proc.returncode == 0
        self.output = f"exit {proc.returncode}: {proc.stdout.strip()} {proc.stderr.strip()}".strip()

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return f"Pinged({self.output!r})"


def ping(lab: Lab, port: str, address: str, count: int = 1, deadline: float = 3, src: str | None = None) -> Pinged:
    """Whether `count` echo replies come back before `deadline` seconds (requests are resent); from the
    host's address `src`, if given."""
    family = ["-6"] if ":" in address else []
    source = ["-I", src] if src else []
    argv = ["ping", *family, "-n", "-q", "-c", str(count), "-i", "0.2", "-w", str(deadline), *source, address]
    return Pinged(lab.exec(port, argv, capture_output=True, text=True, timeout=deadline + 5))
