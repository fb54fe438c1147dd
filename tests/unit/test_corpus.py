"""The corpus of broken policies: each file says, on its first line, what `ovsmgr check` reports.

Header of a case (`tests/corpus/NAME.yaml`):

    # expect: LINE:COLUMN: SEVERITY: MESSAGE[ | LINE:COLUMN: SEVERITY: MESSAGE ...]
    # with: parts/OTHER.yaml          (optional: files merged before this one)

An expectation may name another file (`parts/base.yaml:3:3: error: ...`); the
message is a substring of the diagnostic's. The expectations are exact: every
diagnostic must be expected and every expectation met. The cases run from
inside the corpus directory, so messages that name places read
`(also at parts/base.yaml:10:3)`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from ovsmgr.cli.policy import check
from ovsmgr.policy import Diagnostic, check_policy

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
CASES = sorted(p.name for p in CORPUS.glob("*.yaml"))
EXPECT = re.compile(
    r"^(?:(?P<file>[^:|]+\.yaml):)?(?P<line>\d+):(?P<column>\d+): (?P<severity>error|warning): (?P<message>.+)$"
)


@dataclass(frozen=True)
class Expected:
    file: str
    line: int
    column: int
    severity: str
    message: str

    def matches(self, d: Diagnostic) -> bool:
        return (d.span.file, d.span.line, d.span.column, d.severity.value) == (
            self.file, self.line, self.column, self.severity) and self.message in d.message

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.severity}: {self.message}"


def read_case(name: str) -> tuple[list[Expected], list[str]]:
    """The expectations of a case and the files merged before it."""
    lines = (CORPUS / name).read_bytes().decode("utf-8").split("\n")
    assert lines[0].startswith("# expect: "), f"{name}: the first line must be '# expect: ...'"
    expected = []
    for item in lines[0].removeprefix("# expect: ").split(" | "):
        m = EXPECT.match(item.strip())
        assert m, f"{name}: cannot read expectation {item!r}"
        expected.append(Expected(m["file"] or name, int(m["line"]), int(m["column"]), m["severity"],
                                 m["message"]))
    with_files = [line.removeprefix("# with:").strip() for line in lines[1:3] if line.startswith("# with:")]
    return expected, with_files


def test_the_corpus_holds_enough_distinct_mistakes() -> None:
    errors = {name for name in CASES if any(e.severity == "error" for e in read_case(name)[0])}
    assert len(errors) >= 35
    messages = [e.message for name in CASES for e in read_case(name)[0]]
    assert len(set(messages)) >= 35


@pytest.mark.parametrize("name", CASES)
def test_case_reports_exactly_what_it_declares(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CORPUS)
    expected, with_files = read_case(name)
    policy, diagnostics = check_policy([*with_files, name])
    unexpected = list(diagnostics)
    for want in expected:
        found = next((d for d in unexpected if want.matches(d)), None)
        assert found is not None, f"missing: {want}\ngot:\n" + "\n".join(map(str, diagnostics))
        unexpected.remove(found)
    assert not unexpected, "not declared:\n" + "\n".join(map(str, unexpected))
    has_errors = any(e.severity == "error" for e in expected)
    assert (policy is None) == has_errors


@pytest.mark.parametrize("name", CASES)
def test_check_prints_file_line_column_and_exits_1_on_errors(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CORPUS)
    expected, with_files = read_case(name)
    result = CliRunner().invoke(check, [*with_files, name])
    printed = result.output.splitlines()
    for want in expected:
        prefix = f"{want.file}:{want.line}:{want.column}: {want.severity}: "
        assert any(line.startswith(prefix) and want.message in line for line in printed), (
            f"{prefix}{want.message} not in:\n{result.output}")
    assert result.exit_code == (1 if any(e.severity == "error" for e in expected) else 0), result.output


@pytest.mark.parametrize("name", ["undefined-zone.yaml", "many-mistakes.yaml", "merge-duplicate-zone.yaml"])
def test_check_json_lists_the_same_diagnostics(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CORPUS)
    expected, with_files = read_case(name)
    result = CliRunner().invoke(check, ["-o", "json", *with_files, name])
    assert result.exit_code == 1
    items = json.loads(result.stdout)
    assert [(i["file"], i["line"], i["column"], i["severity"]) for i in items] == [
        (e.file, e.line, e.column, e.severity) for e in expected]
    assert all(e.message in i["message"] for i, e in zip(items, expected, strict=True))
