"""`ovsmgr check` and `ovsmgr schema`: the policy front end on the command line."""

from __future__ import annotations

import json
import sys

import click

from ovsmgr.cli.common import echo_json, output_option, policy_files, print_diagnostics
from ovsmgr.policy import Severity, check_policy
from ovsmgr.policy.model import policy_json_schema


@click.command()
@policy_files
@output_option
def check(files: tuple[str, ...], output: str) -> None:
    """Validate policy FILES (merged by name). Exit 0 when valid (warnings allowed), 1 on errors."""
    policy, diagnostics = check_policy(list(files))
    if output == "json":
        echo_json([d.as_dict() for d in diagnostics])
    else:
        print_diagnostics(diagnostics)
    errors = [d for d in diagnostics if d.severity is Severity.ERROR]
    if policy is None or errors:
        sys.exit(1)
    if output == "text":
        rules = len(policy.rules)
        click.echo(f"{', '.join(files)}: ok ({rules} firewall rules, {len(policy.nat)} nat rules, "
                   f"{len(diagnostics)} warnings)", err=True)


@click.command()
def schema() -> None:
    """Print the JSON Schema of the policy language (for editors and CI)."""
    click.echo(json.dumps(policy_json_schema(), indent=2, sort_keys=True))
