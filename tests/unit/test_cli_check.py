"""`ovsmgr check`: text and JSON output, exit 0 when valid (warnings allowed), 1 on errors."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from ovsmgr.cli import main
from ovsmgr.cli.policy import check

ROOT = Path(__file__).resolve().parents[2]
GOOD = str(ROOT / "policies" / "seed-nat.yaml")
KEYS = {"file", "line", "column", "severity", "message"}


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


WARNED = """version: 1
switch:
  bridge: br0
  fail_mode: standalone
  ports:
    a: {ofport: 1}
    b: {ofport: 2}
  links: [[a, b]]
zones:
  lan: {ports: [a]}
  wan: {ports: [b]}
"""


def test_valid_policy_exits_0_and_says_ok() -> None:
    result = CliRunner().invoke(check, [GOOD])
    assert result.exit_code == 0
    assert result.output == f"{GOOD}: ok (1 firewall rules, 1 nat rules, 0 warnings)\n"


def test_warnings_are_printed_and_still_exit_0(tmp_path: Path) -> None:
    path = write(tmp_path, "w.yaml", WARNED)
    result = CliRunner().invoke(check, [path])
    assert result.exit_code == 0
    assert result.output.splitlines()[0] == (f"{path}:4:14: warning: fail_mode: standalone fails open: without a "
                                             "controller the bridge switches everything")


def test_errors_exit_1_and_print_file_line_column(tmp_path: Path) -> None:
    path = write(tmp_path, "e.yaml", WARNED.replace("ports: [b]", "ports: [c]"))
    result = CliRunner().invoke(check, [path])
    assert result.exit_code == 1
    assert f"{path}:11:17: error: zone \"wan\": unknown port \"c\"" in result.output


def test_json_output_is_a_list_of_diagnostics(tmp_path: Path) -> None:
    path = write(tmp_path, "e.yaml", WARNED.replace("ports: [b]", "ports: [c]"))
    result = CliRunner().invoke(check, ["-o", "json", path])
    assert result.exit_code == 1
    items = json.loads(result.stdout)
    assert isinstance(items, list) and len(items) == 3
    for item in items:
        assert set(item) == KEYS
        assert isinstance(item["line"], int) and isinstance(item["column"], int)
        assert item["file"] == path and item["severity"] in ("error", "warning")
    assert [i["severity"] for i in items] == ["warning", "warning", "error"]


def test_json_output_of_a_valid_policy(tmp_path: Path) -> None:
    result = CliRunner().invoke(check, ["--output", "json", GOOD])
    assert (result.exit_code, json.loads(result.stdout)) == (0, [])
    result = CliRunner().invoke(check, ["-o", "json", write(tmp_path, "w.yaml", WARNED)])
    assert result.exit_code == 0
    assert [i["severity"] for i in json.loads(result.stdout)] == ["warning"]


def test_a_missing_file_exits_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(check, [str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "nope.yaml:1:1: error: cannot read the file" in result.output


def test_a_rule_that_does_not_parse_is_refused_with_its_position_before_the_fleet_is_read(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["fleet", "rule", "add", str(tmp_path / "fleet.yaml"),
                                       "{name: x, from: [", "--all"])
    assert result.exit_code == 1
    assert "<rule>:2:1: error: YAML syntax" in result.output
    assert not (tmp_path / "fleet.yaml").exists()
