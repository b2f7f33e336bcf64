"""Run directories: what a resume may change, the one-writer lock (live, stale and foreign holders) and damaged
metrics lines."""

import json
import os
import platform
import subprocess
import sys

import pytest

from jaxformer import config as config_lib
from jaxformer import run as run_lib


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
