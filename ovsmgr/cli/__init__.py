"""The `ovsmgr` command line."""

from __future__ import annotations

import click

from ovsmgr import __version__
from ovsmgr.cli.common import policy_files
from ovsmgr.cli.policy import check, schema


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ovsmgr")
def main() -> None:
    """Declarative stateful firewall and NAT for Open vSwitch."""


main.add_command(check)
main.add_command(schema)

for _module, _name in (
    ("ovsmgr.cli.compile", "compile_cmd"),
    ("ovsmgr.cli.trace", "trace"),
    ("ovsmgr.cli.generate", "generate"),
    ("ovsmgr.cli.lab", "lab"),
    ("ovsmgr.cli.lab_probe", "probe"),
    ("ovsmgr.cli.lab_scenarios", "scenarios"),
    ("ovsmgr.cli.switch", "plan"),
    ("ovsmgr.cli.switch", "apply"),
    ("ovsmgr.cli.switch", "confirm"),
    ("ovsmgr.cli.switch", "status"),
    ("ovsmgr.cli.controller", "controller"),
    ("ovsmgr.cli.controller", "set_group"),
    ("ovsmgr.cli.controller", "rule_group"),
    ("ovsmgr.cli.controller", "reload"),
    ("ovsmgr.cli.controller", "restore"),
):
    try:
        _mod = __import__(_module, fromlist=[_name])
    except ModuleNotFoundError as _exc:
        if _exc.name != _module:
            raise
        continue
    if _name not in ("probe", "scenarios"):  # `lab probe`, `lab scenarios` register on the lab group
        main.add_command(getattr(_mod, _name))

__all__ = ["main", "policy_files"]
