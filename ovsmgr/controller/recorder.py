"""Write what is applied (the applied-state record of `ovsmgr.switch.record`) off the update path.

The record holds every flow (for `status` drift checks and `restore`); with
10,000 rules writing it takes tens of milliseconds, which a runtime update must
not wait for. Updates hand the recorder a snapshot; a thread writes the latest
one, through the same `write_record` as `apply`. Runtime changes themselves are
saved before an update is acknowledged (see `engine._persist`); this record is
only a report.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ovsmgr.controller.paths import ControllerPaths
from ovsmgr.controller.runtime import RuntimeChanges
from ovsmgr.southbound.openflow import FlowMod
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch import record as rec

log = logging.getLogger("ovsmgr.controller")
QUIET = 0.5
MAX_DELAY = 10.0


@dataclass(frozen=True)
class Snapshot:
    generation: int
    entries: list[FlowMod]
    data: dict[str, Any]
    files: list[str]
    names: dict[int, str]
    changes: RuntimeChanges
    ct_zone: int = 0
    digest: str = ""


class Recorder:
    def __init__(self, target: SwitchTarget, paths: ControllerPaths) -> None:
        self.target = target
        self.paths = paths
        self._latest: Snapshot | None = None
        self._cond = threading.Condition()
        self._flushing = False
        self._thread = threading.Thread(target=self._run, name="ovsmgr-recorder", daemon=True)
        self._thread.start()

    def submit(self, generation: int, entries: list[FlowMod], data: dict[str, Any], files: Sequence[str],
               names: dict[int, str], changes: RuntimeChanges, ct_zone: int = 0, digest: str = "") -> None:
        with self._cond:
            self._latest = Snapshot(generation, entries, data, list(files), names, changes, ct_zone, digest)
            self._cond.notify()

    def flush(self, timeout: float = 10) -> None:
        """Wait until the latest snapshot is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flushing = True
            self._cond.notify_all()
            while self._latest is not None and time.monotonic() < deadline:
                self._cond.wait(0.05)
            self._flushing = False

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._latest is None:
                    self._cond.wait()
                snap = self._quiet_snapshot()
            try:
                self._write(snap)
            except Exception:  # a report failing must not stop the controller; it is logged loudly
                log.exception("could not record applied state of %s", self.paths.bridge)
            with self._cond:
                if self._latest is snap:
                    self._latest = None
                self._cond.notify_all()

    def _quiet_snapshot(self) -> Snapshot:
        """The latest snapshot once changes pause for QUIET seconds (or after MAX_DELAY): a burst of
        changes is recorded once, and the record's CPU time stays out of the way of the changes."""
        first = time.monotonic()
        while True:
            snap = self._latest
            assert snap is not None
            self._cond.wait(QUIET)
            if self._latest is snap or time.monotonic() - first > MAX_DELAY or self._flushing:
                return snap

    def _write(self, snap: Snapshot) -> None:
        runtime = snap.changes.describe()
        record = rec.make_record(self.paths.bridge, snap.generation, snap.digest, snap.entries, snap.ct_zone,
                                 snap.files, snap.names, runtime_changes=len(runtime),
                                 applied_by=f"controller:{rec.applied_by()}")
        rec.write_record(self.target, record, snap.entries)
