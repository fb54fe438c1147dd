"""The queue of runtime changes: callers submit, one committer thread takes them in groups.

A change is queued (`ChangeQueue.submit`) and answered through its `Ticket` once the
group it was committed in is on the switch and on disk. The committer takes every
change waiting when it comes round, so under a steady stream of changes many are
committed together: one bundle and one fsync'd write for the group instead of per
change (the engine's `commit_group` does that). Changes are committed in the order
they were submitted.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

ChangeKind = Literal["set_members", "add_rule", "remove_rule", "set_rule_enabled"]


@dataclass(frozen=True)
class Change:
    """One runtime change: `set_members(name, add, remove)`, `add_rule(rule, before, after)`,
    `remove_rule(name)` or `set_rule_enabled(name, enabled)`."""

    kind: ChangeKind
    args: tuple[Any, ...]


class Ticket:
    """One queued runtime change and, once its group is committed, its answer."""

    def __init__(self, change: Change, submitted: float) -> None:
        self.change = change
        self.submitted = submitted
        self._done = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    def succeed(self, result: Any) -> None:
        self._result = result
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> Any:
        if not self._done.wait(timeout):
            raise TimeoutError("the change is still queued")
        if self._error is not None:
            raise self._error
        return self._result


class ChangeQueue:
    """Submitted changes, committed in groups by one thread under `lock` (the engine's)."""

    def __init__(self, lock: threading.RLock, commit_group: Callable[[list[Ticket]], None]) -> None:
        self.lock = lock
        self.commit_group = commit_group
        self._queue: deque[Ticket] = deque()
        self._queued = threading.Condition()
        self._committer: threading.Thread | None = None

    def submit(self, change: Change) -> Ticket:
        ticket = Ticket(change, time.monotonic())
        with self._queued:
            self._queue.append(ticket)
            if self._committer is None:
                self._committer = threading.Thread(target=self._commit_forever, name="ovsmgr-commit",
                                                   daemon=True)
                self._committer.start()
            self._queued.notify()
        return ticket

    def _commit_forever(self) -> None:
        while True:
            with self._queued:
                while not self._queue:
                    self._queued.wait()
            with self.lock:  # what queued up while a reload or the last group held it joins in
                with self._queued:
                    group = list(self._queue)
                    self._queue.clear()
                self.commit_group(group)
