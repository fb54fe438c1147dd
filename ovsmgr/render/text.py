"""Jinja2 rendering of compiled flows and of the pipeline reference. Templates only lay out."""

from __future__ import annotations

import inspect
from collections import defaultdict
from pathlib import Path

import jinja2

from ovsmgr import __version__
from ovsmgr.compiler import CompiledPolicy
from ovsmgr.compiler import pipeline as pl
from ovsmgr.render.ofctl import flow_text, group_text, meter_text

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("ovsmgr.render", "templates"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)


def _doc(obj: object) -> str:
    return " ".join((inspect.getdoc(obj) or "").split())


def _table_doc(table: pl.Table) -> str:
    """Docstrings of enum members live in the class source; read them from there."""
    source = inspect.getsource(pl.Table)
    marker = f"    {table.name} = {int(table)}\n"
    after = source.split(marker, 1)[1].split('"""')
    return " ".join(after[1].split())


def render_flows(compiled: CompiledPolicy) -> str:
    """The compiled flows as an ovs-ofctl add-flows file, deterministic byte for byte. A policy with
    select groups is written for `ovs-ofctl bundle` instead (`group add` and `flow add` lines), so
    the groups and the flows that use them still load as one."""
    bundle = bool(compiled.groups)
    by_table: dict[pl.Table, list[str]] = defaultdict(list)
    for flow in compiled.flows:
        by_table[flow.table].append(("flow add " if bundle else "") + flow_text(flow))
    tables = [
        {"id": int(t), "name": t.name, "doc": _table_doc(t), "lines": by_table[t]}
        for t in pl.Table if by_table[t]
    ]
    policy = compiled.policy
    return _ENV.get_template("flows.ofctl.j2").render(
        version=__version__, bridge=policy.bridge,
        sources=", ".join(Path(s).name for s in policy.sources) or "<policy>",
        count=len(compiled.flowset), tables=tables, meters=[meter_text(m) for m in compiled.meters],
        groups=[f"group add {group_text(g)}" for g in compiled.groups],
    )


def render_pipeline_doc() -> str:
    tables = [{
        "id": int(t), "name": t.name, "doc": _table_doc(t),
        "matches": ", ".join(f"`{m}`" for m in sorted(pl.TABLES[t].matches)) or "(learned flows only)",
        "next": ", ".join(f"`{n.name}`" for n in sorted(pl.TABLES[t].next_tables)) or "-",
    } for t in pl.Table]
    registers = [{"name": r.reg, "nxm": r.nxm, "doc": r.doc} for r in pl.REGISTERS]
    kinds = [{"name": k.name, "value": int(k), "doc": _kind_doc(k)} for k in pl.CookieKind]
    return _ENV.get_template("pipeline.md.j2").render(
        magic=f"{pl.COOKIE_MAGIC:#06x}", tables=tables, registers=registers,
        ct_mark_lo=pl.CT_MARK_RULE[0], ct_mark_hi=pl.CT_MARK_RULE[1],
        nat_label_lo=pl.CT_LABEL_NAT_RULE[0], nat_label_hi=pl.CT_LABEL_NAT_RULE[1],
        ct_mark_doc="Fingerprint of the stateful allow rule that admitted the connection (0: none). "
        "It changes when the rule's name or match changes; see docs/design.md, cut on rule removal.",
        cookie_kinds=kinds, priorities=[{"name": p.name, "value": int(p)} for p in pl.Priority],
        packet_in=list(pl.PacketInKind),
    )


_KIND_DOCS = {
    "INFRA": "the pipeline's own flows (classification, conntrack, state, output)",
    "FIREWALL": "flows of a firewall rule",
    "NAT": "flows of a NAT rule",
    "DEFAULT": "the firewall's default action",
    "LEARNED": "MAC bindings the switch learns from ARP and neighbour discovery; never diffed or deleted",
    "METER": "a rule's meter (`limit:`) as ovsmgr keeps it beside its flows; the low 32 bits are the meter "
             "id, and ovsmgr owns the meters whose ids are in 0x80000000-0xfffeffff",
    "GROUP": "not a flow: a NAT rule's select group where plans and records list it (groups have no "
             "cookie: ovsmgr's are those whose id starts with the magic)",
    "SHADOW": "flows of a shadow rule (`shadow: true`): they count and log, the rules below decide",
    "NAT_COUNT": "a NAT rule's counting flow in NAT_COUNT: its statistics are the packets and bytes the rule "
                 "translated, both directions (its flows in NAT meet first packets only)",
}


def _kind_doc(kind: pl.CookieKind) -> str:
    return _KIND_DOCS[kind.name]


if __name__ == "__main__":
    print(render_pipeline_doc(), end="")
