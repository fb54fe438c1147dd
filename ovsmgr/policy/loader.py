"""A strict YAML loader that remembers where every value came from.

PyYAML's default loaders follow YAML 1.1, which turns `10:20` into 620, `no`
into False and `0700` into 448 behind the user's back, and silently keeps the
last of two duplicate keys. Policies are security configuration, so this loader
resolves only four plain-scalar forms (decimal integers, true/false, null and
strings), refuses duplicate keys, aliases and explicit tags, and records the
`Span` of every key and value so later passes can name `file:line:column`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from ovsmgr.policy.diagnostics import Collector, PolicyError, Span

MAX_POLICY_BYTES = 16 * 1024 * 1024
"""Larger files are refused before parsing so a stray multi-gigabyte file cannot exhaust memory."""

Path_ = tuple[str | int, ...]

STR_TAG = "tag:yaml.org,2002:str"
INT_TAG = "tag:yaml.org,2002:int"
BOOL_TAG = "tag:yaml.org,2002:bool"
NULL_TAG = "tag:yaml.org,2002:null"
SEQ_TAG = "tag:yaml.org,2002:seq"
MAP_TAG = "tag:yaml.org,2002:map"


class StrictResolver(BaseResolver):
    """Resolves plain scalars to int, bool or null only in their unambiguous YAML 1.2 spellings."""


StrictResolver.add_implicit_resolver(
    BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
StrictResolver.add_implicit_resolver(
    INT_TAG, re.compile(r"^-?(?:0|[1-9][0-9]*)$"), list("-0123456789")
)
StrictResolver.add_implicit_resolver(
    NULL_TAG, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)


class StrictComposer(Reader, Scanner, Parser, Composer, StrictResolver):
    """PyYAML's composing half only: we build values ourselves from the node graph."""

    def __init__(self, stream: str):
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        StrictResolver.__init__(self)


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

    def update(self, other: SourceMap, prefix_map: dict[Path_, Path_] | None = None) -> None:
        self.values.update(other.values)
        self.keys.update(other.keys)


@dataclass
class Document:
    file: str
    data: Any
    source: SourceMap


def _span(file: str, node: Node) -> Span:
    mark = node.start_mark
    return Span(file, mark.line + 1, mark.column + 1)


class _Builder:
    """Turns a composed node graph into plain Python values, recording spans and problems."""

    def __init__(self, file: str, collector: Collector):
        self.file = file
        self.diag = collector
        self.source = SourceMap()

    def build(self, node: Node, path: Path_) -> Any:
        self.source.values[path] = _span(self.file, node)
        if node.tag not in (STR_TAG, INT_TAG, BOOL_TAG, NULL_TAG, SEQ_TAG, MAP_TAG):
            self.diag.error(_span(self.file, node), f"explicit YAML tag {node.tag!r} is not allowed")
            return None
        if isinstance(node, ScalarNode):
            return self._scalar(node)
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, MappingNode)
        return self._mapping(node, path)

    def _scalar(self, node: ScalarNode) -> Any:
        if node.style is not None and node.style != "":
            return node.value  # quoted or block scalars are always strings
        if node.tag == INT_TAG:
            return int(node.value)
        if node.tag == BOOL_TAG:
            return node.value.lower() == "true"
        if node.tag == NULL_TAG:
            return None
        return node.value

    def _mapping(self, node: MappingNode, path: Path_) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first_seen: dict[str, Span] = {}
        for key_node, value_node in node.value:
            key_span = _span(self.file, key_node)
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.diag.error(key_span, "YAML merge keys (<<) are not allowed")
                continue
            if not isinstance(key_node, ScalarNode):
                self.diag.error(key_span, "mapping keys must be plain strings")
                continue
            key = str(key_node.value)
            if key in first_seen:
                self.diag.error(key_span, f'duplicate key "{key}" (first defined at {first_seen[key]})')
                continue
            first_seen[key] = key_span
            self.source.keys[(*path, key)] = key_span
            out[key] = self.build(value_node, (*path, key))
        return out


class _AliasRefusingComposer(StrictComposer):
    """Anchors and aliases can blow a small file up exponentially; policies have no need of them."""

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                None, None, "YAML aliases (*name) are not allowed in policies", event.start_mark
            )
        return super().compose_node(parent, index)  # type: ignore[no-any-return]


def load_text(text: str, file: str) -> Document:
    """Parse one policy document; raise `PolicyError` with every problem found in it."""
    diag = Collector()
    if len(text.encode("utf-8", "surrogatepass")) > MAX_POLICY_BYTES:
        diag.error(Span(file, 1, 1), f"file is larger than {MAX_POLICY_BYTES} bytes")
        diag.raise_if_errors()
    try:
        composer = _AliasRefusingComposer(text)
        node = composer.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        span = Span(file, mark.line + 1, mark.column + 1) if mark else Span(file, 1, 1)
        diag.error(span, f"YAML syntax: {exc.problem or exc.context}")
        raise PolicyError(diag.items) from None
    except yaml.YAMLError as exc:
        diag.error(Span(file, 1, 1), f"YAML: {exc}")
        raise PolicyError(diag.items) from None
    except RecursionError:
        diag.error(Span(file, 1, 1), "YAML nesting is too deep")
        raise PolicyError(diag.items) from None
    if node is None:
        diag.error(Span(file, 1, 1), "the policy file is empty")
        raise PolicyError(diag.items)
    builder = _Builder(file, diag)
    try:
        data = builder.build(node, ())
    except RecursionError:
        diag.error(Span(file, 1, 1), "YAML nesting is too deep")
        raise PolicyError(diag.items) from None
    diag.raise_if_errors()
    return Document(file, data, builder.source)


def load_file(path: str | Path) -> Document:
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise PolicyError([_io_diag(name, exc.strerror or str(exc))]) from None
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError([_io_diag(name, f"file is larger than {MAX_POLICY_BYTES} bytes")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError([_io_diag(name, f"not UTF-8 text (byte {exc.start})")]) from None
    return load_text(text, name)


def _io_diag(file: str, message: str) -> Any:
    from ovsmgr.policy.diagnostics import Diagnostic, Severity

    return Diagnostic(Span(file, 1, 1), Severity.ERROR, message)
