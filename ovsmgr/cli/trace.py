"""`ovsmgr trace`: packets through the compiled policy in the simulator, table by table."""

from __future__ import annotations

from pathlib import Path

import click

from ovsmgr.cli.common import echo_json, fail, load_or_exit, output_option
from ovsmgr.sim.packet import PacketSpecError
from ovsmgr.sim.session import ICMP_ERROR, REPLY, Conversation, SimulatedSwitch
from ovsmgr.sim.trace import Trace, format_trace

Step = tuple[str | None, str]
"""(port the packet enters by, packet spec or `reply`/`error`); no port: where the last one left."""


@click.command()
@click.argument("args", nargs=-1, required=True, metavar="FILES... [PACKET]")
@click.option("--in", "in_port", metavar="PORT", help="Port the PACKET enters by.")
@click.option("--then", "then", multiple=True, metavar="reply|error|PORT:SPEC",
              help="A further packet of the conversation (repeatable): `reply` (the far end answers), "
                   "`error` (it answers with ICMP port unreachable), PORT:reply, or PORT:SPEC.")
@click.option("--packets", type=click.Path(exists=True, dir_okay=False),
              help="A file of packets, one `PORT SPEC`, `reply` or `error` a line (# comments).")
@output_option
def trace(args: tuple[str, ...], in_port: str | None, then: tuple[str, ...], packets: str | None,
          output: str) -> None:
    """Trace packets through the policy FILES in the simulator, with conntrack and NAT.

    The last argument is the PACKET, written like an ovs-ofctl flow, unless --packets
    is given:

    \b
      ovsmgr trace gateway.yaml --in lan0 \\
          'tcp,nw_src=10.0.0.5,nw_dst=198.51.100.9,tp_dst=443' --then reply

    State carries from packet to packet, so replies find their connection.
    """
    files, steps = _steps(args, in_port, then, packets)
    switch = SimulatedSwitch.from_policy(load_or_exit(files))
    conversation = Conversation(switch)
    for port, what in steps:
        try:
            conversation.step(port, what)
        except PacketSpecError as exc:
            fail(f"packet {len(conversation.traces) + 1}: {exc}")
    if output == "json":
        echo_json(_json(conversation))
        return
    for number, (port, traced) in enumerate(zip(conversation.ports, conversation.traces, strict=True), 1):
        if len(steps) > 1:
            click.echo(f"== packet {number}, in by {port} ==")
        click.echo("\n".join(format_trace(traced, switch.port_names)))
        if number < len(steps):
            click.echo()


def _steps(args: tuple[str, ...], in_port: str | None, then: tuple[str, ...],
           packets: str | None) -> tuple[list[str], list[Step]]:
    files = list(args)
    steps: list[Step] = []
    if packets is None:
        if len(files) < 2:
            raise click.UsageError("give the policy FILES and then the PACKET (or --packets FILE)")
        if in_port is None:
            raise click.UsageError("say which port the packet enters by: --in PORT")
        steps.append((in_port, files.pop()))
    else:
        steps.extend(_read_packets(Path(packets)))
    steps.extend(_then(text) for text in then)
    if not steps:
        raise click.UsageError(f"{packets} holds no packets")
    return files, steps


def _then(text: str) -> Step:
    if text in (REPLY, ICMP_ERROR):
        return None, text
    port, sep, what = text.partition(":")
    if not sep or not port or not what:
        raise click.UsageError(f"--then {text!r}: write reply, error, PORT:reply or PORT:SPEC")
    return port, what


def _read_packets(path: Path) -> list[Step]:
    steps: list[Step] = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if len(words) == 1 and words[0] in (REPLY, ICMP_ERROR):
            steps.append((None, words[0]))
        elif len(words) == 2:
            steps.append((words[0], words[1]))
        else:
            raise click.UsageError(f"{path}:{number}: write `PORT SPEC`, `reply` or `error`")
    return steps


def _json(conversation: Conversation) -> dict[str, object]:
    """The last packet's result (verdict, rule, output, packet, steps) and a summary of all."""
    last = conversation.traces[-1]
    result: dict[str, object] = {"in": conversation.ports[-1], **last.as_dict()}
    result["conversation"] = [_summary(port, t) for port, t in zip(conversation.ports, conversation.traces,
                                                                  strict=True)]
    return result


def _summary(port: str, traced: Trace) -> dict[str, object]:
    full = traced.as_dict()
    return {"in": port, **{key: full[key] for key in ("verdict", "rule", "output", "packet")}}
