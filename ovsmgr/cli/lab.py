"""`ovsmgr lab`: an embedded OVS and one host namespace per policy port, to try a policy on."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ovsmgr.cli.common import echo_json, fail, load_or_exit, output_option
from ovsmgr.lab.ovs import Datapath, Lab, LabError, lab_spec_from_policy

name_option = click.option(
    "--name", default="ovsmgr", show_default=True,
    help="Lab name: prefix of its namespaces; state in $OVSMGR_LAB_DIR or /run/ovsmgr/lab-NAME.",
)

lab = click.Group(
    "lab",
    help="A throw-away switch on this machine: ovs-vswitchd (userspace datapath) in a network "
    "namespace of its own, and one host namespace per policy port.",
)


def _parse_hosts(values: Sequence[str]) -> dict[str, str]:
    hosts: dict[str, str] = {}
    for value in values:
        port, sep, address = value.partition("=")
        if not sep or not port or "/" not in address:
            raise click.BadParameter(f"{value!r} is not PORT=ADDR/PREFIX", param_hint="--host")
        hosts[port] = address
    return hosts


def _pick_datapath(requested: str | None, policy_datapath: str) -> Datapath:
    """The lab runs netdev or dpdk; a policy asking for the kernel datapath gets netdev,
    because this machine's kernel has no openvswitch module."""
    choice = requested or policy_datapath
    if choice == "dpdk":
        return "dpdk"
    if choice != "netdev":
        click.echo(f"ovsmgr: note: lab uses the netdev datapath, not {choice}", err=True)
    return "netdev"


@lab.command("up")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--datapath", type=click.Choice(["netdev", "dpdk"]), default=None,
              help="Datapath of the lab bridge [default: the policy's if netdev/dpdk, else netdev].")
@click.option("--host", "hosts", multiple=True, metavar="PORT=ADDR/PREFIX",
              help="Address of the host behind PORT (repeatable); others are picked from "
              "the port's zone networks.")
@name_option
def up_cmd(files: Sequence[str], datapath: str | None, hosts: Sequence[str], name: str) -> None:
    """Start a lab for the policy in FILES (bridge and ports as the policy declares them)."""
    overrides = _parse_hosts(hosts)
    policy = load_or_exit(files)
    try:
        spec = lab_spec_from_policy(policy, _pick_datapath(datapath, policy.switch.datapath),
                                    overrides, name)
        status = Lab(name).up(spec)
    except LabError as exc:
        fail(str(exc))
    _print_status(status)


@lab.command("down")
@name_option
def down_cmd(name: str) -> None:
    """Stop the lab's daemons and delete its namespaces (nothing to do if it is not up)."""
    try:
        Lab(name).down()
    except LabError as exc:
        fail(str(exc))


@lab.command("announce")
@name_option
def announce_cmd(name: str) -> None:
    """Have every host send a gratuitous ARP, so the applied pipeline learns its MAC: needed before
    traffic reaches a host (a DNAT target) that has not spoken through the switch yet. `up`
    announces too, but a bridge without a policy drops those frames."""
    try:
        Lab(name).announce()
    except LabError as exc:
        fail(str(exc))


@lab.command("status")
@name_option
@output_option
def status_cmd(name: str, output: str) -> None:
    """Show whether the lab is up, its sockets, daemons and hosts."""
    try:
        status = Lab(name).status()
    except LabError as exc:
        fail(str(exc))
    if output == "json":
        echo_json(status)
    else:
        _print_status(status)


@lab.command("exec", context_settings={"ignore_unknown_options": True,
                                       "allow_interspersed_args": False})
@name_option
@click.argument("port")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(name: str, port: str, command: Sequence[str]) -> None:
    """Run COMMAND in the host namespace behind PORT: ovsmgr lab exec lan0 -- ping 10.0.1.10"""
    argv = list(command[1:] if command[:1] == ("--",) else command)
    if not argv:
        raise click.UsageError("no command given after --")
    try:
        proc = Lab(name).exec(port, argv, check=False)
    except LabError as exc:
        fail(str(exc))
    except (OSError, subprocess.SubprocessError) as exc:
        fail(f"cannot run {' '.join(command)}: {exc}")
    sys.exit(proc.returncode)


def _print_status(status: dict[str, Any]) -> None:
    console = Console()
    state = "up" if status["up"] else status["status"]
    console.print(f"lab [bold]{status['name']}[/bold]: {state}  (dir {status['dir']})")
    if status["status"] == "down":
        return
    for label, key in (("bridge", "bridge"), ("datapath", "datapath"), ("ovsdb", "db"),
                       ("openflow", "mgmt"), ("appctl", "appctl"), ("switch netns", "switch_netns")):
        console.print(f"  {label:<13}{status[key]}")
    for daemon, info in status["daemons"].items():
        alive = "running" if info["alive"] else "[red]not running[/red]"
        console.print(f"  {daemon:<13}pid {info['pid']} {alive}")
    table = Table("port", "ofport", "host netns", "address", "mac")
    for port in status["ports"]:
        tagged = [f"vlan {vid}: {address}" for vid, address in port.get("vlans", ())]
        table.add_row(port["name"], str(port["ofport"]), port["netns"],
                      ", ".join([port["address"]] * bool(port["address"]) + tagged) or "-", port["mac"])
    console.print(table)
