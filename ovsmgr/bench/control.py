"""Control-plane benchmarks: compile time, apply time against a raw bundle, incremental updates.

For each rule count N (policies from `ovsmgr generate`), on a netdev lab:

- ``load_s``/``compile_s``: parsing and validating the YAML, then compiling it;
- ``apply_s``: `apply_policy` onto an empty flow table (dump, diff, one bundle,
  OVSDB writes, state file), against ``raw_s``: ``ovs-ofctl --bundle add-flows``
  of the same rendered flows; ``flows_per_s`` for both;
- ``incremental_s``: applying the policy with one rule changed (its port or
  source moved) over the old one, against ``raw_incremental_s``: a raw bundle of
  exactly the changed flows (computed beforehand, untimed).

The two sides alternate (ovsmgr first on even repetitions), and the table is
emptied and left to settle untimed before each full push: OVS frees deleted
flows in its RCU thread, and the next push would otherwise wait for that.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from ovsmgr.bench.testbed import OvsTestbed
from ovsmgr.compiler import CompiledPolicy, compile_policy
from ovsmgr.policy import load_policy_text
from ovsmgr.policy.generate import Kind, generate_policy
from ovsmgr.render.ofctl import bundle_text
from ovsmgr.render.text import render_flows
from ovsmgr.southbound.openflow import InstalledFlow, decode_flow
from ovsmgr.switch.apply import apply_policy
from ovsmgr.switch.plan import desired_flows, make_plan

OFCTL = ["ovs-ofctl", "-O", "OpenFlow15"]


def changed_policy(text: str) -> str:
    """The generated policy with its first filler rule changed (another port or source)."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if "name: drop-" not in line:
            continue
        if (port := re.search(r"services: \[(tcp|udp)/(\d+)\]", line)) is not None:
            new = 20000 + (int(port[2]) - 20000 + 1) % 45536
            lines[i] = line.replace(port[0], f"services: [{port[1]}/{new}]")
        elif (src := re.search(r"src: 100\.(\d+)\.(\d+)\.(\d+)", line)) is not None:
            lines[i] = line.replace(src[0], f"src: 100.{src[1]}.{src[2]}.{(int(src[3]) + 1) % 255 or 1}")
        lines[i] = lines[i].replace("name: drop-", "name: changed-drop-", 1)
        break
    return "".join(lines)


class ControlBench:
    def __init__(self, bed: OvsTestbed) -> None:
        self.bed = bed
        self.mgmt = f"unix:{bed.lab.mgmt_socket(bed.bridge)}"

    def ofctl(self, *args: str, input: str | None = None) -> str:
        proc = subprocess.run([*OFCTL, *args], input=input, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"ovs-ofctl {args[0]}: {proc.stderr.strip()}")
        return proc.stdout

    def clear(self) -> None:
        """Empty the table and wait until ovs-vswitchd's RCU thread stops freeing flows."""
        self.ofctl("del-flows", self.mgmt)
        last, still = self._urcu_cpu(), 0
        while still < 2:
            time.sleep(0.2)
            now = self._urcu_cpu()
            still = still + 1 if now == last else 0
            last = now

    def _urcu_cpu(self) -> int:
        pid = self.bed.vswitchd_pid()
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                if (task / "comm").read_text().startswith("urcu"):
                    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                    return int(fields[11]) + int(fields[12])
            except OSError:
                continue
        return 0

    def flow_count(self) -> int:
        found = re.search(r"flow_count=(\d+)", self.ofctl("dump-aggregate", self.mgmt))
        return int(found[1]) if found else -1

    def timed(self, action: Callable[[], object]) -> float:
        start = time.perf_counter()
        action()
        return time.perf_counter() - start

    def full(self, compiled: CompiledPolicy, flows_file: Path, ovsmgr_first: bool) -> tuple[float, float]:
        """(ovsmgr apply seconds, raw bundle seconds) onto an empty table."""
        results: dict[str, float] = {}
        order = ("ovsmgr", "raw") if ovsmgr_first else ("raw", "ovsmgr")
        for side in order:
            self.clear()
            if side == "ovsmgr":
                results[side] = self.timed(lambda: apply_policy(compiled, self.bed.target))
            else:
                results[side] = self.timed(lambda: self.ofctl("--bundle", "add-flows", self.mgmt,
                                                              str(flows_file)))
        return results["ovsmgr"], results["raw"]

    def incremental(self, old: CompiledPolicy, new: CompiledPolicy, old_file: Path) -> tuple[float, float]:
        """(ovsmgr apply of ``new`` over ``old``, raw bundle of only the changed flows)."""
        before = [InstalledFlow(mod, 0, 0) for mod in desired_flows(old.flows).values()]
        plan = make_plan(before, desired_flows(new.flows))
        changes = bundle_text([f for f in map(decode_flow, [*plan.add, *(n for _, n in plan.change)]) if f],
                              [f for f in (decode_flow(s.mod) for s in plan.delete) if f])
        self.clear()
        apply_policy(old, self.bed.target)
        ovsmgr_s = self.timed(lambda: apply_policy(new, self.bed.target))
        self.clear()
        self.ofctl("--bundle", "add-flows", self.mgmt, str(old_file))
        raw_s = self.timed(lambda: self.ofctl("--bundle", "add-flows", self.mgmt, "-", input=changes))
        return ovsmgr_s, raw_s


def measure_control(bench: ControlBench, rules: int, kind: str, repetitions: int) -> dict[str, Any]:
    text = generate_policy(rules, cast(Kind, kind))
    start = time.perf_counter()
    policy = load_policy_text(text, f"generated-{kind}-{rules}.yaml")
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = compile_policy(policy)
    compile_s = time.perf_counter() - start
    changed = compile_policy(load_policy_text(changed_policy(text), "changed.yaml"))
    runs = []
    with tempfile.TemporaryDirectory(prefix="ovsmgr-bench-") as tmp:
        flows_file = Path(tmp) / "flows.txt"
        flows_file.write_text(render_flows(compiled))
        flows = len(compiled.flowset)
        for rep in range(repetitions):
            apply_s, raw_s = bench.full(compiled, flows_file, ovsmgr_first=rep % 2 == 0)
            inc_s, raw_inc_s = bench.incremental(compiled, changed, flows_file)
            runs.append({"load_s": round(load_s, 4), "compile_s": round(compile_s, 4),
                         "apply_s": round(apply_s, 4), "raw_s": round(raw_s, 4), "flows": flows,
                         "flows_per_s": round(flows / apply_s, 1), "raw_flows_per_s": round(flows / raw_s, 1),
                         "incremental_s": round(inc_s, 4), "raw_incremental_s": round(raw_inc_s, 4),
                         "switch_flows": bench.flow_count()})
    return {"runs": runs}
