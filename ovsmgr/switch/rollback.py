"""The watcher `apply --confirm` leaves behind: sleep until the deadline, then roll back."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ovsmgr.switch.apply import run_rollback


def main(path_text: str) -> int:
    path = Path(path_text)
    try:
        deadline = float(json.loads(path.read_text())["deadline"])
    except (OSError, ValueError, KeyError):
        return 1
    while time.time() < deadline:
        time.sleep(min(0.5, max(0.0, deadline - time.time())))
        if not path.exists():
            return 0
    return 0 if run_rollback(path) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
