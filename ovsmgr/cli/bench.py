"""`ovsmgr bench`: the seeds' experiments on the embedded lab, with same-run baselines.

``ovsmgr bench run SPEC.yaml`` runs a spec (see ``ovsmgr.bench.spec`` and
docs/bench.md); ``--smoke`` runs the built-in smoke spec (or shrinks SPEC) in
seconds; ``--policy FILE`` asks what one's own policy costs against plain
forwarding. ``ovsmgr bench report RESULTS.json`` renders the markdown summary
(and the plots) again. ``ovsmgr bench schema`` prints the JSON Schema of spec files
(schema/ovsmgr-bench.schema.json).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from ovsmgr.bench.spec import METHODS, BenchSpec, SpecError, only, with_overrides
from ovsmgr.bench.specfile import load_spec, shrink_for_smoke, smoke_spec, spec_from_flags
from ovsmgr.cli.common import fail, print_diagnostics

TOOLS = {"trafgen": "netsniff-ng", "iperf3": "iperf3", "tc": "iproute2", "ip": "iproute2",
         "ethtool": "ethtool", "taskset": "util-linux", "ovs-vswitchd": "openvswitch-switch",
         "iptables-legacy": "iptables", "ipset": "ipset", "nft": "nftables"}

bench = click.Group("bench", help="Benchmarks: the seeds' data-plane and control-plane experiments "
                    "on the embedded lab, every figure a ratio to a baseline of the same run.")


def _csv(kind: type, value: str | None) -> tuple[Any, ...]:
    if not value:
        return ()
    try:
        return tuple(kind(v.strip()) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


SYSTEM_TOOLS = {"ovs-vsctl": "openvswitch-switch", "ovs-ofctl": "openvswitch-switch",
                "ovs-appctl": "openvswitch-switch", "ip": "iproute2"}
"""What ``--switch system`` needs here (the load's tools run on the hosts)."""


def _check_machine(system: bool = False, ssh: bool = False) -> None:
    if os.geteuid() != 0:
        fail("bench needs root (network namespaces, ovs-vswitchd, tc)")
    tools = {**SYSTEM_TOOLS, **({"ssh": "openssh-client"} if ssh else {})} if system else TOOLS
    missing = sorted({pkg for tool, pkg in tools.items() if shutil.which(tool) is None})
    if missing:
        fail(f"missing tools; install them with: apt-get install -y {' '.join(missing)} "
             "(or run scripts/install)")


def _spec(spec_file: str | None, smoke: bool, policy: str | None, method: str | None, flows: str | None,
          sizes: str | None, rates: str | None) -> BenchSpec:
    try:
        if spec_file:
            spec = load_spec(spec_file)
            return shrink_for_smoke(spec) if smoke else spec
        if policy or not smoke:
            if not policy and method is None:
                raise click.UsageError("give a SPEC file, --smoke, or --policy FILE (with --method)")
            return spec_from_flags(policy, method or "ndr", _csv(int, flows), _csv(int, sizes),
                                   _csv(str, rates))
        return smoke_spec()
    except SpecError as exc:
        print_diagnostics(exc.diagnostics)
        sys.exit(1)


@bench.command("run")
@click.argument("spec_file", metavar="[SPEC.yaml]", required=False, type=click.Path(dir_okay=False))
@click.option("--smoke", is_flag=True, help="Seconds, not minutes: the built-in smoke spec, or SPEC cut "
              "down to one short trial per point (what CI runs; speed is never judged).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for results.json, results.csv, report.md and plots/ "
              "[default: bench-results/NAME-TIME].")
@click.option("--only", "only_names", multiple=True, metavar="NAME", help="Run only this experiment "
              "of the spec (repeatable).")
@click.option("--datapath", type=click.Choice(["netdev", "dpdk"]), default=None,
              help="OVS datapath for every experiment (overrides the spec).")
@click.option("--duration", type=click.FloatRange(min=0.1), default=None,
              help="Seconds measured per trial (overrides the spec).")
@click.option("--warmup", type=click.FloatRange(min=0), default=None, help="Seconds of load before "
              "counting (overrides the spec).")
@click.option("--repetitions", type=click.IntRange(min=1), default=None,
              help="Repetitions of every point and its baseline (overrides the spec).")
@click.option("--policy", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Without SPEC: measure this policy against plain forwarding.")
@click.option("--method", type=click.Choice(METHODS), default=None,
              help="Without SPEC: what to measure [default: ndr].")
@click.option("--flows", default=None, metavar="N,N", help="Without SPEC: flow counts [default: 1000].")
@click.option("--sizes", default=None, metavar="B,B", help="Without SPEC: frame sizes [default: 64].")
@click.option("--rates", default=None, metavar="R,R", help="Without SPEC, --method sweep: rates "
              "like 20kpps,500Mbit.")
@click.option("--profile", is_flag=True, help="perf-record ovs-vswitchd during each point "
              "(top symbols in the results' diagnostics).")
@click.option("--switch", "switch", type=click.Choice(["lab", "system"]), default="lab", show_default=True,
              help="lab: an embedded lab per test bed; system: the Open vSwitch already running here "
              "(--bridge, --db), with the hosts of --hosts (OVS pipelines only).")
@click.option("--bridge", default="br0", show_default=True, help="--switch system: the bridge; its ports "
              "inside and outside (by name, as the policies name them) face gen and sink.")
@click.option("--db", default=None, metavar="unix:PATH",
              help="--switch system: OVSDB of the switch [default: the system OVS's].")
@click.option("--hosts", default=None, metavar="gen=SPEC,sink=SPEC",
              help="--switch system: the generator and sink hosts, each ssh:NAME[:IFACE] (over ssh, "
              "interface data0 by default) or NETNS[:IFACE] (a local namespace).")
@click.option("--ssh-config", type=click.Path(dir_okay=False), default=None,
              help="ssh -F file for ssh: hosts (e.g. /root/.ssh/config.ovsmgr on the Vagrant dut).")
@click.option("--remote-python", default=None, metavar="PATH",
              help="Python with ovsmgr on ssh: hosts, for the probe agents [default: /opt/ovsmgr/venv/bin/python].")
def run_cmd(spec_file: str | None, smoke: bool, out_dir: Path | None, only_names: tuple[str, ...],
            datapath: str | None, duration: float | None, warmup: float | None,
            repetitions: int | None, policy: str | None, method: str | None, flows: str | None,
            sizes: str | None, rates: str | None, profile: bool, switch: str, bridge: str,
            db: str | None, hosts: str | None, ssh_config: str | None, remote_python: str | None) -> None:
    """Run the experiments of SPEC (or --smoke, or --policy); Ctrl-C stops and keeps what was measured."""
    from ovsmgr.bench.netns import use_ssh
    from ovsmgr.bench.runner import run_spec

    system = _system_switch(switch, bridge, db, hosts)
    use_ssh(ssh_config, remote_python)

    spec = _spec(spec_file, smoke, policy, method, flows, sizes, rates)
    if only_names:
        try:
            spec = only(spec, only_names)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--only") from None
    spec = with_overrides(spec, datapath=datapath, duration=duration, warmup=warmup,
                          repetitions=repetitions)
    _check_machine(system is not None, "ssh:" in (hosts or ""))
    out = out_dir or Path("bench-results") / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    console = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}", style="cyan"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{spec.name}: starting", total=None)
        data = run_spec(
            spec, out, ["ovsmgr", *sys.argv[1:]], profile,
            status=lambda text: progress.update(task, description=text[:90]),
            advance=lambda n: progress.advance(task, n),
            on_total=lambda n: progress.update(task, total=n), system=system)
    _finish(data, out, console)
    if data.get("interrupted"):
        sys.exit(130)


