"""make kernel-test's choice of accelerator, with small shell scripts standing in for QEMU.

/dev/kvm can be there and still fail to boot Debian's kernel in several ways: QEMU aborts at
once, hangs without a word, or runs while the kernel never speaks. Each must end in a TCG
boot in the same run, and only a kernel banner may be remembered as KVM working.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]

BANNER_AND_RESULT = """\
  echo "Linux version 6.1.0-99-amd64 (fake) #1 SMP"
  echo "ovsmgr-kernel-test: PASS seed-firewall (1.0 s): as expected"
  exit 0"""

KVM_BEHAVIOURS = {
    # QEMU aborts before the guest runs (a paravirtual KVM: "failed to set MSR 0x10a").
    "exits": """\
  echo "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x0"
  echo "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:2980: kvm_buf_set_msrs: Assertion failed."
  exit 134""",
    # QEMU runs and prints nothing at all.
    "hangs silently": "  exec sleep 600",
    # The firmware speaks, the kernel never does.
    "kernel never speaks": """\
  echo "SeaBIOS (version 1.16.2-debian-1.16.2-1)"
  echo "Booting from ROM..."
  exec sleep 600""",
}


def load_runner() -> ModuleType:
    """vagrant/guest/kernel-test is a script without .py: load it as a module."""
    path = REPO / "vagrant" / "guest" / "kernel-test"
    loader = importlib.machinery.SourceFileLoader("kernel_test_boot_under_test", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def fake_qemu(bin_dir: Path, calls: Path, kvm_behaviour: str) -> None:
    """qemu-system-x86_64 on PATH: logs each accelerator it is asked for, behaves as
    ``kvm_behaviour`` under KVM and boots (banner, one result line) under TCG."""
    bin_dir.mkdir()
    script = bin_dir / "qemu-system-x86_64"
    script.write_text(f"""#!/bin/sh
if [ "$1" = --version ]; then echo "QEMU emulator version 7.2.99 (fake)"; exit 0; fi
accel=$2
echo "$accel" >> {calls}
case $accel in
kvm)
{kvm_behaviour}
  ;;
tcg*)
{BANNER_AND_RESULT}
  ;;
esac
exit 1
""")
    script.chmod(0o755)


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = load_runner()
    monkeypatch.setattr(module, "KVM_PROBE_SECONDS", 1.0)  # the fakes need no 20 s to stay silent
    monkeypatch.setattr(module, "kvm_usable", lambda: True)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    return module


def boot(runner: ModuleType, tmp_path: Path) -> tuple[list[str], str]:
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    results: list[str]
    results, accel = runner.boot_with_fallback(tmp_path / "image", cache, "auto",
                                               tmp_path / "console.log", [])
    return results, accel


def remembered(tmp_path: Path) -> list[str]:
    return list(json.loads((tmp_path / "cache" / "accel.json").read_text()).values())


@pytest.mark.parametrize("behaviour", list(KVM_BEHAVIOURS))
def test_a_kvm_that_does_not_boot_the_kernel_falls_back_to_tcg_in_the_same_run(
        runner: ModuleType, tmp_path: Path, behaviour: str) -> None:
    calls = tmp_path / "calls"
    fake_qemu(tmp_path / "bin", calls, KVM_BEHAVIOURS[behaviour])
    results, accel = boot(runner, tmp_path)
    assert calls.read_text().split() == ["kvm", "tcg,thread=multi"]
    assert (accel, results) == ("tcg", ["PASS seed-firewall (1.0 s): as expected"])
    assert remembered(tmp_path) == ["tcg"]  # never "kvm"


@pytest.mark.parametrize("behaviour", list(KVM_BEHAVIOURS))
def test_a_failed_kvm_is_not_tried_again(runner: ModuleType, tmp_path: Path,
                                         behaviour: str) -> None:
    calls = tmp_path / "calls"
    fake_qemu(tmp_path / "bin", calls, KVM_BEHAVIOURS[behaviour])
    boot(runner, tmp_path)
    calls.unlink()
    results, accel = boot(runner, tmp_path)
    assert calls.read_text().split() == ["tcg,thread=multi"]
    assert accel == "tcg" and results


def test_only_a_kernel_banner_is_remembered_as_kvm_working(runner: ModuleType,
                                                          tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    fake_qemu(tmp_path / "bin", calls, BANNER_AND_RESULT)
    results, accel = boot(runner, tmp_path)
    assert calls.read_text().split() == ["kvm"]
    assert (accel, results) == ("kvm", ["PASS seed-firewall (1.0 s): as expected"])
    assert remembered(tmp_path) == ["kvm"]
