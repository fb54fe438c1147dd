"""Prometheus metrics of controller mode, collected when scraped.

Per-rule packet and byte counters come from OpenFlow flow statistics (polled
by the app) mapped back through cookies to rule names, the drops of each rule's
`limit:` from its meter's statistics; conntrack entries of the
policy's zone from ovs-vswitchd's `dpctl/ct-stats-show` (OpenFlow has no conntrack
statistics). A flow replaced by an update starts counting from zero again,
which Prometheus' rate() treats as a counter reset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from ovsmgr.compiler.pipeline import CookieKind, cookie_parts
from ovsmgr.compiler.stages.filter import DEFAULT_RULE
from ovsmgr.southbound.conntrack import OvsToolError, zone_connections
from ovsmgr.switch.natrules import count_totals, nat_rule_counts


@dataclass
class Counters:
    """Counters the controller keeps itself (packet-ins, logs, rejects)."""

    packet_ins: dict[str, int] = field(default_factory=lambda: {"reject": 0, "log": 0, "unknown": 0})
    rejects_sent: int = 0
    log_lines: int = 0
    log_suppressed: int = 0
    reject_suppressed: int = 0


CHANGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds: a runtime change takes milliseconds, a reload of 100,000 rules tens of seconds."""


@dataclass
class Durations:
    """A histogram of how long reloads and runtime changes took (cumulative at scrape time)."""

    counts: list[int] = field(default_factory=lambda: [0] * len(CHANGE_BUCKETS))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate(CHANGE_BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
                break
        self.total += seconds
        self.count += 1

    def buckets(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip(CHANGE_BUCKETS, self.counts, strict=True):
            running += n
            out.append((repr(bound), running))
        return [*out, ("+Inf", self.count)]


def conntrack_entries(ctl: str | None, zone: int) -> int | None:
    """Connections in `zone` of a userspace datapath, or None when they cannot be read."""
    if ctl is None:
        return None
    try:
        return zone_connections(ctl, zone)
    except OvsToolError:
        return None


def dropped_totals(stats: dict[int, list[int]], names: dict[int, str], actions: dict[int, str]
                   ) -> dict[str, list[int]]:
    """rule -> [packets, bytes] that enforced drop and reject rules (and a drop or reject default) refused;
    `actions`: rule id -> action of the enforced firewall rules, 0 for the default."""
    out: dict[str, list[int]] = {}
    for cookie_value, (packets, octets) in stats.items():
        ours, kind, rid = cookie_parts(cookie_value)
        if not ours or kind not in (CookieKind.FIREWALL, CookieKind.DEFAULT):
            continue
        key = 0 if kind is CookieKind.DEFAULT else rid
        if actions.get(key) not in ("drop", "reject"):
            continue
        entry = out.setdefault(DEFAULT_RULE if key == 0 else names.get(rid, f"(rule {rid:#010x})"), [0, 0])
        entry[0] += packets
        entry[1] += octets
    return out


def rule_totals(stats: dict[int, list[int]], names: dict[int, str]) -> dict[tuple[str, str], list[int]]:
    """(rule, kind) -> [packets, bytes], summed over the rule's flows."""
    out: dict[tuple[str, str], list[int]] = {}
    for cookie_value, (packets, octets) in stats.items():
        ours, kind, rid = cookie_parts(cookie_value)
        if not ours or kind is None or kind in (CookieKind.INFRA, CookieKind.LEARNED, CookieKind.NAT_COUNT):
            continue  # NAT_COUNT: the ovsmgr_nat_rule_* metrics
        name = DEFAULT_RULE if kind is CookieKind.DEFAULT else names.get(rid, f"(removed rule {rid:#010x})")
        entry = out.setdefault((name, kind.name.lower()), [0, 0])
        entry[0] += packets
        entry[1] += octets
    return out


class ControllerCollector(Collector):
    """Reads the controller's state at scrape time; `source` returns a plain snapshot, or one per
    switch (a fleet controller: each snapshot has a `switch`, and every sample a `switch` label)."""

    def __init__(self, source: Callable[[], dict[str, Any] | list[dict[str, Any]]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        found = self.source()
        snaps = found if isinstance(found, list) else [found]
        base = ["switch", "bridge"] if any("switch" in s for s in snaps) else ["bridge"]

        def ids(snap: dict[str, Any]) -> list[str]:
            return [str(snap[k]) for k in base]

        def each(kind: type[Any], name: str, doc: str, value: Callable[[dict[str, Any]], float]) -> Any:
            family = kind(name, doc, labels=base)
            for snap in snaps:
                family.add_metric(ids(snap), value(snap))
            return family

        yield each(GaugeMetricFamily, "ovsmgr_applied_generation", "Generation of the flows the controller last pushed.",
                   lambda s: s["generation"])
        yield each(GaugeMetricFamily, "ovsmgr_applied_timestamp_seconds",
                   "When the controller last pushed flows (Unix time).", lambda s: s["applied_at"])
        yield each(GaugeMetricFamily, "ovsmgr_last_change_duration_seconds",
                   "How long the last reload or runtime change took.", lambda s: s["last_change_seconds"])
        yield each(GaugeMetricFamily, "ovsmgr_switch_connected", "1 while the switch is connected to the controller.",
                   lambda s: 1 if s["connected"] else 0)
        yield each(GaugeMetricFamily, "ovsmgr_flows", "ovsmgr flows the controller keeps on the switch.",
                   lambda s: s["flows"])
        yield each(CounterMetricFamily, "ovsmgr_reload_failures", "Reloads refused because the policy did not validate.",
                   lambda s: s["reload_failures"])
        yield each(CounterMetricFamily, "ovsmgr_update_failures", "Runtime changes refused.",
                   lambda s: s["update_failures"])
        if any("fleet_generation" in s for s in snaps):
            yield each(GaugeMetricFamily, "ovsmgr_fleet_generation",
                       "The fleet generation whose policy the controller serves to the switch.",
                       lambda s: s.get("fleet_generation", 0))
        if any("active" in s for s in snaps):
            yield each(GaugeMetricFamily, "ovsmgr_fleet_active",
                       "1 while this controller is the switch's active one (OpenFlow master), 0 as a standby.",
                       lambda s: 1 if s.get("active") else 0)
        yield from _packet_in_metrics(snaps, base, ids)
        yield from _rule_metrics(snaps, base, ids)
        yield from _nat_rule_metrics(snaps, base, ids)
        backends = GaugeMetricFamily("ovsmgr_backend_up", "1 while a load-balanced DNAT backend passes its health "
                                     "check, 0 while it is taken out.", labels=[*base, "rule", "backend"])
        for snap in snaps:
            for backend in snap.get("backends", ()):
                where = f"{backend['address']}:{backend['port']}" if backend["port"] else str(backend["address"])
                backends.add_metric([*ids(snap), str(backend["rule"]), where], 1 if backend["up"] else 0)
        yield backends
        yield _change_metrics(snaps, base, ids)
        for key, name, doc in (("conntrack", "ovsmgr_conntrack_entries", "Conntrack entries in the policy's zone."),
                               ("conntrack_limit", "ovsmgr_conntrack_limit",
                                "The zone's connection limit (conntrack.max_connections).")):
            having = [s for s in snaps if s.get(key) is not None]
            if having:
                family = GaugeMetricFamily(name, doc, labels=[*base, "zone"])
                for snap in having:
                    family.add_metric([*ids(snap), str(snap["zone"])], snap[key])
                yield family


Ids = Callable[[dict[str, Any]], list[str]]


def _change_metrics(snaps: list[dict[str, Any]], base: list[str], ids: Ids) -> Any:
    histogram = HistogramMetricFamily("ovsmgr_change_duration_seconds",
                                      "How long reloads and runtime changes took, until the switch had the flows.",
                                      labels=base)
    for snap in snaps:
        durations: Durations = snap["change_durations"]
        histogram.add_metric(ids(snap), durations.buckets(), durations.total)
    return histogram


def _packet_in_metrics(snaps: list[dict[str, Any]], base: list[str], ids: Ids) -> Iterator[Any]:
    packet_ins = CounterMetricFamily("ovsmgr_packet_ins", "Packet-ins by kind.", labels=[*base, "kind"])
    for snap in snaps:
        for kind, count in sorted(snap["counters"].packet_ins.items()):
            packet_ins.add_metric([*ids(snap), kind], count)
    yield packet_ins
    for name, doc, field_name in (
            ("ovsmgr_rejects_sent", "TCP RSTs and ICMP unreachables sent for reject rules.", "rejects_sent"),
            ("ovsmgr_log_lines", "Match log lines written.", "log_lines"),
            ("ovsmgr_log_suppressed", "Match log lines dropped by the rate limit.", "log_suppressed")):
        family = CounterMetricFamily(name, doc, labels=base)
        for snap in snaps:
            family.add_metric(ids(snap), getattr(snap["counters"], field_name))
        yield family


def _rule_metrics(snaps: list[dict[str, Any]], base: list[str], ids: Ids) -> Iterator[Any]:
    packets = CounterMetricFamily("ovsmgr_rule_packets", "Packets matched by a rule's flows.",
                                  labels=[*base, "rule", "kind"])
    octets = CounterMetricFamily("ovsmgr_rule_bytes", "Bytes matched by a rule's flows.",
                                 labels=[*base, "rule", "kind"])
    dropped = CounterMetricFamily("ovsmgr_limit_dropped_packets", "Packets a rule's limit: dropped (its meter).",
                                  labels=[*base, "rule"])
    refused = CounterMetricFamily("ovsmgr_dropped_packets", "Packets drop and reject rules (and the default) "
                                  "refused: first packets of refused connections.", labels=[*base, "rule"])
    for snap in snaps:
        for (rule, kind), (p, b) in sorted(rule_totals(snap["stats"], snap["names"]).items()):
            packets.add_metric([*ids(snap), rule, kind], p)
            octets.add_metric([*ids(snap), rule, kind], b)
        for rule, count in sorted(snap.get("limit_drops", {}).items()):
            dropped.add_metric([*ids(snap), rule], count)
        for rule, (p, _) in sorted(dropped_totals(snap["stats"], snap["names"], snap.get("actions", {})).items()):
            refused.add_metric([*ids(snap), rule], p)
    yield packets
    yield octets
    yield dropped
    yield refused


def _nat_rule_metrics(snaps: list[dict[str, Any]], base: list[str], ids: Ids) -> Iterator[Any]:
    """Per NAT rule: what it translated (both directions) and its connections now (absent while
    conntrack cannot be read)."""
    labels = [*base, "rule"]
    packets = CounterMetricFamily("ovsmgr_nat_rule_packets", "Packets of the connections a NAT rule translated, "
                                  "both directions.", labels=labels)
    octets = CounterMetricFamily("ovsmgr_nat_rule_bytes", "Bytes of the connections a NAT rule translated, "
                                 "both directions.", labels=labels)
    connections = GaugeMetricFamily("ovsmgr_nat_rule_connections", "Connections in conntrack a NAT rule "
                                    "translated (one translated twice counts for both rules).", labels=labels)
    for snap in snaps:
        for row in nat_rule_counts(count_totals(snap["stats"]), snap.get("nat_connections"), snap["names"]):
            packets.add_metric([*ids(snap), row.rule], row.packets)
            octets.add_metric([*ids(snap), row.rule], row.bytes)
            if row.connections is not None:
                connections.add_metric([*ids(snap), row.rule], row.connections)
    yield packets
    yield octets
    yield connections


def registry_for(source: Callable[[], dict[str, Any] | list[dict[str, Any]]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ControllerCollector(source))
    return registry
