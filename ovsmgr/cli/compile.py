"""`ovsmgr compile`: the flows a policy compiles to, as ovs-ofctl text or JSON."""

from __future__ import annotations

import click

from ovsmgr.cli.common import echo_json, load_or_exit, output_option, policy_files
from ovsmgr.compiler import compile_policy
from ovsmgr.render.ofctl import flow_json, meter_text
from ovsmgr.render.text import render_flows


@click.command("compile")
@policy_files
@output_option
def compile_cmd(files: tuple[str, ...], output: str) -> None:
    """Compile policy FILES to OpenFlow flows (ovs-ofctl add-flows format, or JSON).

    The text loads as is: ovs-ofctl -O OpenFlow15 --bundle add-flows BRIDGE FILE
    """
    compiled = compile_policy(load_or_exit(files))
    if output == "json":
        echo_json({
            "bridge": compiled.policy.bridge,
            "flows": [flow_json(f) for f in compiled.flows],
            "meters": [{"id": m.id, "rule": m.rule, "meter": meter_text(m)} for m in compiled.meters],
            "fingerprints": {f"{k:#x}": v for k, v in sorted(compiled.fingerprints.items())},
        })
    else:
        click.echo(render_flows(compiled), nl=False)
