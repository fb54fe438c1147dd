"""The policy front end under hostile input: only `PolicyError` escapes, and memory stays bounded.

`test_policy_properties.py` feeds short text, short bytes and mutated examples
through `load_policy`. This goes further, at the YAML level and beyond it:
longer byte strings of YAML's own indicators and broken UTF-8, nesting right
at and far past the depth limit, anchors and aliases (billion laughs), tags
(including PyYAML's `!!python/object/apply`), any unicode, numbers too long
for Python's int conversion, and files far larger than the size limit; each
through both parsers (libyaml and PyYAML's own). Memory is measured with
`tracemalloc`: a refused input must be refused before it costs much more than
its own size. `fuzz/fuzz_policy.py` is the coverage-guided (atheris) harness
for the same promise; `test_atheris_harness_runs` keeps it working.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ovsmgr.policy import PolicyError, check_policy, load_policy, load_policy_text, loader
from ovsmgr.policy.diagnostics import Diagnostic
from ovsmgr.policy.loader import MAX_DEPTH, MAX_INT_DIGITS, MAX_POLICY_BYTES, load_file, load_text

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
MiB = 1024 * 1024


@pytest.fixture(params=[True, False], ids=["libyaml", "pure-python"])
def parser(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Both event parsers; hypothesis tests cannot take function-scoped fixtures, so no monkeypatch."""
    saved = loader.USE_LIBYAML
    loader.USE_LIBYAML = request.param
    try:
        yield request.param
    finally:
        loader.USE_LIBYAML = saved


def _sane(diagnostics: tuple[Diagnostic, ...] | list[Diagnostic]) -> None:
    for d in diagnostics:
        assert d.span.line >= 1 and d.span.column >= 1 and d.message, d


def only_policy_errors(text: str) -> list[str]:
    """Load `text` as a whole policy; return the error messages (empty: it is a valid policy)."""
    try:
        policy = load_policy_text(text, "fuzz.yaml")
    except PolicyError as exc:
        assert exc.diagnostics, "a PolicyError must say what is wrong"
        _sane(exc.diagnostics)
        return [d.message for d in exc.diagnostics if d.severity == "error"]
    _sane(policy.diagnostics)
    return []


def peak_bytes(action: Callable[[], Any]) -> int:
    """Peak of Python allocations while `action` runs (what it was given is not counted)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def refuses(action: Callable[[], Any], *needles: str) -> str:
    """`action` raises PolicyError whose message holds one of `needles`."""
    with pytest.raises(PolicyError) as caught:
        action()
    assert any(n in str(caught.value) for n in needles), str(caught.value)
    return str(caught.value)


# --- bytes and text ------------------------------------------------------------------------------
YAML_BYTES = [
    b"-", b"- ", b":", b": ", b"?", b"? ", b",", b"[", b"]", b"{", b"}", b"#", b"&a ", b"*a", b"!", b"!!str ",
    b"|", b">", b"'", b'"', b"%", b"@", b"`", b"<<", b"---", b"...", b"\n", b"\r\n", b"\r", b"\t", b"  ",
    b"\x00", b"\x7f", b"\xc2\x85", b"\xe2\x80\xa8", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\xc3",
    b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"version", b"switch", b"bridge", b"rules", b"1",
    b"0x10", b"1e3", b"no", b"~", b"9" * 700,
]


@SETTINGS
@given(st.lists(st.sampled_from(YAML_BYTES) | st.binary(max_size=16), max_size=300).map(b"".join))
def test_any_bytes_as_a_file(parser: bool, tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("f") / "policy.yaml"
    path.write_bytes(data)
    try:
        load_policy([path])
    except PolicyError as exc:
        _sane(exc.diagnostics)
    _, diagnostics = check_policy([path])
    _sane(diagnostics)


@SETTINGS
@given(st.text(max_size=2000))
def test_any_unicode_text(parser: bool, text: str) -> None:
    """Any code point, surrogates, controls, bidi overrides and line separators included."""
    only_policy_errors(text)


def test_unicode_is_read_not_trusted(parser: bool) -> None:
    # A byte-order mark and the YAML 1.1 line breaks are text, never a way round the checks.
    assert only_policy_errors("\ufeffversion: 1\nswitch: {bridge: br0}\n") == []
    assert any("bridge" in m for m in only_policy_errors("version: 1\nswitch: {bridge: \"br\u202e0\"}\n"))
    refuses(lambda: load_text("v: \ud800\n", "x"), "U+D800")
    refuses(lambda: load_text("v: \x1b[31m\n", "x"), "U+001B")


# --- nesting ---------------------------------------------------------------------------------------
def nested(depth: int, kinds: str, block: bool) -> str:
    """A value nested `depth` levels below the top mapping's value, from a string of 'l'/'m'."""
    if block:
        lines, indent = ["top:"], 2
        for i in range(depth):
            kind = kinds[i % len(kinds)]
            lines.append(" " * indent + ("-" if kind == "l" else "k:"))
            indent += 2
        lines[-1] += " leaf"
        return "\n".join(lines) + "\n"
    opening = "".join("[" if kinds[i % len(kinds)] == "l" else "{k: " for i in range(depth))
    closing = "".join("]" if kinds[i % len(kinds)] == "l" else "}" for i in reversed(range(depth)))
    return f"top: {opening}leaf{closing}\n"


