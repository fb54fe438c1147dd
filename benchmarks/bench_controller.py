"""Controller mode: how fast a runtime change is answered and obeyed, and how many a second it takes.

For policies of 100 and 10,000 rules (`generate_policy(N, "mixed")` with a
`blocklist` drop rule on top, referencing an address set), a controller runs
against a lab switch while a probe stream crosses it: UDP datagrams from the
inside host to the outside host every 0.5 ms, each from its own source port, so
each is a new connection the firewall judges (``ovsmgr.lab.probe stream-send``).
Then, repeatedly, the probe's source address is added to the blocklist through
the API, and removed again:

- block: from the API call until the last probe datagram that still passed
  was sent (later ones are all dropped);
- unblock: from the API call until the first datagram that passed was sent.

Times are CLOCK_MONOTONIC, one clock for all namespaces; resolution is the
probe interval. Reported: p50 and p95 per size and direction; "answered", the
time from the call until its answer as the API client sees it (the change is
then on the switch, in one bundle over the controller's OpenFlow connection,
and on disk); the controller's own time per change; and the 10k/100 ratio of
the p95s. Each size gets a fresh lab (no conntrack entries left over).

`--throughput`: CLIENTS API clients at once, each adding and removing an address
of its own to the blocklist as fast as it is answered, for SECONDS: changes per
second the controller sustained, and p50/p95/p99 of the answers. Needs root.

    sudo .venv/bin/python benchmarks/bench_controller.py [--trials 20] [--sizes 100 10000]
    sudo .venv/bin/python benchmarks/bench_controller.py --throughput [--clients 16] [--seconds 10] [--sizes 100]
"""

from __future__ import annotations

import argparse
import collections
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ovsmgr.controller.client import ApiClient
from ovsmgr.controller.paths import ControllerPaths
from ovsmgr.lab.ovs import Lab, LabPort, LabSpec
from ovsmgr.policy.generate import generate_policy

OVSMGR = str(Path(sys.executable).parent / "ovsmgr")
PROBE = [sys.executable, "-m", "ovsmgr.lab.probe"]
INSIDE, OUTSIDE = "10.0.0.10", "198.51.100.9"
INTERVAL = 0.0005
SETTLE = 0.3


def bench_policy(rules: int) -> str:
    return generate_policy(rules, "mixed").replace(
        "firewall:\n  default: drop\n  rules:\n",
        "addresses:\n  blocklist: [192.0.2.1]\nfirewall:\n  default: drop\n  rules:\n"
        '    - {name: blocklist, from: inside, src: "@blocklist", action: drop}\n')


@contextmanager
def lab_with_controller(policy: Path) -> Iterator[tuple[Lab, ApiClient]]:
    name = f"b{secrets.token_hex(3)}"
    lab = Lab(name, tempfile.mkdtemp(prefix=f"ovsmgr-{name}-", dir="/tmp"))
    proc = None
    try:
        lab.up(LabSpec("br0", "netdev", [LabPort("inside", 1, f"{INSIDE}/24"),
                                         LabPort("outside", 2, f"{OUTSIDE}/24")], name))
        log = open(lab.dir / "controller.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([OVSMGR, "controller", str(policy), "--db", lab.db_endpoint], stderr=log,
                                stdout=subprocess.DEVNULL)
        paths = ControllerPaths(lab.dir, "br0")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, (lab.dir / "controller.log").read_text()
            info = paths.read_info()
            if info and info.get("pid") == proc.pid and ApiClient.for_paths(paths).call("GET", "/v1/status")["connected"]:
                break
            time.sleep(0.2)
        yield lab, ApiClient.for_paths(paths)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        lab.down()
        shutil.rmtree(lab.dir, ignore_errors=True)


def run_size(rules: int, trials: int, workdir: Path) -> dict[str, Any]:
    policy = workdir / f"bench-{rules}.yaml"
    policy.write_text(bench_policy(rules))
    with lab_with_controller(policy) as (lab, client):
        duration = 10.0 + trials * 2 * (SETTLE + 0.5)  # ended early, once the changes are done
        recv = lab.popen("outside", [*PROBE, "stream-recv", "9000", "--duration", str(duration + 3)],
                         stdout=subprocess.PIPE, text=True)
        assert recv.stdout is not None and "listening" in recv.stdout.readline()
        send = lab.popen("inside", [*PROBE, "stream-send", OUTSIDE, "9000", "--interval", str(INTERVAL),
                                    "--duration", str(duration)], stdout=subprocess.DEVNULL)
        time.sleep(1.0)
        calls: list[tuple[str, float, float]] = []
        answered: list[float] = []
        for _ in range(trials):
            for verb in ("add", "remove"):
                started = time.monotonic()
                result = client.call("POST", f"/v1/sets/blocklist/{verb}", {"addresses": [INSIDE]})
                answered.append(time.monotonic() - started)
                calls.append((verb, started, result["seconds"]))
                time.sleep(SETTLE)
        send.terminate()
        send.wait(30)
        time.sleep(0.2)
        recv.terminate()
        out, _ = recv.communicate(timeout=60)
    received = sorted(json.loads(line)["sent"] for line in out.splitlines() if '"seq"' in line)
    return {**summarise(rules, calls, received), "answered": stats(answered)}


