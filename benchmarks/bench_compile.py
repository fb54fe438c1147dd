"""How compile time and flow count grow with policy size.

Table 1: generated policies of 1k, 10k and 100k filler rules
(`ovsmgr.policy.generate.generate_policy`), timing load (YAML parse, validation,
resolution: `load_policy_text`) and compile (`compile_policy`) separately. Each
size is measured several times and the median is reported; the per-rule cost is
compared with the smallest size, so linear growth reads as a ratio near 1.

Each run is a fresh process, as an `ovsmgr check` or `compile` is: one process
running every size in turn slowed its later, larger runs with the heap the
earlier ones left behind. On a shared machine the speed of the CPU drifts (here
the same 1k-rule compile took 20 or 40 µs per rule from one run to the next), so
the sizes take turns (five runs of 1k, two of 10k, one of 100k; three such turns)
instead of all runs of one size and then the next: a slow stretch then touches
every size, and the medians compare like with like.

Table 2: flow count of ONE rule whose src (and dst) is an address set of S
prefixes and whose services are K ports. A cross product would make S*K (or
S*S*K) flows; the compiler makes a conjunctive match instead, which should grow
with the sum S+K (2S+K). The prefixes and ports are spaced so that none can be
merged into a shorter prefix or a port range.

Run from the repository root (no root needed):

    .venv/bin/python benchmarks/bench_compile.py

Instruction counts, which other processes on the machine do not change (two
counts: load, then compile; divide by RULES):

    PYTHONHASHSEED=0 valgrind --tool=callgrind --collect-atstart=no \
        --toggle-collect=_PyEval_CallTracing --dump-after=_PyEval_CallTracing \
        --callgrind-out-file=/tmp/cg.out .venv/bin/python benchmarks/bench_compile.py --instructions 1000
    grep -h ^totals: /tmp/cg.out.1 /tmp/cg.out.2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

from ovsmgr.compiler import CompiledPolicy, compile_policy
from ovsmgr.compiler.ids import rule_id
from ovsmgr.policy import ResolvedPolicy, load_policy_text
from ovsmgr.policy.generate import KINDS, generate_policy

T = TypeVar("T")
SIZES = (1_000, 10_000, 100_000)
LIST_SIZES = ((10, 10), (100, 10), (100, 100), (1000, 100))

HEADER = """\
version: 1
switch:
  bridge: br0
  datapath: netdev
  ports:
    inside: {ofport: 1}
    outside: {ofport: 2}
  links:
    - [inside, outside]
zones:
  inside: {ports: [inside]}
  outside: {ports: [outside]}
