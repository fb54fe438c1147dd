"""Merge several policy documents into one, by name, keeping every value's source span.

A base file and a site file may together describe one bridge. Named things
(ports, zones, address sets, services) merge by name, rule lists concatenate
in the order the files are given, and a name or setting given twice is an
error that points at both places.
"""

from __future__ import annotations

from typing import Any

from ovsmgr.policy.diagnostics import Collector
from ovsmgr.policy.loader import Document, Path_, SourceMap

NAMED_SECTIONS = ("zones", "addresses", "services")
LIST_SECTIONS = {("firewall", "rules"), ("nat",), ("switch", "links")}
SETTING_SECTIONS = ("switch", "conntrack", "firewall")


def merge_documents(docs: list[Document], diag: Collector) -> tuple[dict[str, Any], SourceMap]:
    merged: dict[str, Any] = {}
    source = SourceMap()
    offsets: dict[tuple[str, ...], int] = {}
    for doc in docs:
        if not isinstance(doc.data, dict):
            diag.error(doc.source.span(()), "a policy file must be a mapping of sections")
            continue
        remap = _list_remap(doc.data, offsets)
        _remap_into(doc.source, remap, source)
        for key, value in doc.data.items():
            _merge_top(merged, key, value, doc, source, diag)
    return merged, source


def _list_remap(data: dict[str, Any], offsets: dict[tuple[str, ...], int]) -> dict[tuple[str, ...], int]:
    """How far this document's list items move once appended after earlier documents' items."""
    remap: dict[tuple[str, ...], int] = {}
    for section in LIST_SECTIONS:
        node: Any = data
        for part in section:
            node = node.get(part) if isinstance(node, dict) else None
        remap[section] = offsets.get(section, 0)
        if isinstance(node, list):
            offsets[section] = remap[section] + len(node)
    return remap


def _shift(path: Path_, remap: dict[tuple[str, ...], int]) -> Path_:
    for section, offset in remap.items():
        n = len(section)
        if offset and path[:n] == section and len(path) > n and isinstance(path[n], int):
            return (*path[:n], path[n] + offset, *path[n + 1 :])
    return path


def _remap_into(src: SourceMap, remap: dict[tuple[str, ...], int], dst: SourceMap) -> None:
    for path, span in src.values.items():
        dst.values.setdefault(_shift(path, remap), span)
    for path, span in src.keys.items():
        dst.keys.setdefault(_shift(path, remap), span)


def _merge_top(
    merged: dict[str, Any], key: str, value: Any, doc: Document, source: SourceMap, diag: Collector
) -> None:
    if key not in merged:
        merged[key] = _copy(value)
        return
    here = doc.source.span((key,), key=True)
    if key == "version":
        if merged[key] != value:
            diag.error(here, f"version {value!r} differs from version {merged[key]!r} of another file")
        return
    if key == "nat" and isinstance(value, list) and isinstance(merged[key], list):
        merged[key].extend(value)
        return
    if isinstance(value, dict) and isinstance(merged[key], dict):
        _merge_mapping(merged[key], value, (key,), doc, source, diag)
        return
    diag.error(here, f'section "{key}" is also defined at {source.span((key,), key=True)}')


def _merge_mapping(
    into: dict[str, Any], value: dict[str, Any], path: Path_, doc: Document, source: SourceMap,
    diag: Collector,
) -> None:
    for name, item in value.items():
        item_path = (*path, name)
        if name not in into:
            into[name] = _copy(item)
            continue
        if (*path, name) in {("firewall", "rules"), ("switch", "links")} and isinstance(item, list):
            into[name].extend(item)
            continue
        if (*path, name) == ("switch", "ports") and isinstance(item, dict):
            _merge_mapping(into[name], item, item_path, doc, source, diag)
            continue
        here = doc.source.span(item_path, key=True)
        first = source.span(item_path, key=True)
        if first == here:
            continue
        what = "name" if path[0] in NAMED_SECTIONS or path == ("switch", "ports") else "setting"
        diag.error(here, f'{what} "{".".join(map(str, item_path))}" is defined twice (also at {first})')


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
