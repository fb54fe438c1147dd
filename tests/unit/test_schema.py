"""The committed JSON Schema (for editors and CI) stays in step with the model, and fits the examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ovsmgr.cli.policy import schema
from ovsmgr.policy.loader import load_file, load_text
from ovsmgr.policy.model import policy_json_schema

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "schema" / "ovsmgr-policy.schema.json"
EXAMPLES = sorted((ROOT / "policies").glob("*.yaml"))
REGENERATE = "regenerate it: ovsmgr schema > schema/ovsmgr-policy.schema.json"


def committed() -> dict[str, Any]:
    return json.loads(SCHEMA.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def test_the_committed_schema_is_the_models() -> None:
    assert committed() == policy_json_schema(), REGENERATE


def test_ovsmgr_schema_prints_exactly_the_committed_file() -> None:
    result = CliRunner().invoke(schema)
    assert result.exit_code == 0
    assert result.stdout == SCHEMA.read_text(encoding="utf-8"), REGENERATE


def test_the_schema_is_a_valid_json_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(committed())


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_policy_fits_the_schema(example: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator(committed()).validate(load_file(example).data)


@pytest.mark.parametrize(("change", "text"), [
    ("action: allow", "action: accept"),
    ("ofport: 1", 'ofport: "1"'),
    ("ofport: 1", "ofport: 0700"),
    ("zone: 1", "zone: 0"),
    ("version: 1", "version: 2"),
    ("bridge: br0", "brige: br0"),
])
def test_the_schema_refuses_what_the_model_refuses(change: str, text: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    source = (ROOT / "policies" / "seed-nat.yaml").read_text(encoding="utf-8")
    assert change in source
    data = load_text(source.replace(change, text, 1), "t.yaml").data
    assert list(jsonschema.Draft202012Validator(committed()).iter_errors(data))