"""


def timed(fn: Callable[[], T], runs: int) -> tuple[float, float, T]:
    """Median wall and CPU seconds of `runs` calls, and the last result. GC runs between
    calls, not in them. CPU time is reported too: on a shared machine wall time also
    counts other processes."""
    walls, cpus, result = [], [], None
    for _ in range(runs):
        wall, cpu, result = _once(fn)
        walls.append(wall)
        cpus.append(cpu)
    assert result is not None
    return statistics.median(walls), statistics.median(cpus), result


def _once(fn: Callable[[], T]) -> tuple[float, float, T]:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


TURNS = 3


def runs_per_turn(rules: int) -> int:
    """Small sizes run more often: a run of 1k rules takes a tenth of a second, and the machine's
    speed drifts from run to run by more than the differences measured."""
    return 5 if rules <= 1_000 else 2 if rules <= 10_000 else 1


def measure_once(rules: int, kind: str, seed: int) -> dict[str, float]:
    """Load and compile one generated policy in this process, after a small untimed warm-up (the
    first call of anything pays for imports and first-time setup, which would land on 1k)."""
    compile_policy(load_policy_text(generate_policy(10, kind, seed), "warm-up.yaml"))  # type: ignore[arg-type]
    rule_id.cache_clear()
    text = generate_policy(rules, kind, seed)  # type: ignore[arg-type]
    load_wall, load_cpu, policy = _once(partial(load_policy_text, text, "generated.yaml"))
    compile_wall, compile_cpu, compiled = _once(partial(compile_policy, policy))
    return {"load_wall": load_wall, "load_cpu": load_cpu, "compile_wall": compile_wall,
            "compile_cpu": compile_cpu, "flows": len(compiled.flowset)}


def instructions_run(rules: int, kind: str, seed: int) -> None:
    """Load, then compile, each inside `sys.call_tracing`, for valgrind to count (see the module doc):
    `--toggle-collect=_PyEval_CallTracing` counts only inside those calls, and
    `--dump-after=_PyEval_CallTracing` writes one count for each."""
    text = generate_policy(rules, kind, seed)  # type: ignore[arg-type]
    policy = sys.call_tracing(load_policy_text, (text, "generated.yaml"))
    sys.call_tracing(compile_policy, (policy,))


def _measure_in_turns(sizes: Sequence[int], kind: str, seed: int) -> dict[int, list[dict[str, float]]]:
    """Each run in a fresh process, as `ovsmgr check` or `compile` would be: in one process, the
    heap left by earlier runs (freed blocks scattered among live ones) slows later, larger runs."""
    runs: dict[int, list[dict[str, float]]] = defaultdict(list)
    for _turn in range(TURNS):
        for rules in sizes:
            for _run in range(runs_per_turn(rules)):
                out = subprocess.run(
                    [sys.executable, __file__, "--one", str(rules), "--kind", kind, "--seed", str(seed)],
                    check=True, capture_output=True, text=True).stdout
                runs[rules].append(json.loads(out))
    return runs


def scale_table(sizes: Sequence[int], kind: str, seed: int) -> list[str]:
    lines = [
        f"kind={kind}, seed={seed}; {TURNS} turns of every size (runs per turn: "
        + ", ".join(f"{runs_per_turn(n)} of {n:,}" for n in sizes)
        + "), each run in a fresh process, medians; per-rule figures and ratios from CPU time",
        "",
        "| rules | flows | load s (CPU s) | compile s (CPU s) | load µs/rule | compile µs/rule "
        "| load per-rule vs first | compile per-rule vs first |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    runs = _measure_in_turns(sizes, kind, seed)
    first: tuple[float, float] | None = None
    for rules in sizes:
        load_s, load_cpu, compile_s, compile_cpu = (
            statistics.median(run[key] for run in runs[rules])
            for key in ("load_wall", "load_cpu", "compile_wall", "compile_cpu"))
        per_load, per_compile = load_cpu / rules * 1e6, compile_cpu / rules * 1e6
        first = first or (per_load, per_compile)
        lines.append(
            f"| {rules:,} | {runs[rules][0]['flows']:,.0f} | {load_s:.2f} ({load_cpu:.2f}) "
            f"| {compile_s:.2f} ({compile_cpu:.2f}) | {per_load:.0f} | {per_compile:.0f} "
            f"| {per_load / first[0]:.2f}x | {per_compile / first[1]:.2f}x |")
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def _prefixes(count: int, first_octet: int) -> list[str]:
    """`count` /24s, every other one, so no two can merge into a /23."""
    return [f"{first_octet}.{(2 * i) >> 8}.{(2 * i) & 0xFF}.0/24" for i in range(count)]


def _ports(count: int) -> list[str]:
    """`count` odd TCP ports from 1001: no two adjacent, so no port range forms."""
    return [f"tcp/{1001 + 2 * i}" for i in range(count)]


def list_policy(sources: int, services: int, destinations: int = 0) -> str:
    """One drop rule with src @srcs (and dst @dsts) x services @svcs, then an allow."""
    sets = [f"  srcs: [{', '.join(_prefixes(sources, 10))}]"]
    match = 'src: "@srcs", '
    if destinations:
        sets.append(f"  dsts: [{', '.join(_prefixes(destinations, 172))}]")
        match += 'dst: "@dsts", '
    return (
        HEADER
        + "addresses:\n" + "\n".join(sets) + "\n"
        + f"services:\n  svcs: [{', '.join(_ports(services))}]\n"
        + "firewall:\n  default: drop\n  rules:\n"
        + f"    - {{name: lists, from: inside, {match}services: [svcs], action: drop}}\n"
        + "    - {name: allow-rest, from: inside, action: allow}\n"
    )


def rule_flows(compiled: CompiledPolicy, name: str) -> int:
    return sum(1 for flow in compiled.flowset if flow.rule == name)


def list_table(pairs: Sequence[tuple[int, int]]) -> list[str]:
    lines = [
        "| shape | S | K | flows of the rule | product | sum | compile s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s, k in pairs:
        for shape, dsts, product, total in (("src x services", 0, s * k, s + k),
                                            ("src x dst x services", s, s * s * k, 2 * s + k)):
            policy: ResolvedPolicy = load_policy_text(list_policy(s, k, dsts), "lists.yaml")
            seconds, _, compiled = timed(partial(compile_policy, policy), 1)
            lines.append(f"| {shape} | {s:,} | {k:,} | {rule_flows(compiled, 'lists'):,} "
                         f"| {product:,} | {total:,} | {seconds:.3f} |")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--kind", choices=KINDS, default="mixed",
                        help="generated rule kind (dport alone stops at 91,072 rules)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", type=int, metavar="RULES", help=argparse.SUPPRESS)
    parser.add_argument("--instructions", type=int, metavar="RULES",
                        help="only load and compile a policy of RULES rules, for valgrind (see above)")
    args = parser.parse_args(argv)
    if args.one:  # one run, in the process the table's runs start
        print(json.dumps(measure_once(args.one, args.kind, args.seed)))
        return
    if args.instructions:
        instructions_run(args.instructions, args.kind, args.seed)
        return
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d')}, load average before: {os.getloadavg()[0]:.2f}\n")
    print("\n".join(scale_table(args.sizes, args.kind, args.seed)))
    print()
    print("\n".join(list_table(LIST_SIZES)))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
