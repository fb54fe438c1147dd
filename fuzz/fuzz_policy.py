"""Coverage-guided fuzzing of the policy front end with atheris (libFuzzer for Python).

The promise under test: whatever bytes a policy file holds, loading and
validating it either gives a policy or raises `PolicyError`; any other
exception is a crash that libFuzzer reports with the input that caused it.

    .venv/bin/python fuzz/fuzz_policy.py -dict=fuzz/policy.dict -max_len=8192 \
        -max_total_time=600 fuzz/corpus policies tests/corpus   # after: mkdir -p fuzz/corpus (new inputs go there)

The first byte chooses the parser (libyaml or PyYAML's own) and whether the
rest goes through the file path (bytes, UTF-8 decoding, size limit) or the
text path. `tests/unit/test_fuzz_loader.py::test_atheris_harness_runs` runs a
few thousand inputs on every test run so the harness keeps working.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

import atheris

with atheris.instrument_imports(include=["ovsmgr", "yaml"]):  # not pydantic: starts in 5 s, not 23
    from ovsmgr.policy import PolicyError, load_policy, load_policy_text, loader

_SCRATCH = os.path.join(tempfile.gettempdir(), f"ovsmgr-fuzz-{os.getpid()}.yaml")
"""Removed after each input: libFuzzer ends the process without running atexit handlers."""


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    loader.USE_LIBYAML = bool(mode & 1)
    try:
        if mode & 2:
            with open(_SCRATCH, "wb") as stream:
                stream.write(body)
            try:
                load_policy([_SCRATCH])
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(_SCRATCH)
        else:
            load_policy_text(body.decode("utf-8", "surrogateescape"), "fuzz.yaml")
    except PolicyError as exc:
        if not exc.diagnostics:
            raise AssertionError("a PolicyError without diagnostics") from exc


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
