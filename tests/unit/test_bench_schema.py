"""The committed JSON Schema of bench specs stays in step with the models, and fits bench/*.yaml."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from ovsmgr.bench.spec import SpecError
from ovsmgr.bench.specfile import SMOKE_SPEC, parse_spec
from ovsmgr.bench.specmodel import bench_json_schema
from ovsmgr.cli.bench import bench

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "schema" / "ovsmgr-bench.schema.json"
SPECS = sorted((ROOT / "bench").glob("*.yaml"))
REGENERATE = "regenerate it: ovsmgr bench schema > schema/ovsmgr-bench.schema.json"


def committed() -> dict[str, Any]:
    return json.loads(SCHEMA.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def as_an_editor_reads(text: str) -> Any:
    """The spec as a YAML editor sees it (numbers with a fraction are numbers; ovsmgr's own
    loader keeps them as text, which the models read as numbers)."""
    return yaml.safe_load(text)


def test_the_committed_schema_is_the_models() -> None:
    assert committed() == bench_json_schema(), REGENERATE


def test_ovsmgr_bench_schema_prints_exactly_the_committed_file() -> None:
    result = CliRunner().invoke(bench, ["schema"])
    assert result.exit_code == 0
    assert result.stdout == SCHEMA.read_text(encoding="utf-8"), REGENERATE


def test_the_schema_is_a_valid_json_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(committed())


@pytest.mark.parametrize("spec", [*SPECS, "smoke"], ids=lambda p: getattr(p, "name", str(p)))
def test_every_bench_spec_fits_the_schema(spec: Path | str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    text = SMOKE_SPEC if spec == "smoke" else Path(spec).read_text(encoding="utf-8")
    jsonschema.Draft202012Validator(committed()).validate(as_an_editor_reads(text))


@pytest.mark.parametrize(("change", "text"), [
    ("datapath: dpdk", "datapath: kernel"),
    ("method: updates", "method: teleport"),
    ("update_rate: 100", "update_rate: 0"),
    ("update_rate: 100", "update_rat: 100"),
    ("flows: [1000]", "flows: [0]"),
    ("flows: [1000]", "flows: []"),
    ("low: 5kpps", "low: 5 furlongs"),
    ("repetitions: 2", "repetitions: 2.5"),
])
def test_the_schema_refuses_what_the_models_refuse(change: str, text: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    source = (ROOT / "bench" / "updates.yaml").read_text(encoding="utf-8")
    assert change in source
    changed = source.replace(change, text, 1)
    with pytest.raises(SpecError):
        parse_spec(changed, "updates.yaml", ROOT / "bench")
    assert list(jsonschema.Draft202012Validator(committed()).iter_errors(as_an_editor_reads(changed)))


METHOD_KEYS = {  # docs/bench.md, "Spec files": what each method takes besides the common settings
    "sweep": {"pipelines", "baseline", "flows", "sizes", "rates", "policy_ports"},
    "ndr": {"pipelines", "baseline", "flows", "sizes", "policy_ports"},
    "flows": {"pipelines", "flows", "sizes", "establish", "measures", "rates"},
    "rules": {"systems", "rule_kinds", "rules", "flows", "sizes", "measures", "rates"},
    "tcp": {"pipelines", "baseline", "policy_ports"},
    "cps": {"pipelines", "baseline", "sizes", "policy_ports", "destinations", "nat_meter", "nat_flags"},
    "control": {"rules", "rule_kinds"},
    "updates": {"pipelines", "flows", "sizes", "policy_ports", "update_rate", "update_kind"},
    "flood": {"pipelines", "destinations", "nat_meter", "nat_flags", "rates", "stream"},
}


@pytest.mark.parametrize("method", sorted(METHOD_KEYS))
def test_each_method_takes_exactly_its_keys(method: str) -> None:
    common = {"name", "method", "datapath", "duration", "warmup", "repetitions", "probe_rate", "ndr", "traffic",
              "dpdk_ring", "nice"}
    properties = committed()["$defs"][method.capitalize()]["properties"]
    assert set(properties) - common == METHOD_KEYS[method]
