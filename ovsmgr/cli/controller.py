"""`ovsmgr controller`, and the commands that talk to a running one: `set`, `rule`, `reload`;
`ovsmgr restore` puts recorded flows back after a switch restart."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from ovsmgr.cli.common import echo_json, fail, output_option, print_diagnostics, rule_or_exit
from ovsmgr.cli.switch import target_options
from ovsmgr.controller.client import ApiClient, ApiError, find_controller
from ovsmgr.controller.runtime import ChangeError
from ovsmgr.policy import PolicyError
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch.restore import RestoreError, restore_applied

F = TypeVar("F", bound=Callable[..., Any])


@click.command()
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--fleet", "fleet_path", default=None, metavar="FLEET.yaml", type=click.Path(dir_okay=False),
              help="Serve every switch of this fleet that has controllers: (docs/fleet.md) and connects, each "
                   "with what the fleet's store released to it; with several controllers, one is active.")
@click.option("--name", default=None, help="With --fleet: this controller's name in the store (default HOST:PID).")
@click.option("--group", default=None, metavar="GROUP",
              help="With --fleet: serve the switches of this group (group: GROUP in the fleet file; default: "
                   "those of no group). Each group has its own active controller.")
@click.option("--listen", default=None, multiple=True, metavar="tcp:HOST:PORT|ssl:HOST:PORT|unix:PATH",
              help="OpenFlow listener the bridge is pointed at (default: a unix socket in the lab's "
                   "directory with --lab, else tcp:127.0.0.1:6653). With --fleet: ssl:HOST:PORT is TLS with "
                   "the fleet file's tls: (a switch whose certificate its CA did not sign is refused), and "
                   "several unix:PATH ones may be given: OVS connects only to sockets in its own run directory.")
@click.option("--api", default=None, metavar="HOST:PORT|unix:PATH",
              help="JSON API endpoint, loopback only (default: unix socket in the state directory).")
@click.option("--metrics", default=None, metavar="HOST:PORT", help="Serve Prometheus metrics, e.g. 127.0.0.1:9302.")
@click.option("--stats-interval", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Per-rule counters are fetched when metrics are scraped, at most this often.")
@click.option("--log-rate", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Match log lines per second (log: true rules); the rest are counted.")
@click.option("--log-burst", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--match-log", default=None, type=click.Path(dir_okay=False),
              help="Append match log lines (JSON) to this file instead of stdout.")
@click.option("--health-netns", default=None, metavar="NAME",
              help="Network namespace (ip netns) the health checks of load-balanced DNAT backends connect "
                   "from (default: the controller's own).")
@target_options
def controller(files: tuple[str, ...], fleet_path: str | None, name: str | None, group: str | None,
               listen: tuple[str, ...], api: str | None,
               metrics: str | None, stats_interval: float, log_rate: float, log_burst: int, match_log: str | None,
               health_netns: str | None, target: SwitchTarget) -> None:
    """Run the controller for FILES: keep the bridge in line, take runtime changes, answer rejects,
    check the health of load-balanced DNAT backends. With --fleet FLEET.yaml instead of FILES: serve
    the fleet's switches."""
    from ovsmgr.controller.runner import Controller, Options, listen_problem
    from ovsmgr.lab.netns import NETNS_DIR

    if fleet_path is not None:
        if files or api or health_netns:
            fail("--fleet takes the switches and their policies from the fleet and its store: "
                 "no FILES, --api or --health-netns with it")
        _fleet_controller(fleet_path, name, listen, metrics, stats_interval, log_rate, log_burst, match_log,
                          group=group)
        return
    if group is not None:
        fail("--group: only with --fleet")
    if not files:
        fail("give the policy FILES, or --fleet FLEET.yaml")
    if len(listen) > 1:
        fail("--listen: one listener for one bridge (several only with --fleet)")
    if listen and listen[0].startswith("ssl:"):
        fail(f"--listen {listen[0]}: a TLS listener takes its key, certificate and CA from a fleet file's tls:, "
             "so it is `ovsmgr controller --fleet FLEET.yaml` or `ovsmgr agent`; for one bridge, "
             "tcp:127.0.0.1:PORT or unix:PATH")
    problem = listen_problem(listen[0], None) if listen else None
    if problem:
        fail(problem)

    if health_netns is not None and not (NETNS_DIR / health_netns).exists():
        fail(f"--health-netns {health_netns}: no such network namespace ({NETNS_DIR / health_netns})")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = Options(list(files), target, listen[0] if listen else None, api, metrics, stats_interval, log_rate,
                      log_burst, match_log, health_netns=health_netns)
    try:
        sys.exit(Controller(options).run())
    except PolicyError as exc:
        print_diagnostics(exc.diagnostics)
        sys.exit(1)
    except ChangeError as exc:
        print_diagnostics_text(exc.diagnostics)
        fail(str(exc))


