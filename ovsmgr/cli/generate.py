"""`ovsmgr generate`: large policies for benchmarks (see `ovsmgr.policy.generate`)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import click

from ovsmgr.policy.generate import KINDS, Kind, generate_policy


@click.command()
@click.option("-n", "--rules", type=click.IntRange(min=0), required=True,
              help="Number of filler rules before the final allow rule.")
@click.option("--kind", type=click.Choice(KINDS), required=True,
              help="dport: TCP destination port rules; src: source address rules; mixed: both, shuffled.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random choices.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              default=None, help="Write the policy to this file instead of standard output.")
def generate(rules: int, kind: str, seed: int, output: Path | None) -> None:
    """Write a two-port policy with RULES rules that the benchmark traffic does not match.

    The rules come before a final rule allowing TCP and UDP from inside to
    outside, as in the iptables scaling study the benchmarks repeat.
    """
    try:
        text = generate_policy(rules, cast(Kind, kind), seed)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.FileError(str(output), exc.strerror or str(exc)) from None
    click.echo(f"{output}: {rules} {kind} rules and the final allow rule", err=True)
