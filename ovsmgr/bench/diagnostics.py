"""Why a point is as fast as it is: a CPU profile of ovs-vswitchd while a point is measured.

`profiled` runs ``perf record`` on the switch process (all its threads, the DPDK
PMD included) for the duration of a block and keeps the top symbols of ``perf
report``: with the datapath statistics the test bed collects (PMD cycles per
packet, EMC/megaflow hit shares, megaflow count, conntrack totals) that is the
measured reason a target is missed. Profiling is optional (``--profile``) and
never fails a measurement.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ovsmgr.bench.netns import Processes

TOP_SYMBOLS = 25
_REPORT_LINE = re.compile(r"^\s*([0-9.]+)%\s+(\S+)\s+(\S+)\s+\[[.k]\]\s+(.+)$")


def parse_perf_report(text: str, limit: int = TOP_SYMBOLS) -> list[dict[str, Any]]:
    """``perf report --stdio --no-children --sort comm,dso,symbol`` -> the top entries."""
    out = []
    for line in text.splitlines():
        found = _REPORT_LINE.match(line)
        if found:
            out.append({"percent": float(found[1]), "thread": found[2], "object": found[3],
                        "symbol": found[4].strip()})
        if len(out) >= limit:
            break
    return out


@contextmanager
def profiled(procs: Processes, pid: int, path: Path, into: dict[str, Any]) -> Iterator[None]:
    """Profile ``pid`` during the block; the top symbols land in ``into['profile']``."""
    if shutil.which("perf") is None:
        into["profile"] = "unavailable: perf is not installed (apt-get install linux-perf)"
        yield
        return
    proc = procs.start(["perf", "record", "-F", "499", "-q", "-p", str(pid), "-o", str(path)])
    try:
        yield
    finally:
        procs.stop(proc, signal.SIGINT, timeout=30)
        try:
            report = subprocess.run(["perf", "report", "--stdio", "--no-children", "-i", str(path),
                                     "--sort", "comm,dso,symbol"], capture_output=True, text=True,
                                    timeout=120, check=False)
            into["profile"] = parse_perf_report(report.stdout) or f"no samples: {report.stderr[-300:]}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            into["profile"] = f"unavailable: {exc}"
        path.unlink(missing_ok=True)
