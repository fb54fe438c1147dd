"""`ovsmgr lab scenarios`: run scenario tables against a real switch and the simulator side by side."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from ovsmgr.cli.common import fail
from ovsmgr.cli.lab import lab
from ovsmgr.lab.ovs import LabError
from ovsmgr.policy import PolicyError
from ovsmgr.sim.scenarios import ScenarioError

DROP_WAIT = 0.4
"""`labscenarios.Timing.drop_wait`; the runner is imported only when the command runs, so that
every other `ovsmgr` command starts no slower."""


@lab.command("scenarios")
@click.argument("tables", metavar="TABLE.yaml...", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False))
@click.option("--datapath", type=click.Choice(["netdev", "dpdk"]), default="netdev", show_default=True)
@click.option("--scenario", "names", multiple=True, metavar="NAME",
              help="Run only this scenario (repeatable; the name as the table writes it).")
@click.option("--failures", "failures_only", is_flag=True, help="Print only the steps that fail.")
@click.option("--wait", type=float, default=DROP_WAIT, show_default=True,
              help="Seconds without any arrival after which a packet counts as dropped.")
def scenarios(tables: Sequence[str], datapath: str, names: Sequence[str], failures_only: bool,
              wait: float) -> None:
    """Send every step of each scenario TABLE for real and compare with the simulator.

    Each table gets a lab of its own (one host per port, with the table's
    addresses), taken down afterwards. Per step it prints what was sent, what
    the table expects, what the simulator says and what the real switch did.
    Exits 1 when the real switch or the simulator differs from the table, or
    from each other. Needs root.
    """
    if os.geteuid() != 0:
        fail("lab scenarios needs root (network namespaces, ovs-vswitchd, packet sockets)")
    from ovsmgr.lab.compare import format_table, summary
    from ovsmgr.lab.scenarios import Timing, run_table

    failed = False
    for path in tables:
        try:
            report = run_table(path, "dpdk" if datapath == "dpdk" else "netdev", Timing(drop_wait=wait),
                               list(names) or None)
        except (LabError, PolicyError, ScenarioError) as exc:
            fail(f"{path}: {exc}")
        lines = format_table(report, everything=not failures_only)
        click.echo("\n".join(lines if not failures_only or report.failures else [summary(report)]))
        failed |= bool(report.failures) or report.agreeing != len(report.steps)
    sys.exit(1 if failed else 0)
