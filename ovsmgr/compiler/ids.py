"""Stable numbers derived from the policy: rule ids (cookies), fingerprints (ct_mark), conj ids.

Derived from names and content, not positions, so inserting a rule does not
renumber every flow after it and a diff stays as small as the change.
"""

from __future__ import annotations

import functools
import hashlib

from ovsmgr.compiler.pipeline import CT_MARK_RULE_MASK, GROUP_ID_MAGIC, METER_IDS
from ovsmgr.policy.ir import RuleMatch


def _hash32(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


@functools.cache
def rule_id(name: str) -> int:
    """Low 32 bits of the cookie of every flow a rule makes; names are unique in a policy."""
    return _hash32(f"rule:{name}")


@functools.cache
def meter_id(name: str) -> int:
    """The id of the meter of a rule with a `limit:` (in `METER_IDS`), from its name like its cookie,
    so adding a limit to one rule renumbers no other rule's meter."""
    return METER_IDS.start + _hash32(f"meter:{name}") % len(METER_IDS)


def group_id(name: str, version: int, used: set[int]) -> int:
    """The select group of a load-balanced DNAT rule in one IP version: ovsmgr's magic in the high
    16 bits, the rule's id in the low ones, the next free one if an earlier rule took it (`used`)."""
    low = (rule_id(name) ^ (0x8000 if version == 6 else 0)) & 0xFFFF
    for step in range(1 << 16):
        value = GROUP_ID_MAGIC << 16 | ((low + step) & 0xFFFF)
        if value not in used:
            used.add(value)
            return value
    raise ValueError("more than 65,536 select groups")


def match_text(match: RuleMatch) -> str:
    return "|".join([
        match.from_zone, match.to_zone or "*", ",".join(sorted(map(str, match.src))),
        ",".join(sorted(map(str, match.dst))), ",".join(sorted(map(str, match.services))),
    ])


def fingerprint(name: str, match: RuleMatch | None, extra: str = "") -> int:
    """ct_mark value of connections a stateful allow rule lets in.

    It changes whenever the rule's name or match changes, so connections admitted
    under an old version of the rule are revalidated against the new policy.
    31 bits (ct_mark bit 31 is TRANSLATED); never 0: 0 is the mark of a connection nobody committed.
    """
    value = _hash32(f"fp:{name}|{match_text(match) if match else ''}|{extra}") & CT_MARK_RULE_MASK
    return value or 1
