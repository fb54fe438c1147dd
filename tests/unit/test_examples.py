"""Every example policy checks clean on its own: no errors and no warnings.

Several files given together merge into one policy, so each example is checked alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ovsmgr.cli.policy import check
from ovsmgr.policy import check_policy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "policies").glob("*.yaml"))


def test_the_examples_are_there() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"seed-firewall.yaml", "seed-nat.yaml", "gateway.yaml", "microseg.yaml"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_checks_clean_alone(example: Path) -> None:
    policy, diagnostics = check_policy([example])
    assert policy is not None, "\n".join(map(str, diagnostics))
    assert diagnostics == [], "\n".join(map(str, diagnostics))
    result = CliRunner().invoke(check, [str(example)])
    assert result.exit_code == 0, result.output
    assert result.output.endswith("0 warnings)\n")


def test_microseg_segments_many_zones() -> None:
    policy, _ = check_policy([ROOT / "policies" / "microseg.yaml"])
    assert policy is not None
    assert policy.forwarding == "normal" and not policy.nat
    assert len(policy.zones) >= 6
    assert all(len(z.ports) == 1 and z.networks for z in policy.zones.values())
    assert len(policy.model.addresses) >= 3 and len(policy.model.services) >= 3
