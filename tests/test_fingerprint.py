"""The machine fingerprint (jaxformer/fingerprint.py) and the golden comparison built on it (tests/goldens.py)."""

import json

import goldens
import numpy as np
import pytest

from jaxformer import fingerprint

ZEN5 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC 9B45\n"
        "flags\t\t: fpu sse4_1 avx avx2 fma avx512f avx512bw vaes\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\n")


def test_cpu_reads_the_first_processor_and_keeps_the_instruction_sets_that_matter(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(ZEN5)
    assert fingerprint.cpu(str(path)) == {"vendor": "AuthenticAMD", "family": 26, "model": 2,
                                          "model_name": "AMD EPYC 9B45",
                                          "flags": ["sse4_1", "avx", "avx2", "fma", "avx512f", "avx512bw"]}
    path.write_text("processor\t: 0\nFeatures\t: fp asimd sve\nCPU implementer\t: 0x41\nCPU part\t: 0xd40\n\n")
    arm = fingerprint.cpu(str(path))
    assert (arm["vendor"], arm["model"], arm["flags"]) == ("0x41", 0xD40, ["asimd", "sve"])
    missing = fingerprint.cpu(str(tmp_path / "absent"))
    assert missing["family"] is None and missing["flags"] is None


def test_machine_records_versions_and_the_matmul_path_it_is_given():
    fp = fingerprint.machine(matmul="blas")
    assert fp["matmul"] == "blas" and fp["versions"]["numpy"] == np.__version__
    assert set(fp["versions"]) == {"jax", "jaxlib", "numpy"}
    assert fingerprint.differences(fp, fingerprint.machine(matmul="blas")) == []


def test_differences_name_the_cpu_kind_first_and_count_what_was_not_recorded():
    here = fingerprint.machine(matmul="xla")
    other = json.loads(json.dumps(here))
    other["cpu"].update(vendor="AuthenticAMD", family=26, model=2)
    other["versions"]["jax"] = "0.0.1"
    diff = fingerprint.differences(other, here)
    assert [d.split(":")[0] for d in diff] == ["cpu.vendor", "cpu.family", "cpu.model", "versions.jax"]
    assert diff[1] == f"cpu.family: 26 -> {here['cpu']['family']!r}"
    other = json.loads(json.dumps(here))
    other["cpu"]["flags"] = None  # an old record
    flags = ",".join(here["cpu"]["flags"] or []) or "(none)"
    assert fingerprint.differences(other, here) == [f"cpu.flags: not recorded -> {flags}"]
    assert fingerprint.differences({}, here)[0].startswith("cpu.vendor: not recorded")


def _golden(folder, name, fp, value):
    np.savez(folder / f"{name}.npz", x=np.asarray(value, np.float32))
    (folder / f"{name}.json").write_text(json.dumps({"fingerprint": fp}))


def test_goldens_are_bitwise_only_on_the_kind_that_wrote_them(tmp_path):
    here = fingerprint.machine(matmul="xla")
    elsewhere = json.loads(json.dumps(here))
    elsewhere["cpu"]["model"] = -1
    _golden(tmp_path, "a-elsewhere", elsewhere, [1.0, 2.0])
    name, want, bitwise = goldens.pick(str(tmp_path), here)
    assert (name, bitwise) == ("a-elsewhere", False)
    goldens.assert_matches(np.float32([1.0, 2.0 + 1e-5]), want["x"], bitwise=bitwise)  # rounding: passes
    with pytest.raises(AssertionError):
        goldens.assert_matches(np.float32([1.0, 2.001]), want["x"], bitwise=bitwise)  # a change: fails
    _golden(tmp_path, "b-here", here, [1.0, 2.0])
    name, want, bitwise = goldens.pick(str(tmp_path), here)
    assert (name, bitwise) == ("b-here", True)
    with pytest.raises(AssertionError):
        goldens.assert_matches(np.float32([1.0, np.nextafter(np.float32(2), np.float32(3))]), want["x"],
                               bitwise=bitwise)
