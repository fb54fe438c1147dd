"""The `ovsmgr` command line.

Subcommands are imported when they run, not at start-up: `ovsmgr check` should
not pay for os-ken, eventlet and ovsdbapp, which only the switch commands need.
"""

from __future__ import annotations

import importlib

import click

from ovsmgr import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("ovsmgr.cli.policy", "check"),
    "schema": ("ovsmgr.cli.policy", "schema"),
    "compile": ("ovsmgr.cli.compile", "compile_cmd"),
    "trace": ("ovsmgr.cli.trace", "trace"),
    "generate": ("ovsmgr.cli.generate", "generate"),
    "lab": ("ovsmgr.cli.lab", "lab"),
    "plan": ("ovsmgr.cli.switch", "plan"),
    "apply": ("ovsmgr.cli.switch", "apply"),
    "confirm": ("ovsmgr.cli.switch", "confirm"),
    "status": ("ovsmgr.cli.switch", "status"),
    "controller": ("ovsmgr.cli.controller", "controller"),
    "agent": ("ovsmgr.cli.controller", "agent"),
    "set": ("ovsmgr.cli.controller", "set_group"),
    "rule": ("ovsmgr.cli.controller", "rule_group"),
    "reload": ("ovsmgr.cli.controller", "reload"),
    "restore": ("ovsmgr.cli.controller", "restore"),
    "bench": ("ovsmgr.cli.bench", "bench"),
    "fleet": ("ovsmgr.cli.fleet", "fleet"),
}
LAB_EXTENSIONS = ("ovsmgr.cli.lab_probe", "ovsmgr.cli.lab_scenarios")
"""Modules that add subcommands (`lab probe`, `lab scenarios`) to the lab group when imported."""


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module_name, attr = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module_name), attr)
        if cmd_name == "lab":
            for extension in LAB_EXTENSIONS:
                importlib.import_module(extension)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ovsmgr")
def main() -> None:
    """Declarative stateful firewall and NAT for Open vSwitch."""


__all__ = ["main"]
