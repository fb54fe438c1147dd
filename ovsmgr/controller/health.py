"""Health checks of load-balanced DNAT backends, in controller mode.

A rule with `health_check` has each of its backends checked every `interval`
seconds with a TCP connect (to the backend's port, else the rule's one TCP service
port) that must succeed within `timeout`; after `failures` failed checks in a row
the backend is taken out of the rule's select group, and the first successful check
brings it back. Only new connections are spread again: the ones conntrack already
sent to a backend stay with it. The checks run in a thread of their own, from the
controller's network namespace or the one `--health-netns` names (where the
backends are reachable); a change of state goes through the engine like any other
change: recompiled, pushed in one bundle, recorded.

`apply_health` is the pure half: the NAT rules with each backend's `up` set from the
set of backends that are down.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ovsmgr.lab import netns
from ovsmgr.lab.spec import LabError
from ovsmgr.policy.ir import IPAddress, NatRule

log = logging.getLogger("ovsmgr.controller")
BackendKey = tuple[str, IPAddress, int | None]
"""(rule name, backend address, backend port as written): one backend of one rule."""


def apply_health(nat: Iterable[NatRule], down: frozenset[BackendKey]) -> tuple[NatRule, ...]:
    """`nat` with every backend's `up` as `down` says (rules without backends as they are)."""
    out = []
    for rule in nat:
        if rule.backends:
            backends = tuple(dataclasses.replace(b, up=(rule.name, b.address, b.port) not in down)
                             for b in rule.backends)
            rule = dataclasses.replace(rule, backends=backends)
        out.append(rule)
    return tuple(out)


def checked_port(rule: NatRule, port: int | None) -> int | None:
    """The port a backend is checked on: its own, else the rule's one TCP service port."""
    if port is not None:
        return port
    ports = {s.ports for s in rule.match.services if s.proto == "tcp" and s.ports and s.ports[0] == s.ports[1]}
    return next(iter(ports))[0] if len(ports) == 1 else None


@dataclass
class BackendHealth:
    rule: str
    address: IPAddress
    port: int | None
    checked: int | None
    up: bool = True
    failures: int = 0
    last_error: str = ""
    checked_at: float = 0.0

    @property
    def key(self) -> BackendKey:
        return (self.rule, self.address, self.port)

    def to_json(self) -> dict[str, object]:
        return {"rule": self.rule, "address": str(self.address), "port": self.port, "checked_port": self.checked,
                "up": self.up, "failures": self.failures, "last_error": self.last_error}


@dataclass
class HealthChecker:
    """Checks the backends of the rules `rules()` returns; calls `changed(down)` when the set of
    backends that are down changes (under no lock of its own: the engine serialises)."""

    rules: Callable[[], Iterable[NatRule]]
    changed: Callable[[frozenset[BackendKey]], object]
    netns: str | None = None
    states: dict[BackendKey, BackendHealth] = field(default_factory=dict)
    _applied: frozenset[BackendKey] = frozenset()
    """The backends `changed` last took out (it is called again until it succeeds)."""
    _due: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def report(self) -> list[dict[str, object]]:
        with self._lock:
            return [s.to_json() for s in self.states.values()]

    def down(self) -> frozenset[BackendKey]:
        with self._lock:
            return frozenset(k for k, s in self.states.items() if not s.up)

    def run(self, stop: threading.Event) -> None:
        """The checker's thread: enters `netns` (this thread only), then checks until `stop`."""
        if self.netns is not None:
            try:
                netns.enter(self.netns)
            except LabError as exc:
                log.error("backend health checks cannot run in network namespace %s: %s; every backend stays "
                          "in its group", self.netns, exc)
                return
        while not stop.is_set():
            try:
                self.round()
            except Exception:  # a check that cannot run must not end the thread; it says why
                log.exception("backend health checks failed")
            stop.wait(0.2)

    def round(self, now: float | None = None) -> None:
        """Check the backends of every rule that is due; report a change of who is down."""
        now = time.monotonic() if now is None else now
        rules = [r for r in self.rules() if r.backends and r.health_check is not None]
        self._forget(rules)
        for rule in rules:
            assert rule.health_check is not None
            if self._due.get(rule.name, 0.0) > now:
                continue
            self._due[rule.name] = now + rule.health_check.interval
            for backend in rule.backends:
                self._check(rule, backend.address, backend.port)
        down = self.down()
        if down != self._applied:
            self.changed(down)  # if it raises, the next round tries again
            self._applied = down

    def _forget(self, rules: list[NatRule]) -> None:
        """Backends no longer in the policy (a reload) are no longer checked, nor down."""
        keep = {(r.name, b.address, b.port) for r in rules for b in r.backends}
        with self._lock:
            for key in [k for k in self.states if k not in keep]:
                del self.states[key]
        for name in [n for n in self._due if n not in {r.name for r in rules}]:
            del self._due[name]

    def _check(self, rule: NatRule, address: IPAddress, port: int | None) -> None:
        assert rule.health_check is not None
        key = (rule.name, address, port)
        with self._lock:
            state = self.states.setdefault(key, BackendHealth(rule.name, address, port, checked_port(rule, port)))
        error = tcp_connect(address, state.checked, rule.health_check.timeout)
        with self._lock:
            state.checked_at = time.time()
            if error is None:
                if not state.up:
                    log.info("backend %s of %s is up again", _where(state), rule.name)
                state.up, state.failures, state.last_error = True, 0, ""
                return
            state.failures += 1
            state.last_error = error
            if state.up and state.failures >= rule.health_check.failures:
                state.up = False
                log.warning("backend %s of %s is down (%s): it gets no new connections", _where(state), rule.name,
                            error)


def _where(state: BackendHealth) -> str:
    return f"{state.address}:{state.checked}" if state.checked else str(state.address)


def tcp_connect(address: IPAddress, port: int | None, timeout: float) -> str | None:
    """None when a TCP connection to the backend opens within `timeout`, else why not."""
    if port is None:
        return "no port to check: give the backend a port or the rule one tcp service"
    try:
        with socket.create_connection((str(address), port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


__all__ = ["BackendHealth", "BackendKey", "HealthChecker", "apply_health", "checked_port"]
