"""Address sets and services: each definition checked once, each reference resolved to values.

A definition's mistakes are reported where it is written, once, however many
rules use it. A reference answers with the values and whether they can be
trusted: a reference to something undefined or broken resolves to nothing and
says so, so the rule that holds it is kept out of the analysis instead of being
read as "any" (an empty match means "any" in the resolved form).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import TypeVar

from ovsmgr.policy.diagnostics import Collector, did_you_mean
from ovsmgr.policy.ir import IPNetwork, Service
from ovsmgr.policy.loader import Path_, SourceMap
from ovsmgr.policy.shape import Broken
from ovsmgr.policy.terms import (
    PORT_PROTOS,
    TermError,
    looks_like_service_literal,
    parse_prefix,
    parse_service,
)

T = TypeVar("T")
MAX_SET_NESTING = 32
"""Sets may include sets; a chain deeper than this is a mistake (and would exhaust the stack)."""


def _distinct(items: list[T]) -> tuple[T, ...]:
    """`items` without repeats, in order; most rules name one address or service, which needs no
    de-duplicating (and prefixes and services hash in Python, not in C)."""
    return tuple(items) if len(items) < 2 else tuple(dict.fromkeys(items))


class AddressBook:
    """The policy's address sets, expanded (nested `@set` included), and references to them."""

    def __init__(self, sets: dict[str, list[str]], source: SourceMap, diag: Collector, broken: Broken):
        self.defs = sets
        self.src = source
        self.diag = diag
        self.broken = broken
        self.expanded: dict[str, tuple[IPNetwork, ...]] = {}
        self.suspect: set[str] = set()
        self._prefix_cache: dict[str, IPNetwork] = {}
        for name in sets:
            self._expand(name, ())

    def _expand(self, name: str, stack: tuple[str, ...]) -> tuple[IPNetwork, ...]:
        if name in self.expanded:
            return self.expanded[name]
        out: list[IPNetwork] = []
        for i, item in enumerate(self.defs[name]):
            path = ("addresses", name, i)
            if not item.startswith("@"):
                prefix = self._prefix(item, path)
                out.extend(() if prefix is None else (prefix,))
                continue
            ref = item[1:]
            if ref == name or ref in stack:
                chain = [*stack[stack.index(ref):], name, ref] if ref in stack else [name, ref]
                self.diag.error(self.src.span(path), f'address sets include each other in a cycle: {" -> ".join(chain)}')
            elif len(stack) >= MAX_SET_NESTING:
                self.diag.error(self.src.span(path), f"address sets are nested more than {MAX_SET_NESTING} deep")
            elif ref in self.defs:
                out.extend(self._expand(ref, (*stack, name)))
                if ref not in self.suspect:
                    continue
            elif not self.broken.address_set(ref):
                self.diag.error(self.src.span(path), f'unknown address set "@{ref}"{did_you_mean(ref, self.defs, "@")}')
            self.suspect.add(name)
        self.expanded[name] = tuple(dict.fromkeys(out))
        return self.expanded[name]

    def _prefix(self, text: str, path: Path_) -> IPNetwork | None:
        if text in self._prefix_cache:
            return self._prefix_cache[text]
        try:
            prefix = parse_prefix(text)
        except TermError as exc:
            self.diag.error(self.src.span(path), str(exc))
            if path[0] == "addresses":
                self.suspect.add(str(path[1]))
            return None
        self._prefix_cache[text] = prefix
        return prefix

    def prefixes(self, items: Sequence[str], path: Path_) -> tuple[tuple[IPNetwork, ...], bool]:
        """Literal prefixes (no sets), as zone networks are written; False if any was wrong."""
        out = [self._prefix(item, (*path, i)) for i, item in enumerate(items)]
        return tuple(p for p in out if p is not None), None not in out

    def resolve(self, value: str | list[str] | None, path: Path_) -> tuple[tuple[IPNetwork, ...], bool]:
        """The prefixes `value` (an address, prefix, @set or a list of them) stands for, and whether
        they are exactly what the operator wrote (False after an error, reported or pruned)."""
        if value is None:
            return (), True
        items = [value] if isinstance(value, str) else value
        out: list[IPNetwork] = []
        ok = True
        for i, item in enumerate(items):
            at = path if isinstance(value, str) else (*path, i)
            if not item.startswith("@"):
                prefix = self._prefix(item, at)
                ok = ok and prefix is not None
                out.extend(() if prefix is None else (prefix,))
                continue
            ref = item[1:]
            if ref in self.expanded:
                out.extend(self.expanded[ref])
                ok = ok and ref not in self.suspect
                continue
            if not self.broken.address_set(ref):
                self.diag.error(self.src.span(at), f'unknown address set "@{ref}"{did_you_mean(ref, self.defs, "@")}')
            ok = False
        return _distinct(out), ok


class ServiceBook:
    """The policy's named services, parsed once, and service items of rules."""

    def __init__(self, services: dict[str, list[str]], source: SourceMap, diag: Collector, broken: Broken):
        self.src = source
        self.diag = diag
        self.broken = broken
        self.defs: dict[str, tuple[Service, ...]] = {}
        self.suspect: set[str] = set()
        self._literal_cache: dict[str, Service] = {}
        for name, items in services.items():
            parsed = [self._literal(text, ("services", name, i)) for i, text in enumerate(items)]
            if None in parsed:
                self.suspect.add(name)
            self.defs[name] = tuple(dict.fromkeys(s for s in parsed if s is not None))

    def _literal(self, text: str, path: Path_) -> Service | None:
        if text in self._literal_cache:
            return self._literal_cache[text]
        try:
            service = parse_service(text)
        except TermError as exc:
            self.diag.error(self.src.span(path), str(exc))
            return None
        self._literal_cache[text] = service
        return service

    def resolve(self, items: list[str] | None, path: Path_) -> tuple[tuple[Service, ...], bool]:
        """The services `items` stand for, and whether they are exactly what was written."""
        out: list[Service] = []
        ok = True
        for i, item in enumerate(items or ()):
            at = (*path, i)
            if item in self.defs:
                out.extend(self.defs[item])
                ok = ok and item not in self.suspect
            elif looks_like_service_literal(item):
                service = self._literal(item, at)
                ok = ok and service is not None
                out.extend(() if service is None else (service,))
            else:
                ok = False
                if not self.broken.service(item):
                    self.diag.error(self.src.span(at), f'unknown service "{item}"{self._hint(item)}')
        return _distinct(out), ok

    def _hint(self, item: str) -> str:
        head, sep, rest = item.partition("/")
        if sep:
            close = difflib.get_close_matches(head.lower(), [*PORT_PROTOS, "icmp", "icmpv6"], n=1, cutoff=0.5)
            if close:
                return f' (did you mean "{close[0]}/{rest}"?)'
        return did_you_mean(item, self.defs)
