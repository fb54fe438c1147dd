"""A soak run of controller mode: steady traffic and runtime updates for N minutes, memory sampled.

Builds its own lab switch (two hosts, `inside` and `outside`) and a controller
running `tests.support.soak.SOAK_POLICY`, runs `tests.support.soak.run_soak` (see its
docstring for what is sent, changed, sampled and checked), takes everything
down and prints the result as JSON. Exit 0 when every check held, 1 otherwise
(the lab's logs are then kept, and their directory printed). Needs root.

    sudo .venv/bin/python benchmarks/soak.py --minutes 10
    sudo .venv/bin/python benchmarks/soak.py --minutes 60 --update-rate 10 --no-samples
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from tests.support.soak import SoakConfig, run_soak, soak_lab


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    defaults = SoakConfig()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before memory samples count (default: duration/4, from 10 to 120)")
    parser.add_argument("--sample-interval", type=float, default=defaults.sample_interval)
    parser.add_argument("--probe-interval", type=float, default=defaults.probe_interval)
    parser.add_argument("--tcp-interval", type=float, default=defaults.tcp_interval)
    parser.add_argument("--update-rate", type=float, default=defaults.update_rate, help="runtime updates per second")
    parser.add_argument("--cli-every", type=int, default=defaults.cli_every,
                        help="every N-th update through `ovsmgr set` (0: API only)")
    parser.add_argument("--loss-tolerance", type=float, default=defaults.loss_tolerance)
    parser.add_argument("--no-samples", action="store_true", help="leave the raw samples out of the JSON")
    args = parser.parse_args()
    config = SoakConfig(duration=args.minutes * 60, warmup=args.warmup, sample_interval=args.sample_interval,
                        probe_interval=args.probe_interval, tcp_interval=args.tcp_interval,
                        update_rate=args.update_rate, cli_every=args.cli_every, loss_tolerance=args.loss_tolerance)
    load_before = os.getloadavg()
    started = time.time()
    with soak_lab() as soak:
        result = run_soak(soak.lab, soak.pid, soak.api, soak.files, config)
        soak.keep = not result.ok
    out = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
           "load_average": {"before": [round(x, 2) for x in load_before],
                            "after": [round(x, 2) for x in os.getloadavg()]},
           "cpus": os.cpu_count(), **result.to_json(samples=not args.no_samples)}
    print(json.dumps(out, indent=2))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
