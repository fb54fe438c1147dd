"""The NDR search against fake devices, the experiment plans, flow layouts and trafgen configs."""

from __future__ import annotations

import ipaddress
import itertools
import math
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ovsmgr.bench.measure import latency_figures, percentile, trial_figures
from ovsmgr.bench.methods import ndr_search, plan_experiment
from ovsmgr.bench.netfilter import filler_values, ipset_restore, iptables_restore, nft_ruleset
from ovsmgr.bench.netns import IfCounters, parse_proc_net_dev
from ovsmgr.bench.pipelines import (
    BLOCKLIST,
    BLOCKLIST_MEMBERS,
    Config,
    pipeline_data,
    policy_text,
    seed_policy_path,
    with_blocklist,
)
from ovsmgr.bench.runner import ordered_groups
from ovsmgr.bench.spec import NdrSettings, Rate
from ovsmgr.bench.specfile import parse_spec
from ovsmgr.bench.traffic import Endpoints, flow_layout, shaper_command, trafgen_config
from ovsmgr.bench.updates import (
    RUNTIME_MEMBERS,
    UpdateLog,
    change_size,
    run_updates,
    update_figures,
    update_steps,
)
from ovsmgr.controller.engine import ChangeResult, Engine
from ovsmgr.policy import load_policy_text
from ovsmgr.southbound.target import SwitchTarget
from tests.support.fakes import FakeTable


def device(capacity: float, generator_max: float = 1e9, noise: Callable[[float], float] = lambda r: 0.0
           ) -> tuple[Callable[[float], dict[str, Any]], list[float]]:
    """A fake device under test that forwards up to ``capacity`` pps and loses the rest."""
    asked: list[float] = []

    def trial(rate: float) -> dict[str, Any]:
        asked.append(rate)
        offered = min(rate, generator_max)
        delivered = min(offered, capacity)
        return {"requested_pps": rate, "offered_pps": offered, "delivered_pps": delivered,
                "loss": max(0.0, 1 - delivered / offered + noise(rate)),
                "generator_limited": offered < 0.97 * rate}
    return trial, asked


def test_ndr_finds_the_capacity_within_the_step_budget() -> None:
    trial, asked = device(capacity=73_000)
    result = ndr_search(trial, NdrSettings(loss=0.0, steps=8, low=Rate(5000), high=Rate(250000), retries=0), 64)
    assert len(asked) <= 8
    assert asked[0] == 250000  # RFC 2544: start at the maximum rate
    assert 0.95 * 73_000 <= result.ndr_pps <= 73_000
    assert not result.generator_limited and not result.below_low
    assert result.best is not None and result.best["loss"] == 0.0


def test_the_first_failed_trial_bounds_the_search_by_what_was_delivered() -> None:
    trial, asked = device(capacity=20_000)
    ndr_search(trial, NdrSettings(loss=0.0, steps=3, low=Rate(1000), high=Rate(1_000_000), retries=0), 64)
    assert asked[1] <= 1.05 * 20_000  # not (1000 + 1_000_000) / 2


def test_a_loss_tolerance_accepts_small_losses() -> None:
    trial, _ = device(capacity=50_000, noise=lambda rate: 0.0005)
    strict = ndr_search(trial, NdrSettings(loss=0.0, steps=6, low=Rate(5000), high=Rate(100000)), 64)
    tolerant = ndr_search(trial, NdrSettings(loss=0.001, steps=6, low=Rate(5000), high=Rate(100000)), 64)
    assert strict.ndr_pps == 0.0 and strict.below_low
    assert tolerant.ndr_pps > 45_000


def test_a_device_faster_than_the_generator_is_flagged() -> None:
    trial, asked = device(capacity=1e9, generator_max=160_000)
    result = ndr_search(trial, NdrSettings(loss=0.0, steps=6, low=Rate(5000), high=Rate(250000)), 64)
    assert asked == [250000]
    assert result.ndr_pps == 160_000 and result.generator_limited


def test_nan_loss_never_passes() -> None:
    result = ndr_search(lambda r: {"offered_pps": r, "delivered_pps": 0, "loss": math.nan},
                        NdrSettings(steps=3, retries=0), 64)
    assert result.ndr_pps == 0.0 and len(result.trials) == 3


