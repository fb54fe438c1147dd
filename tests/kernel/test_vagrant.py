"""The Vagrant set-up and the kernel-test runner, checked on the host (fast, no VM booted).

`vagrant validate` checks the Vagrantfile as Vagrant reads it (with the libvirt
provider, whose plugin Debian packages); the rest checks what Vagrant cannot:
that the scripts it names exist and parse, that the data-link MACs the
provisioning scripts look for agree with the guest's three-box scenario, and
that the runner only reports success when every scenario passed.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from tests.kernel import expected, scenarios

REPO = Path(__file__).resolve().parents[2]
VAGRANT = REPO / "vagrant"
SCRIPTS = sorted((VAGRANT / "provision").glob("*.sh"))


def _script(path: Path, name: str) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _runner() -> ModuleType:
    return _script(VAGRANT / "guest" / "kernel-test", "kernel_test_runner")


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed (scripts/install)")
def test_vagrant_validate() -> None:
    env = {**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_DEFAULT_PROVIDER": "libvirt"}
    proc = subprocess.run(["vagrant", "validate"], cwd=VAGRANT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout


def test_vagrantfile_names_three_machines_and_existing_scripts() -> None:
    text = (VAGRANT / "Vagrantfile").read_text()
    machines = re.findall(r'^\s+"(\w+)" => \{ mgmt:', text, re.M)
    assert sorted(machines) == ["dut", "gen", "sink"]
    named = set(re.findall(r'"([\w-]+\.sh)"', text))
    assert named == {"packages.sh", "kernel-datapath.sh", "ovsmgr.sh", "dut.sh", "host.sh"}
    for script in named:
        assert (VAGRANT / "provision" / script).is_file(), script


def test_data_link_macs_agree_with_the_guest_scenario() -> None:
    """dut.sh and host.sh find NICs by MAC: the Vagrantfile and the three-box scenario (which runs
    the same scripts in the guest) must give them the same ones."""
    text = (VAGRANT / "Vagrantfile").read_text()
    links = dict(re.findall(r'"(gen-dut|dut-sink)" => \{([^}]*)\}', text))
    assert set(links) == {"gen-dut", "dut-sink"}
    ends = {link: dict(re.findall(r'"(\w+)" => "([0-9a-f:]{17})"', body)) for link, body in links.items()}
    assert ends["gen-dut"] == {"gen": scenarios.HOST_MACS["inside"], "dut": scenarios.DUT_MACS["inside"]}
    assert ends["dut-sink"] == {"dut": scenarios.DUT_MACS["outside"], "sink": scenarios.HOST_MACS["outside"]}
    assert f'"--address", "{scenarios.GEN}/16"' in text
    assert f'"--address", "{scenarios.SINK}/16"' in text


@pytest.mark.parametrize("script", [*SCRIPTS, VAGRANT / "guest" / "build-image",
                                    VAGRANT / "guest" / "build-box"], ids=lambda p: p.name)
def test_shell_scripts_parse(script: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_guest_init_parses_as_posix_sh() -> None:
    proc = subprocess.run(["sh", "-n", str(VAGRANT / "guest" / "test-init")], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_packages_list_is_what_the_key_is_made_of() -> None:
    out = subprocess.run(["bash", str(VAGRANT / "provision" / "packages.sh"), "--list"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert "openvswitch-switch" in out and "python3-venv" in out and "netsniff-ng" in out


def test_verdict_needs_a_pass_for_every_expected_scenario() -> None:
    verdict = _runner().verdict
    expected = list(scenarios.SCENARIOS)
    all_passed = [f"PASS {name} (1.0 s): fine" for name in expected]
    assert verdict(all_passed, expected) == (len(expected), 0, [])
    one_missing = all_passed[:-1]
    passed, failed, problems = verdict(one_missing, expected)
    assert (passed, failed) == (len(expected) - 1, 1)
    assert problems == [f"{expected[-1]}: no result"]
    one_failed = [*all_passed[:-1], f"FAIL {expected[-1]} (2.0 s): boom"]
    assert verdict(one_failed, expected)[1] == 1
    assert verdict([*all_passed, "FATAL ovs-ctl start"], expected)[2] == ["FATAL ovs-ctl start"]


def test_scenario_list_is_what_the_runner_expects() -> None:
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "tests.kernel.scenarios",
                           "--list"], cwd=REPO, capture_output=True, text=True, check=True)
    assert proc.stdout.split() == list(scenarios.SCENARIOS)
    assert {"seed-firewall", "seed-nat", "gateway", "cut-on-rule-removal", "hitless-apply",
            "drift"} <= set(scenarios.SCENARIOS)


def test_every_scenario_has_its_row_in_the_expected_table() -> None:
    assert list(expected.EXPECTED) == list(scenarios.SCENARIOS)
    for name, facts in expected.EXPECTED.items():
        assert facts, f"{name} reports no facts"
    assert {"fragments", "nat-ports", "zone-limit"} <= set(expected.scenarios_with_differences())


def test_compare_finds_every_kind_of_disagreement() -> None:
    name = "zone-limit"
    seen = expected.expected_facts(name, "system")
    assert expected.compare(name, "system", seen) == []
    assert expected.compare(name, "netdev", seen) != []  # the kernel's facts are not netdev's
    missing = dict(seen)
    missing.pop(next(iter(missing)))
    assert expected.compare(name, "system", missing)[0].endswith("not observed")
    assert expected.compare(name, "system", {**seen, "x": 1})[0].endswith("is not in the table")
    assert expected.expected_facts("fragments", "dpdk")["dpctl/ipf-get-status"] == "answers"


def test_datapaths_doc_has_the_result_table_and_explains_every_difference() -> None:
    """docs/datapaths.md shows tests/kernel/expected.py as it is, and has a section for every
    difference the table points to."""
    doc = (REPO / "docs" / "datapaths.md").read_text()
    assert expected.markdown_table() in doc, "regenerate the table: python -m tests.kernel.expected"
    headings = set(re.findall(r"^#+ (.+)$", doc, re.M))
    for name, what, differs in expected.differences():
        assert differs.doc in headings, f"{name}: {what}: no section '{differs.doc}' in datapaths.md"
        assert f"`{name}`" in doc.split(f"# {differs.doc}", 1)[1].split("\n#", 1)[0], (
            f"the section '{differs.doc}' does not name the scenario {name}")


def test_fragprobe_fragments_reassemble_to_the_datagram() -> None:
    import struct

    from tests.kernel import fragprobe

    payload = bytes(range(256)) * 12  # 3,072 bytes
    datagram = fragprobe._udp("10.0.0.10", "198.51.100.9", 40000, 7000, payload)
    pseudo = bytes([10, 0, 0, 10, 198, 51, 100, 9, 0, 17]) + struct.pack("!H", len(datagram))
    assert fragprobe._checksum(pseudo + datagram) == 0  # a valid UDP checksum sums to zero
    pieces = [(off, datagram[off:off + fragprobe.FRAGMENT])
              for off in range(0, len(datagram), fragprobe.FRAGMENT)]
    rebuilt = bytearray(len(datagram))
    for index, (off, chunk) in enumerate(pieces):
        more = index < len(pieces) - 1
        packet = fragprobe._fragment("10.0.0.10", "198.51.100.9", 77, off, chunk, more)
        assert len(packet) <= 1500 and fragprobe._checksum(packet[:20]) == 0
        flags_offset = struct.unpack("!H", packet[6:8])[0]
        assert bool(flags_offset & 0x2000) == more and (flags_offset & 0x1FFF) * 8 == off
        rebuilt[off:off + len(chunk)] = packet[20:]
    assert bytes(rebuilt) == datagram


def test_the_vagrantfile_box_is_the_one_make_vagrant_box_adds() -> None:
    """The Vagrantfile's default box is the name vagrant-box adds, and vagrant/run looks for its
    volume under that name; a public box only when asked (OVSMGR_VAGRANT_BOX)."""
    text = (VAGRANT / "Vagrantfile").read_text()
    local = re.search(r'^LOCAL_BOX = "([^"]+)"$', text, re.M)
    assert local is not None
    assert 'BOX = ENV.fetch("OVSMGR_VAGRANT_BOX", LOCAL_BOX)' in text
    box_name = _script(VAGRANT / "guest" / "vagrant-box", "vagrant_box").BOX_NAME
    assert box_name == local[1]
    run = _script(VAGRANT / "run", "vagrant_run")
    assert run.BOX_VOLUME_PREFIX.startswith(local[1].replace("/", "-VAGRANTSLASH-") + "_")
    assert f'libvirt.default_prefix = "{run.PREFIX}"' in text
    assert set(run.NETWORKS) == {f"ovsmgr-{n}" for n in ("mgmt", "gen-dut", "dut-sink")}


def test_box_packages_are_named_and_not_installed_on_the_host() -> None:
    install = REPO / "scripts" / "install"
    box = subprocess.run(["bash", str(install), "--list", "box"], capture_output=True, text=True,
                         check=True).stdout.split()
    assert {"openssh-server", "sudo", "rsync", "ifupdown", "systemd-sysv"} <= set(box)
    everything = subprocess.run(["bash", str(install), "--list"], capture_output=True, text=True,
                                check=True).stdout.split()
    assert "systemd-sysv" not in everything  # the box's init is not the host's business


VAGRANT_UP = """\
Bringing machine 'gen' up with 'libvirt' provider...
==> dut: Creating image (snapshot of base box volume).
==> gen: Starting domain.
==> dut: Starting domain.
==> gen: Machine booted and ready!
==> dut: Machine booted and ready!
==> gen: Rsyncing folder: /src/ => /vagrant
==> gen: Running provisioner: packages (shell)...
    gen: provision: packages installed
