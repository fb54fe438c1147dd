"""Merge several policy documents into one, by name, keeping every value's source span.

A base file and a site file may together describe one bridge. Named things
(ports, zones, address sets, services) merge by name, rule lists concatenate
in the order the files are given, and a name or setting given twice is an
error that points at both places. The first definition is kept, so the
checks after the merge still run and report what else is wrong.
"""

from __future__ import annotations

from typing import Any

from ovsmgr.policy.diagnostics import Collector
from ovsmgr.policy.loader import Document, Path_, SourceMap

NAMED: dict[Path_, str] = {
    ("zones",): "zone",
    ("addresses",): "address set",
    ("services",): "service",
    ("switch", "ports"): "port",
}
"""Mappings whose keys are names the policy defines, with what to call one in a message."""
LISTS: set[Path_] = {("firewall", "rules"), ("nat",), ("switch", "links")}
"""Lists that concatenate in the order the files are given."""
SECTIONS: set[Path_] = {("switch",), ("firewall",), ("conntrack",)}
"""Mappings of settings; each setting may be given by one file only."""


def merge_documents(docs: list[Document], diag: Collector) -> tuple[dict[str, Any], SourceMap]:
    """One policy mapping from `docs`; a file whose top level is not a mapping is an error.

    The result may share values with the documents (one document is its own merge, not a
    copy of it): change a copy (`validate_shape` does), never the result itself."""
    if len(docs) == 1 and isinstance(docs[0].data, dict):
        return docs[0].data, docs[0].source
    merged: dict[str, Any] = {}
    source = SourceMap()
    offsets: dict[Path_, int] = {}
    for doc in docs:
        if not isinstance(doc.data, dict):
            diag.error(doc.source.span(()), f"a policy file must be a mapping of sections "
                                            f"(version, switch, zones, ...), not {_kind(doc.data)}")
            continue
        remap = _list_remap(doc.data, offsets)
        for mine, theirs in ((source.values, doc.source.values), (source.keys, doc.source.keys)):
            if not mine:
                mine.update(theirs)  # the first file: nothing to shift, nothing defined before
                continue
            for path, span in theirs.items():
                mine.setdefault(_shift(path, remap), span)
        _merge_mapping(merged, doc.data, (), doc, source, diag)
    return merged, source


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f'the text "{value[:40]}"'
    return f"the value {value!r}"


def _list_remap(data: dict[str, Any], offsets: dict[Path_, int]) -> dict[Path_, int]:
    """How far this document's list items move once appended after earlier documents' items."""
    remap: dict[Path_, int] = {}
    for section in LISTS:
        node: Any = data
        for part in section:
            node = node.get(part) if isinstance(node, dict) else None
        remap[section] = offsets.get(section, 0)
        if isinstance(node, list):
            offsets[section] = remap[section] + len(node)
    return remap


def _shift(path: Path_, remap: dict[Path_, int]) -> Path_:
    for section, offset in remap.items():
        n = len(section)
        if offset and path[:n] == section and len(path) > n:
            index = path[n]
            if isinstance(index, int):
                return (*path[:n], index + offset, *path[n + 1 :])
    return path


def _merge_mapping(
    into: dict[str, Any], value: dict[str, Any], path: Path_, doc: Document, source: SourceMap,
    diag: Collector,
) -> None:
    for name, item in value.items():
        item_path = (*path, name)
        if name not in into:
            into[name] = _copy(item)
        elif item_path == ("version",):
            if into[name] != item:
                diag.error(doc.source.span(item_path), f"version {item!r} differs from version "
                                                      f"{into[name]!r} at {source.span(item_path)}")
        elif item_path in LISTS and isinstance(item, list) and isinstance(into[name], list):
            into[name].extend(_copy(item))
        elif (item_path in NAMED or item_path in SECTIONS) and isinstance(item, dict) \
                and isinstance(into[name], dict):
            _merge_mapping(into[name], item, item_path, doc, source, diag)
        else:
            diag.error(doc.source.span(item_path, key=True), _twice(item_path, source))


def _twice(path: Path_, source: SourceMap) -> str:
    first = source.span(path, key=True)
    noun = NAMED.get(path[:-1])
    if noun is not None:
        return f'{noun} "{path[-1]}" is defined twice (also at {first})'
    what = "section" if len(path) == 1 else "setting"
    return f'{what} "{".".join(map(str, path))}" is given twice (also at {first})'


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
