"""How validation time grows with the size of a policy.

Generates policies of 1k, 2k, 5k and 10k rules (`generate_policy(N, "mixed")`:
half TCP destination port rules, half source address rules, shuffled, as in
the seed's iptables scaling study) and times `load_policy_text` on each: YAML,
shape, names, and the analysis, including the shadowing check over every rule.
Each size is timed `--repeat` times; the table shows medians of wall-clock and
of CPU time, per policy and per rule, and the ratio of the per-rule time at the
largest size to that at the smallest (linear growth gives about 1.0). CPU time
is shown because wall-clock time on a shared machine also counts other
processes.

Not a test: run it by hand.

    .venv/bin/python benchmarks/bench_validate.py
    .venv/bin/python benchmarks/bench_validate.py --sizes 1000 10000 100000 --kind dport
    .venv/bin/python benchmarks/bench_validate.py --profile 10000     # cProfile one load
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from dataclasses import dataclass

from ovsmgr.policy import load_policy_text
from ovsmgr.policy.generate import KINDS, Kind, generate_policy


@dataclass(frozen=True)
class Timing:
    rules: int
    wall: float
    cpu: float

    def per_rule_us(self, cpu: bool = False) -> float:
        return (self.cpu if cpu else self.wall) / self.rules * 1e6


def time_validation(rules: int, kind: Kind, repeat: int) -> Timing:
    text = generate_policy(rules, kind)
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        policy = load_policy_text(text, f"generated-{rules}.yaml")
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    if len(policy.rules) != rules + 1 or policy.diagnostics:
        sys.exit(f"generated policy of {rules} rules did not check clean: {policy.diagnostics[:3]}")
    return Timing(rules, statistics.median(walls), statistics.median(cpus))


def print_table(timings: list[Timing], kind: str, repeat: int) -> None:
    print(f"load_policy_text on generated policies (kind {kind}; median of {repeat})")
    print(f"{'rules':>8} {'seconds':>9} {'us/rule':>9} {'cpu s':>9} {'cpu us/rule':>12}")
    for t in timings:
        print(f"{t.rules:>8} {t.wall:>9.3f} {t.per_rule_us():>9.1f} {t.cpu:>9.3f} {t.per_rule_us(cpu=True):>12.1f}")
    first, last = timings[0], timings[-1]
    print(f"per-rule time at {last.rules} vs {first.rules} rules: "
          f"{last.per_rule_us() / first.per_rule_us():.2f} (wall), "
          f"{last.per_rule_us(cpu=True) / first.per_rule_us(cpu=True):.2f} (cpu); linear growth is about 1.0")


def profile(rules: int, kind: Kind) -> None:
    text = generate_policy(rules, kind)
    profiler = cProfile.Profile()
    profiler.runcall(load_policy_text, text)
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000, 10000])
    parser.add_argument("--kind", choices=KINDS, default="mixed")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", type=int, metavar="RULES", help="profile one load instead")
    args = parser.parse_args()
    if args.profile:
        profile(args.profile, args.kind)
        return
    time_validation(200, args.kind, 1)  # warm up: imports, pydantic's validators, caches
    print_table([time_validation(n, args.kind, args.repeat) for n in sorted(args.sizes)], args.kind, args.repeat)


if __name__ == "__main__":
    main()
