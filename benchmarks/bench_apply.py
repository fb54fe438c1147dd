"""ovsmgr's apply against a raw `ovs-ofctl --bundle add-flows` of the same flows.

For generated policies of 10k and 100k rules (`generate_policy(N, "mixed")`):

- ovsmgr: `compile_policy` + `apply_policy` (dump, diff, one bundle through
  ovs-ofctl, OVSDB writes, state file) onto a bridge with an empty flow table;
  apply alone (already compiled) is reported too;
- raw: `ovs-ofctl -O OpenFlow15 --bundle add-flows unix:<mgmt> FILE`, FILE being
  `render_flows(compiled)` written beforehand, onto an empty flow table.

The two alternate (which goes first swaps every repetition) and the flow table is
emptied with `ovs-ofctl del-flows` before each, then left to settle untimed: OVS 3.1
frees deleted flows in its RCU thread, at a cost quadratic in their number when they
were loaded in the rendered file's order (55 s and more of CPU for 150k flows), and
the next push would wait for it (see `Bench.clear` and benchmarks/README.md). The
flow count is checked after each push. Medians of 3 repetitions at 10k, 2 at 100k.

Incremental: 1% of the 10k policy's rules get a new port or source; starting each
time from the old flows (raw-pushed), ovsmgr applies the new policy (compile +
apply, and apply alone) against a raw bundle of only the changed flows
(`delete_strict` of the old ones, `add` of the new ones), diffed from the two
rendered flow files.

Needs root: builds its own lab switch (`Lab`, netdev datapath) and takes it down.

    sudo .venv/bin/python benchmarks/bench_apply.py
    sudo .venv/bin/python benchmarks/bench_apply.py --profile 100000   # cProfile one apply
    sudo .venv/bin/python benchmarks/bench_apply.py --breakdown 100000 # time each apply step
    sudo .venv/bin/python benchmarks/bench_apply.py --breakdown 10000 --incremental
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import os
import pstats
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ovsmgr.compiler import CompiledPolicy, compile_policy
from ovsmgr.lab.ovs import Lab, LabPort, LabSpec
from ovsmgr.policy import ResolvedPolicy, load_policy_text
from ovsmgr.policy.generate import generate_policy
from ovsmgr.render.text import render_flows
from ovsmgr.southbound.target import SwitchTarget
from ovsmgr.switch.apply import apply_policy

OFCTL = ["ovs-ofctl", "-O", "OpenFlow15"]
REPETITIONS = {10_000: 3, 100_000: 2}
CHANGED_FRACTION = 0.01


@contextmanager
def bench_lab() -> Iterator[Lab]:
    name = f"b{secrets.token_hex(3)}"
    lab = Lab(name, tempfile.mkdtemp(prefix=f"bench-apply-{name}-", dir="/run"))
    ports = [LabPort("inside", 1), LabPort("outside", 2)]
    try:
        lab.up(LabSpec("br0", "netdev", ports, name))
        yield lab
    finally:
        lab.down()
        shutil.rmtree(lab.dir, ignore_errors=True)


class Bench:
    def __init__(self, lab: Lab, workdir: Path):
        self.lab = lab
        self.workdir = workdir
        self.target = SwitchTarget(lab.db_endpoint, lab.dir, lab.dir, lab=lab.name)
        self.mgmt = f"unix:{lab.mgmt_socket('br0')}"

    def ofctl(self, *args: str) -> str:
        proc = subprocess.run([*OFCTL, *args], capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"ovs-ofctl {args[0]}: {proc.stderr.strip()}")
        return proc.stdout

    def clear(self) -> float:
        """Empty the flow table and wait until ovs-vswitchd has digested it; returns the wait.

        OVS 3.1 frees deleted rules in its RCU thread (``urcu``), at a cost that grows with
        the square of their number when they were loaded in the rendered file's order (about
        0.3 s of CPU for 15k flows, 6 s for 60k, 55 s and more for 150k); the next flow_mod
        waits for it. Timing a push before that is done would
        measure the previous deletion, so this waits until the thread's CPU time stops
        growing for 2 s (less is not enough on a loaded machine, where the thread may
        not get a CPU for a while).
        """
        self.ofctl("del-flows", self.mgmt)
        start = time.perf_counter()
        last, still = self._urcu_cpu(), 0
        while still < 8:
            time.sleep(0.25)
            now = self._urcu_cpu()
            still = still + 1 if now == last else 0
            last = now
        return time.perf_counter() - start

    def _urcu_cpu(self) -> int:
        """CPU ticks used so far by ovs-vswitchd's RCU thread."""
        pid = self.lab.status()["daemons"]["ovs-vswitchd"]["pid"]
        for task in Path(f"/proc/{pid}/task").iterdir():
            if (task / "comm").read_text().startswith("urcu"):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                return int(fields[11]) + int(fields[12])  # utime + stime
        raise RuntimeError("ovs-vswitchd has no urcu thread")

    def flow_count(self) -> int:
        found = re.search(r"flow_count=(\d+)", self.ofctl("dump-aggregate", self.mgmt))
        assert found, "no flow_count in dump-aggregate"
        return int(found[1])

    def raw_push(self, path: Path) -> float:
        start = time.perf_counter()
        self.ofctl("--bundle", "add-flows", self.mgmt, str(path))
        return time.perf_counter() - start

    def ovsmgr_apply(self, policy: ResolvedPolicy) -> tuple[float, float]:
        """(compile + apply, apply alone) seconds."""
        start = time.perf_counter()
        compiled = compile_policy(policy)
        compiled_at = time.perf_counter()
        apply_policy(compiled, self.target)
        end = time.perf_counter()
        return end - start, end - compiled_at

    def write(self, name: str, text: str) -> Path:
        path = self.workdir / name
        path.write_text(text)
        return path


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def full_apply(bench: Bench, rules: int, repetitions: int, seed: int) -> str:
    text = generate_policy(rules, "mixed", seed)
    start = time.perf_counter()
    policy = load_policy_text(text, f"generated-{rules}.yaml")
    load_s = time.perf_counter() - start
    compiled = compile_policy(policy)
    flows = len(compiled.flowset)
    flow_file = bench.write(f"full-{rules}.flows", render_flows(compiled))
    e2e: list[float] = []
    apply_only: list[float] = []
    raw: list[float] = []
    settle: dict[str, list[float]] = {"ovsmgr": [], "raw": []}
    previous = None  # who pushed the flows the next clear deletes (None: another size's)
    for rep in range(repetitions):
        steps: list[tuple[str, Callable[[], None]]] = [
            ("ovsmgr", lambda: _record_pair(bench.ovsmgr_apply(policy), e2e, apply_only)),
            ("raw", lambda: raw.append(bench.raw_push(flow_file))),
        ]
        for pusher, step in steps if rep % 2 == 0 else steps[::-1]:
            waited = bench.clear()
            if previous:
                settle[previous].append(waited)
            step()
            previous = pusher
            assert bench.flow_count() == flows, f"{bench.flow_count()} flows, expected {flows}"
        print(f"  {rules} rep {rep}: ovsmgr {e2e[-1]:.2f} s (apply {apply_only[-1]:.2f}), "
              f"raw {raw[-1]:.2f} s; waits after del-flows of ovsmgr's / the raw file's flows: "
              f"{[round(w, 1) for w in settle['ovsmgr']]} / {[round(w, 1) for w in settle['raw']]} s",
              file=sys.stderr, flush=True)
    digest = " | ".join(f"{median(settle[k]):.1f}" if settle[k] else "-" for k in ("ovsmgr", "raw"))
    return (f"| {rules:,} | {flows:,} | {load_s:.2f} | {median(e2e):.2f} | {median(apply_only):.2f} "
            f"| {median(raw):.2f} | {median(e2e) / median(raw):.1f}x "
            f"| {median(apply_only) / median(raw):.1f}x | {repetitions} | {digest} |")


