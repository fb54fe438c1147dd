"""A strict YAML loader that remembers where every value came from.

PyYAML's default loaders follow YAML 1.1, which turns `10:20` into 620, `no`
into False and `0700` into 448 behind the user's back, and silently keeps the
last of two duplicate keys. Policies are security configuration, so this loader
resolves only four plain-scalar forms (decimal integers, true/false, null and
strings), refuses duplicate keys, aliases and explicit tags, and records the
`Span` of every key and value so later passes can name `file:line:column`.

Values are built straight from the parser's events (libyaml's when it is
there, PyYAML's own otherwise): events carry tags, anchors and aliases as
written, which a composed node graph no longer shows, and skipping the node
graph makes large policies load several times faster.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from yaml.events import (
    AliasEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.scanner import Scanner

from ovsmgr.policy.diagnostics import Collector, Diagnostic, PolicyError, Severity, Span

try:
    from yaml._yaml import CParser as _CParser
except ImportError:  # PyYAML built without libyaml
    _CParser = None  # type: ignore[assignment,misc]

MAX_POLICY_BYTES = 16 * 1024 * 1024
"""Larger files are refused before parsing so a stray multi-gigabyte file cannot exhaust memory."""
MAX_DEPTH = 64
"""Policies nest a handful of levels; anything deeper is a mistake (or an attack on the stack)."""
MAX_VALUES = 2_000_000
"""Scalars, lists and mappings in one file. The largest generated policy that fits in
MAX_POLICY_BYTES (91,072 rules) holds 637,536; a dense file (`[0,0,0,...]`) packs 8 million
into 16 MiB, and each costs some hundred bytes of spans, so without this bound 16 MiB could
take gigabytes of memory and minutes before any error is reported."""
MAX_INT_DIGITS = 640
"""Longer plain numbers are refused: Python raises ValueError converting more digits than
`sys.get_int_max_str_digits()` (4,300 by default, 640 the lowest it can be set to); no field
of a policy needs more than 5."""

Path_ = tuple[str | int, ...]

INT_RE = re.compile(r"^-?(?:0|[1-9][0-9]*)$")
NON_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""Characters YAML does not allow in a stream (controls, surrogates, U+FFFE/U+FFFF)."""


class _EventParser(Protocol):
    def check_event(self, *choices: type[Event]) -> bool: ...
    def peek_event(self) -> Event: ...
    def get_event(self) -> Event: ...


class PurePythonParser(Reader, Scanner, Parser):
    """PyYAML's scanner and parser, without its composer, constructor or resolver."""

    def __init__(self, stream: str):
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)


def _uses_libyaml() -> bool:
    return _CParser is not None and USE_LIBYAML


def _new_parser(text: str) -> _EventParser:
    if _uses_libyaml():
        return _CParser(text)  # type: ignore[return-value]
    return PurePythonParser(text)


USE_LIBYAML = True
"""Tests turn this off to check that both parsers give the same values and spans."""


@dataclass
class SourceMap:
    """Where each value (and each mapping key) of a loaded document stands in its file."""

    values: dict[Path_, Span] = field(default_factory=dict)
    keys: dict[Path_, Span] = field(default_factory=dict)

    def span(self, path: Path_, *, key: bool = False) -> Span:
        """The span of `path`, or of its nearest ancestor when the exact node is not there."""
        table = self.keys if key else self.values
        probe = tuple(path)
        while probe:
            if probe in table:
                return table[probe]
            if not key and probe in self.keys:
                return self.keys[probe]
            probe = probe[:-1]
        return self.values.get((), Span("<policy>", 1, 1))

    def update(self, other: SourceMap) -> None:
        self.values.update(other.values)
        self.keys.update(other.keys)


@dataclass
class Document:
    """One loaded file: its data, where each value stands, and problems that did not stop loading."""

    file: str
    data: Any
    source: SourceMap
    problems: list[Diagnostic] = field(default_factory=list)
    digest: str = ""
    """sha256 of the text it was read from ("" for data that came from no text)."""


class _Fatal(Exception):
    """A problem after which the rest of the file cannot be read."""

    def __init__(self, span: Span, message: str):
        super().__init__(message)
        self.span = span
        self.message = message


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