def _system_switch(switch: str, bridge: str, db: str | None, hosts: str | None) -> Any:
    from ovsmgr.bench.systembed import SystemSwitch
    from ovsmgr.southbound.target import SYSTEM_DB

    if switch != "system":
        if hosts or db:
            raise click.UsageError("--hosts and --db go with --switch system")
        return None
    pairs = dict(item.split("=", 1) for item in (hosts or "").split(",") if "=" in item)
    if set(pairs) != {"gen", "sink"}:
        raise click.BadParameter("give both hosts, e.g. gen=ssh:gen,sink=ssh:sink", param_hint="--hosts")
    return SystemSwitch(pairs["gen"], pairs["sink"], bridge, db or SYSTEM_DB)


def _finish(data: dict[str, Any], out: Path, console: Console) -> None:
    from ovsmgr.bench.plots import write_plots
    from ovsmgr.bench.report import evaluate_targets, render_report

    plots = write_plots(data, out / "plots") if data.get("points") else []
    (out / "report.md").write_text(render_report(data, plots, out))
    for verdict in evaluate_targets(data.get("points", [])):
        if verdict["status"] != "not measured":
            ratio = verdict["ratio"]
            console.print(f"  {verdict['target'].strip()}: {ratio:.2f}x (needs {verdict['needed']}): "
                          f"{verdict['status']}" if isinstance(ratio, float | int) else
                          f"  {verdict['target']}: {verdict['status']}")
    failed = [e for e in data.get("experiments", []) if e.get("status") == "failed"]
    for exp in failed:
        console.print(f"[red]experiment {exp['name']} failed: {exp.get('error')}[/red]")
    console.print(f"{len(data.get('points', []))} points, {len(plots)} plots: {out}/report.md, "
                  f"{out}/results.json" + (" (interrupted)" if data.get("interrupted") else ""))