def _record_pair(pair: tuple[float, float], e2e: list[float], apply_only: list[float]) -> None:
    e2e.append(pair[0])
    apply_only.append(pair[1])


def change_rules(text: str, fraction: float) -> tuple[str, int]:
    """Give every (1/fraction)-th generated drop rule a new port (tcp/10000 and up) or source
    (198.18.0.0/15): values the generator never uses, so the rules stay disjoint."""
    lines = text.splitlines(keepends=True)
    rule_lines = [i for i, line in enumerate(lines) if "action: drop" in line]
    step = round(1 / fraction)
    changed = 0
    for n, i in enumerate(rule_lines[::step]):
        line = lines[i]
        if "services: [" in line:
            new = re.sub(r"services: \[\w+/\d+\]", f"services: [tcp/{10000 + n}]", line)
        else:
            new = re.sub(r"src: [\d.]+", f"src: 198.18.{n >> 8}.{n & 0xFF}", line)
        assert new != line, line
        lines[i] = new
        changed += 1
    return "".join(lines), changed


def flow_lines(text: str) -> set[str]:
    return {line for line in text.splitlines() if line and not line.startswith("#")}


def diff_bundle(old: str, new: str) -> tuple[str, int, int]:
    """ofctl bundle text that turns the old flows into the new ones: deletes, then adds."""
    old_lines, new_lines = flow_lines(old), flow_lines(new)
    deletes = []
    for line in sorted(old_lines - new_lines):
        head = line.partition(" actions=")[0]
        deletes.append("delete_strict " + re.sub(r"^cookie=0x[0-9a-f]+,", "", head))
    adds = [f"add {line}" for line in sorted(new_lines - old_lines)]
    return "\n".join(deletes + adds) + "\n", len(deletes), len(adds)


