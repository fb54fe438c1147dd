"""Generated benchmark policies: the right shape, clean, and never matching the benchmark traffic."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from click.testing import CliRunner

from ovsmgr.cli.generate import generate
from ovsmgr.policy import load_policy_text
from ovsmgr.policy.generate import (
    FILLER_PORTS,
    FILLER_SOURCES,
    MAX_DPORT_RULES,
    generate_policy,
    one_rule_changed,
)
from ovsmgr.policy.ir import RuleMatch, Service


@pytest.mark.parametrize("kind", ["dport", "src", "mixed"])
def test_generated_policies_check_clean_and_have_the_right_shape(kind: str) -> None:
    policy = load_policy_text(generate_policy(400, kind), f"{kind}.yaml")  # type: ignore[arg-type]
    assert policy.diagnostics == ()
    assert {n: p.ofport for n, p in policy.ports.items()} == {"inside": 1, "outside": 2}
    assert policy.links == {"inside": "outside", "outside": "inside"}
    assert set(policy.zones) == {"inside", "outside"}
    *fillers, last = policy.rules
    assert len(fillers) == 400
    assert (last.action, last.match) == ("allow", RuleMatch("inside", "outside", (), (), (Service("tcp"), Service("udp"))))
    dports = [r for r in fillers if r.match.services]
    sources = [r for r in fillers if r.match.src]
    assert len(dports) + len(sources) == 400
    assert {"dport": (400, 0), "src": (0, 400), "mixed": (200, 200)}[kind] == (len(dports), len(sources))


@pytest.mark.parametrize("kind", ["dport", "src", "mixed"])
def test_filler_rules_never_match_the_benchmark_traffic(kind: str) -> None:
    """Benchmark traffic: inside to outside, TCP or UDP to ports below 20000, from a lab address."""
    policy = load_policy_text(generate_policy(300, kind, seed=7), "g.yaml")  # type: ignore[arg-type]
    for rule in policy.rules[:-1]:
        assert rule.action == "drop" and (rule.match.from_zone, rule.match.to_zone) == ("inside", "outside")
        for service in rule.match.services:
            assert service.ports is not None and service.ports[0] in FILLER_PORTS
        for prefix in rule.match.src:
            assert prefix.subnet_of(FILLER_SOURCES) and prefix.prefixlen == 32
        assert not ipaddress.ip_network("10.0.0.0/8").overlaps(FILLER_SOURCES)


def test_the_seed_decides_and_the_same_seed_repeats() -> None:
    assert generate_policy(50, "mixed", seed=1) == generate_policy(50, "mixed", seed=1)
    assert generate_policy(50, "mixed", seed=1) != generate_policy(50, "mixed", seed=2)


def test_zero_rules_leave_only_the_allow_rule() -> None:
    assert [r.name for r in load_policy_text(generate_policy(0, "src")).rules] == ["allow-benchmark"]


def test_more_dport_rules_than_tcp_ports_use_udp_ports_too() -> None:
    text = generate_policy(len(FILLER_PORTS) + 10, "dport")
    rule_lines = [line for line in text.splitlines() if "drop-" in line]
    assert len(rule_lines) == len(set(rule_lines)) == len(FILLER_PORTS) + 10
    assert sum("udp/" in line for line in rule_lines) == 10
    with pytest.raises(ValueError, match="at most"):
        generate_policy(MAX_DPORT_RULES + 1, "dport")
    with pytest.raises(ValueError, match="kind must be"):
        generate_policy(1, "sport")  # type: ignore[arg-type]


def test_generate_command_writes_to_stdout_or_a_file(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(generate, ["--rules", "20", "--kind", "mixed", "--seed", "3"])
    assert result.exit_code == 0
    assert result.stdout == generate_policy(20, "mixed", seed=3)
    out = tmp_path / "big.yaml"
    result = runner.invoke(generate, ["--rules", "20", "--kind", "src", "-o", str(out)])
    assert result.exit_code == 0
    assert out.read_text() == generate_policy(20, "src")


@pytest.mark.parametrize("args", [["--rules", "5", "--kind", "sport"], ["--rules", "-1", "--kind", "src"],
                                  ["--kind", "src"], ["--rules", str(MAX_DPORT_RULES + 1), "--kind", "dport"]])
def test_generate_command_refuses_bad_arguments(args: list[str]) -> None:
    assert CliRunner().invoke(generate, args).exit_code == 2


def test_one_rule_changed_changes_one_rule_and_stays_clean() -> None:
    text = generate_policy(200, "mixed")
    changed = one_rule_changed(text)
    before, after = load_policy_text(text, "a.yaml"), load_policy_text(changed, "b.yaml")
    assert after.diagnostics == ()
    differ = [(a.name, a.match, b.match) for a, b in zip(before.rules, after.rules, strict=True)
              if (a.name, a.match, a.action) != (b.name, b.match, b.action)]
    assert len(differ) == 1, differ

