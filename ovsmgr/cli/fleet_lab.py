"""`ovsmgr fleet lab up|down|status`: a whole fleet on this machine, every connection TLS (docs/fleet.md)."""

from __future__ import annotations

import shlex
from typing import Any

import click

from ovsmgr.cli.common import echo_json, fail, output_option

name_option = click.option(
    "--name", default="fleet", show_default=True,
    help="Fleet lab name: prefix of its switches' lab names and namespaces; state in /run/ovsmgr/fleet-lab-NAME.",
)


@click.group("lab")
def fleet_lab() -> None:
    """A fleet on this machine: a 3-member Raft store on loopback and one lab switch per fleet switch
    (its own OVS in its own namespace, reached over a management link), all with TLS."""


@fleet_lab.command("up")
@click.argument("fleet_path", metavar="FLEET.yaml", type=click.Path(dir_okay=False))
@name_option
def up_cmd(fleet_path: str, name: str) -> None:
    """Start a lab for FLEET.yaml's switches and policies, and write the lab's own fleet file (its
    store, TLS files and switch endpoints); FLEET.yaml's store:, tls: and endpoints are not used."""
    from ovsmgr.cli.fleet import validated
    from ovsmgr.lab.fleet import FleetLab
    from ovsmgr.lab.ovs import LabError

    fleet, policies = validated(fleet_path, "nothing was started")
    try:
        lab = FleetLab(name)
        status = lab.up(fleet, policies)
    except LabError as exc:
        fail(str(exc))
    _print_status(status)
    path = status["fleet_file"]
    run = "".join(f"  {shlex.join(c['command'])} &\n" for c in status["controllers"])
    click.echo(f"\nNext:\n{run}  ovsmgr fleet apply {path}\n  ovsmgr fleet status {path}\n"
               f"  ovsmgr fleet lab down{'' if name == 'fleet' else f' --name {name}'}")


@fleet_lab.command("down")
@name_option
def down_cmd(name: str) -> None:
    """Stop everything the fleet lab made and delete it: switches, namespaces, management links, the
    store, certificates and files (nothing to do if it is not up)."""
    from ovsmgr.lab.fleet import FleetLab
    from ovsmgr.lab.ovs import LabError

    try:
        FleetLab(name).down()
    except LabError as exc:
        fail(str(exc))


@fleet_lab.command("status")
@name_option
@output_option
def status_cmd(name: str, output: str) -> None:
    """The store's members (role, leader), the switches (namespace, management address, whether their
    OVSDB answers over TLS) and the lab's fleet file."""
    from ovsmgr.lab.fleet import FleetLab
    from ovsmgr.lab.ovs import LabError

    try:
        status = FleetLab(name).status()
    except LabError as exc:
        fail(str(exc))
    if output == "json":
        echo_json(status)
    else:
        _print_status(status)


def _print_status(status: dict[str, Any]) -> None:
    click.echo(f"fleet lab {status['name']}: {status['status']}  (dir {status['dir']})")
    if status["status"] == "down":
        return
    if status["status"] == "failed":
        click.echo(f"  up failed; nothing runs, the logs are kept until `ovsmgr fleet lab down --name {status['name']}`")
        return
    click.echo(f"  fleet file   {status['fleet_file']}")
    for m in status["store"]:
        role = m["role"] or ("not answering" if m["pid"] else "stopped")
        click.echo(f"  store s{m['member']}     {m['endpoint']}  {role}")
    for s in status["switches"]:
        click.echo(f"  {s['switch']:<12} {s['db']:<26} {'connected' if s['connected'] else 'NOT connected':<14}"
                   f"lab {s['lab']} (netns {s['namespace']})")
    for c in status.get("controllers", []):
        click.echo(f"  controller   port {c['port']} for {', '.join(c['serves'])}: {shlex.join(c['command'])}")
