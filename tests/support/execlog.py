"""Run `ovsmgr` and log every program it starts: `python -m tests.support.execlog LOG ovsmgr-args...`.

Python's audit hooks see each way a Python process starts another program
(`subprocess.Popen`, `os.exec*`, `os.posix_spawn*`, `os.spawn*`, `os.system`), whatever
the code calls it with, so a test can hold a command to starting none.
"""

from __future__ import annotations

import sys

EVENTS = ("subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.system")


def main() -> None:
    log, args = sys.argv[1], sys.argv[2:]

    def hook(event: str, details: tuple[object, ...]) -> None:
        if event in EVENTS:
            with open(log, "a") as out:
                out.write(f"{event} {details[:2]!r}\n")

    sys.addaudithook(hook)
    sys.argv = ["ovsmgr", *args]
    from ovsmgr.cli import main as ovsmgr

    ovsmgr()


if __name__ == "__main__":
    main()
