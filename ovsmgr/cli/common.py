"""Pieces every subcommand shares: policy loading with diagnostics, output formats."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from ovsmgr.policy import Diagnostic, PolicyError, ResolvedPolicy, load_policy

policy_files = click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
output_option = click.option(
    "-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="Output format.",
)


def print_diagnostics(diagnostics: Sequence[Diagnostic]) -> None:
    for item in diagnostics:
        click.echo(str(item), err=True)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"ovsmgr: error: {message}", err=True)
    sys.exit(code)


def load_or_exit(files: Sequence[str]) -> ResolvedPolicy:
    """Load the policy, print its warnings; on errors print every diagnostic and exit 1."""
    try:
        policy = load_policy(list(files))
    except PolicyError as exc:
        print_diagnostics(exc.diagnostics)
        sys.exit(1)
    print_diagnostics(policy.diagnostics)
    return policy


def rule_or_exit(text: str) -> Any:
    """A firewall rule given on the command line (YAML flow style or JSON), read with the policy
    files' strict loader; on errors print them and exit 1. Validated where it is applied."""
    from ovsmgr.policy.loader import load_text

    try:
        return load_text(text, "<rule>").data
    except PolicyError as exc:
        print_diagnostics(exc.diagnostics)
        sys.exit(1)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))
