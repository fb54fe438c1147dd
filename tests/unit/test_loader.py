"""The strict YAML loader: values as written, spans that point at them, refusals with places."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ovsmgr.policy import PolicyError, loader
from ovsmgr.policy.diagnostics import Span
from ovsmgr.policy.loader import Document, load_file, load_text

DOC = """\
version: 1
switch:
  bridge: br0
  ports:
    lan0: {ofport: 1, interface: eth1}
    wan0:
      ofport: 2
firewall:
  rules:
    - name: lan-out
      from: lan
      services: [tcp/80, "udp/53"]
      action: allow
"""


@pytest.fixture(params=[True, False], ids=["libyaml", "pure-python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    """Run a test with libyaml's parser and with PyYAML's own: they must agree."""
    monkeypatch.setattr(loader, "USE_LIBYAML", request.param)
    yield request.param


def problems(text: str) -> list[str]:
    """Every diagnostic of loading `text`, fatal or not, as `LINE:COLUMN: MESSAGE`."""
    try:
        doc = load_text(text, "t.yaml")
    except PolicyError as exc:
        return [f"{d.span.line}:{d.span.column}: {d.message}" for d in exc.diagnostics]
    return [f"{d.span.line}:{d.span.column}: {d.message}" for d in doc.problems]


def value_of(text: str) -> object:
    doc = load_text(f"v: {text}\n", "t.yaml")
    assert not doc.problems
    return doc.data["v"]


# --- values and spans ----------------------------------------------------------------------------
def test_values(parser: bool) -> None:
    doc = load_text(DOC, "t.yaml")
    assert doc.data["switch"]["ports"]["lan0"] == {"ofport": 1, "interface": "eth1"}
    assert doc.data["firewall"]["rules"][0]["services"] == ["tcp/80", "udp/53"]
    assert doc.problems == []


def test_spans_of_values_and_keys(parser: bool) -> None:
    src = load_text(DOC, "t.yaml").source
    assert src.span(("version",)) == Span("t.yaml", 1, 10)
    assert src.span(("switch",), key=True) == Span("t.yaml", 2, 1)
    assert src.span(("switch", "bridge")) == Span("t.yaml", 3, 11)
    assert src.span(("switch", "ports", "lan0"), key=True) == Span("t.yaml", 5, 5)
    assert src.span(("switch", "ports", "lan0", "ofport")) == Span("t.yaml", 5, 20)
    assert src.span(("switch", "ports", "lan0", "interface")) == Span("t.yaml", 5, 34)
    assert src.span(("switch", "ports", "wan0", "ofport")) == Span("t.yaml", 7, 15)
    assert src.span(("firewall", "rules", 0)) == Span("t.yaml", 10, 7)
    assert src.span(("firewall", "rules", 0, "services", 0)) == Span("t.yaml", 12, 18)
    assert src.span(("firewall", "rules", 0, "services", 1)) == Span("t.yaml", 12, 26)
    assert src.span(("firewall", "rules", 0, "action"), key=True) == Span("t.yaml", 13, 7)


def test_span_of_a_missing_path_is_its_nearest_ancestor(parser: bool) -> None:
    src = load_text(DOC, "t.yaml").source
    assert src.span(("firewall", "rules", 0, "to")) == src.span(("firewall", "rules", 0))
    assert src.span(("nat", 3)) == Span("t.yaml", 1, 1)


def test_both_parsers_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    docs: list[Document] = []
    for libyaml in (True, False):
        monkeypatch.setattr(loader, "USE_LIBYAML", libyaml)
        docs.append(load_text(DOC, "t.yaml"))
    assert docs[0].data == docs[1].data
    assert docs[0].source == docs[1].source


# --- YAML 1.1 surprises stay what was written ------------------------------------------------------
@pytest.mark.parametrize("written", [
    "10:20", "1:30:00", "0700", "0o17", "0x1F", "0b101", "1_000", "1e3", "1.5", ".inf", "-.inf", ".nan",
    "no", "No", "NO", "yes", "on", "off", "y", "n", "2001-12-14", "2001-12-14t21:59:43.10-05:00",
    "+1", "=", "<<", "10.0.0.0/8", "fd00::/8", "tcp/80",
])
def test_yaml11_surprises_stay_strings(written: str, parser: bool) -> None:
    assert value_of(written) == written


@pytest.mark.parametrize(("written", "value"), [
    ("0", 0), ("7", 7), ("-1", -1), ("65535", 65535), ("true", True), ("False", False), ("TRUE", True),
    ("null", None), ("~", None), ("", None), ('"1"', "1"), ("'no'", "no"), ('"true"', "true"),
    ("|\n  text\n", "text\n"),
])
def test_the_few_plain_scalars_that_are_not_strings(written: str, value: object, parser: bool) -> None:
    assert value_of(written) == value


# --- refusals ------------------------------------------------------------------------------------------
def test_duplicate_keys_are_refused_and_the_first_kept(parser: bool) -> None:
    doc = load_text("a: 1\nb:\n  c: 2\n  c: 3\na: 4\n", "t.yaml")
    assert doc.data == {"a": 1, "b": {"c": 2}}
    assert [str(d) for d in doc.problems] == [
        't.yaml:4:3: error: duplicate key "c" (first defined at t.yaml:3:3)',
        't.yaml:5:1: error: duplicate key "a" (first defined at t.yaml:1:1)',
    ]


def test_keys_that_look_like_other_types_are_still_compared_as_written(parser: bool) -> None:
    assert problems("1: a\n'1': b\n") == ["2:1: duplicate key \"1\" (first defined at t.yaml:1:1)"]


def test_aliases_are_refused(parser: bool) -> None:
    assert problems("a: &x [1]\nb: *x\n") == ['2:4: YAML alias "*x" is not allowed in policies: write the value out']


def test_an_alias_bomb_stops_at_the_first_alias(parser: bool) -> None:
    bomb = "a: &a [1, 1, 1, 1]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))
    assert problems(bomb) == ['2:8: YAML alias "*a" is not allowed in policies: write the value out']


@pytest.mark.parametrize("tagged", ["!!int 1", "!!str x", '!!int "0700"', "!custom x", "! 5", "!!float 1e3"])
def test_explicit_tags_are_refused_and_the_value_kept_as_text(tagged: str, parser: bool) -> None:
    doc = load_text(f"v: {tagged}\n", "t.yaml")
    assert len(doc.problems) == 1
    assert "explicit YAML tag" in doc.problems[0].message
    assert doc.problems[0].span == Span("t.yaml", 1, 4)
    assert isinstance(doc.data["v"], str)


def test_merge_keys_are_refused(parser: bool) -> None:
    assert problems("a:\n  <<: {b: 1}\n  c: 2\n") == ["2:3: YAML merge keys (<<) are not allowed in policies"]


def test_complex_keys_are_refused(parser: bool) -> None:
    assert problems("? [a, b]\n: 1\nc: 2\n") == ["1:3: a mapping key must be a plain name, not a list or a mapping"]


def test_tabs_get_a_message_of_their_own(parser: bool) -> None:
    assert problems("a:\n\tb: 1\n") == ["2:1: YAML syntax: a tab character; indent with spaces (YAML does not allow tabs here)"]


@pytest.mark.parametrize(("text", "where"), [
    ("a: [1, 2\n", "2:1"), ("a: b: c\n", "1:5"), ("a: 1\n  b: 2\n", "2:4"), ('a: "x\n', "2:1"),
])
def test_syntax_errors_point_at_the_problem(text: str, where: str, parser: bool) -> None:
    [message] = problems(text)
    assert message.startswith(f"{where}: YAML syntax: ")


def test_an_unquoted_set_reference_gets_a_hint(parser: bool) -> None:
    assert problems("src: @blocklist\n") == ['1:6: YAML syntax: a value cannot start with @ unless quoted: write "@..."']


def test_a_second_document_is_refused(parser: bool) -> None:
    assert problems("a: 1\n---\nb: 2\n") == ["2:1: a policy file holds one YAML document, but a second one starts here"]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "--- # nothing\n...\n", "null\n", "~\n"])
def test_empty_files_are_refused(text: str, parser: bool) -> None:
    assert problems(text) == ["1:1: the policy file is empty"]


def test_control_characters_are_refused_with_their_place(parser: bool) -> None:
    assert problems("a: 1\nb: x\x00y\nc: \x1b\n") == [
        "2:5: character U+0000 is not allowed in a YAML file",
        "3:4: character U+001B is not allowed in a YAML file",
    ]


TOO_DEEP = f"values are nested more than {loader.MAX_DEPTH} levels deep"


@pytest.mark.parametrize(("text", "place"), [
    ("[" * 5000, "1:66"),                      # unclosed, libyaml's own limit within reach
    ("[" * 1500 + "]" * 1500, "1:66"),         # valid YAML, deeper than libyaml allows
    ("[" * 200 + "]" * 200, "1:66"),           # valid YAML that libyaml accepts
    ("[\n" * 1200, "66:1"),                    # one bracket a line
    ("v: " + "{a: " * 1200, "1:260"),          # mappings
])
def test_deep_nesting_is_refused_without_exhausting_the_stack(parser: bool, text: str,
                                                              place: str) -> None:
    """Both parsers give ovsmgr's refusal at the first value too deep, whatever depth
    libyaml itself would still accept (PyYAML 6.0.4's copy refuses more than 1,000)."""
    assert problems(text) == [f"{place}: {TOO_DEEP}"]


def test_deep_nesting_is_ours_whatever_libyaml_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """A libyaml that refuses the nesting itself, in words of its own, still gives
    ovsmgr's diagnostic; its other errors stay YAML syntax errors."""

    class RefusingParser:
        def __init__(self, text: str) -> None:
            self.text = text

        def get_event(self) -> None:
            index = self.text.index("x") if "x" in self.text else 0
            mark = yaml.Mark("t.yaml", index, 0, index, None, None)
            raise yaml.scanner.ScannerError("while scanning", mark, "some new wording", mark)

    monkeypatch.setattr(loader, "_CParser", RefusingParser)
    monkeypatch.setattr(loader, "USE_LIBYAML", True)
    assert problems("[" * 100 + "x") == [f"1:66: {TOO_DEEP}"]
    assert problems("[" * 10 + "x") == ["1:11: YAML syntax: some new wording"]


def test_a_byte_order_mark_is_fine(parser: bool) -> None:
    assert load_text("\ufeffa: 1\n", "t.yaml").data == {"a": 1}


# --- files --------------------------------------------------------------------------------------------
def test_files_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as missing:
        load_file(tmp_path / "nope.yaml")
    assert "cannot read the file" in str(missing.value)
    with pytest.raises(PolicyError) as directory:
        load_file(tmp_path)
    assert "cannot read the file" in str(directory.value)


def test_non_utf8_bytes_are_placed(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("a: 1\nb: café\n".encode("latin-1"))
    with pytest.raises(PolicyError) as exc:
        load_file(path)
    [d] = exc.value.diagnostics
    assert (d.span.line, d.span.column, d.message) == (2, 7, "not UTF-8 text (byte 0xe9)")


def test_oversized_files_are_refused_before_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "MAX_POLICY_BYTES", 100)
    path = tmp_path / "big.yaml"
    path.write_text("a: " + "x" * 200 + "\n")
    with pytest.raises(PolicyError, match="larger than 100 bytes"):
        load_file(path)
    with pytest.raises(PolicyError, match="larger than 100 bytes"):
        load_text("a: " + "x" * 200, "t.yaml")
