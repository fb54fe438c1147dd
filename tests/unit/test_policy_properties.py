"""Whatever text or bytes it is given, the front end answers with a policy or a `PolicyError`.

Three sources of input: YAML-ish text built from the language's own tokens,
arbitrary bytes, and the example policies with random mutations (lines
deleted, duplicated, swapped; characters changed; scalars replaced by odd
values). No other exception may escape, and every diagnostic points at a real
position (line and column from 1).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ovsmgr.policy import PolicyError, ResolvedPolicy, load_policy, load_policy_text
from ovsmgr.policy.diagnostics import Diagnostic

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "policies").glob("*.yaml"))
EXAMPLE_TEXTS = [p.read_text(encoding="utf-8") for p in EXAMPLES]

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))

TOKENS = [
    "version", "switch", "bridge", "ports", "links", "zones", "addresses", "services", "firewall",
    "rules", "nat", "conntrack", "name", "from", "to", "src", "dst", "action", "allow", "drop",
    "reject", "ofport", "networks", "translate_to", "type", "snat", "dnat", "default", "lan", "wan",
    "lan0", "wan0", "@lan", "tcp/80", "udp/53", "icmp/echo-request", "10.0.0.0/8", "fd00::/8",
    "200.200.200.200", "1", "0700", "10:20", "no", "yes", "1e3", "~", "null", "true", "-", ":", ": ",
    "[", "]", "{", "}", ",", "&a", "*a", "!!int", "!foo", "<<", "---", "...", "#", "'", '"', "?",
    "|", ">", "\t", " ", "  ", "\n", "\n  ", "\n    - ", "%YAML 1.2\n", "\x00", "\ufeff", "\r\n",
]
ODD_SCALARS = [
    "0700", "10:20", "no", "yes", "on", "1e3", "~", "null", "", "[]", "{}", "-1", "0", "99999999999999999999",
    "'quoted'", '"@nope"', "*alias", "&anchor x", "!!str x", "!!python/object:os.system x", "<<",
    "300.1.1.1/33", "tcp/0", "icmp/999", "::", "0.0.0.0/0", "[a, [b, [c]]]", "{a: 1}", "x" * 300,
    "\u202e", "🙂", "@", "@@", "1-", "-1-", "a.b.c.d-a.b.c.e",
]


def _assert_sane(diagnostics: list[Diagnostic] | tuple[Diagnostic, ...]) -> None:
    for d in diagnostics:
        assert d.span.line >= 1 and d.span.column >= 1, d
        assert d.message, d


def _load(text: str) -> None:
    try:
        policy = load_policy_text(text, "fuzz.yaml")
    except PolicyError as exc:
        assert exc.diagnostics, "a PolicyError must say what is wrong"
        _assert_sane(exc.diagnostics)
    else:
        assert isinstance(policy, ResolvedPolicy)
        _assert_sane(policy.diagnostics)


@SETTINGS
@given(st.lists(st.sampled_from(TOKENS) | st.text(max_size=8), max_size=60).map("".join))
def test_yamlish_text(text: str) -> None:
    _load(text)


@SETTINGS
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("bytes") / "policy.yaml"
    path.write_bytes(data)
    try:
        policy = load_policy([path])
    except PolicyError as exc:
        _assert_sane(exc.diagnostics)
    else:
        _assert_sane(policy.diagnostics)


@st.composite
def mutated_example(draw: st.DrawFn) -> str:
    lines = draw(st.sampled_from(EXAMPLE_TEXTS)).split("\n")
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "char", "scalar", "indent"]))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "char" and lines[i]:
            k = draw(st.integers(0, len(lines[i]) - 1))
            lines[i] = lines[i][:k] + draw(st.characters()) + lines[i][k + 1 :]
        elif op == "scalar" and ":" in lines[i]:
            head = lines[i].rsplit(":", 1)[0]
            lines[i] = f"{head}: {draw(st.sampled_from(ODD_SCALARS))}"
        elif op == "indent":
            lines[i] = " " * draw(st.integers(0, 6)) + lines[i].lstrip()
    return "\n".join(lines)


@SETTINGS
@given(mutated_example())
def test_mutated_examples(text: str) -> None:
    _load(text)


def test_examples_are_there() -> None:
    assert len(EXAMPLES) >= 4