@bench.command("report")
@click.argument("results_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Markdown file [default: report.md next to RESULTS].")
@click.option("--plots/--no-plots", default=True, show_default=True,
              help="Also (re)draw the PNG plots into plots/ next to the report.")
def report_cmd(results_file: Path, output: Path | None, plots: bool) -> None:
    """Write the markdown summary of RESULTS.json: headline figures as same-run ratios."""
    from ovsmgr.bench.plots import write_plots
    from ovsmgr.bench.report import render_report
    from ovsmgr.bench.results import load_results

    try:
        data = load_results(results_file)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    target = output or results_file.parent / "report.md"
    drawn = write_plots(data, target.parent / "plots") if plots else []
    target.write_text(render_report(data, drawn, target.parent))
    click.echo(f"{target}" + (f" and {len(drawn)} plots" if drawn else ""), err=True)


@bench.command("plan")
@click.argument("spec_file", metavar="SPEC.yaml", type=click.Path(dir_okay=False, exists=True))
@click.option("--smoke", is_flag=True, help="The plan of SPEC cut down as --smoke would run it.")
def plan_cmd(spec_file: str, smoke: bool) -> None:
    """Print what a run of SPEC measures, group by group, and a rough duration."""
    from ovsmgr.bench.methods import plan_experiment

    spec = _spec(spec_file, smoke, None, None, None, None, None)
    total = 0.0
    for exp in spec.experiments:
        groups = plan_experiment(exp)
        s = exp.settings
        per_trial = s.warmup + s.duration + 1.0
        click.echo(f"{exp.name} ({exp.method}, {s.datapath}, {s.repetitions}x): {len(groups)} groups")
        for g in groups:
            base = g.baseline.config.label if g.baseline else "-"
            subjects = ", ".join(f"{t.config.label}" for t in g.subjects)
            detail = g.subjects[0].params() if g.subjects else {}
            click.echo(f"  baseline {base:<22} subjects {subjects}  "
                       + " ".join(f"{k}={v}" for k, v in detail.items() if k in ("flows", "size", "rate", "rules", "update_rate",
                                                                         "destinations", "flood", "stream")))
            tasks = (len(g.subjects) + (g.baseline is not None)) * s.repetitions
            trials = s.ndr.steps if g.subjects and g.subjects[0].measure in ("ndr", "cps") else 1
            total += tasks * trials * (per_trial if g.subjects[0].measure != "tcp" else 2 * s.duration + 2)
    click.echo(f"roughly {total / 60:.0f} minutes of measurement (plus test bed set-up)")


@bench.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of bench spec files (for editors and CI)."""
    import json

    from ovsmgr.bench.specmodel import bench_json_schema

    click.echo(json.dumps(bench_json_schema(), indent=2, sort_keys=True))
