"""`ovsmgr compile`: the flows a policy compiles to, as ovs-ofctl text or JSON."""

from __future__ import annotations

import click

from ovsmgr.cli.common import echo_json, load_or_exit, output_option, policy_files
from ovsmgr.compiler import compile_policy
from ovsmgr.render.ofctl import flow_json, group_text, meter_text
from ovsmgr.render.text import render_flows


@click.command("compile")
@policy_files
@output_option
def compile_cmd(files: tuple[str, ...], output: str) -> None:
    """Compile policy FILES to OpenFlow flows (ovs-ofctl add-flows format, or JSON).

    The text loads as is: ovs-ofctl -O OpenFlow15 --bundle add-flows BRIDGE FILE (with select
    groups: ovs-ofctl -O OpenFlow15 bundle BRIDGE FILE, as its header says)
    """
    compiled = compile_policy(load_or_exit(files))
    if output == "json":
        echo_json({
            "bridge": compiled.policy.bridge,
            "flows": [flow_json(f) for f in compiled.flows],
            "meters": [{"id": m.id, "rule": m.rule, "meter": meter_text(m)} for m in compiled.meters],
            "groups": [{"group_id": g.group_id, "rule": g.rule, "text": group_text(g)} for g in compiled.groups],
            "fingerprints": {f"{k:#x}": v for k, v in sorted(compiled.fingerprints.items())},
        })
    else:
        click.echo(render_flows(compiled), nl=False)