def incremental_apply(bench: Bench, rules: int, repetitions: int, seed: int) -> str:
    text = generate_policy(rules, "mixed", seed)
    new_text, changed = change_rules(text, CHANGED_FRACTION)
    old_policy = load_policy_text(text, "old.yaml")
    new_policy = load_policy_text(new_text, "new.yaml")
    old_flows = render_flows(compile_policy(old_policy))
    new_compiled: CompiledPolicy = compile_policy(new_policy)
    old_file = bench.write("incr-old.flows", old_flows)
    bundle, deletes, adds = diff_bundle(old_flows, render_flows(new_compiled))
    diff_file = bench.write("incr-diff.flows", bundle)
    want = len(new_compiled.flowset)
    e2e: list[float] = []
    apply_only: list[float] = []
    raw: list[float] = []
    for rep in range(repetitions):
        steps: list[Callable[[], None]] = [
            lambda: _record_pair(bench.ovsmgr_apply(new_policy), e2e, apply_only),
            lambda: raw.append(bench.raw_push(diff_file)),
        ]
        for step in steps if rep % 2 == 0 else steps[::-1]:
            bench.clear()
            bench.raw_push(old_file)
            step()
            assert bench.flow_count() == want, f"{bench.flow_count()} flows, expected {want}"
        print(f"  incremental rep {rep}: ovsmgr {e2e[-1]:.3f} s (apply {apply_only[-1]:.3f}), "
              f"raw {raw[-1]:.3f} s", file=sys.stderr, flush=True)
    return (f"| {rules:,} rules, {changed} changed | -{deletes} +{adds} flows "
            f"| {median(e2e):.3f} | {median(apply_only):.3f} | {median(raw):.3f} "
            f"| {median(e2e) / median(raw):.0f}x | {median(apply_only) / median(raw):.0f}x "
            f"| {repetitions} |")


def profile_apply(bench: Bench, rules: int, seed: int, top: int) -> None:
    """cProfile of compile + apply onto an empty flow table, by cumulative and own time."""
    policy = load_policy_text(generate_policy(rules, "mixed", seed), f"generated-{rules}.yaml")
    bench.clear()
    profiler = cProfile.Profile()
    profiler.enable()
    compiled = compile_policy(policy)
    apply_policy(compiled, bench.target)
    profiler.disable()
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(order).print_stats(top)
        print(out.getvalue())


BREAKDOWN = (
    ("ovsmgr.switch.apply", "SwitchDB.__init__", "OVSDB connect"),
    ("ovsmgr.switch.apply", "SwitchDB.bridges", "OVSDB bridges()"),
    ("ovsmgr.switch.apply", "check_lockout", "check_lockout (would it cut management access?)"),
    ("ovsmgr.switch.apply", "OfctlFlowTable.dump", "dump flows (ovs-ofctl dump-flows + parse)"),
    ("ovsmgr.switch.apply", "desired_entries", "desired_entries (compiled flows as FlowEntry)"),
    ("ovsmgr.switch.plan", "CompiledPolicy.flows", "  of which compiled.flows (FlowSet.sorted)"),
    ("ovsmgr.switch.plan", "flow_text", "  of which flow_text (render each flow)"),
    ("ovsmgr.switch.plan", "parse_flow_line", "  of which parse_flow_line (parse it back)"),
    ("ovsmgr.switch.plan", "match_text", "  of which match_text (render each match)"),
    ("ovsmgr.switch.plan", "actions_text", "  of which actions_text (render each action list)"),
    ("ovsmgr.switch.apply", "make_plan", "make_plan (diff)"),
    ("ovsmgr.switch.apply", "Plan.bundle", "Plan.bundle (sort + add_line/delete_line)"),
    ("ovsmgr.switch.apply", "OfctlFlowTable.push", "push (ovs-ofctl --bundle add-flows)"),
    ("ovsmgr.switch.apply", "_ensure_switch", "_ensure_switch (OVSDB ports, zone limit)"),
    ("ovsmgr.switch.apply", "ensure_switch_settings", "ensure_switch_settings (OVSDB ports, zone limit)"),
    ("ovsmgr.switch.apply", "_record", "_record (state for file and external_ids)"),
    ("ovsmgr.switch.apply", "policy_digest", "  of which policy_digest (model_dump_json + sha256)"),
    ("ovsmgr.switch.apply", "flows_digest", "  of which flows_digest (sort + sha256)"),
    ("ovsmgr.switch.apply", "SwitchDB.set_external_ids", "OVSDB set_external_ids"),
    ("ovsmgr.switch.apply", "_write_json", "write state file (json.dumps)"),
    ("ovsmgr.switch.apply", "SwitchDB.close", "OVSDB close"),
)


