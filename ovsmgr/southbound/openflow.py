"""OpenFlow to one bridge: read ovsmgr's flows, push changes as one atomic bundle.

`apply` speaks OpenFlow 1.5 through `ovs-ofctl` on the bridge's management
socket: its `--bundle` mode sends every change of a push inside one ordered,
atomic OpenFlow bundle, which the switch commits whole or not at all.
(Controller mode speaks the same bundles through os-ken.) Only flows whose
cookie carries ovsmgr's magic are read or changed; deletes are strict and
cookie-masked, so a foreign flow is never touched.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ovsmgr.compiler.pipeline import COOKIE_MAGIC, COOKIE_MASK, CookieKind, cookie_parts

OFCTL = ["ovs-ofctl", "-O", "OpenFlow15"]
OURS = f"cookie={COOKIE_MAGIC << 48:#x}/{COOKIE_MASK:#x}"
_DUMP_LINE = re.compile(
    r"^\s*cookie=(?P<cookie>0x[0-9a-f]+),\s*(?:table=(?P<table>\d+),\s*)?priority=(?P<priority>\d+)"
    r"(?:,(?P<match>\S*))?\s+actions=(?P<actions>.*)$"
)


class OpenFlowError(Exception):
    """The switch refused a request, or could not be reached; nothing was changed."""


@dataclass(frozen=True, order=True)
class FlowEntry:
    """A flow as text, the way ovs-ofctl prints it; `key` identifies it in its table."""

    table: int
    priority: int
    match: str
    actions: str
    cookie: int

    @property
    def key(self) -> tuple[int, int, str]:
        return (self.table, self.priority, self.match)

    def add_line(self) -> str:
        sep = "," if self.match else ""
        return f"add cookie={self.cookie:#x},table={self.table},priority={self.priority}{sep}{self.match} actions={self.actions}"

    def delete_line(self) -> str:
        sep = "," if self.match else ""
        return f"delete_strict {OURS},table={self.table},priority={self.priority}{sep}{self.match}"


def parse_dump(text: str) -> list[FlowEntry]:
    """Flows from `ovs-ofctl dump-flows --no-stats` output (header lines skipped)."""
    entries = []
    for line in text.splitlines():
        found = _DUMP_LINE.match(line)
        if not found:
            continue
        entries.append(FlowEntry(
            int(found["table"] or 0), int(found["priority"]), found["match"] or "",
            found["actions"].strip(), int(found["cookie"], 16),
        ))
    return entries


def parse_flow_line(line: str) -> FlowEntry:
    """One compiled flow line (`cookie=..,table=..,priority=..,MATCH actions=..`)."""
    head, _, actions = line.partition(" actions=")
    fields = dict.fromkeys(("cookie", "table", "priority"), "0")
    rest = head
    for name in ("cookie", "table", "priority"):
        value, _, rest = rest.partition(",")
        key, _, fields[name] = value.partition("=")
        if key != name:
            raise ValueError(f"not a compiled flow line: {line}")
    return FlowEntry(int(fields["table"]), int(fields["priority"]), rest, actions, int(fields["cookie"], 16))


def is_managed(entry: FlowEntry) -> bool:
    """Ours and not learned by the switch itself."""
    ours, kind, _ = cookie_parts(entry.cookie)
    return ours and kind is not CookieKind.LEARNED


class FlowTable(Protocol):
    """What plan/apply need of a bridge's flow table; tests of our own logic may fake it."""

    def dump(self, ours_only: bool = True) -> list[FlowEntry]: ...

    def push(self, lines: Sequence[str]) -> None: ...


class OfctlFlowTable:
    """A bridge's flow table through `ovs-ofctl` on its management socket (`unix:PATH` or name)."""

    def __init__(self, target: str, timeout: float = 300):
        self.target = target
        self.timeout = timeout

    def _run(self, args: Sequence[str], input: str | None = None) -> str:
        argv = [*OFCTL, *args]
        try:
            proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OpenFlowError(f"{' '.join(argv[:4])}: {exc}") from exc
        if proc.returncode != 0:
            raise OpenFlowError(f"{self.target}: {args[0]} refused: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def dump(self, ours_only: bool = True) -> list[FlowEntry]:
        args = ["dump-flows", self.target, "--no-stats"]
        if ours_only:
            args.append(OURS)
        entries = parse_dump(self._run(args))
        return [e for e in entries if is_managed(e)] if ours_only else entries

    def dump_text(self) -> str:
        """Every flow of the bridge, ours or not, sorted: for byte-for-byte comparisons."""
        return "".join(sorted(self._run(["dump-flows", self.target, "--no-stats"]).splitlines(keepends=True)))

    def push(self, lines: Sequence[str]) -> None:
        """Send flow_mods (`add ...`, `delete_strict ...`) in one ordered atomic bundle."""
        if not lines:
            return
        self._run(["--bundle", "add-flows", self.target, "-"], input="\n".join(lines) + "\n")


def bundle_lines(adds: Iterable[FlowEntry], deletes: Iterable[FlowEntry]) -> list[str]:
    """Deletes first, then adds (an add replaces a flow with the same key)."""
    return [e.delete_line() for e in sorted(deletes)] + [e.add_line() for e in sorted(adds)]