def test_a_failed_rate_is_retried_so_passing_interference_does_not_count() -> None:
    hiccups = iter([True, False] * 20)  # every other trial is hit by another tenant's burst
    trial, _asked = device(capacity=60_000, noise=lambda rate: 0.05 if next(hiccups) else 0.0)
    result = ndr_search(trial, NdrSettings(loss=0.0, steps=6, low=Rate(5000), high=Rate(100000),
                                           retries=1), 64)
    assert 0.95 * 60_000 <= result.ndr_pps <= 60_000
    assert {t["attempt"] for t in result.trials} == {1, 2}
    no_retry, _ = device(capacity=60_000, noise=lambda rate: 0.05)
    assert ndr_search(no_retry, NdrSettings(loss=0.0, steps=4, retries=0), 64).below_low


def test_bit_rate_bounds_are_converted_with_the_frame_size() -> None:
    trial, asked = device(capacity=1e9)
    ndr_search(trial, NdrSettings(low=Rate(1e6, "bps"), high=Rate(1518 * 8 * 1000, "bps")), 1518)
    assert asked == [pytest.approx(1000)]


SPEC = """
version: 1
experiments:
  - {name: sweep, method: sweep, pipelines: [seed-firewall, seed-nat], flows: [100, 10000],
     sizes: [64], rates: [10kpps, 20kpps]}
  - {name: rules, method: rules, systems: [ovsmgr, iptables, linux], rule_kinds: [dport, src],
     rules: [0, 1000, 5000], measures: [ndr, cps]}
  - {name: flows, method: flows, pipelines: [seed-firewall], flows: [100, 1000, 100000]}
"""


def test_sweep_groups_measure_plain_then_the_pipelines_at_each_rate() -> None:
    sweep = parse_spec(SPEC).experiments[0]
    groups = plan_experiment(sweep)
    assert len(groups) == 2 * 2
    first = groups[0]
    assert first.baseline is not None and first.baseline.config.pipeline == "plain"
    assert [t.config.pipeline for t in first.subjects] == ["seed-firewall", "seed-nat"]
    assert {t.rate for t in (first.baseline, *first.subjects)} == {Rate(10000)}


def test_rule_groups_pair_each_count_with_the_same_systems_zero() -> None:
    rules = parse_spec(SPEC).experiments[1]
    groups = plan_experiment(rules)
    pairs = [(g.baseline.config.label if g.baseline else None, g.subjects[0].config.label,
              g.subjects[0].measure) for g in groups]
    assert ("plain", "ovsmgr dport x0", "ndr") in pairs  # the stateful firewall against plain OVS
    assert ("ovsmgr src x0", "ovsmgr src x5000", "ndr") in pairs
    assert ("iptables dport x0", "iptables dport x1000", "ndr") in pairs
    assert (None, "linux", "ndr") in pairs
    assert not [p for p in pairs if p[2] == "cps" and not p[1].startswith(("ovsmgr", "plain"))]


def test_flow_groups_compare_with_the_smallest_count() -> None:
    groups = plan_experiment(parse_spec(SPEC).experiments[2])
    assert [(g.baseline.flows, g.subjects[0].flows) for g in groups if g.baseline] == [(100, 1000), (100, 100000)]


def test_groups_are_ordered_so_each_test_bed_comes_up_once() -> None:
    keys = [key for key, _ in ordered_groups(parse_spec(SPEC).experiments[1])]
    changes = sum(1 for a, b in itertools.pairwise(keys) if a != b)
    assert changes == 1  # OVS first (ovsmgr was listed first), then the Linux router


@pytest.mark.parametrize(("flows", "addresses", "ports"), [
    (1, 1, 1), (10000, 1, 10000), (64000, 1, 64000), (100_000, 32, 3125), (1_000_000, 64, 15625),
])
def test_flow_layouts_are_exact_for_round_numbers(flows: int, addresses: int, ports: int) -> None:
    layout = flow_layout(flows)
    assert (layout.addresses, layout.ports, layout.flows) == (addresses, ports, flows)
    assert layout.addresses == 1 or math.gcd(layout.addresses, layout.ports) == 1


def test_other_flow_counts_round_up_with_coprime_counters() -> None:
    layout = flow_layout(100_003)
    assert layout.flows >= 100_003 and math.gcd(layout.addresses, layout.ports) == 1


def test_the_counters_really_make_that_many_distinct_tuples() -> None:
    layout = flow_layout(100_000)
    tuples = {(i % layout.addresses, i % layout.ports) for i in range(layout.flows)}
    assert len(tuples) == 100_000


ENDS = Endpoints("02:00:00:00:00:01", "02:00:00:00:00:02", "10.1.0.2", "10.2.0.2", "10.1.0.0/16")


