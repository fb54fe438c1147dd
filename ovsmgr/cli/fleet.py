"""`ovsmgr fleet plan|apply|status FLEET.yaml`: many switches from one fleet file (docs/fleet.md)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from ovsmgr.cli.common import echo_json, fail, output_option, print_diagnostics, rule_or_exit
from ovsmgr.cli.fleet_lab import fleet_lab
from ovsmgr.policy import PolicyError, ResolvedPolicy

F = TypeVar("F", bound=Callable[..., Any])
fleet_file = click.argument("fleet_path", metavar="FLEET.yaml", type=click.Path(dir_okay=False))


def validated(fleet_path: str, nothing_done: str = "nothing was changed on any switch",
              with_policies: bool = True) -> tuple[Any, dict[str, ResolvedPolicy]]:
    """The fleet file and every switch's policy, all validated; on any error the diagnostics and
    `FLEET: nothing_done`, exit 1."""
    from ovsmgr.fleet.fleetfile import load_fleet, load_policies

    try:
        fleet = load_fleet(fleet_path)
        policies = load_policies(fleet) if with_policies else {}
    except PolicyError as exc:
        print_diagnostics(exc.diagnostics)
        fail(f"{fleet_path}: {nothing_done}")
    for policy in policies.values():
        print_diagnostics(policy.diagnostics)
    return fleet, policies


def _loaded(fleet_path: str, with_policies: bool = True) -> tuple[Any, dict[str, ResolvedPolicy]]:
    """The fleet file and every switch's policy, all validated; on any error the diagnostics, exit 1
    (nothing contacted, nothing written). TLS is set up for the process when the file has tls:."""
    from ovsmgr.southbound.tls import TlsError, configure

    fleet, policies = validated(fleet_path, with_policies=with_policies)
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


fleet.add_command(fleet_lab)


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
                f"{'connected' if e['connected'] else 'NOT connected'}{', DRIFTED' if e['drifted'] else ''}"
                f"{', served by ' + e['served_by'] if e['served_by'] else ''}")
        click.echo(line + (f": {e['error']}" if e["error"] else ""))


# --- runtime changes through the store ------------------------------------------------------------------
def switch_choice(func: F) -> F:
    func = click.option("--all", "everyone", is_flag=True,
                        help="Every switch of the fleet that controllers serve.")(func)
    return click.option("--switch", "switches", multiple=True, metavar="NAME",
                        help="A switch to change (repeat for several).")(func)


def _runtime_change(fleet_path: str, switches: tuple[str, ...], everyone: bool, change: Any, what: str) -> None:
    """Validate the change for every switch named, write it to the store in one transaction, and
    wait until the active fleet controller applied it to each (exit 1 if one did not)."""
    from ovsmgr.controller.runtime import ChangeError
    from ovsmgr.fleet.rollout import await_controllers
    from ovsmgr.fleet.runtime import plan_change, targets

    if switches and everyone:
        fail("--switch or --all, not both")
    fleet_spec, _ = _loaded(fleet_path, with_policies=False)
    names = targets(fleet_spec, switches, everyone)
    with _store(fleet_spec) as store:
        state = store.state()
        try:
            policies = plan_change(state, names, change)
        except ChangeError as exc:
            for line in exc.diagnostics:
                click.echo(line, err=True)
            fail(f"{what}: refused, no switch changed")
        generation = store.release_policies(state.generation, policies)
        outcomes = await_controllers(store, names, generation, fleet_spec.rollout.timeout)
    for o in outcomes:
        click.echo(f"{o.name}: {what}, generation {generation}" if o.error is None else f"{o.name}: FAILED: {o.error}")
    sys.exit(0 if all(o.error is None for o in outcomes) else 1)


@fleet.group("set")
def fleet_set() -> None:
    """Change address-set members on fleet switches (through the store; kept across fleet apply)."""


@fleet_set.command("add")
@fleet_file
@click.argument("name")
@click.argument("addresses", nargs=-1, required=True)
@switch_choice
@store_errors
def fleet_set_add(fleet_path: str, name: str, addresses: tuple[str, ...], switches: tuple[str, ...],
                  everyone: bool) -> None:
    """Add ADDRESSES to set NAME on the switches chosen."""
    from ovsmgr.fleet.runtime import set_members

    _runtime_change(fleet_path, switches, everyone, set_members(name, list(addresses), []),
                    f"{name} += {' '.join(addresses)}")


@fleet_set.command("remove")
@fleet_file
@click.argument("name")
@click.argument("addresses", nargs=-1, required=True)
@switch_choice
@store_errors
def fleet_set_remove(fleet_path: str, name: str, addresses: tuple[str, ...], switches: tuple[str, ...],
                     everyone: bool) -> None:
    """Remove ADDRESSES from set NAME on the switches chosen."""
    from ovsmgr.fleet.runtime import set_members

    _runtime_change(fleet_path, switches, everyone, set_members(name, [], list(addresses)),
                    f"{name} -= {' '.join(addresses)}")


@fleet.group("rule")
def fleet_rule() -> None:
    """Add, remove, enable or disable firewall rules on fleet switches (through the store)."""


@fleet_rule.command("add")
@fleet_file
@click.argument("rule")
@click.option("--before", default=None, help="Place it before this rule (default: last).")
@click.option("--after", default=None, help="Place it after this rule.")
@switch_choice
@store_errors
def fleet_rule_add(fleet_path: str, rule: str, before: str | None, after: str | None, switches: tuple[str, ...],
                   everyone: bool) -> None:
    """Add RULE, a firewall rule as in the policy files (YAML flow style or JSON)."""
    from ovsmgr.fleet.runtime import add_rule

    if before and after:
        fail("give --before or --after, not both")
    data = rule_or_exit(rule)
    _runtime_change(fleet_path, switches, everyone, add_rule(data, before, after),
                    f"rule {data.get('name') if isinstance(data, dict) else '?'} added")


def _fleet_rule_command(verb: str, done: str) -> click.Command:
    @fleet_file
    @click.argument("rule_name", metavar="NAME")
    @switch_choice
    @store_errors
    def command(fleet_path: str, rule_name: str, switches: tuple[str, ...], everyone: bool) -> None:
        from ovsmgr.fleet.runtime import remove_rule, set_enabled

        change = remove_rule(rule_name) if verb == "remove" else set_enabled(rule_name, verb == "enable")
        _runtime_change(fleet_path, switches, everyone, change, f"rule {rule_name} {done}")
    command.__doc__ = f"Rule NAME {done} on the switches chosen (kept across fleet apply)."
    return click.command(verb)(command)


for _verb, _done in (("remove", "removed"), ("enable", "enabled"), ("disable", "disabled")):
    fleet_rule.add_command(_fleet_rule_command(_verb, _done))

