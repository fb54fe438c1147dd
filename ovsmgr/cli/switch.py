"""`ovsmgr plan`, `apply`, `confirm`, `status`: a policy against a live switch."""

from __future__ import annotations

import dataclasses
import gc
import sys
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from ovsmgr.cli.common import echo_json, fail, load_or_exit, output_option, policy_files
from ovsmgr.policy import ResolvedPolicy
from ovsmgr.render.ofctl import actions_text, match_text
from ovsmgr.southbound.openflow import FlowMod, OpenFlowError, decode_flow, is_group
from ovsmgr.southbound.openflow.groups import group_id_of
from ovsmgr.southbound.ovsdb import OvsdbError
from ovsmgr.southbound.target import SwitchTarget, resolve_target
from ovsmgr.southbound.tools import OvsToolError
from ovsmgr.switch.apply import ApplyError, apply_policy, plan_policy
from ovsmgr.switch.connections import ConnectionsReport, judge_connections
from ovsmgr.switch.lockout import Endpoint, LockoutError
from ovsmgr.switch.plan import Plan, flow_line, group_by_rule
from ovsmgr.switch.record import read_record
from ovsmgr.switch.rollback import confirm_apply
from ovsmgr.switch.status import switch_status

F = TypeVar("F", bound=Callable[..., Any])
RULES_SHOWN = 40
"""Rules a plan names one by one without -v (a first apply of 100,000 rules is one line, not 100,000)."""


def target_options(func: F) -> F:
    @click.option("--db", default=None, help="OVSDB endpoint (default: the lab's when a lab is up, "
                  "else the system OVS socket).")
    @click.option("--lab", "lab_name", default=None, help="Use the lab of this name.")
    @click.option("--openflow", default=None, metavar="tcp:HOST:PORT",
                  help="The bridge's OpenFlow listener, for a switch on another host (a `ptcp:PORT` target "
                       "set on the bridge); default: the bridge's management socket in OVS's run directory.")
    @wraps(func)
    def wrapper(*args: Any, db: str | None, lab_name: str | None, openflow: str | None, **kwargs: Any) -> Any:
        try:
            target = dataclasses.replace(resolve_target(db, lab_name), openflow_target=openflow)
            return func(*args, target=target, **kwargs)
        except (OvsdbError, OpenFlowError, OvsToolError, ApplyError, LockoutError) as exc:
            fail("\n".join([str(exc), *getattr(exc, "__notes__", ())]))
    return wrapper  # type: ignore[return-value]


def _flow_json(mod: FlowMod) -> dict[str, Any]:
    if is_group(mod):
        return {"group": group_id_of(mod), "text": flow_line(mod)}
    flow = decode_flow(mod)
    if flow is None:
        return {"cookie": f"{mod.cookie:#x}", "table": mod.table, "priority": mod.priority,
                "match": None, "actions": None, "text": flow_line(mod)}
    return {"cookie": f"{mod.cookie:#x}", "table": mod.table, "priority": mod.priority,
            "match": match_text(flow.match), "actions": actions_text(flow.actions)}


def _plan_json(plan: Plan, names: dict[int, str]) -> dict[str, Any]:
    return {
        "changes": plan.counts(),
        "foreign": [_flow_json(s.mod) for s in plan.foreign],
        "rules": {rule: [{"op": op, **_flow_json(mod)} for op, mod in items]
                  for rule, items in group_by_rule(plan, names).items()},
    }


def _print_plan(plan: Plan, names: dict[int, str], verbose: bool) -> None:
    for installed in plan.foreign:
        click.echo(f"! foreign flow (not ovsmgr's, left alone): cookie={installed.cookie:#x},"
                   f"{flow_line(installed.mod)}")
    if plan.empty:
        click.echo("No changes: the switch matches the policy.")
        return
    groups = group_by_rule(plan, names)
    shown = list(groups.items()) if verbose else list(groups.items())[:RULES_SHOWN]
    lines = []
    for rule, items in shown:
        ops = "".join(sorted({op for op, _ in items}))
        lines.append(f"{ops} {rule}: " + ", ".join(
            f"{sum(1 for o, _ in items if o == op)} {word}"
            for op, word in (("+", "added"), ("-", "removed"), ("~", "changed")) if any(o == op for o, _ in items)))
        if verbose:
            lines += [f"    {op} {flow_line(mod)}" for op, mod in items]
    if len(groups) > len(shown):
        lines.append(f"... and {len(groups) - len(shown)} more rules (-v lists them all, with their flows)")
    click.echo("\n".join(lines))
    c = plan.counts()
    click.echo(f"Plan: {c['add']} to add, {c['change']} to change, {c['delete']} to remove.")


def _loaded(files: tuple[str, ...]) -> ResolvedPolicy:
    """The policy, with everything loading made moved out of the cyclic garbage collector's way:
    a short-lived command makes no garbage cycles worth the collector's passes over 100,000 rules'
    objects (a measurable share of a large apply's time)."""
    policy = load_or_exit(files)
    gc.freeze()
    return policy