def test_trafgen_configs() -> None:
    udp = trafgen_config(ENDS, "udp", 9, 64, flows=100_000)
    assert "sa=10.1.0.0, sa[2:2]=dinc(256, 287)" in udp and "sp=dinc(1024, 4148)" in udp
    assert "fill(0x00, 18)" in udp  # 64 - 4 (FCS) - 42 (Ethernet, IPv4, UDP)
    assert "fill(0x00, 1460)" in trafgen_config(ENDS, "tcp", 9, 1518)
    assert re.search(r"tcp\(.*seq=1001, aseq=5001, ack", trafgen_config(ENDS, "tcp", 9, 64))
    syn = trafgen_config(ENDS, "tcp", 9, 64, flows=10, mode="syn")
    assert "seq=1000, syn" in syn
    synack = trafgen_config(ENDS, "tcp", 9, 64, flows=10, mode="synack")
    assert "da=10.1.0.2" in synack and "sa=10.2.0.2" in synack and "sp=9, dp=dinc(1024, 1033)" in synack
    assert "drnd(1024, 65535)" in trafgen_config(ENDS, "tcp", 9, 64, mode="random")
    with pytest.raises(ValueError):
        trafgen_config(ENDS, "tcp", 9, 50)


def test_replies_to_a_nat_address_cannot_cover_many_sources() -> None:
    nat = Endpoints("02:00:00:00:00:02", "02:00:00:00:00:01", "200.200.200.200", "10.2.0.2",
                    "200.200.200.200/32")
    assert "da=200.200.200.200" in trafgen_config(nat, "udp", 9, 64, flows=1000, mode="mirror")
    with pytest.raises(ValueError, match="NAT address"):
        trafgen_config(nat, "udp", 9, 64, flows=100_000, mode="mirror")


def test_the_shaper_paces_frames_of_the_load() -> None:
    argv = shaper_command("eth0", 100_000, 64)
    assert argv[argv.index("rate") + 1] == f"{int(100_000 * 1.02 * 60 * 8) + 1}bit"


def counters(rx: int = 0, tx: int = 0, tx_dropped: int = 0) -> IfCounters:
    return IfCounters(rx_packets=rx, rx_dropped=0, tx_packets=tx, tx_dropped=tx_dropped, rx_bytes=0, tx_bytes=0)


def test_trial_figures_count_refused_packets_as_offered_and_lost() -> None:
    f = trial_figures(10_000, 2.0, (counters(tx=100), counters(tx=19_100, tx_dropped=1000)),
                      (counters(rx=50), counters(rx=19_050)), 64)
    assert f["offered_pps"] == 10_000 and f["delivered_pps"] == 9_500
    assert f["loss"] == pytest.approx(0.05) and f["generator_refused_pps"] == 500
    assert f["generator_limited"] == 0.0


def test_latency_figures_keep_the_window_and_count_probe_loss() -> None:
    sent = [100, 200, 300, 400, 500, -600]  # the last one could not even be sent
    received = [[0, 5000], [1, 10000], [2, 20000], [3, 40000]]
    f = latency_figures(sent, received, (150, 700))
    assert f["probe_sent"] == 5  # seqs 1..5
    assert f["latency_p50_us"] == 20.0 and f["latency_max_us"] == 40.0
    assert f["probe_loss"] == pytest.approx(2 / 5)
    empty = latency_figures([], [], (0, 1))
    assert math.isnan(empty["latency_p99_us"]) and math.isnan(empty["probe_loss"])


def test_percentiles_are_nearest_rank() -> None:
    values = list(range(1, 101))
    assert [percentile(values, q) for q in (50, 75, 99, 100)] == [50, 75, 99, 100]
    assert percentile([7.0], 99) == 7.0


def test_proc_net_dev_is_parsed() -> None:
    text = ("Inter-|   Receive      |  Transmit\n face |bytes    packets errs drop fifo frame compressed "
            "multicast|bytes    packets errs drop fifo colls carrier compressed\n"
            "  eth0:  6000  100  0  3  0  0  0  0   4200  70  0  5  0  0  0  0\n")
    assert parse_proc_net_dev(text)["eth0"] == IfCounters(100, 3, 70, 5, 6000, 4200)


def test_netfilter_rule_sets_never_match_the_load() -> None:
    ports = filler_values("dport", 5000)
    assert len(set(ports)) == 5000 and min(int(p) for p in ports) >= 20000
    sources = filler_values("src", 5000)
    assert len(set(sources)) == 5000 and all(s.startswith("100.") for s in sources)
    linear = iptables_restore("dport", 3)
    assert linear.count("-A FORWARD -p tcp -m tcp --dport") == 3 and linear.endswith("COMMIT\n")
    sets, table = ipset_restore("src", 3)
    assert sets.count("add ovsmgr-bench-src 100.") == 3 and table.count("-A FORWARD") == 1
    nft = nft_ruleset("dport", 3)
    assert "tcp dport @ports drop" in nft and nft.count(",") == 2
    assert "elements" not in nft_ruleset("src", 0)  # an empty set still has its one rule


