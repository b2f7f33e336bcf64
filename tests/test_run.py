"""Run directories: what a resume may change, the one-writer lock (live, stale and foreign holders), damaged
metrics lines; and a run directory written by an earlier version of jaxformer still loads, evaluates, samples,
resumes and repro-checks.

`tests/fixtures/run_before_i23` was written by commit 89ef887 (before issue 23's refactor) with
    jaxformer train --config tiny --workdir tests/fixtures/run_before_i23 --config.train.steps=20 \
        --config.train.checkpoint_every=10 --config.train.eval_every=10 --config.train.progress=false
(plots/, the TensorBoard events and the step-10 checkpoint removed to keep it small). Every test works on a copy:
the committed directory is never written.
"""

import json
import os
import platform
import shutil
import subprocess
import sys

import pytest

from jaxformer import cli
from jaxformer import config as config_lib
from jaxformer import run as run_lib

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "run_before_i23")


@pytest.fixture
def old_run(tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(FIXTURE, workdir)
    return workdir


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_old_run_evaluates_to_its_recorded_validation_loss(old_run, capsys):
    recorded = [r for r in _records(old_run) if "val_loss" in r and r["step"] == 20][0]
    for which in ("latest", "best"):
        assert cli.main(["eval", "--workdir", old_run, "--checkpoint", which, "--json"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["step"] == 20
        # Same parameters, same evaluation batches: the loss the run logged, to float32 rounding.
        assert result["loss"] == pytest.approx(recorded["val_loss"], rel=1e-5, abs=1e-6)


def test_old_run_samples(old_run, capsys):
    assert cli.main(["sample", "--workdir", old_run, "--prompt", "abc|", "--max-new-tokens", "12",
                     "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    # A task run prints the prompt, the model's continuation and the expected answer (`model:` line).
    model_lines = [line.split(":", 1)[1].split()[0] for line in out.splitlines() if line.startswith("model:")]
    assert len(model_lines) == 1, out
    text = model_lines[0]
    assert len(text) == 12
    with open(os.path.join(old_run, "vocab.json")) as f:
        assert set(text) <= set(json.load(f)["vocab"])


def test_old_run_resumes_deterministically_and_keeps_its_history(old_run, tmp_path):
    before = _records(old_run)
    other = str(tmp_path / "again")
    shutil.copytree(FIXTURE, other)
    for workdir in (old_run, other):
        assert cli.main(["train", "--workdir", workdir, "--resume", "--config.train.steps=30"]) == 0
    after = _records(old_run)
    assert after[:len(before)] == before  # nothing already written is lost or rewritten
    assert [r["step"] for r in after[len(before):] if "loss" in r] == [25, 30]
    assert after == _records(other)  # the resumed steps are bitwise reproducible
    assert all(r["loss"] == r["loss"] and r["loss"] < 10 for r in after if "loss" in r)


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "f.txt")
    run_lib.atomic_write(path, "first\n")
    run_lib.atomic_write(path, "second\n")
    assert open(path).read() == "second\n"
    with pytest.raises(TypeError):
        run_lib.atomic_write(path, None)  # fails while writing the temporary: the old file stays whole
    assert open(path).read() == "second\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_old_run_repro_checks_bit_for_bit(old_run, capsys, monkeypatch):
    """Today's code re-runs the old run's 20 steps and gets every logged number bit for bit, with the products the
    run recorded (XLA's dot). Bitwise equality across code versions is a property of one machine kind: the fixture's
    machine is recorded beside it (run_before_i23.fingerprint.json); on another kind XLA may pick other kernels (the
    eval test above still holds the old run's loss to float32 rounding there), so there the re-run must agree to
    1e-4."""
    from jaxformer import fingerprint, matmul

    monkeypatch.setattr(matmul, "_cpu_backend", "xla")  # as recorded, whatever an earlier configure() chose
    status = cli.main(["repro-check", old_run, "--steps", "20"])
    out = capsys.readouterr().out
    with open(FIXTURE + ".fingerprint.json") as f:
        recorded_on = json.load(f)["fingerprint"]
    if not fingerprint.differences(recorded_on, fingerprint.machine(matmul="xla")):
        assert status == 0, out
    elif status != 0:
        from jaxformer import train as train_lib

        cfg = run_lib.load_config(old_run)
        cfg.train.progress, cfg.train.sample_chars = False, 0
        rerun_dir = os.path.join(os.path.dirname(old_run), "rerun")
        train_lib.train(cfg, rerun_dir, stop_after=20)
        recorded = {r["step"]: r["loss"] for r in _records(old_run) if "loss" in r}
        rerun = {r["step"]: r["loss"] for r in _records(rerun_dir) if "loss" in r}
        assert recorded.keys() == rerun.keys() and len(recorded) >= 2, out
        for step, loss in recorded.items():
            assert rerun[step] == pytest.approx(loss, rel=1e-4), (step, out)


def write_lock(workdir, **holder):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, run_lib.LOCK), "w") as f:
        json.dump({"started": "2026-12-06T00:00:00+00:00", **holder}, f)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write("{}\n")


def test_a_live_process_lock_refuses_train_resume_and_overwrite(tmp_path):
    workdir = str(tmp_path / "run")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(workdir, pid=live.pid, host=platform.node())
        for resume, overwrite in ((False, False), (True, False), (False, True)):
            with pytest.raises(run_lib.RunDirError, match=f"is in use by process {live.pid} on"):
                run_lib.prepare(workdir, resume=resume, overwrite=overwrite)
            assert os.path.exists(os.path.join(workdir, "config.json"))  # --overwrite deleted nothing
    finally:
        live.kill()
        live.wait()


def test_a_stale_lock_is_replaced_and_released(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_lock(workdir, pid=gone.pid, host=platform.node())
    assert run_lib.prepare(workdir, resume=True, overwrite=False)
    assert "stale lock" in caplog.text
    with open(os.path.join(workdir, run_lib.LOCK)) as f:
        assert json.load(f)["pid"] == os.getpid()
    run_lib.release(workdir)
    assert not os.path.exists(os.path.join(workdir, run_lib.LOCK))


def test_a_lock_of_another_host_is_not_taken_over(tmp_path):
    workdir = str(tmp_path / "run")
    write_lock(workdir, pid=1, host=platform.node() + "-elsewhere")
    with pytest.raises(run_lib.RunDirError, match="elsewhere"):
        run_lib.prepare(workdir, resume=True, overwrite=False)


def test_a_refused_directory_that_is_not_a_run_gets_no_lock_file(tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(run_lib.RunDirError, match="not empty"):
        run_lib.prepare(str(other), resume=False, overwrite=False)
    assert sorted(os.listdir(other)) == ["precious.txt"]


def test_a_torn_last_metrics_line_is_dropped_and_an_earlier_bad_line_named(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [r["step"] for r in run_lib.read_metrics(str(tmp_path))] == [1, 2]
    assert "torn last line 3" in caplog.text
    run_lib.truncate_metrics(str(tmp_path), 2)
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(run_lib.RunDirError, match="metrics.jsonl: line 2 is not JSON"):
        run_lib.read_metrics(str(tmp_path))


def _resolved(*overrides):
    return config_lib.resolve(config_lib.load("tiny", list(overrides)), vocab_size=11)


def test_resume_ignores_the_settings_of_positional_variants_the_run_does_not_use():
    saved = _resolved("--config.model.position.name=alibi", "--config.model.position.sinusoidal.scheme=matched")
    now = _resolved("--config.model.position.name=alibi", "--config.train.steps=40")
    assert saved.model.position.sinusoidal.scale != now.model.position.sinusoidal.scale  # a new default elsewhere
    assert run_lib.check_resume_config("w", saved, now) == ["train.steps", "optim.decay_steps"]
    # the run's own variant's settings still may not change
    with pytest.raises(run_lib.RunDirError, match="model.position.alibi|model.position.name"):
        run_lib.check_resume_config("w", saved, _resolved("--config.model.position.name=rope"))
    rope = _resolved("--config.model.position.name=rope")
    with pytest.raises(run_lib.RunDirError, match=r"model.position.rope.theta=500.0 differs from the run's 10000.0"):
        run_lib.check_resume_config("w", rope, _resolved("--config.model.position.name=rope",
                                                          "--config.model.position.rope.theta=500.0"))


def test_unused_field_is_one_rule_read_from_the_run_settings():
    """run.unused_field (resume and a sweep's same-point check): another variant's settings, a text run's task
    settings and fields read only in a setting the run does not use are unused; a field unused in one of several
    configs but used in another is used."""
    rope = _resolved("--config.model.position.name=rope")
    assert run_lib.unused_field("model.position.fire.init_L", rope)
    for used in ("model.position.name", "model.position.rope.theta", "model.position.randomize_max_len",
                 "data.synthetic.min_items", "model.n_layer"):
        assert not run_lib.unused_field(used, rope), used
    # read only in a setting: the skip limit, YaRN's ramp, the randomization granularity
    assert run_lib.unused_field("train.max_skipped_steps", rope)
    assert not run_lib.unused_field("train.max_skipped_steps", _resolved("--config.train.nonfinite=skip"))
    assert run_lib.unused_field("model.position.rope.yarn_ramp", rope)
    yarn = _resolved("--config.model.position.name=rope", "--config.model.position.rope.scaling=yarn")
    assert not run_lib.unused_field("model.position.rope.yarn_ramp", yarn)
    assert run_lib.unused_field("model.position.randomize_per", rope)
    randomized = _resolved("--config.model.position.name=rope", "--config.model.position.randomize_max_len=64")
    assert not run_lib.unused_field("model.position.randomize_per", randomized)
    # a text run's task settings
    text = config_lib.resolve(config_lib.load("shakespeare_char_cpu"), vocab_size=65)
    assert run_lib.unused_field("data.synthetic.min_items", text)
    # several configs: unused only where it is unused in every one of them
    alibi = _resolved("--config.model.position.name=alibi")
    assert run_lib.unused_field("model.position.fire.init_L", rope, alibi)
    assert not run_lib.unused_field("model.position.rope.theta", rope, alibi)


def test_resume_refuses_a_change_of_randomized_positions():
    """randomize_max_len changes what is trained: the shared rule compares it on resume (the old resume-only rule
    took it for another variant's setting and let it change silently)."""
    saved = _resolved("--config.model.position.name=rope")
    with pytest.raises(run_lib.RunDirError, match=r"model.position.randomize_max_len=64 differs from the run's 0"):
        run_lib.check_resume_config("w", saved, _resolved("--config.model.position.name=rope",
                                                          "--config.model.position.randomize_max_len=64"))


def test_checked_changes_compares_common_fields_and_names_the_others_when_asked():
    old = _resolved("--config.model.position.name=rope")
    new = _resolved("--config.model.position.name=rope", "--config.model.n_layer=3", "--config.model.dropout=0.25",
                    "--config.train.seed=9")
    del old.train["seed"]  # a field only one of them has
    error = lambda k, new, old, more: f"{k}: {old!r} -> {new!r}{more}"  # noqa: E731
    with pytest.raises(ValueError) as caught:
        run_lib.checked_changes(old, new, may_change=lambda k: False, error=error, common_only=True, name_more=True,
                                exception=ValueError)
    assert type(caught.value) is ValueError
    assert str(caught.value) in ("model.n_layer: 2 -> 3 (and 1 more: model.dropout)",
                                 "model.dropout: 0.0 -> 0.25 (and 1 more: model.n_layer)"), str(caught.value)
    with pytest.raises(run_lib.RunDirError, match=r"\(and 2 more\)$"):  # the union: train.seed counts
        run_lib.checked_changes(old, new, may_change=lambda k: False, error=error)
    assert set(run_lib.checked_changes(old, new, may_change=lambda k: True, error=error, common_only=True)) == {
        "model.n_layer", "model.dropout"}


def test_manifest_records_the_cpu_kind_and_differences_name_it_first(tiny_cfg):
    from jaxformer import config as config_lib
    from jaxformer import fingerprint

    now = run_lib.manifest(config_lib.resolve(tiny_cfg, vocab_size=20), data_hash="h")
    here = fingerprint.cpu()
    assert now["cpu"] == here and {"vendor", "family", "model", "flags"} <= set(now["cpu"])
    zen5 = dict(now, cpu={"vendor": "AuthenticAMD", "family": 26, "model": 2, "model_name": "x", "flags": ["avx2"]},
                versions=dict(now["versions"], jax="0.0.1"))
    lines = run_lib.environment_differences(zen5, now)
    assert lines[0].startswith(f"cpu: recorded=AuthenticAMD family 26 model 2, now={here['vendor']} family "
                               f"{here['family']} model {here['model']}"), lines
    assert "not bit for bit" in lines[0] and lines[1].startswith("versions.jax: recorded=0.0.1")
    same_kind = dict(zen5, cpu=dict(here, model_name="renamed by the hypervisor"))
    assert not any(line.startswith("cpu") for line in run_lib.environment_differences(same_kind, now))
    older = {k: v for k, v in now.items() if k != "cpu"}
    assert run_lib.environment_differences(older, now)[0].startswith("cpu: recorded=(not recorded), now=")


def test_repro_check_mismatch_names_the_cpu_kind_first_and_the_size_of_the_difference(old_run, capsys):
    path = os.path.join(old_run, "metrics.jsonl")
    records = _records(old_run)
    records[0]["loss"] *= 1 + 3e-6  # what another CPU kind's rounding looks like
    with open(path, "w") as f:
        f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    assert cli.main(["repro-check", old_run, "--steps", "10"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("MISMATCH: ")
    # 3e-6 here; on a CPU kind other than the fixture's the re-run's own rounding may add to it (< 1e-4)
    gap = float(lines[1].split(": ", 1)[1].split()[0])
    assert lines[1].startswith("largest relative difference of a recorded number: ") and 2.9e-6 <= gap < 1e-4
    assert lines[1].endswith("(float32 rounding: what another CPU kind or library version gives)")
    assert lines[2] == "what differs from the recorded run's manifest:"
    assert lines[3].startswith("  cpu: recorded=(not recorded), now="), lines  # the fixture predates the field


@pytest.mark.parametrize("overrides, tag", [
    (["--config.model.position.rope.theta=500000"], "theta5e5"),
    (["--config.model.position.rope.fraction=0.25", "--config.model.position.name=rope"], "fraction0.25"),
    (["--config.model.position.rope.scaling=yarn", "--config.model.position.rope.factor=4",
      "--config.optim.lr=3e-4", "--config.train.steps=100"], "factor4-yarn-lr3e-4-steps100"),
    (["--config.data.name=synthetic/reverse_string", "--config.data.bos=True", "--config.model.bias=false"],
     "bos-reverse_string-no_bias"),
    (["--config.data.manual_dir=/x", "--config.train.progress=false"], ""),  # where things are: not in the name
])
def test_run_names_carry_the_overrides_that_distinguish_them(overrides, tag):
    assert run_lib.override_tag(overrides) == tag
    assert run_lib.override_tag(list(reversed(overrides))) == tag  # stable: the order given does not matter


def test_a_long_override_tag_is_cut_at_a_piece_with_a_hash_of_all():
    many = [f"--config.model.{f}={v}" for f, v in (("n_layer", 6), ("n_head", 8), ("n_embd", 384),
                                                    ("mlp_hidden", 1536), ("head_dim", 48))]
    tag = run_lib.override_tag(many)
    assert len(tag) <= run_lib.TAG_MAX and tag.startswith("head_dim48-mlp_hidden1536-")
    other = run_lib.override_tag([*many[:-1], "--config.model.head_dim=64"])
    assert tag.rsplit("-", 1)[1] != other.rsplit("-", 1)[1]  # the hash tells the two sets apart
