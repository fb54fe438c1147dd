"""The shape pass: the pydantic model, with errors an operator can read.

Pydantic reports every shape error of a document at once, but then there is no
model to check names and meaning on. So each error is also *pruned*: the bad
part is left out (an optional key falls back to its default, a required one
gets a placeholder, a unit that cannot stand is dropped), the rest is validated
again, and the later passes run on what is left. `Broken` remembers what was
pruned, so those passes do not report the same mistake a second time (a rule
whose zone was dropped is not told that the zone is unknown), and rules that
lost a key are checked for names but kept out of the analysis and the result.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from ovsmgr.policy.diagnostics import Collector, PolicyError, Span, did_you_mean
from ovsmgr.policy.loader import Path_, SourceMap
from ovsmgr.policy.model import (
    Conntrack,
    ConntrackTimeouts,
    Firewall,
    FirewallRule,
    NatRule,
    Policy,
    Port,
    Switch,
    Zone,
)

PLACEHOLDER_ZONE = "_"
"""The `from` of a rule whose own `from` was unusable; a name no zone can be checked against."""

UNITS: dict[Path_, type[BaseModel] | None] = {
    ("switch", "ports"): Port,
    ("switch", "links"): None,
    ("zones",): Zone,
    ("addresses",): None,
    ("services",): None,
    ("firewall", "rules"): FirewallRule,
    ("nat",): NatRule,
}
"""Containers of independent items: an item with an error is pruned alone."""
SECTIONS: dict[Path_, type[BaseModel]] = {
    (): Policy, ("switch",): Switch, ("firewall",): Firewall, ("conntrack",): Conntrack,
    ("conntrack", "timeouts"): ConntrackTimeouts,
}
LIST_UNITS = (("firewall", "rules"), ("nat",), ("switch", "links"))
SECTION_PLACEHOLDERS: dict[Path_, Any] = {("version",): 1, ("switch",): {"bridge": "br0"},
                                          ("switch", "bridge"): "br0"}
UNIT_PLACEHOLDERS: dict[tuple[Path_, str], Callable[[int], Any]] = {
    (("firewall", "rules"), "name"): lambda i: f"_rule{i}",
    (("firewall", "rules"), "from"): lambda i: PLACEHOLDER_ZONE,
    (("firewall", "rules"), "action"): lambda i: "drop",
    (("nat",), "name"): lambda i: f"_nat{i}",
    (("nat",), "from"): lambda i: PLACEHOLDER_ZONE,
}


@dataclass
class Broken:
    """What the shape pass pruned; later passes stay quiet about it."""

    zones: set[str] = field(default_factory=set)
    ports: set[str] = field(default_factory=set)
    addresses: set[str] = field(default_factory=set)
    services: set[str] = field(default_factory=set)
    rules: set[int] = field(default_factory=set)
    nat: set[int] = field(default_factory=set)
    anonymous: set[tuple[str, int]] = field(default_factory=set)
    all_zones: bool = False
    all_ports: bool = False
    all_addresses: bool = False
    all_services: bool = False
    links: bool = False

    def zone(self, name: str) -> bool:
        return self.all_zones or name in self.zones or name == PLACEHOLDER_ZONE

    def port(self, name: str) -> bool:
        return self.all_ports or name in self.ports

    def address_set(self, name: str) -> bool:
        return self.all_addresses or name in self.addresses

    def service(self, name: str) -> bool:
        return self.all_services or name in self.services

    def mark(self, container: Path_, key: str | int) -> None:
        """Record that item `key` of `container` lost (part of) its definition."""
        names: dict[Path_, set[str]] = {("switch", "ports"): self.ports, ("zones",): self.zones,
                                        ("addresses",): self.addresses, ("services",): self.services}
        indices: dict[Path_, set[int]] = {("firewall", "rules"): self.rules, ("nat",): self.nat}
        if container == ("switch", "links"):
            self.links = True
        elif container in names:
            names[container].add(str(key))
        elif container in indices and isinstance(key, int):
            indices[container].add(key)


@dataclass
class Shape:
    """The validated model, what was pruned, and where each kept list item came from."""

    model: Policy
    broken: Broken
    rule_index: list[int]
    nat_index: list[int]
    link_index: list[int]


_DROPPED = object()


def validate_shape(data: dict[str, Any], source: SourceMap, diag: Collector) -> Shape:
    """Validate `data`; report every shape error; raise if nothing is left. Pruning changes a
    copy, made at the first error: `data` itself is left as it is."""
    broken = Broken()
    for attempt in range(6):
        view, maps = _view(data)
        try:
            model = Policy.model_validate(view)
        except ValidationError as exc:
            if attempt == 0:
                data = copy.deepcopy(data)
            groups = _group(exc.errors(), view, maps)
            for (path, is_key), errors in groups.items():
                if attempt == 0:
                    diag.error(*describe(errors, path, is_key, source))
                _prune(data, path, is_key, errors[0]["type"], broken)
            continue
        return Shape(model, broken, maps[("firewall", "rules")], maps[("nat",)], maps[("switch", "links")])
    raise PolicyError(diag.items)


# --- views without pruned list items ------------------------------------------------------------
def _get(data: Any, path: Path_) -> Any:
    for part in path:
        if isinstance(data, dict) and isinstance(part, str):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


def _view(data: dict[str, Any]) -> tuple[dict[str, Any], dict[Path_, list[int]]]:
    """A shallow copy of `data` whose lists of rules and links leave out pruned items."""
    view = dict(data)
    maps: dict[Path_, list[int]] = {}
    for path in LIST_UNITS:
        items = _get(data, path)
        if not isinstance(items, list):
            maps[path] = []
            continue
        maps[path] = [i for i, item in enumerate(items) if item is not _DROPPED]
        holder = view
        for part in path[:-1]:
            holder[part] = dict(holder[part])
            holder = holder[part]
        holder[path[-1]] = [items[i] for i in maps[path]]
    return view, maps


def _data_path(loc: tuple[Any, ...], data: Any) -> tuple[Path_, bool]:
    """The data path of a pydantic location (union branch names dropped), and whether it names a key."""
    path: list[str | int] = []
    node = data
    for n, part in enumerate(loc):
        if part == "[key]":
            return tuple(path), True
        in_dict = isinstance(node, dict) and isinstance(part, str) and part in node
        if in_dict or (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            node = node[part]
            path.append(part)
        elif isinstance(node, dict) and isinstance(part, str) and n == len(loc) - 1:
            path.append(part)  # a missing key: the last part names it
    return tuple(path), False


def _unmap(path: Path_, maps: dict[Path_, list[int]]) -> Path_:
    for container in LIST_UNITS:
        n = len(container)
        index = path[n] if path[:n] == container and len(path) > n else None
        if isinstance(index, int):
            return (*container, maps[container][index], *path[n + 1 :])
    return path


def _group(errors: list[Any], view: dict[str, Any], maps: dict[Path_, list[int]]) -> dict[tuple[Path_, bool], list[Any]]:
    groups: dict[tuple[Path_, bool], list[Any]] = {}
    for err in errors:
        path, is_key = _data_path(tuple(err["loc"]), view)
        groups.setdefault((_unmap(path, maps), is_key), []).append(err)
    return groups


# --- pruning ---------------------------------------------------------------------------------------
def _field_required(model: type[BaseModel], key: str | int) -> bool | None:
    """Whether `key` is a required field of `model`; None when it is no field at all."""
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info.is_required()
    return None


def _prune(data: dict[str, Any], path: Path_, is_key: bool, kind: str, broken: Broken) -> None:
    for container, model in UNITS.items():
        n = len(container)
        if path[:n] == container and len(path) > n:
            _prune_unit(data, container, path[n], path[n + 1 :], is_key, kind, model, broken)
            return
    if path:
        _prune_section(data, path, kind, broken)


def _prune_unit(
    data: dict[str, Any], container: Path_, key: str | int, rest: Path_, is_key: bool, kind: str,
    model: type[BaseModel] | None, broken: Broken,
) -> None:
    parent = _get(data, container)
    if not isinstance(parent, (dict, list)):
        return
    unit = _get(parent, (key,))
    broken.mark(container, key)
    if rest and isinstance(unit, dict) and model is not None and not is_key:
        field_name = rest[0]
        required = _field_required(model, field_name)
        if kind == "extra_forbidden" or required is False:
            unit.pop(str(field_name), None)
            return
        placeholder = UNIT_PLACEHOLDERS.get((container, str(field_name)))
        if placeholder is not None and isinstance(key, int):
            unit[str(field_name)] = placeholder(key)
            if field_name == "name":
                broken.anonymous.add((str(container[0]), key))
            return
    if isinstance(parent, list) and isinstance(key, int) and 0 <= key < len(parent):
        parent[key] = _DROPPED
    elif isinstance(parent, dict):
        parent.pop(str(key), None)


_SECTION_FLAGS: dict[Path_, str] = {("switch",): "all_ports", ("switch", "ports"): "all_ports", ("zones",): "all_zones",
                  ("addresses",): "all_addresses", ("services",): "all_services",
                  ("switch", "links"): "links"}


def _prune_section(data: dict[str, Any], path: Path_, kind: str, broken: Broken) -> None:
    path = path[:2]
    holder = _get(data, path[:-1])
    if not isinstance(holder, dict):
        return
    flag = _SECTION_FLAGS.get(path)
    if flag is not None:
        setattr(broken, flag, True)
    if kind != "extra_forbidden" and path in SECTION_PLACEHOLDERS:
        holder[str(path[-1])] = SECTION_PLACEHOLDERS[path]
    else:
        holder.pop(str(path[-1]), None)


# --- messages --------------------------------------------------------------------------------------
def where(path: Path_) -> str:
    """`firewall.rules[2].action`: a path as an operator would write it."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or "policy"