@SETTINGS
@given(depth=st.integers(0, 3 * MAX_DEPTH), kinds=st.text("lm", min_size=1, max_size=5), block=st.booleans())
def test_nesting_limit_is_exact(parser: bool, depth: int, kinds: str, block: bool) -> None:
    """`top` is at depth 1, so the leaf is at depth depth+1: refused exactly above MAX_DEPTH."""
    text = nested(depth, kinds, block)
    if depth + 1 <= MAX_DEPTH:
        load_text(text, "deep.yaml")
    else:
        refuses(lambda: load_text(text, "deep.yaml"), f"nested more than {MAX_DEPTH} levels")
    only_policy_errors(text)


@pytest.mark.parametrize("opener", ["[", "{a: ", "- ", "? "])
def test_ten_megabytes_of_nesting_is_refused_at_once(parser: bool, opener: str) -> None:
    text = "v: " + opener * (10 * MiB // len(opener))
    peak = peak_bytes(lambda: refuses(lambda: load_text(text, "deep.yaml"), "nested more than", "YAML syntax"))
    # libyaml gets the text as UTF-8 (one copy of it); nothing grows with the depth itself.
    assert peak < len(text) + 4 * MiB, f"{peak / MiB:.1f} MiB for {len(text) / MiB:.0f} MiB of nesting"


# --- anchors, aliases, merge keys ------------------------------------------------------------------
def billion_laughs(levels: int = 10) -> str:
    lines = ['a0: &a0 "lol"']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_at_the_first_alias(parser: bool) -> None:
    text = billion_laughs()
    peak = peak_bytes(lambda: refuses(lambda: load_text(text, "lol.yaml"), 'YAML alias "*a0"'))
    assert peak < MiB, f"{peak / MiB:.1f} MiB"


@st.composite
def tree_with_anchors(draw: st.DrawFn) -> tuple[str, bool]:
    """A flow-style document where nodes may carry anchors and leaves may be aliases."""
    anchors: list[str] = []
    used_alias = False

    def node(depth: int) -> str:
        nonlocal used_alias
        prefix = ""
        if draw(st.booleans()):
            name = f"n{len(anchors)}"
            anchors.append(name)
            prefix = f"&{name} "
        if depth < 4 and draw(st.booleans()):
            items = [node(depth + 1) for _ in range(draw(st.integers(0, 3)))]
            if draw(st.booleans()):
                return prefix + "[" + ", ".join(items) + "]"
            return prefix + "{" + ", ".join(f"k{i}: {item}" for i, item in enumerate(items)) + "}"
        if anchors and not prefix and draw(st.booleans()):
            used_alias = True
            return "*" + draw(st.sampled_from(anchors))
        return prefix + draw(st.sampled_from(["1", "x", "'q'", "tcp/80", "~"]))

    return f"v: {node(0)}\n", used_alias


@SETTINGS
@given(tree_with_anchors())
def test_any_alias_is_refused_and_anchors_alone_are_harmless(parser: bool, case: tuple[str, bool]) -> None:
    text, has_alias = case
    if has_alias:
        refuses(lambda: load_text(text, "a.yaml"), "YAML alias")
    else:
        load_text(text, "a.yaml")
    only_policy_errors(text)


def test_merge_keys_are_refused(parser: bool) -> None:
    assert any("merge keys" in m or "alias" in m for m in only_policy_errors("a: &x {b: 1}\nc: {<<: *x}\n"))
    assert any("merge keys" in m for m in only_policy_errors("c: {<<: {b: 1}}\n"))


# --- tags -------------------------------------------------------------------------------------------
TAGS = ["!!str", "!!int", "!!float", "!!bool", "!!null", "!!binary", "!!timestamp", "!!set", "!!omap", "!!map",
        "!!seq", "!local", "!<tag:yaml.org,2002:str>", "!e!x", "!!python/object/apply:os.system",
        "!!python/name:os.system", "!!python/object/new:subprocess.Popen"]


@SETTINGS
@given(tag=st.sampled_from(TAGS), where=st.sampled_from(["value", "key", "list", "map", "item"]))
def test_every_explicit_tag_is_refused(parser: bool, tag: str, where: str) -> None:
    body = {
        "value": f"v: {tag} 1", "key": f"{tag} k: 1", "list": f"v: {tag} [1]", "map": f"v: {tag} {{a: 1}}",
        "item": f"v:\n  - {tag} x",
    }[where]
    text = "%TAG !e! tag:example.com,2000:\n---\n" + body + "\n"
    assert any("explicit YAML tag" in m for m in only_policy_errors(text)), text


def test_python_tags_never_run_anything(parser: bool, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f'version: !!python/object/apply:os.system ["touch {marker}"]\n'
    assert any("explicit YAML tag" in m for m in only_policy_errors(text))
    assert not marker.exists()


# --- numbers ---------------------------------------------------------------------------------------
@SETTINGS
@given(digits=st.integers(1, 3 * MAX_INT_DIGITS), sign=st.sampled_from(["", "-"]),
       where=st.sampled_from(["version: {n}", "switch: {{bridge: br0, ports: {{p: {{ofport: {n}}}}}}}",
                              "conntrack: {{max_connections: {n}}}"]))
def test_long_numbers_are_policy_errors(parser: bool, digits: int, sign: str, where: str) -> None:
    """Python refuses int() of more than 4,300 digits with ValueError; that must never escape."""
    text = where.format(n=sign + "9" * digits) + "\n"
    errors = only_policy_errors(text)
    if digits > MAX_INT_DIGITS:
        assert f"a number of {digits} digits" in errors[0], errors


# --- size ------------------------------------------------------------------------------------------
def test_a_file_over_the_limit_is_refused_without_reading_it(tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as stream:  # sparse: 4 GiB on paper, nothing on disk
        stream.truncate(4 * 1024 * MiB)
    peak = peak_bytes(lambda: refuses(lambda: load_file(huge), f"larger than {MAX_POLICY_BYTES} bytes"))
    assert peak < MAX_POLICY_BYTES + 2 * MiB, f"{peak / MiB:.1f} MiB to refuse a 4 GiB file"


def test_an_endless_file_is_refused() -> None:
    peak = peak_bytes(lambda: refuses(lambda: load_policy(["/dev/zero"]), "larger than"))
    assert peak < MAX_POLICY_BYTES + 2 * MiB


def test_just_over_the_limit_is_refused_and_just_under_is_read(tmp_path: Path) -> None:
    padding = "#" + "x" * 1023 + "\n"
    body = "version: 1\nswitch: {bridge: br0}\n"
    under = tmp_path / "under.yaml"
    under.write_text(body + padding * ((MAX_POLICY_BYTES - len(body)) // len(padding)))
    assert MAX_POLICY_BYTES - len(padding) < under.stat().st_size <= MAX_POLICY_BYTES
    load_policy([under])
    over = tmp_path / "over.yaml"
    over.write_bytes(under.read_bytes() + b"#" * (MAX_POLICY_BYTES + 1 - under.stat().st_size))
    refuses(lambda: load_policy([over]), "larger than")
    refuses(lambda: load_policy_text(over.read_text(), "over.yaml"), "larger than")


def test_dense_files_stop_at_the_value_limit(parser: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """16 MiB of `[0,0,0,...` is 8 million values; spans for each once took gigabytes and minutes.
    Scaled down here (the real limit, 2,000,000, is measured in docs/reliability.md)."""
    monkeypatch.setattr(loader, "MAX_VALUES", 20_000)
    text = "v: [" + "0," * 200_000 + "0]\n"
    peak = peak_bytes(lambda: refuses(lambda: load_text(text, "dense.yaml"), "more than 20000 values"))
    assert peak < len(text) + 20_000 * 1024, f"{peak / MiB:.1f} MiB"


def test_the_largest_generated_policy_is_far_below_the_value_limit() -> None:
    from ovsmgr.policy.generate import generate_policy

    text = generate_policy(2_000, "mixed", 1)
    document = load_text(text, "gen.yaml")
    per_rule = len(document.source.values) / 2_000
    # 91,072 rules fit in MAX_POLICY_BYTES; at this density they stay well inside MAX_VALUES.
    assert per_rule * 100_000 < loader.MAX_VALUES, per_rule


# --- the atheris harness ---------------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed")
def test_atheris_harness_runs(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for seed in [*ROOT.glob("policies/*.yaml"), *sorted(ROOT.glob("tests/corpus/*.yaml"))[:20]]:
        (corpus / seed.name).write_bytes(seed.read_bytes())
    proc = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "fuzz_policy.py"), "-runs=1000", "-max_len=8192",
         f"-dict={ROOT / 'fuzz' / 'policy.dict'}", str(corpus)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONHASHSEED": "0"}, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done 1000 runs" in proc.stderr, proc.stderr[-3000:]
