"""Run `ovsmgr controller` against a lab in tests, and probe streams through it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ovsmgr.controller.client import ApiClient
from ovsmgr.controller.paths import ControllerPaths
from ovsmgr.lab.ovs import Lab

T = TypeVar("T")
OVSMGR = str(Path(sys.executable).parent / "ovsmgr")
PROBE = [sys.executable, "-m", "ovsmgr.lab.probe"]
STATS_FIELDS = ("cookie", "duration", "n_packets", "n_bytes", "idle_age", "hard_age")


class RunningController:
    def __init__(self, lab: Lab, files: list[Path], extra: list[str], workdir: Path,
                 command: list[str] | None = None) -> None:
        self.lab = lab
        self.files = files
        self.extra = extra
        self.command = command or [OVSMGR]
        """How to start ovsmgr (e.g. under `tests.support.execlog`)."""
        self.stderr_path = workdir / "controller.log"
        self.paths = ControllerPaths(lab.dir, "br0")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> None:
        argv = [*self.command, "controller", *map(str, self.files), "--db", self.lab.db_endpoint,
                "--stats-interval", "0.5", *self.extra]
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        self.wait_connected(timeout)

    def wait_connected(self, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, f"controller exited:\n{self.log()}"
            info = self.paths.read_info()
            if info is not None and info.get("pid") == self.proc.pid:
                status = self.api().call("GET", "/v1/status")
                if status["connected"]:
                    return dict(status)
            time.sleep(0.1)
        raise AssertionError(f"controller did not connect in {timeout} s:\n{self.log()}")

    def api(self) -> ApiClient:
        return ApiClient.for_paths(self.paths)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([OVSMGR, *args, "--db", self.lab.db_endpoint], capture_output=True, text=True,
                              timeout=60, check=False)
        if check:
            assert proc.returncode == 0, f"ovsmgr {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return proc

    def wait_recorded(self, timeout: float = 15) -> None:
        """Wait until the applied-state record names the controller's current generation."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            generation = self.api().call("GET", "/v1/status")["generation"]
            if self.paths.read_applied().get("generation") == generation:
                return
            time.sleep(0.1)
        raise AssertionError(f"the record did not reach generation {generation} in {timeout} s")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)

    def log(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""


@contextmanager
def controller(lab: Lab, files: list[Path], workdir: Path, extra: list[str] | None = None,
               command: list[str] | None = None) -> Iterator[RunningController]:
    running = RunningController(lab, files, extra or [], workdir, command)
    try:
        running.start()
        yield running
    finally:
        running.kill(signal.SIGTERM)


@contextmanager
def probe_stream(lab: Lab, src: str, dst_port: str, address: str, port: int, duration: float,
                 interval: float = 0.005) -> Iterator[list[dict[str, Any]]]:
    """Datagrams from `src` (fresh source port each) to `address:port` in `dst_port`'s host; the
    list yielded is filled with what arrived when the block ends."""
    received: list[dict[str, Any]] = []
    recv = lab.popen(dst_port, [*PROBE, "stream-recv", str(port), "--duration", str(duration + 2)],
                     stdout=subprocess.PIPE, text=True)
    assert recv.stdout is not None
    assert "listening" in recv.stdout.readline()
    send = lab.popen(src, [*PROBE, "stream-send", address, str(port), "--interval", str(interval),
                           "--duration", str(duration)], stdout=subprocess.PIPE, text=True)
    try:
        yield received
    finally:
        send.wait(duration + 20)
        out, _ = recv.communicate(timeout=duration + 20)  # it prints everything at the end
        received += [json.loads(line) for line in out.splitlines() if '"seq"' in line]


def flows_with_duration(lab: Lab) -> dict[str, float]:
    """Our flows (table, priority, match) -> seconds they exist, from dump-flows."""
    out: dict[str, float] = {}
    for line in lab.ofctl(["dump-flows"]).splitlines():
        if "cookie=0xf5a" not in line or "duration=" not in line:
            continue
        duration = float(line.split("duration=")[1].split("s,")[0])
        fields = [p.strip() for p in line.split(" actions=")[0].split(",")]
        key = ",".join(p for p in fields if p.split("=")[0].strip() not in ("cookie", "duration", "n_packets", "n_bytes", "idle_age", "hard_age"))
        out[key] = duration
    return out


def scrape(address: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample a Prometheus endpoint (`HOST:PORT`) serves now: name -> [(labels, value)]."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def eventually(check: Callable[[], T], timeout: float) -> T:
    """`check()` until it is true or `timeout` seconds passed; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)