==> dut: Running provisioner: packages (shell)...
    gen: provision: data0 10.1.0.2/16
    dut: provision: dut: br0
"""


def test_phases_per_machine_from_vagrant_up() -> None:
    lines = [(100.0 + 10 * i, line) for i, line in enumerate(VAGRANT_UP.splitlines())]
    times = _script(VAGRANT / "run", "vagrant_run").phases(lines, 95.0)
    assert times == {
        "gen": {"create": 25.0, "boot": 20.0, "setup": 30.0, "provision": 30.0},
        "dut": {"create": 35.0, "boot": 20.0, "setup": 40.0, "provision": 20.0},
    }  # sink never started: no times rather than made-up ones


def test_bench_smoke_fails_unless_frames_reached_sink() -> None:
    run = _script(VAGRANT / "run", "vagrant_run")
    good = {"interrupted": False,
            "experiments": [{"name": "sweep", "status": "done"}],
            "points": [{"params": {"pipeline": "seed-firewall"}, "figures": {"delivered_pps": 980.0},
                        "baseline": {"figures": {"delivered_pps": 990.0}}}]}
    run.check_results(good)
    for broken in ({**good, "points": []},
                   {**good, "interrupted": True},
                   {**good, "experiments": [{"name": "sweep", "status": "failed", "error": "ssh"}]},
                   {**good, "points": [{**good["points"][0], "figures": {"delivered_pps": 0.0}}]},
                   {**good, "points": [{**good["points"][0], "baseline": {"figures": {}}}]}):
        with pytest.raises(run.RunError):
            run.check_results(broken)


def test_vagrant_failures_keep_what_failed_and_drop_the_backtrace() -> None:
    backtrace = _script(VAGRANT / "run", "vagrant_run").BACKTRACE
    gems = "/usr/share/rubygems-integration/all/gems"
    dropped = [f"\tfrom {gems}/vagrant-2.3.4/lib/vagrant/action/runner.rb:89:in `block in run'",
               f"from {gems}/fog-core-2.3.0/lib/fog/core/collection.rb:51:in `create'",
               "<internal:kernel>:90:in `tap'",
               f"{gems}/vagrant-2.3.4/lib/vagrant/batch_action.rb:86:in `block (2 levels) in run'"]
    kept = [f"{gems}/fog-libvirt-0.8.0/lib/fog/libvirt/requests/compute/vm_action.rb:7:in `create': "
            "Call to virDomainCreateWithFlags failed: internal error (Libvirt::Error)",
            "==> dut: Starting domain.", "An error occurred while executing the action on the 'dut'"]
    assert [line for line in dropped if backtrace.match(line)] == dropped
    assert [line for line in kept if backtrace.match(line)] == []


def test_run_without_a_command_prints_its_usage(capsys: pytest.CaptureFixture[str]) -> None:
    run = _script(VAGRANT / "run", "vagrant_run")
    for argv in ([], ["boot"], ["--help"]):
        assert run.main(argv) == 2
        usage = capsys.readouterr().err
        assert all(f"vagrant/run {command}" in usage for command in ("up", "smoke", "destroy", "vagrant"))


def _libvirt_files(config: Path, pool: Path) -> None:
    (config / "networks").mkdir(parents=True)
    pool.mkdir()
    for name in ("ovsmgr-dut", "ovsmgr-sink", "web"):  # web: some other VM
        (config / f"{name}.xml").write_text("<domain/>")
    for name in ("ovsmgr-gen-dut", "vagrant-libvirt", "default"):
        (config / "networks" / f"{name}.xml").write_text("<network/>")
    for name in ("ovsmgr-dut.img", "web.img", "ovsmgr-VAGRANTSLASH-bookworm64_vagrant_box_image_0_1_box.img"):
        (pool / name).write_text("")


def test_defined_finds_what_libvirt_keeps_of_the_vms_on_disk(tmp_path: Path) -> None:
    run = _script(VAGRANT / "run", "vagrant_run")
    config, pool = tmp_path / "qemu", tmp_path / "images"
    _libvirt_files(config, pool)
    ovsmgr = ["domain ovsmgr-dut", "domain ovsmgr-sink", "network ovsmgr-gen-dut", "volume ovsmgr-dut.img"]
    assert run.defined(config, pool, ours_too=False) == ovsmgr
    # vagrant-libvirt's management network counts only in a libvirtd of ours; the box stays
    assert run.defined(config, pool, ours_too=True) == [*ovsmgr[:3], "network vagrant-libvirt", ovsmgr[3]]
    assert run.defined(tmp_path / "none", tmp_path / "none") == []


def test_running_finds_the_qemu_processes_of_the_vms(tmp_path: Path) -> None:
    run = _script(VAGRANT / "run", "vagrant_run")
    for pid, name in ((4321, "ovsmgr-gen"), (4400, "web"), (4500, None)):
        (tmp_path / str(pid)).mkdir()
        argv = ["/usr/bin/qemu-system-x86_64", "-name", f"guest={name},debug-threads=on", "-m", "1024"]
        (tmp_path / str(pid) / "cmdline").write_bytes(
            b"\0".join(a.encode() for a in (argv if name else ["sshd: vagrant"])) + b"\0")
    (tmp_path / "self").mkdir()
    assert run.running(tmp_path) == ["process 4321 (ovsmgr-gen)"]


class _Host:
    """What destroy() acts on, as state: whether a libvirtd answers and is ours, what libvirt has
    defined; `remove` fails for the names in `stuck`."""

    def __init__(self, daemon: bool, ours: bool, things: list[str], stuck: tuple[str, ...] = ()):
        self.daemon, self.ours, self.things, self.stuck = daemon, ours, list(things), stuck
        self.started = 0

    def install(self, run: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(run, "libvirt_answers", lambda: self.daemon)
        monkeypatch.setattr(run, "ours", lambda: self.ours)
        monkeypatch.setattr(run, "start_libvirtd", self.start)
        monkeypatch.setattr(run, "stop_libvirtd", self.stop)
        monkeypatch.setattr(run, "vagrant", lambda *args: [])  # its destroy knows none of them
        monkeypatch.setattr(run, "leftovers", lambda: list(self.things) if self.daemon else [])
        monkeypatch.setattr(run, "defined", lambda *args, **kw: list(self.things))
        monkeypatch.setattr(run, "remove", self.remove)
        monkeypatch.setattr(run, "running", lambda: [])

    def start(self, domain_type: str) -> None:
        assert domain_type == "qemu"  # removing needs no KVM
        self.daemon = self.ours = True
        self.started += 1

    def stop(self) -> None:
        if self.ours:
            self.daemon = self.ours = False

    def remove(self, thing: str) -> None:
        if thing not in self.stuck:
            self.things.remove(thing)


def test_destroy_after_an_interrupted_run_starts_a_libvirtd_to_remove_the_vms(
        monkeypatch: pytest.MonkeyPatch) -> None:
    run = _script(VAGRANT / "run", "vagrant_run")
    host = _Host(daemon=False, ours=True, things=["domain ovsmgr-dut", "network ovsmgr-mgmt"])
    host.install(run, monkeypatch)
    problems = run.destroy()
    assert host.started == 1 and host.things == [] and not host.daemon
    assert problems == ["vagrant destroy left domain ovsmgr-dut (removed)",
                        "vagrant destroy left network ovsmgr-mgmt (removed)"]
    assert run.destroy() == [] and host.started == 1  # nothing defined: no libvirtd started


def test_destroy_says_what_it_could_not_remove(monkeypatch: pytest.MonkeyPatch) -> None:
    run = _script(VAGRANT / "run", "vagrant_run")
    host = _Host(daemon=True, ours=True, things=["domain ovsmgr-gen", "volume ovsmgr-gen.img"],
                 stuck=("volume ovsmgr-gen.img",))
    host.install(run, monkeypatch)
    problems = run.destroy()
    assert "could not remove volume ovsmgr-gen.img" in problems
    assert "left behind: volume ovsmgr-gen.img" in problems  # seen on disk with the daemon gone
    assert not host.daemon


def test_bench_smoke_names_policies_the_vms_have(tmp_path: Path) -> None:
    """The VMs' ovsmgr is an installed copy, with no policies/ beside it: provisioning copies the
    repository's policies to /etc/ovsmgr (provision/ovsmgr.sh), and every pipeline of the smoke,
    a seed name or a path there, resolves to one of those copies."""
    import yaml  # the spec loader checks the files exist: they do on dut, not here

    from ovsmgr.bench.pipelines import POLICY_DIRS, seed_policy_path
    from ovsmgr.bench.specmodel import SEED_PIPELINES

    assert "/etc/ovsmgr/$(basename \"$policy\")" in (VAGRANT / "provision" / "ovsmgr.sh").read_text()
    assert Path("/etc/ovsmgr") in POLICY_DIRS
    etc = tmp_path / "etc-ovsmgr"  # what provisioning makes of /etc/ovsmgr
    etc.mkdir()
    for policy in (REPO / "policies").glob("*.yaml"):
        (etc / policy.name).write_text(policy.read_text())
    spec = yaml.safe_load((VAGRANT / "bench-smoke.yaml").read_text())
    pipelines = [p for exp in spec["experiments"] for p in exp.get("pipelines") or ()]
    assert pipelines
    for pipeline in pipelines:
        if pipeline in SEED_PIPELINES and pipeline != "plain":
            assert seed_policy_path(pipeline, (tmp_path / "no-checkout", etc)).parent == etc, pipeline
        else:
            assert pipeline.startswith("/etc/ovsmgr/") and (etc / Path(pipeline).name).is_file(), pipeline
