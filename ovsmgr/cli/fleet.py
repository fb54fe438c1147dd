"""`ovsmgr fleet plan|apply|status FLEET.yaml`: many switches from one fleet file (docs/fleet.md)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from ovsmgr.cli.common import echo_json, fail, output_option, print_diagnostics
from ovsmgr.policy import PolicyError, ResolvedPolicy

F = TypeVar("F", bound=Callable[..., Any])
fleet_file = click.argument("fleet_path", metavar="FLEET.yaml", type=click.Path(dir_okay=False))


def _loaded(fleet_path: str, with_policies: bool = True) -> tuple[Any, dict[str, ResolvedPolicy]]:
    """The fleet file and every switch's policy, all validated; on any error the diagnostics, exit 1
    (nothing contacted, nothing written). TLS is set up for the process when the file has tls:."""
    from ovsmgr.fleet.fleetfile import load_fleet, load_policies
    from ovsmgr.southbound.tls import TlsError, configure

    try:
        fleet = load_fleet(fleet_path)
        policies = load_policies(fleet) if with_policies else {}
    except PolicyError as exc:
        print_diagnostics(exc.diagnostics)
        fail(f"{fleet_path}: nothing was changed on any switch")
    for policy in policies.values():
        print_diagnostics(policy.diagnostics)
    if fleet.tls is not None:
        try:
            configure(fleet.tls)
        except TlsError as exc:
            fail(str(exc))
    return fleet, policies


def _store(fleet: Any, **kwargs: Any) -> Any:
    from ovsmgr.fleet.store import FleetStore

    if not fleet.store:
        fail(f"{fleet.path}: no store: (the fleet's clustered OVSDB members, ssl:HOST:PORT)")
    return FleetStore(fleet.store, **kwargs)


def store_errors(func: F) -> F:
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ovsmgr.fleet.state import StoreError
        from ovsmgr.fleet.targets import FleetError

        try:
            return func(*args, **kwargs)
        except (StoreError, FleetError) as exc:
            fail(str(exc))
    return wrapper  # type: ignore[return-value]


@click.group()
def fleet() -> None:
    """Many switches from one fleet file, their state in a clustered OVSDB store."""


@fleet.command()
@fleet_file
@output_option
@store_errors
def plan(fleet_path: str, output: str) -> None:
    """What applying FLEET.yaml would change, switch by switch. Exit 0: nothing; 2: changes; 1: error."""
    from ovsmgr.fleet.rollout import plan_fleet

    fleet_spec, policies = _loaded(fleet_path)
    plans = plan_fleet(fleet_spec, policies)
    if output == "json":
        echo_json([{"switch": p.name, "error": p.error, "changes": p.plan.counts() if p.plan else None}
                   for p in plans])
    for p in plans if output == "text" else ():
        if p.plan is None:
            click.echo(f"{p.name}: ERROR: {p.error}")
        else:
            c = p.plan.counts()
            click.echo(f"{p.name}: " + ("no changes" if p.plan.empty else
                                        f"{c['add']} to add, {c['change']} to change, {c['delete']} to remove"))
    if any(p.plan is None for p in plans):
        sys.exit(1)
    sys.exit(0 if all(p.plan is not None and p.plan.empty for p in plans) else 2)


@fleet.command()
@fleet_file
@output_option
@store_errors
def apply(fleet_path: str, output: str) -> None:
    """Write a new generation of FLEET.yaml to the store and roll it out: canaries first, then
    batches; stops at the first failure unless rollout.stop_on_failure is false. Exit 1 if any
    switch failed or was not reached."""
    from ovsmgr.fleet.rollout import ROLLOUT_LOCK, Outcome, run_rollout

    fleet_spec, policies = _loaded(fleet_path)

    def report(o: Outcome) -> None:
        if output == "text":
            click.echo(f"{o.name}: applied ({o.flows} flows, {o.seconds:.2f} s)" if o.error is None
                       else f"{o.name}: FAILED: {o.error}")

    with _store(fleet_spec, lock=ROLLOUT_LOCK) as store:
        result = run_rollout(fleet_spec, policies, store, report)
    if output == "json":
        echo_json({"generation": result.generation, "stopped_at": result.stopped_at,
                   "not_reached": list(result.not_reached),
                   "switches": [{"switch": o.name, "error": o.error, "flows": o.flows,
                                 "seconds": round(o.seconds, 3)} for o in result.outcomes]})
    elif result.stopped_at:
        click.echo(f"Generation {result.generation}: stopped at {result.stopped_at}; not reached: "
                   f"{', '.join(result.not_reached) or 'none'} (they keep their generation).")
    else:
        applied = sum(o.error is None for o in result.outcomes)
        click.echo(f"Generation {result.generation}: applied to {applied} of {len(result.outcomes)} switches.")
    sys.exit(0 if result.ok else 1)


@fleet.command()
@fleet_file
@output_option
@store_errors
def status(fleet_path: str, output: str) -> None:
    """Per switch: desired and applied generation, connected, drifted, and why not in line."""
    from ovsmgr.fleet.status import fleet_status

    fleet_spec, _ = _loaded(fleet_path, with_policies=False)
    with _store(fleet_spec) as store:
        entries = fleet_status(fleet_spec, store)
    if output == "json":
        echo_json(entries)
        return
    for e in entries:
        line = (f"{e['switch']}: generation {e['applied_generation']} of {e['desired_generation']}, "
                f"{'connected' if e['connected'] else 'NOT connected'}{', DRIFTED' if e['drifted'] else ''}")
        click.echo(line + (f": {e['error']}" if e["error"] else ""))