class _Builder:
    """Turns parser events into plain Python values, recording spans and problems.

    Every value of a policy passes through `value` and most through `mapping`, a dozen
    per rule, so both are written to do little per event: one parser call per event,
    spans made inline, scalars converted without a function call.
    """

    def __init__(self, file: str, parser: _EventParser, collector: Collector):
        self.file = file
        self.parser = parser
        self.diag = collector
        self.source = SourceMap()
        self.values = self.source.values
        self.count = 0

    def _span(self, event: Event) -> Span:
        mark = event.start_mark
        if mark is None:
            return Span(self.file, 1, 1)
        return _new_span((self.file, mark.line + 1, mark.column + 1))

    def document(self) -> Any:
        """The single document of the stream; `_EMPTY` when the stream holds none."""
        self.parser.get_event()  # StreamStart
        if self.parser.check_event(StreamEndEvent):
            return _EMPTY
        self.parser.get_event()  # DocumentStart
        value = self.value((), 0)
        self.parser.get_event()  # DocumentEnd
        if not self.parser.check_event(StreamEndEvent):
            event = self.parser.get_event()
            raise _Fatal(self._span(event), "a policy file holds one YAML document, but a second one starts here")
        return value

    def value(self, path: Path_, depth: int) -> Any:
        event = self.parser.get_event()
        mark = event.start_mark
        span = self._span(event) if mark is None else _new_span((self.file, mark.line + 1, mark.column + 1))
        if isinstance(event, AliasEvent):
            raise _Fatal(span, f'YAML alias "*{event.anchor}" is not allowed in policies: write the value out')
        if depth > MAX_DEPTH:
            raise _Fatal(span, _too_deep_message())
        self.count += 1
        if self.count > MAX_VALUES:
            raise _Fatal(span, f"the file holds more than {MAX_VALUES} values")
        self.values[path] = span
        tag = event.tag  # type: ignore[attr-defined]
        if tag is not None:
            self.diag.error(span, f'explicit YAML tag "{_short_tag(tag)}" is not allowed: '
                                  "values are read as written (quote text, leave numbers plain)")
        if isinstance(event, ScalarEvent):
            text = event.value
            plain = event.implicit[0]
            if len(text) > MAX_INT_DIGITS and plain and INT_RE.match(text):
                raise _Fatal(span, f"a number of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
            return _plain_scalar(text) if plain and tag is None else text
        if isinstance(event, SequenceStartEvent):
            items: list[Any] = []
            while not self.parser.check_event(SequenceEndEvent):
                items.append(self.value((*path, len(items)), depth + 1))
            self.parser.get_event()
            return items
        assert isinstance(event, MappingStartEvent)
        return self.mapping(path, depth)

    def mapping(self, path: Path_, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        keys = self.source.keys
        while True:
            event = self.parser.get_event()
            if isinstance(event, MappingEndEvent):
                return out
            mark = event.start_mark
            span = self._span(event) if mark is None else _new_span((self.file, mark.line + 1, mark.column + 1))
            if isinstance(event, AliasEvent):
                raise _Fatal(span, f'YAML alias "*{event.anchor}" is not allowed in policies: write the value out')
            if not isinstance(event, ScalarEvent):
                self.diag.error(span, "a mapping key must be a plain name, not a list or a mapping")
                self._skip(level=1)  # the rest of the key
                self._skip()  # its value
                continue
            key = event.value
            if event.tag is not None:
                self.diag.error(span, f'explicit YAML tag "{_short_tag(event.tag)}" is not allowed on a key')
            if key == "<<" and event.implicit[0]:
                self.diag.error(span, "YAML merge keys (<<) are not allowed in policies")
            elif key in out:
                self.diag.error(span, f'duplicate key "{key}" (first defined at {keys[(*path, key)]})')
            else:
                key_path = (*path, key)
                keys[key_path] = span
                out[key] = self.value(key_path, depth + 1)
                continue
            self._skip()

    def _skip(self, level: int = 0) -> None:
        """Consume the events of one node (a refused key or its value); `level` 1 when the node's
        first event is already consumed."""
        while True:
            event = self.parser.get_event()
            if isinstance(event, (SequenceStartEvent, MappingStartEvent)):
                level += 1
            elif isinstance(event, (SequenceEndEvent, MappingEndEvent)):
                level -= 1
            if level <= 0:
                return


_EMPTY = object()
_new_span: Callable[[tuple[str, int, int]], Span] = functools.partial(tuple.__new__, Span)
"""`Span(file, line, column)` without the named tuple's Python-level constructor: a span per key
and per value made that a tenth of the loader's time."""
_PLAIN_WORDS: dict[str, bool | None] = {
    **dict.fromkeys(("true", "True", "TRUE"), True), **dict.fromkeys(("false", "False", "FALSE"), False),
    **dict.fromkeys(("~", "null", "Null", "NULL", ""), None),
}
"""The plain scalars that are booleans or null; every other plain scalar is an integer or text."""
_NOT_A_WORD = object()


def _plain_scalar(text: str) -> Any:
    """A plain, untagged scalar may be int, bool or null; anything else is text."""
    word = _PLAIN_WORDS.get(text, _NOT_A_WORD)
    if word is not _NOT_A_WORD:
        return word
    if text[0] in _INT_START and INT_RE.match(text):
        return int(text)
    return text


_INT_START = frozenset("-0123456789")


def _line_column(text: str, offset: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - line_start + 1


def _check_characters(text: str, file: str, diag: Collector) -> None:
    for count, match in enumerate(NON_PRINTABLE.finditer(text)):
        if count == 5:
            break
        line, column = _line_column(text, match.start())
        diag.error(Span(file, line, column),
                   f"character U+{ord(match.group()):04X} is not allowed in a YAML file")


def _syntax_message(exc: yaml.MarkedYAMLError, text: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    if mark is not None and "cannot start any token" in (exc.problem or ""):
        lines = text.split("\n")
        char = lines[mark.line][mark.column : mark.column + 1] if mark.line < len(lines) else ""
        if char == "\t":
            return "YAML syntax: a tab character; indent with spaces (YAML does not allow tabs here)"
        if char in ("@", "`"):
            return f'YAML syntax: a value cannot start with {char} unless quoted: write "{char}..."'
    context = exc.context or ""
    parts = [p for p in (context if not context.startswith("while ") else "", exc.problem) if p]
    return "YAML syntax: " + (", ".join(parts) or "invalid YAML")


def _too_deep_for_libyaml(text: str, file: str, exc: yaml.MarkedYAMLError) -> _Fatal | None:
    """ovsmgr's own nesting refusal, where libyaml refused the nesting first.

    libyaml scans ahead of the events it hands out, and newer copies of it refuse deep
    nesting themselves (PyYAML 6.0.4's: more than 1,000 levels), so such a file fails in
    libyaml, with libyaml's words, before MAX_DEPTH is ever checked. Its words are not an
    interface: when the text up to where libyaml stopped could be nested deeper than
    MAX_DEPTH (more unclosed brackets, or a line indented further), that text is read again
    with PyYAML's own parser, which has no such limit, and ovsmgr's check decides.
    """
    mark = exc.problem_mark
    if not _uses_libyaml() or mark is None:
        return None
    head = text[: mark.index]
    unclosed = head.count("[") + head.count("{") - head.count("]") - head.count("}")
    if unclosed <= MAX_DEPTH and mark.column <= MAX_DEPTH:
        return None
    try:
        _Builder(file, PurePythonParser(head), Collector()).document()
    except _Fatal as fatal:
        return fatal if fatal.message == _too_deep_message() else None
    except (yaml.YAMLError, RecursionError):
        return None
    return None


def _too_deep_message() -> str:
    return f"values are nested more than {MAX_DEPTH} levels deep"


def load_text(text: str, file: str) -> Document:
    """Parse one policy document.

    Raises `PolicyError` when the file cannot be read at all (syntax errors,
    aliases, an empty file); problems after which the values are still
    meaningful (duplicate keys, tags) are kept in `Document.problems`.
    """
    diag = Collector()
    if len(text) > MAX_POLICY_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_POLICY_BYTES:
        diag.error(Span(file, 1, 1), f"file is larger than {MAX_POLICY_BYTES} bytes")
        diag.raise_if_errors()
    _check_characters(text, file, diag)
    diag.raise_if_errors()
    builder = _Builder(file, _new_parser(text), diag)
    try:
        data = builder.document()
    except _Fatal as exc:
        diag.error(exc.span, exc.message)
        raise PolicyError(diag.items) from None
    except yaml.MarkedYAMLError as exc:
        too_deep = _too_deep_for_libyaml(text, file, exc)
        if too_deep is not None:
            diag.error(too_deep.span, too_deep.message)
            raise PolicyError(diag.items) from None
        mark = exc.problem_mark or exc.context_mark
        span = Span(file, mark.line + 1, mark.column + 1) if mark else Span(file, 1, 1)
        diag.error(span, _syntax_message(exc, text))
        raise PolicyError(diag.items) from None
    except yaml.YAMLError as exc:
        diag.error(Span(file, 1, 1), f"YAML: {exc}")
        raise PolicyError(diag.items) from None
    except RecursionError:
        diag.error(Span(file, 1, 1), "YAML nesting is too deep")
        raise PolicyError(diag.items) from None
    if data is _EMPTY or data is None:
        diag.error(Span(file, 1, 1), "the policy file is empty")
        raise PolicyError(diag.items)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return Document(file, data, builder.source, diag.items, digest)


def load_file(path: str | Path) -> Document:
    name = str(path)
    try:
        with open(path, "rb") as stream:  # at most one byte more than allowed: /dev/zero, a FIFO
            raw = stream.read(MAX_POLICY_BYTES + 1)  # or a huge file cannot exhaust memory
    except OSError as exc:
        raise PolicyError([_io_diag(name, f"cannot read the file: {exc.strerror or exc}")]) from None
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError([_io_diag(name, f"file is larger than {MAX_POLICY_BYTES} bytes")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
        raise PolicyError([Diagnostic(Span(name, line, column), Severity.ERROR,
                                      f"not UTF-8 text (byte 0x{raw[exc.start]:02x})")]) from None
    return load_text(text, name)


def _io_diag(file: str, message: str) -> Diagnostic:
    return Diagnostic(Span(file, 1, 1), Severity.ERROR, message)