def test_trials_where_the_pmd_was_starved_do_not_use_up_the_retries() -> None:
    shares = iter([0.4, 0.5, 1.0] * 30)  # two starved trials, then a clean one, at every rate

    def trial(rate: float) -> dict[str, Any]:
        share = next(shares)
        loss = 0.2 if share < 0.9 or rate > 50_000 else 0.0
        return {"offered_pps": rate, "delivered_pps": rate * (1 - loss), "loss": loss, "pmd_cpu_share": share}

    result = ndr_search(trial, NdrSettings(loss=0.0, steps=6, low=Rate(5000), high=Rate(100000), retries=0), 64)
    assert 45_000 <= result.ndr_pps <= 50_000
    assert sum(t["starved"] for t in result.trials) == 2 * sum(not t["starved"] for t in result.trials)


# -- control and data at once: the updates method ------------------------------------------------
UPDATES_SPEC = """
experiments:
  - {name: updates, method: updates, pipelines: [seed-firewall, seed-nat], flows: [100, 1000],
     update_rate: 50, update_kind: set}
"""


def test_update_groups_measure_the_same_pipeline_without_and_with_changes() -> None:
    groups = plan_experiment(parse_spec(UPDATES_SPEC).experiments[0])
    assert len(groups) == 2 * 2 and {g.role for g in groups} == {"updates"}
    for group in groups:
        assert group.baseline is not None and len(group.subjects) == 1
        subject = group.subjects[0]
        assert group.baseline.config == subject.config and subject.config.blocklist == ""
        assert (group.baseline.measure, subject.measure) == ("ndr", "ndr")
        assert (group.baseline.flows, group.baseline.size) == (subject.flows, subject.size)
        assert group.baseline.update_rate == 0 and subject.update_rate == 50
        assert group.baseline.params()["update_rate"] == 0
        assert subject.params()["update_rate"] == 50 and subject.params()["update_kind"] == "set"
        assert subject.params()["pipeline"].endswith("+blocklist")
    ports = parse_spec("experiments:\n  - {method: updates, policy_ports: [lan0, wan0]}\n").experiments[0]
    assert plan_experiment(ports)[0].subjects[0].config.blocklist == "lan0"


def test_the_blocklist_is_a_set_and_a_first_rule_the_load_never_matches() -> None:
    data = with_blocklist(pipeline_data("seed-nat"))
    assert data["addresses"][BLOCKLIST] == list(BLOCKLIST_MEMBERS)
    first = data["firewall"]["rules"][0]
    assert first == {"name": BLOCKLIST, "from": "inside", "dst": f"@{BLOCKLIST}", "action": "drop"}
    assert data["firewall"]["rules"][1]["name"] == "inside-out"
    blocked = [ipaddress.ip_network(m) for m in (*BLOCKLIST_MEMBERS, *RUNTIME_MEMBERS)]
    for address in ("10.2.0.2", "10.1.0.2", "200.200.200.200"):  # sink, generator, the seed's SNAT
        assert not any(ipaddress.ip_address(address) in net for net in blocked)
    config = Config("ovs", "seed-firewall", blocklist="")
    policy = load_policy_text(policy_text(config), "x.yaml")  # valid, and one rule more
    assert [r.name for r in policy.rules][:2] == [BLOCKLIST, "inside-out"]
    assert config.label == "seed-firewall+blocklist"
    assert with_blocklist(pipeline_data("seed-firewall"), "outside")["firewall"]["rules"][0]["from"] == "outside"
    with pytest.raises(ValueError, match="no zone holds"):
        with_blocklist(pipeline_data("seed-firewall"), "nowhere")


@pytest.mark.parametrize("kind", ["set", "rule", "mixed"])
def test_every_update_changes_flows_and_a_cycle_comes_back(tmp_path: Path, kind: str) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(policy_text(Config("ovs", "seed-firewall", blocklist="")))
    table = FakeTable()
    engine = Engine([str(policy)], SwitchTarget("unix:/nonexistent", tmp_path, tmp_path),
                    table=table, record=False)
    engine.load()
    engine.reconcile()
    start = dict(table.flows)
    for cycle in range(2):
        for step in update_steps(kind):
            before, generation = dict(table.flows), engine.status.generation
            assert change_size(step.apply(engine), generation) > 0
            assert table.flows != before, step
        assert table.flows == start, cycle  # the policy is the file's again
    with pytest.raises(ValueError, match="reached no flow"):
        change_size(ChangeResult(3, {"add": 0, "change": 0, "delete": 0}, 0, 0.0), 3)
    with pytest.raises(ValueError):
        update_steps("everything")