def _resolve(module: str, dotted: str) -> tuple[object, str]:
    """(owner, attribute) of `Class.attr` reached through `module`, or of `module.func`."""
    owner: object = sys.modules[module]
    *path, attr = dotted.split(".")
    for name in path:
        owner = getattr(owner, name)
    return owner, attr


def breakdown_apply(bench: Bench, rules: int, seed: int, incremental: bool) -> None:
    """Wall time of each step of one real `apply_policy` onto an empty flow table (or, with
    `incremental`, onto the flows of the policy before 1% of its rules changed), by wrapping
    the functions it calls with timers (no profiler overhead; nothing is changed)."""
    import importlib

    for module in {m for m, _, _ in BREAKDOWN}:
        importlib.import_module(module)
    text = generate_policy(rules, "mixed", seed)
    bench.clear()
    if incremental:
        old = bench.write("old.flows", render_flows(compile_policy(load_policy_text(text, "old.yaml"))))
        text = change_rules(text, CHANGED_FRACTION)[0]
        bench.raw_push(old)
    policy = load_policy_text(text, f"generated-{rules}.yaml")
    spent: dict[str, float] = dict.fromkeys((label for _, _, label in BREAKDOWN), 0.0)
    originals = []
    for module, dotted, label in BREAKDOWN:
        owner, attr = _resolve(module, dotted)
        original = owner.__dict__.get(attr) if isinstance(owner, type) else getattr(owner, attr, None)
        if original is None:  # this version of ovsmgr does not call it
            del spent[label]
            continue
        originals.append((owner, attr, original))
        setattr(owner, attr, _wrap(original, label, spent, owner, attr))
    try:
        start = time.perf_counter()
        compiled = compile_policy(policy)
        compiled_at = time.perf_counter()
        apply_policy(compiled, bench.target)
        end = time.perf_counter()
    finally:
        for owner, attr, original in reversed(originals):
            setattr(owner, attr, original)
    print(f"{rules:,} rules, {len(compiled.flowset):,} flows"
          f"{', 1% of the rules changed' if incremental else ''}: compile {compiled_at - start:.2f} s, "
          f"apply_policy {end - compiled_at:.2f} s\n")
    print("| step of apply_policy | seconds |\n|---|---:|")
    for label, seconds in spent.items():
        print(f"| {label} | {seconds:.3f} |")
    listed = sum(v for k, v in spent.items() if not k.startswith("  "))
    print(f"| (not in a listed step) | {end - compiled_at - listed:.3f} |")


def _wrap(original: object, label: str, spent: dict[str, float], owner: object, attr: str) -> object:
    """`original` (function, property or cached_property) with a timer around its code."""
    if isinstance(original, property):
        assert original.fget is not None
        return property(_timer(original.fget, label, spent))
    if isinstance(original, functools.cached_property):
        assert isinstance(owner, type)
        cached = functools.cached_property(_timer(original.func, label, spent))
        cached.__set_name__(owner, attr)
        return cached
    assert callable(original), original
    return _timer(original, label, spent)


def _timer(fn: Callable[..., object], label: str, spent: dict[str, float]) -> Callable[..., object]:
    def timed(*args: object, **kwargs: object) -> object:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[label] += time.perf_counter() - start
    return timed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(REPETITIONS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", type=int, metavar="RULES",
                        help="only profile one compile + apply of RULES rules")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--breakdown", type=int, metavar="RULES",
                        help="only time each step of one apply of RULES rules")
    parser.add_argument("--incremental", action="store_true",
                        help="with --breakdown: apply a 1%% change onto the unchanged policy's flows")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench_apply needs root (it builds a lab switch in network namespaces)")
    with tempfile.TemporaryDirectory(prefix="ovsmgr-bench-") as workdir, bench_lab() as lab:
        bench = Bench(lab, Path(workdir))
        if args.profile:
            profile_apply(bench, args.profile, args.seed, args.top)
            return
        if args.breakdown:
            breakdown_apply(bench, args.breakdown, args.seed, args.incremental)
            return
        print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, load average before: "
              f"{os.getloadavg()[0]:.2f}\n")
        print("| rules | flows | load s (not in ovsmgr) | ovsmgr compile+apply s | ovsmgr apply s "
              "| raw ofctl bundle s | ratio compile+apply / raw | ratio apply / raw | reps "
              "| untimed: OVS digesting del-flows of ovsmgr's flows s | of the raw file's flows s |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for rules in args.sizes:
            print(full_apply(bench, rules, REPETITIONS.get(rules, 2), args.seed), flush=True)
        print()
        print("| change | flows changed | ovsmgr compile+apply s | ovsmgr apply s | raw ofctl bundle s "
              "| ratio compile+apply / raw | ratio apply / raw | reps |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        print(incremental_apply(bench, 10_000, 3, args.seed), flush=True)
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