def show(value: Any) -> str:
    """A value as a message quotes it: text in quotes, YAML spellings for the rest."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "an empty value"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return str(value)[:60]


_NOUNS = {"string_type": "a string", "list_type": "a list", "int_type": "an integer", "int_parsing": "an integer",
          "bool_type": "true or false", "dict_type": "a mapping", "model_type": "a mapping",
          "model_attributes_type": "a mapping"}
_YAML11_BOOLS = {"yes", "no", "on", "off", "y", "n"}


def _int_hint(value: Any) -> str:
    if isinstance(value, str):
        if re.fullmatch(r"[-+]?0[0-9_]+", value):
            return " (no leading zeros: YAML 1.1 would read this as an octal number)"
        if re.fullmatch(r"-?[1-9][0-9]*|0", value.strip()):
            return " (a number in quotes, or with a tag, is text: write plain digits)"
        if re.fullmatch(r"[-+]?[0-9]+(:[0-5]?[0-9])+", value):
            return " (YAML 1.1 would read this as a base-60 number; here it is text)"
        if re.fullmatch(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?", value):
            return " (write a whole number in plain digits)"
    return ""


def _type_message(kind: str, value: Any, path: Path_) -> str:
    noun = _NOUNS.get(kind, "another kind of value")
    hint = ""
    if kind in ("int_type", "int_parsing"):
        hint = _int_hint(value)
    elif kind == "bool_type" and isinstance(value, str) and value.lower() in _YAML11_BOOLS:
        hint = " (YAML 1.1 spellings like yes/no/on/off are not booleans here)"
    elif kind == "list_type" and isinstance(value, str) and value:
        hint = f" (write [{value}])"
    elif kind in ("list_type", "dict_type", "model_type") and value is None and path and isinstance(path[-1], str):
        hint = " (write [] for none)" if kind == "list_type" else " (write {} for none)"
    elif kind == "string_type" and isinstance(value, (int, bool)):
        hint = f' (quote it: "{show(value)}")'
    return f"expected {noun}, got {show(value)}{hint}"


def _literal_message(err: Any, path: Path_) -> str:
    choices = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
    value = err.get("input")
    if path == ("version",):
        if isinstance(value, str) and value.strip() == "1":
            return f"expected the number 1, got the text {show(value)} (leave out the quotes)"
        return f"only version 1 of the policy language exists, got {show(value)}"
    suggestion = did_you_mean(value, choices) if isinstance(value, str) else ""
    return f"expected one of {', '.join(choices)}, got {show(value)}{suggestion}"


_PATTERNS = {
    "bridge": "is not a valid bridge name (1-15 letters, digits, _ . -)",
    "mac": "is not a MAC address (six pairs of hex digits like 02:00:00:00:00:01)",
}


def _one_message(err: Any, path: Path_) -> str:
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "literal_error":
        return _literal_message(err, path)
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}, got {show(value)}"
    if kind == "less_than_equal":
        return f"must be at most {ctx.get('le')}, got {show(value)}"
    if kind in ("too_short", "too_long"):
        if path[:2] == ("switch", "links"):
            return f"a link is a pair of ports like [lan0, wan0], got {ctx.get('actual_length')} item(s)"
        return f"expected {ctx.get('min_length', ctx.get('max_length'))} items, got {ctx.get('actual_length')}"
    if kind == "string_pattern_mismatch":
        what = _PATTERNS.get(str(path[-1]) if path else "",
                             "is not a valid name (letters, digits, _ . -; starting with a letter or _)")
        return f"{show(value)} {what}"
    if kind in _NOUNS or kind in ("int_parsing", "bool_parsing", "int_from_float"):
        return _type_message(kind.replace("parsing", "type").replace("int_from_float", "int_type"), value, path)
    return str(err.get("msg", "invalid value")).lower()


def _union_message(errors: list[Any], path: Path_) -> str:
    value = errors[0].get("input")
    if path and path[-1] in ("src", "dst"):
        return f'expected an address, a prefix, "@set", or a list of them, got {show(value)}'
    if path and path[-1] == "ports":
        return f"expected a port or a port range like 1024-65535, got {show(value)}"
    nouns = list(dict.fromkeys(_NOUNS.get(e["type"], "another value") for e in errors))
    return f"expected {' or '.join(nouns)}, got {show(value)}"


def describe(errors: list[Any], path: Path_, is_key: bool, source: SourceMap) -> tuple[Span, str]:
    """Where and what to report for the pydantic errors at one data path."""
    first = errors[0]
    kind = first["type"]
    if is_key:
        return source.span(path, key=True), f"{where(path[:-1])}: {_one_message(first, path[:-1])}"
    if kind == "extra_forbidden":
        model = _model_at(path[:-1])
        allowed = [info.alias or name for name, info in model.model_fields.items()] if model else []
        hint = did_you_mean(str(path[-1]), allowed)
        return source.span(path, key=True), f'unknown key "{path[-1]}" in {where(path[:-1])}{hint}'
    if kind == "missing":
        parent = path[:-1]
        return source.span(parent), f'{where(parent)}: missing required key "{path[-1]}"'
    if len(errors) > 1 and all(e["type"] in _NOUNS for e in errors):
        return source.span(path), f"{where(path)}: {_union_message(errors, path)}"
    return source.span(path), f"{where(path)}: {_one_message(first, path)}"


def _model_at(path: Path_) -> type[BaseModel] | None:
    if path in SECTIONS:
        return SECTIONS[path]
    for container, model in UNITS.items():
        if path[:-1] == container:
            return model
    return None