@click.command()
@click.option("--fleet", "fleet_path", required=True, metavar="FLEET.yaml", type=click.Path(dir_okay=False),
              help="The fleet file (its store, its TLS files, the switch's controllers:).")
@click.option("--switch", required=True, metavar="NAME", help="The switch of the fleet this host runs.")
@click.option("--name", default=None, help="This agent's name in the store (default HOST:PID).")
@click.option("--listen", default=("tcp:127.0.0.1:6653",), multiple=True, show_default=True,
              metavar="tcp:HOST:PORT|ssl:HOST:PORT|unix:PATH", help="OpenFlow listener the bridge is pointed at "
              "(one of the switch's controllers:); ssl:HOST:PORT is TLS with the fleet file's tls: (a switch whose "
              "certificate its CA did not sign is refused).")
@click.option("--metrics", default=None, metavar="HOST:PORT", help="Serve Prometheus metrics.")
@click.option("--stats-interval", type=click.FloatRange(min=0.1), default=5.0, show_default=True)
@click.option("--log-rate", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
@click.option("--log-burst", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--match-log", default=None, type=click.Path(dir_okay=False))
def agent(fleet_path: str, switch: str, name: str | None, listen: tuple[str, ...], metrics: str | None,
          stats_interval: float, log_rate: float, log_burst: int, match_log: str | None) -> None:
    """Run the controller of one fleet switch on its own host: it watches only that switch's rows
    in the store (and the policies they refer to) and applies what the store releases to it. Several
    agents for one switch: one is active (the switch's lock in the store), the others standbys."""
    _fleet_controller(fleet_path, name, listen, metrics, stats_interval, log_rate, log_burst, match_log, switch)


def _fleet_controller(fleet_path: str, name: str | None, listen: tuple[str, ...], metrics: str | None,
                      stats_interval: float, log_rate: float, log_burst: int, match_log: str | None,
                      switch: str | None = None, group: str | None = None) -> None:
    from ovsmgr.cli.fleet import _loaded
    from ovsmgr.fleet.controller import FleetController, FleetOptions
    from ovsmgr.fleet.state import StoreError
    from ovsmgr.fleet.targets import FleetError

    fleet, _ = _loaded(fleet_path, with_policies=False)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = FleetOptions(fleet, listen or ("tcp:127.0.0.1:6653",), metrics, stats_interval, log_rate, log_burst,
                           match_log, name, switch, group)
    try:
        sys.exit(FleetController(options).run())
    except (StoreError, FleetError) as exc:
        fail(str(exc))


def print_diagnostics_text(lines: list[str]) -> None:
    for line in lines:
        click.echo(line, err=True)


def api_options(func: F) -> F:
    @click.option("--bridge", default=None, help="Bridge whose controller to talk to (default: the only one).")
    @target_options
    @wraps(func)
    def wrapper(*args: Any, bridge: str | None, target: SwitchTarget, **kwargs: Any) -> Any:
        try:
            client = ApiClient.for_paths(find_controller(target.state_dir, bridge))
            return func(*args, client=client, **kwargs)
        except ApiError as exc:
            print_diagnostics_text(exc.diagnostics)
            fail(str(exc))
    return wrapper  # type: ignore[return-value]


def _report(result: dict[str, Any], output: str, what: str) -> None:
    if output == "json":
        echo_json(result)
        return
    c = result["changes"]
    click.echo(f"{what}: generation {result['generation']}, {c['add']} flows added, {c['change']} changed, "
               f"{c['delete']} removed ({result['rules_recompiled']} rules recompiled, {result['seconds'] * 1000:.1f} ms).")


@click.group("set")
def set_group() -> None:
    """Change the members of an address set of a running controller."""


@set_group.command("add")
@click.argument("name")
@click.argument("addresses", nargs=-1, required=True)
@output_option
@api_options
def set_add(name: str, addresses: tuple[str, ...], output: str, client: ApiClient) -> None:
    """Add ADDRESSES (addresses or prefixes) to set NAME."""
    _report(client.call("POST", f"/v1/sets/{name}/add", {"addresses": list(addresses)}), output, f"{name} += {' '.join(addresses)}")


@set_group.command("remove")
@click.argument("name")
@click.argument("addresses", nargs=-1, required=True)
@output_option
@api_options
def set_remove(name: str, addresses: tuple[str, ...], output: str, client: ApiClient) -> None:
    """Remove ADDRESSES from set NAME."""
    _report(client.call("POST", f"/v1/sets/{name}/remove", {"addresses": list(addresses)}), output,
            f"{name} -= {' '.join(addresses)}")


@set_group.command("list")
@click.argument("name", required=False)
@api_options
def set_list(name: str | None, client: ApiClient) -> None:
    """The sets (or set NAME) with their members, runtime changes marked."""
    echo_json(client.call("GET", f"/v1/sets/{name}" if name else "/v1/sets"))


@click.group("rule")
def rule_group() -> None:
    """Add, remove, enable or disable firewall rules of a running controller."""


@rule_group.command("add")
@click.argument("rule")
@click.option("--before", default=None, help="Place it before this rule (default: last).")
@click.option("--after", default=None, help="Place it after this rule.")
@output_option
@api_options
def rule_add(rule: str, before: str | None, after: str | None, output: str, client: ApiClient) -> None:
    """Add RULE, a firewall rule as in the policy files (YAML flow style or JSON), e.g.
    '{name: block-x, from: wan, src: 203.0.113.7, action: drop}'."""
    if before and after:
        fail("give --before or --after, not both")
    data = rule_or_exit(rule)
    _report(client.call("POST", "/v1/rules", {"rule": data, "before": before, "after": after}), output,
            f"rule {data.get('name') if isinstance(data, dict) else '?'} added")


def _rule_command(name: str, verb: str, method: str, suffix: str) -> click.Command:
    @click.argument("rule_name", metavar="NAME")
    @output_option
    @api_options
    def command(rule_name: str, output: str, client: ApiClient) -> None:
        _report(client.call(method, f"/v1/rules/{rule_name}{suffix}"), output, f"rule {rule_name} {verb}")
    command.__doc__ = f"Rule NAME {verb} at run time (kept across restarts, shown by status)."
    return click.command(name)(command)


rule_group.add_command(_rule_command("remove", "removed", "DELETE", ""))
rule_group.add_command(_rule_command("enable", "enabled", "POST", "/enable"))
rule_group.add_command(_rule_command("disable", "disabled", "POST", "/disable"))


@click.command()
@output_option
@api_options
def reload(output: str, client: ApiClient) -> None:
    """Make a running controller recompile its policy files now (as SIGHUP does)."""
    _report(client.call("POST", "/v1/reload"), output, "reloaded")


@click.command()
@click.argument("bridge", default="br0")
@target_options
def restore(bridge: str, target: SwitchTarget) -> None:
    """Push the flows last applied to BRIDGE back (after ovs-vswitchd restarted)."""
    try:
        plan = restore_applied(target, bridge)
    except RestoreError as exc:
        fail(str(exc))
    c = plan.counts()
    click.echo(f"{bridge}: restored ({c['add']} added, {c['change']} changed, {c['delete']} removed).")