def _names(target: SwitchTarget, bridge: str, current: dict[int, str]) -> dict[int, str]:
    """Rule names from the last apply too, so removed rules are named in a plan."""
    record = read_record(target, bridge)
    return {**(record.rules if record else {}), **current}


def _connections(policy: ResolvedPolicy, target: SwitchTarget, names: dict[int, str]) -> ConnectionsReport:
    from ovsmgr.compiler import compile_policy

    return judge_connections(policy, target, names, lambda: compile_policy(policy))


def _apply_connections(policy: ResolvedPolicy, target: SwitchTarget, names: dict[int, str]) -> ConnectionsReport | None:
    """What `apply` says it cuts; an apply does not fail for want of conntrack (a remote switch)."""
    if target.appctl() is None:
        return None
    try:
        return _connections(policy, target, names)
    except OvsToolError as exc:
        click.echo(f"ovsmgr: established connections not counted: {exc}", err=True)
        return None


def _print_connections(report: ConnectionsReport, zone: int) -> None:
    click.echo(f"Connections: {len(report.cut)} of the {report.established} established in conntrack zone "
               f"{zone} would be cut.")
    for cut in report.cut:
        click.echo(f"  x {cut.describe()}")


@click.command()
@policy_files
@output_option
@click.option("-v", "--verbose", is_flag=True, help="List every flow that would change.")
@click.option("--connections", is_flag=True, help="Also list the established connections of the policy's "
              "conntrack zone that the change would cut (each run through the new policy in the simulator).")
@target_options
def plan(files: tuple[str, ...], output: str, verbose: bool, connections: bool, target: SwitchTarget) -> None:
    """Show what applying FILES would change. Exit 0: nothing; 2: changes; 1: error."""
    policy = _loaded(files)
    result, current = plan_policy(policy, target)
    names = _names(target, policy.bridge, current)
    shadow = [r.name for r in policy.rules if r.shadow]
    report = _connections(policy, target, names) if connections else None
    if output == "json":
        extra = {"connections_cut": [c.to_json() for c in report.cut], "connections_established":
                 report.established} if report is not None else {}
        echo_json({**_plan_json(result, names), "shadow_rules": shadow, **extra})
    else:
        _print_plan(result, names, verbose)
        if shadow:
            click.echo(f"Shadow rules (counted and logged, not enforced): {', '.join(shadow)}")
        if report is not None:
            _print_connections(report, policy.ct_zone)
    sys.exit(0 if result.empty else 2)