def summarise(rules: int, calls: list[tuple[str, float, float]], sent_times: list[float]) -> dict[str, Any]:
    block, unblock = [], []
    for index, (verb, started, _) in enumerate(calls):
        until = calls[index + 1][1] if index + 1 < len(calls) else started + SETTLE - 0.05
        window = [t for t in sent_times if started <= t < until]
        if verb == "add":
            block.append((max(window) - started) if window else 0.0)
        else:
            assert window, (f"{rules} rules: no probe passed after an unblock at {started:.3f} "
                            f"(received {len(sent_times)}, {sent_times[:1]}..{sent_times[-1:]}; calls {calls[:3]})")
            unblock.append(min(window) - started)
    own = [seconds for _, _, seconds in calls]
    return {"rules": rules, "block": stats(block), "unblock": stats(unblock), "both": stats(block + unblock),
            "controller": stats(own)}


def run_throughput(rules: int, clients: int, seconds: float, workdir: Path) -> dict[str, Any]:
    """CLIENTS callers at once, each toggling an address of its own in the blocklist."""
    policy = workdir / f"throughput-{rules}.yaml"
    policy.write_text(bench_policy(rules))
    with lab_with_controller(policy) as (_, client):
        latencies: list[list[float]] = [[] for _ in range(clients)]
        errors: list[str] = []
        start = time.monotonic() + 0.5
        stop = start + seconds

        def caller(i: int) -> None:
            own = ApiClient(client.endpoint, client.token)
            address, verbs = f"192.0.2.{10 + i}", ("add", "remove")
            n = 0
            while time.monotonic() < start:
                time.sleep(0.001)
            while (now := time.monotonic()) < stop:
                try:
                    own.call("POST", f"/v1/sets/blocklist/{verbs[n % 2]}", {"addresses": [address]})
                except Exception as exc:  # counted: a refused change is a failure of the run
                    errors.append(str(exc))
                latencies[i].append(time.monotonic() - now)
                n += 1

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    answered = [t for per in latencies for t in per]
    return {"rules": rules, "clients": clients, "seconds": seconds, "changes": len(answered),
            "per_second": round(len(answered) / seconds, 1), "errors": len(errors),
            "error_kinds": dict(collections.Counter(e[:120] for e in errors).most_common(3)),
            "answered": stats(answered, (0.5, 0.95, 0.99))}


def stats(values: list[float], quantiles: tuple[float, ...] = (0.5, 0.95)) -> dict[str, float]:
    ordered = sorted(values)
    out: dict[str, float] = {}
    for q in quantiles:
        value = statistics.median(ordered) if q == 0.5 else ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
        out[f"p{round(q * 100)}_ms"] = round(value * 1000, 1)
    return {**out, "max_ms": round(ordered[-1] * 1000, 1), "n": len(ordered)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--throughput", action="store_true", help="changes per second instead of reaction time")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ovsmgr-bench-controller-"))
    if args.throughput:
        for rules in args.sizes:
            print(json.dumps(run_throughput(rules, args.clients, args.seconds, workdir)))
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    results = [run_size(n, args.trials, workdir) for n in args.sizes]
    print(f"{'rules':>7}  {'direction':<10} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7}  (n)")
    for result in results:
        for key in ("block", "unblock", "both", "answered", "controller"):
            s = result[key]
            print(f"{result['rules']:>7}  {key:<10} {s['p50_ms']:>7} {s['p95_ms']:>7} {s['max_ms']:>7}  ({s['n']})")
    if len(results) >= 2:
        low, high = results[0]["both"]["p95_ms"], results[-1]["both"]["p95_ms"]
        print(f"p95 ratio {results[-1]['rules']}/{results[0]['rules']} rules: {high / low:.2f}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