class FakeClock:
    """Time that passes only when the update loop waits or a change takes time."""

    def __init__(self, run_for: float) -> None:
        self.now, self.end = 0.0, run_for

    def __call__(self) -> float:
        return self.now

    def wait(self, timeout: float) -> bool:
        self.now += timeout
        return self.now >= self.end


def _loop(rate: float, seconds: float, change_s: float, fail_every: int = 0) -> dict[str, Any]:
    clock = FakeClock(seconds)

    def step(i: int) -> int:
        clock.now += change_s
        if fail_every and i % fail_every == fail_every - 1:
            raise RuntimeError("ovs-ofctl refused")
        return 1

    log = UpdateLog(rate)
    run_updates(step, log, clock.wait, clock)
    return update_figures(log)


def test_an_updater_faster_than_the_rate_keeps_the_schedule() -> None:
    f = _loop(rate=100, seconds=10, change_s=0.004)
    assert f["updates_requested"] == 1001 and f["updates_applied"] == pytest.approx(1000, abs=2)
    assert f["updates_per_s"] == pytest.approx(100, rel=0.01) and f["updates_kept_up"] is True
    assert f["update_latency_p50_ms"] == pytest.approx(4) and f["update_lag_max_ms"] == pytest.approx(4)
    assert f["updates_failed"] == 0 and f["update_flow_mods"] == f["updates_applied"]


def test_a_slow_updater_falls_behind_and_says_so() -> None:
    f = _loop(rate=100, seconds=10, change_s=0.025)  # 25 ms a change: 40/s at most, serially
    assert f["updates_per_s"] == pytest.approx(40, rel=0.02) and f["updates_kept_up"] is False
    assert f["updates_requested"] == 1001 and f["update_lag_max_ms"] > 5000
    assert f["update_latency_p99_ms"] == pytest.approx(25)


def test_failed_updates_are_counted_and_reported() -> None:
    f = _loop(rate=10, seconds=10, change_s=0.001, fail_every=4)
    assert f["updates_failed"] == 25 and f["updates_applied"] == 75
    assert f["updates_kept_up"] is False and "ovs-ofctl refused" in f["update_errors"][0]
    assert len(f["update_errors"]) == 5


def test_queued_changes_are_submitted_on_schedule_without_waiting_for_answers() -> None:
    """With a queueing engine the loop submits change i at its due time, in order, while the
    answers to earlier ones are still outstanding; every answer is counted once it comes."""
    clock = FakeClock(1.0)
    answer = threading.Event()
    submitted: list[tuple[int, float]] = []

    def stop(timeout: float) -> bool:
        done = clock.wait(timeout)
        if done:
            answer.set()  # the engine answers everything only after the last submission
        return done

    def step(i: int) -> Callable[[], int]:
        submitted.append((i, clock.now))

        def wait() -> int:
            assert answer.wait(10)
            return 2
        return wait

    log = UpdateLog(50)
    run_updates(step, log, stop, clock)
    f = update_figures(log)
    assert [i for i, _ in submitted] == list(range(len(submitted))) and len(submitted) == 50
    assert all(at == pytest.approx(i / 50) for i, at in submitted)  # none held up by an answer
    assert f["updates_applied"] == 50 and f["updates_failed"] == 0 and f["update_flow_mods"] == 100


def test_seed_pipelines_are_found_in_the_first_directory_that_has_them(tmp_path: Path) -> None:
    checkout, etc = tmp_path / "policies", tmp_path / "etc"
    checkout.mkdir()
    etc.mkdir()
    (etc / "seed-nat.yaml").write_text("version: 1\n")
    assert seed_policy_path("seed-nat", (checkout, etc)) == etc / "seed-nat.yaml"
    (checkout / "seed-nat.yaml").write_text("version: 1\n")
    assert seed_policy_path("seed-nat", (checkout, etc)) == checkout / "seed-nat.yaml"
    with pytest.raises(FileNotFoundError, match=f"no seed-firewall.yaml in {checkout} or {etc}"):
        seed_policy_path("seed-firewall", (checkout, etc))


def test_a_checkout_uses_its_own_seed_policies() -> None:
    assert seed_policy_path("seed-firewall") == Path(__file__).resolve().parents[2] / "policies" / "seed-firewall.yaml"