def _endpoints(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[Endpoint, ...]:
    try:
        return tuple(Endpoint.parse(v) for v in values)
    except ValueError as exc:
        raise click.BadParameter(f"{exc} (write ADDR, ADDR:PORT or [IPV6]:PORT)") from None


@click.command()
@policy_files
@output_option
@click.option("--full", is_flag=True, help="Replace all of ovsmgr's flows, not just the difference (still one bundle).")
@click.option("--confirm", "confirm_seconds", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              help="Roll back by itself unless `ovsmgr confirm` comes within SECONDS.")
@click.option("--mgmt", "mgmt", multiple=True, metavar="ADDR[:PORT]", callback=_endpoints,
              help="The switch host's management address (port 22 by default): refuse a policy that "
                   "would leave nothing able to reach it. Repeatable.")
@click.option("--force", is_flag=True, help="Apply even if the policy would cut the switch's own "
              "management, SSH or controller connections.")
@click.option("-v", "--verbose", is_flag=True)
@target_options
def apply(files: tuple[str, ...], output: str, full: bool, confirm_seconds: float | None,
          mgmt: tuple[Endpoint, ...], force: bool, verbose: bool, target: SwitchTarget) -> None:
    """Apply FILES to the switch atomically (one OpenFlow bundle) and print what changed.

    Refused, unless --force, when the policy would cut a connection the switch is managed
    through: this SSH session, a --mgmt address, or the bridge's controllers."""
    policy = _loaded(files)
    before = _names(target, policy.bridge, {})
    report = _apply_connections(policy, target, before)
    if report is not None and report.established and output != "json":
        click.echo(f"Cuts {len(report.cut)} of the {report.established} established connections in conntrack "
                   f"zone {policy.ct_zone} (`ovsmgr plan --connections` lists them).")
    started = time.monotonic()
    result = apply_policy(policy, target, full=full, confirm=confirm_seconds, force=force, mgmt=mgmt)
    elapsed = time.monotonic() - started
    names = {**before, **result.names}
    for warning in result.warnings:
        click.echo(f"ovsmgr: warning: {warning}", err=True)
    if output == "json":
        echo_json({**_plan_json(result.plan, names), "generation": result.generation,
                   "seconds": round(elapsed, 3), "rollback_at": result.rollback_at,
                   "connections": None if report is None else {"established": report.established,
                                                                 "cut": len(report.cut)}})
        return
    _print_plan(result.plan, names, verbose)
    click.echo(f"Applied generation {result.generation} to {policy.bridge} "
               f"({result.flow_count} flows) in {elapsed:.2f} s.")
    if result.rollback_at is not None:
        click.echo(f"Rolls back in {confirm_seconds:g} s unless `ovsmgr confirm {policy.bridge}` comes first.")


@click.command()
@click.argument("bridge", default="br0")
@target_options
def confirm(bridge: str, target: SwitchTarget) -> None:
    """Keep the policy applied with --confirm on BRIDGE (cancel its rollback)."""
    if not confirm_apply(target, bridge):
        fail(f"no rollback pending on {bridge} (none was armed, or it already rolled back)")
    click.echo(f"Confirmed: {bridge} keeps its policy.")


def _print_nat_rules(rows: list[dict[str, Any]]) -> None:
    """The NAT rules' counters as a table: packets and bytes both directions, connections now."""
    if not rows:
        return
    width = max(len("NAT rule"), *(len(r["rule"]) for r in rows))
    click.echo(f"  {'NAT rule':<{width}}  {'packets':>12}  {'bytes':>14}  {'connections':>11}")
    for r in rows:
        conns = "?" if r["connections"] is None else str(r["connections"])
        click.echo(f"  {r['rule']:<{width}}  {r['packets']:>12}  {r['bytes']:>14}  {conns:>11}")


@click.command()
@click.argument("bridge", default="br0")
@output_option
@target_options
def status(bridge: str, output: str, target: SwitchTarget) -> None:
    """What is applied to BRIDGE, by whom and when, and whether it drifted."""
    info = switch_status(target, bridge)
    info["controller"] = controller_status(target, bridge)
    if output == "json":
        echo_json(info)
        return
    if not info["exists"]:
        fail(f"no bridge {bridge} at {target.db}")
    if not info["applied"]:
        click.echo(f"{bridge}: no ovsmgr policy applied ({info['flows']} ovsmgr flows).")
        return
    click.echo(f"{bridge}: generation {info['generation']} applied {info['applied_at']} by {info['applied_by']} "
               f"from {info['sources']}")
    click.echo(f"  fail_mode {info['fail_mode']}, datapath {info['datapath_type']}, {info['flows']} ovsmgr flows, "
               f"controllers {info['controllers'] or 'none'}")
    if info["conntrack"]:
        ct = info["conntrack"]
        limit = f" of {ct['limit']}" if ct["limit"] else " (no limit)"
        full = ": FULL, new connections are refused" if ct["full"] else ""
        click.echo(f"  conntrack zone {ct['zone']}: {ct['connections']}{limit} connections{full}")
    for meter in info["meters"]:
        click.echo(f"  limit of rule {meter['rule'] or '(unknown)'}: {meter['meter']}; "
                   f"{meter['packets']} packets, {meter['dropped_packets']} dropped")
    if info["shadow_rules"]:
        click.echo("  shadow rules (counted and logged, not enforced): " + ", ".join(
            f"{r['rule']} ({r['packets']} packets)" for r in info["shadow_rules"]))
    _print_nat_rules(info["nat_rules"])
    drift = info["drift"] or {}
    click.echo("  drifted: " + (f"yes ({drift['add']} missing, {drift['delete']} unexpected, "
                                 f"{drift['change']} changed)" if info["drifted"] else "no"))
    if info["rollback_pending"]:
        click.echo("  a rollback is pending: run `ovsmgr confirm` to keep this policy")
    _print_controller(info["controller"])


def controller_status(target: SwitchTarget, bridge: str) -> dict[str, Any] | None:
    """The running controller's own report (None: no controller; `running: false`: it does not answer)."""
    from ovsmgr.controller.client import ApiClient, ApiError
    from ovsmgr.controller.paths import ControllerPaths

    paths = ControllerPaths(target.state_dir, bridge)
    info = paths.read_info()
    if info is None:
        return None
    try:
        return {"running": True, **ApiClient.for_paths(paths).call("GET", "/v1/status")}
    except ApiError as exc:
        return {"running": False, "pid": info.get("pid"), "error": str(exc)}


def _print_controller(ctl: dict[str, Any] | None) -> None:
    if ctl is None:
        return
    if not ctl["running"]:
        click.echo(f"  controller (pid {ctl['pid']}) does not answer: {ctl['error']}")
        return
    click.echo(f"  controller pid {ctl['pid']}: switch {'connected' if ctl['connected'] else 'NOT connected'}, "
               f"generation {ctl['generation']}, {ctl['rules']} rules, {ctl['reload_failures']} refused reloads")
    for line in ctl["last_error"]:
        click.echo(f"    last refused: {line}")
    changes = ctl["runtime_changes"]
    click.echo(f"  runtime changes (not in the files): {len(changes) or 'none'}")
    for line in changes:
        click.echo(f"    {line}")
    for line in ctl["stale_changes"]:
        click.echo(f"    left out (no longer applies): {line}")
    for backend in ctl.get("backends", ()):
        port = f":{backend['checked_port']}" if backend["checked_port"] else ""
        state = "up" if backend["up"] else f"DOWN, no new connections ({backend['last_error']})"
        click.echo(f"  backend {backend['address']}{port} of {backend['rule']}: {state}")
