"""`ovsmgr status`: what is applied to a bridge, by whom and when, and whether it drifted since."""

from __future__ import annotations

from typing import Any

from ovsmgr.compiler.pipeline import CookieKind, cookie_parts
from ovsmgr.southbound.conntrack import zone_usage
from ovsmgr.southbound.openflow import InstalledFlow
from ovsmgr.southbound.openflow.meters import MeterStats, is_meter, meter_id, meter_text
from ovsmgr.southbound.ovsdb import SwitchDB
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch import record as rec
from ovsmgr.switch.connect import flow_table
from ovsmgr.switch.natrules import (
    counted_zones,
    flow_totals,
    nat_rule_counts,
    try_connections_by_rule,
)
from ovsmgr.switch.plan import drift_counts
from ovsmgr.switch.rollback import rollback_path


def switch_status(target: SwitchTarget, bridge: str) -> dict[str, Any]:
    """The record of the last apply (whoever made it), checked against the switch."""
    record = rec.read_record(target, bridge)
    with SwitchDB(target.db) as db:
        if bridge not in db.bridges():
            return {"bridge": bridge, "exists": False, "applied": False}
        info = db.bridge_info(bridge)
    with flow_table(target, bridge) as table:
        current = table.read()
        stats = table.meter_stats() if any(is_meter(s.mod) for s in current) else {}
    ext = {k.removeprefix(f"{rec.EXT}-"): v for k, v in info["external_ids"].items() if k.startswith(f"{rec.EXT}-")}
    recorded = rec.read_flows(target, bridge) if record else None
    drift = drift_counts(current, recorded) if recorded is not None else None
    ctl = target.appctl()
    return {
        "bridge": bridge, "exists": True, "applied": bool(ext), "fail_mode": info["fail_mode"],
        "datapath_type": info["datapath_type"], "controllers": info["controllers"],
        "generation": int(ext["generation"]) if "generation" in ext else None,
        "applied_at": ext.get("applied-at"), "applied_by": ext.get("applied-by"),
        "sources": ext.get("sources"), "digest": ext.get("digest"),
        "flows": sum(1 for s in current if not is_meter(s.mod)),
        "meters": _meters(current, stats, record.rules if record else {}),
        "drifted": bool(drift and any(drift.values())),
        "drift": drift, "rollback_pending": rollback_path(target, bridge).exists(),
        "conntrack": zone_usage(ctl, record.ct_zone).to_json() if ctl and record else None,
        "shadow_rules": shadow_rules(current, record.rules if record else {}),
        "nat_rules": nat_rules(current, ctl, record.rules if record else {}),
    }


def nat_rules(flows: list[InstalledFlow], ctl: str | None, names: dict[int, str]) -> list[dict[str, Any]]:
    """Each NAT rule's translated packets and bytes (both directions) and current connections
    (None when conntrack cannot be read)."""
    totals = flow_totals(flows)
    if not totals:
        return []
    connections = try_connections_by_rule(ctl, counted_zones(flows))
    return [row.to_json() for row in nat_rule_counts(totals, connections, names)]


def _meters(current: list[InstalledFlow], stats: dict[int, MeterStats], names: dict[int, str]) -> list[dict[str, Any]]:
    """ovsmgr's meters on the switch (the rules' `limit:`), with what each passed and dropped."""
    out = []
    for mod in (s.mod for s in current if is_meter(s.mod)):
        meter = meter_id(mod)
        counts = stats.get(meter)
        out.append({"id": meter, "rule": names.get(meter), "meter": meter_text(mod),
                    "packets": counts.packets if counts else None,
                    "dropped_packets": counts.dropped_packets if counts else None})
    return sorted(out, key=lambda m: (m["rule"] or "", m["id"]))


def shadow_rules(flows: list[InstalledFlow], names: dict[int, str]) -> list[dict[str, Any]]:
    """The rules whose flows on the switch count and log but do not decide (`shadow: true`), with
    what they counted: the first packets of connections that met them."""
    totals: dict[int, list[int]] = {}
    for flow in flows:
        _, kind, rid = cookie_parts(flow.cookie)
        if kind is CookieKind.SHADOW:
            entry = totals.setdefault(rid, [0, 0])
            entry[0] += flow.packets
            entry[1] += flow.bytes
    return sorted(({"rule": names.get(rid, f"(rule {rid:#010x})"), "packets": p, "bytes": b}
                   for rid, (p, b) in totals.items()), key=lambda r: r["rule"])
