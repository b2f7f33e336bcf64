"""Fault injection, in subprocesses as a user meets the faults: kill -9 (mid-save included), damaged checkpoints,
two writers on one run, an unwritable checkpoint folder, divergence, signals during start-up.

Every run is `configs/tiny.py` shrunk to 40 steps with a checkpoint every 4, so a fault lands near a save.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
RUN = ["--config", "tiny", "--config.train.steps=40", "--config.train.log_every=2", "--config.train.eval_every=10",
       "--config.train.checkpoint_every=4", "--config.train.sample_chars=0", "--config.train.progress=false"]


def jaxformer(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "jaxformer.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def start(*args):
    return subprocess.Popen([sys.executable, "-m", "jaxformer.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def recorded(workdir) -> int:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    steps = []
    with open(path) as f:
        for line in f:
            try:
                steps.append(json.loads(line)["step"])
            except ValueError:
                pass  # a line being written
    return max(steps, default=0)


def wait_for(condition, proc, timeout=240, poll=0.005):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if condition():
            return True
        time.sleep(poll)
    raise TimeoutError("condition not met")


def checkpointed(workdir) -> bool:
    latest = os.path.join(workdir, "checkpoints", "latest")
    return os.path.isdir(latest) and any(name.isdigit() for name in os.listdir(latest))


def saving(workdir) -> bool:
    latest = os.path.join(workdir, "checkpoints", "latest")
    return os.path.isdir(latest) and any("tmp" in name for name in os.listdir(latest))


def errors(stderr: str) -> list[str]:
    """stderr lines other than the run's own progress log (model summary, evaluations)."""
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith(("model: ", "step ", "resumed from step", "resuming with"))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run: its directory (copied by the tests that damage it) and its metrics bytes."""
    workdir = str(tmp_path_factory.mktemp("reference") / "run")
    out = jaxformer("train", *RUN, "--workdir", workdir)
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "latest"))) == ["36", "40"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return workdir, f.read()


def copy_of(reference, tmp_path) -> str:
    workdir = str(tmp_path / "run")
    shutil.copytree(reference[0], workdir)
    return workdir


def largest_file(directory) -> str:
    files = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]
    return max(files, key=os.path.getsize)


def metrics_of(workdir) -> str:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return f.read()


@pytest.mark.slow
def test_kill9_at_random_moments_incl_mid_save_resumes_bit_identical(reference, tmp_path):
    """Five kill -9s, three of them while a checkpoint is being written, each followed by --resume: the finished
    run's metrics are the uninterrupted run's, byte for byte, and no temporary checkpoint folder is left."""
    workdir = str(tmp_path / "run")
    rng = random.Random(0)
    mid_save = 0
    for kill in range(5):
        resume = ["--resume"] if kill else []
        proc = start("train", *RUN, "--workdir", workdir, *resume)
        try:
            # Each kill once a checkpoint exists (before the first, --resume has nothing to continue from).
            wait_for(lambda: checkpointed(workdir), proc)
            if kill % 2 == 0 and wait_for(lambda: saving(workdir), proc, timeout=60, poll=0.001):
                mid_save += 1
            else:
                time.sleep(rng.uniform(0.0, 0.4))
        finally:
            proc.kill()
            proc.communicate()
    assert mid_save >= 1, "no kill landed while a checkpoint was being written"
    out = jaxformer("train", *RUN, "--workdir", workdir, "--resume")
    assert out.returncode == 0, out.stderr
    assert metrics_of(workdir) == reference[1]
    assert not saving(workdir)


def test_flipped_bit_falls_back_with_one_line_and_resumes_identically(reference, tmp_path):
    workdir = copy_of(reference, tmp_path)
    damaged = os.path.join(workdir, "checkpoints", "latest", "40")
    path = largest_file(damaged)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x10
    with open(path, "wb") as f:
        f.write(data)
    leftover = os.path.join(workdir, "checkpoints", "latest", "44.orbax-checkpoint-tmp")
    os.makedirs(leftover)  # what a save killed mid-write leaves
    out = jaxformer("eval", "--workdir", workdir, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["step"] == 36
    assert any(f"checkpoint {damaged} is unusable" in line for line in out.stderr.splitlines()), out.stderr

    out = jaxformer("train", *RUN, "--workdir", workdir, "--resume")
    assert out.returncode == 0, out.stderr
    lines = errors(out.stderr)
    assert len(lines) == 2 and f"checkpoint {damaged} is unusable" in lines[0], out.stderr
    assert "latest/36 instead" in lines[1], out.stderr
    assert metrics_of(workdir) == reference[1]  # steps 37-40 trained again from step 36: the same numbers
    assert not os.path.exists(leftover)
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "unusable", "latest-40"))  # set aside, not deleted


def test_truncated_and_missing_files_fall_back_to_best(reference, tmp_path):
    workdir = copy_of(reference, tmp_path)
    latest = os.path.join(workdir, "checkpoints", "latest")
    with open(largest_file(os.path.join(latest, "40")), "r+b") as f:
        f.truncate(100)
    os.remove(os.path.join(latest, "36", "default", "_METADATA"))
    out = jaxformer("train", *RUN, "--workdir", workdir, "--resume")
    assert out.returncode == 0, out.stderr
    lines = errors(out.stderr)
    assert len(lines) == 3, out.stderr
    assert f"{latest}/40 is unusable" in lines[0] and f"{latest}/36 is unusable: ValueError: default/_METADATA is " \
        "missing" in lines[1], out.stderr
    assert "best/40 instead" in lines[2], out.stderr
    assert "Traceback" not in out.stderr
    assert metrics_of(workdir) == reference[1]


def test_no_usable_checkpoint_is_a_one_line_error_and_loses_nothing(reference, tmp_path):
    workdir = copy_of(reference, tmp_path)
    for kind in ("latest", "best"):
        directory = os.path.join(workdir, "checkpoints", kind)
        for name in os.listdir(directory):
            shutil.rmtree(os.path.join(directory, name))
    out = jaxformer("train", *RUN, "--workdir", workdir, "--resume")
    assert out.returncode == 2, out.stderr
    lines = errors(out.stderr)
    assert len(lines) == 1 and "no checkpoint" in lines[0] and "--overwrite" in lines[0], out.stderr
    assert metrics_of(workdir) == reference[1]  # not restarted from step 0, not wiped


def test_two_writers_the_second_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    workdir = str(tmp_path / "run")
    long_run = ["--config", "tiny", "--config.train.steps=100000", "--config.train.checkpoint_every=50",
                "--config.train.eval_every=100000", "--config.train.sample_chars=0"]
    first = start("train", *long_run, "--workdir", workdir)
    try:
        assert wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", "latest", "50")), first)
        for extra in ([], ["--resume"], ["--overwrite"]):
            out = jaxformer("train", *long_run, "--workdir", workdir, *extra)
            assert out.returncode == 2, (extra, out.stderr)
            lines = errors(out.stderr)
            assert len(lines) == 1 and f"is in use by process {first.pid}" in lines[0], (extra, out.stderr)
        assert first.poll() is None and os.path.exists(os.path.join(workdir, "config.json"))
    finally:
        first.kill()
        first.communicate()
    # kill -9 leaves the lock behind: its process is gone, so the next --resume takes it over (a few more steps
    # than the checkpoints hold: fewer is refused).
    trained = max(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints", "latest")) if n.isdigit())
    out = jaxformer("train", *long_run, "--workdir", workdir, "--resume", f"--config.train.steps={trained + 10}")
    assert out.returncode == 0, out.stderr
    assert "stale lock" in out.stderr
    assert not os.path.exists(os.path.join(workdir, ".lock"))


def test_unwritable_checkpoint_folder_ends_the_run_within_30s(tmp_path):
    workdir = str(tmp_path / "run")
    proc = start("train", "--config", "tiny", "--config.train.steps=1000000", "--config.train.checkpoint_every=50",
                 "--config.train.eval_every=1000000", "--config.train.sample_chars=0", "--workdir", workdir)
    try:
        latest = os.path.join(workdir, "checkpoints", "latest")
        assert wait_for(lambda: os.path.isdir(os.path.join(latest, "50")), proc)
        # Running as root, permissions would not stop a write: a file where the folder was does.
        os.rename(latest, latest + ".moved")
        with open(latest, "w") as f:
            f.write("not a directory\n")
        began = time.time()
        stdout, stderr = proc.communicate(timeout=30)
        assert time.time() - began < 30
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    lines = errors(stderr)
    assert len(lines) == 1 and "could not write checkpoint" in lines[0] and latest in lines[0], stderr
    assert not os.path.exists(os.path.join(workdir, ".lock"))


def test_divergence_keeps_the_last_finite_checkpoint(tmp_path):
    """lr=1e4 (the issue's case): the run stops (exit 1) naming the first bad step; no checkpoint was written
    after it, so the newest one kept is a state whose every step was finite, with finite parameters."""
    from jaxformer import checkpoint as checkpoint_lib

    workdir = str(tmp_path / "run")
    out = jaxformer("train", "--config", "tiny", "--config.optim.lr=1e4", "--config.optim.min_lr=0",
                    "--config.optim.warmup_steps=0", "--config.train.checkpoint_every=1",
                    "--config.train.keep_checkpoints=1", "--config.train.log_every=10", "--config.train.steps=30",
                    "--config.train.sample_chars=0", "--workdir", workdir)
    assert out.returncode == 1, out.stderr
    assert "non-finite loss or gradient at step" in out.stderr
    first_bad = int(out.stderr.split("non-finite loss or gradient at step ")[1].split()[0])
    checkpoints = checkpoint_lib.Checkpoints(workdir, keep=1)
    try:
        step, state = checkpoints.restore(None)
    finally:
        checkpoints.close()
    assert step < first_bad
    assert int(state["nonfinite"]) == 0
    assert all(np.isfinite(np.asarray(x)).all() for x in __import__("jax").tree.leaves(state["params"]))


@pytest.mark.parametrize("sig,delay", [(signal.SIGINT, 0.3), (signal.SIGINT, 2.0), (signal.SIGTERM, 1.0),
                                       (signal.SIGINT, 4.0)])
def test_signal_during_startup_exits_with_the_shells_status_and_one_line(sig, delay, tmp_path):
    proc = start("train", *RUN, "--workdir", str(tmp_path / "run"))
    time.sleep(delay)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig.value, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert len(errors(stderr)) <= 1, stderr


# ------------------------------------------------------------------------------------------ issue 34: round two

def test_stale_lock_takeover_has_exactly_one_holder_among_20_contenders_50_times(tmp_path):
    """20 forked processes race to take over a dead process's lock, 50 times: exactly one holds it each time."""
    worker = os.path.join(os.path.dirname(__file__), "lock_race_worker.py")
    out = subprocess.run([sys.executable, worker, str(tmp_path / "run"), "20", "50"], capture_output=True,
                         text=True, timeout=120, env=ENV)
    assert out.returncode == 0, out.stderr
    counts = json.loads(out.stdout.splitlines()[-1])
    assert len(counts) == 50 and counts == [1] * 50, counts


def _damage_metadata(step_dir: str, how: str) -> None:
    path = os.path.join(step_dir, "_CHECKPOINT_METADATA")
    if how == "truncated":
        text = open(path).read()
        with open(path, "w") as f:
            f.write(text[: len(text) // 2])
    elif how == "unreadable":  # chmod 000; root reads any file, so for root a folder takes the file's place
        if os.geteuid() == 0:
            os.remove(path)
            os.mkdir(path)
        else:
            os.chmod(path, 0)
    elif how == "no digests":  # as a checkpoint written before the digests existed
        meta = json.load(open(path))
        del meta["custom_metadata"]["digests"]
        with open(path, "w") as f:
            json.dump(meta, f)


def _flip_a_byte(step_dir: str) -> None:
    path = largest_file(os.path.join(step_dir, "default"))
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x10
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("metadata,data", [("truncated", "intact"), ("truncated", "flipped"),
                                           ("unreadable", "intact"), ("unreadable", "flipped")])
def test_a_checkpoint_whose_digests_cannot_be_read_is_passed_over(reference, tmp_path, metadata, data):
    """Issue 34 A: damaged metadata (with intact or damaged data) used to restore silently, unverified."""
    workdir = copy_of(reference, tmp_path)
    damaged = os.path.join(workdir, "checkpoints", "latest", "40")
    _damage_metadata(damaged, metadata)
    if data == "flipped":
        _flip_a_byte(damaged)
    out = jaxformer("eval", "--workdir", workdir, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["step"] == 36
    lines = errors(out.stderr)
    assert len(lines) == 2 and f"checkpoint {damaged} is unusable" in lines[0], out.stderr
    assert "_CHECKPOINT_METADATA cannot be read" in lines[0] and "latest/36 instead" in lines[1], out.stderr


def test_a_checkpoint_without_digests_restores_saying_it_is_unverified(reference, tmp_path):
    workdir = copy_of(reference, tmp_path)
    legacy = os.path.join(workdir, "checkpoints", "latest", "40")
    _damage_metadata(legacy, "no digests")
    out = jaxformer("eval", "--workdir", workdir, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["step"] == 40
    lines = errors(out.stderr)
    assert len(lines) == 1 and f"checkpoint {legacy} is unverified" in lines[0], out.stderr


def test_eval_and_sample_during_training_leave_the_run_as_if_alone(tmp_path):
    """Issue 34 B: a reader opening the checkpoints removed the temporary folder the trainer was writing, killing
    it. Readers in a loop against a run saving every step: the run finishes, its metrics byte-identical to the
    same run left alone, and the readers never wrote into it."""
    run = ["--config", "tiny", "--config.train.steps=80", "--config.train.log_every=5",
           "--config.train.eval_every=40", "--config.train.checkpoint_every=1", "--config.train.sample_chars=0",
           "--config.train.progress=false"]
    alone = str(tmp_path / "alone")
    out = jaxformer("train", *run, "--workdir", alone)
    assert out.returncode == 0, out.stderr
    workdir = str(tmp_path / "read")
    trainer = start("train", *run, "--workdir", workdir)
    readers = {"eval": 0, "sample": 0}
    try:
        assert wait_for(lambda: checkpointed(workdir), trainer)
        while trainer.poll() is None:
            for name, extra in (("eval", []), ("sample", ["--max-new-tokens", "4"])):
                if trainer.poll() is not None:
                    break
                out = jaxformer(name, "--workdir", workdir, *extra)
                assert out.returncode == 0, out.stderr
                readers[name] += 1
        _, stderr = trainer.communicate(timeout=120)
    finally:
        trainer.kill()
    assert trainer.returncode == 0, stderr
    assert readers["eval"] >= 1 and readers["eval"] + readers["sample"] >= 2, readers
    assert metrics_of(workdir) == metrics_of(alone)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "latest"))) == ["79", "80"]


# The divergence: lr=100 reached over a 100-step warm-up; the loss turns non-finite near step 45.
DIVERGING = ["--config", "tiny", "--config.optim.lr=100", "--config.optim.warmup_steps=100", "--config.train.steps=100",
             "--config.train.checkpoint_every=1", "--config.train.eval_every=1000", "--config.train.sample_chars=0",
             "--config.train.progress=false"]


def test_divergence_keeps_a_checkpoint_whose_next_step_was_finite_and_eval_prints_valid_json(tmp_path):
    """Issue 34 C: the checkpoint kept was the one whose parameters gave the non-finite step (eval: bare NaN), and
    keep_checkpoints=1 pruned the last proven one. Now that one is set aside, the proven one kept, and eval of the
    set-aside one prints null with a line saying so."""
    workdir = str(tmp_path / "run")
    out = jaxformer("train", *DIVERGING, "--config.train.keep_checkpoints=1", "--workdir", workdir)
    assert out.returncode == 1, out.stderr
    first_bad = int(out.stderr.split("non-finite loss or gradient at step ")[1].split()[0])
    assert out.stderr.count("non-finite loss or gradient at step") + out.stdout.count("non-finite loss") == 1
    kept = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints", "latest")))
    assert kept == [first_bad - 2], kept
    assert f"resumable from checkpoint step {first_bad - 2}" in out.stderr
    evaluated = jaxformer("eval", "--workdir", workdir, "--json")
    assert evaluated.returncode == 0 and np.isfinite(json.loads(evaluated.stdout.splitlines()[-1])["loss"])
    aside = os.path.join(workdir, "checkpoints", "unusable", f"latest-{first_bad - 1}")
    assert os.path.isdir(aside)
    os.rename(aside, os.path.join(workdir, "checkpoints", "latest", str(first_bad - 1)))
    evaluated = jaxformer("eval", "--workdir", workdir, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    record = json.loads(evaluated.stdout.splitlines()[-1])  # strict JSON: NaN would not parse with parse_constant
    assert record["loss"] is None and "non-finite values printed as null: loss=nan" in evaluated.stderr
    shown = jaxformer("eval", "--workdir", workdir)  # the readable summary: "-" for the diverged loss, no crash
    assert shown.returncode == 0 and "  loss         -" in shown.stdout, shown.stderr


def test_nonfinite_skip_stops_at_exactly_max_skipped_steps_and_saves_no_skipped_step(tmp_path):
    """Issue 34 C: with nonfinite=skip the run stopped after 16 skipped steps, not 10 (checked at log steps only),
    and saved checkpoints of skipped steps."""
    workdir = str(tmp_path / "run")
    out = jaxformer("train", *DIVERGING, "--config.train.keep_checkpoints=2", "--config.train.log_every=8",
                    "--config.train.nonfinite=skip", "--config.train.max_skipped_steps=10", "--workdir", workdir)
    assert out.returncode == 1, out.stderr
    line = next(x for x in out.stderr.splitlines() if "non-finite steps in a row" in x)
    first, last = (int(v) for v in line.split("steps ")[2].split()[0].rstrip(":(").split("-"))
    assert line.startswith("stopped: 10 non-finite steps in a row") and last - first + 1 == 10, line
    kept = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints", "latest")))
    assert kept and max(kept) < first - 1, (kept, line)  # nothing saved during the skipped steps, none unproven
    assert f"resumable from checkpoint step {max(kept)}" in line


@pytest.mark.parametrize("override,field", [
    ("--config.model.norm_eps=inf", "model.norm_eps"), ("--config.model.norm_eps=1e30", "model.norm_eps"),
    ("--config.model.position.rope.theta=inf", "model.position.rope.theta"),
    ("--config.train.sample_chars=-1", "train.sample_chars"),
    ("--config.train.sample_chars=1000000000", "train.sample_chars"),
    ("--config.train.eval_iters=100000000", "train.eval_iters"),
    ("--config.model.position.randomize_max_len=1000000000", "model.position.randomize_max_len"),
    ("--config.model.n_layer=100000", "model.n_layer"),
    ("--config.data.block_size=1", "data.block_size"),
    ("--config.data.synthetic.min_items=100", "data.synthetic.min_items=100"),
    ("--config.data.synthetic.max_items=1000000", "max_items=1000000"),
])
def test_nonsense_is_refused_in_one_line_before_the_run_directory_exists(tmp_path, override, field):
    """Issue 34 F, G, H: each was accepted (a dead model, a hang, a 640 GB allocation) or refused after config.json
    was written (a 'stopped 0/30' run that a retry with the same --workdir could not reuse)."""
    workdir = str(tmp_path / "run")
    began = time.time()
    out = jaxformer("train", "--config", "tiny", override, "--workdir", workdir, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = errors(out.stderr)
    assert len(lines) == 1 and field in lines[0], out.stderr
    assert not os.path.exists(workdir)
    assert time.time() - began < 60


def test_param_count_is_the_built_models_and_takes_milliseconds_at_any_depth():
    from flax import nnx
    from jaxformer.configs import tiny

    from jaxformer import config as config_lib
    from jaxformer import train as train_lib

    cfg = config_lib.resolve(tiny.get_config(), vocab_size=20)
    for n_layer, norm, position in ((3, "layernorm", "rope"), (4, "rmsnorm", "learned"), (3, "layernorm", "t5")):
        cfg.model.n_layer, cfg.model.norm, cfg.model.position.name = n_layer, norm, position
        built = train_lib.count_params(nnx.eval_shape(lambda c=cfg: train_lib.build_model(c)))
        assert train_lib.param_count(cfg) == built, (n_layer, norm, position)
    cfg.model.n_layer = 1_000_000
    began = time.perf_counter()
    train_lib.memory_estimate(cfg)
    assert time.perf_counter() - began < 5  # a deep model's abstract build took minutes (500 layers: 135 s)


def test_resume_with_fewer_steps_than_trained_is_refused_untouched(reference, tmp_path):
    workdir = copy_of(reference, tmp_path)
    before = open(os.path.join(workdir, "config.json")).read()
    out = jaxformer("train", "--resume", "--workdir", workdir, "--config.train.steps=20")
    assert out.returncode == 2, out.stderr
    lines = errors(out.stderr)
    assert len(lines) == 1 and "has trained 40 steps; train.steps=20 is fewer" in lines[0], out.stderr
    assert open(os.path.join(workdir, "config.json")).read() == before
    assert metrics_of(workdir) == reference[1]


def test_a_workdir_that_cannot_be_made_or_stops_taking_writes_is_one_line(tmp_path):
    """Issue 34 E (as root, whom permissions do not stop: a file where a folder must be)."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder\n")
    out = jaxformer("train", *RUN, "--workdir", str(blocker / "run"))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert len(errors(out.stderr)) == 1 and "cannot be made" in out.stderr, out.stderr

    workdir = str(tmp_path / "run")
    proc = start("train", "--config", "tiny", "--config.train.steps=1000000", "--config.train.log_every=1",
                 "--config.train.checkpoint_every=100000", "--config.train.eval_every=1000000",
                 "--config.train.sample_chars=0", "--workdir", workdir)
    try:
        metrics = os.path.join(workdir, "metrics.jsonl")
        assert wait_for(lambda: recorded(workdir) >= 2, proc)
        os.rename(metrics, metrics + ".moved")
        os.mkdir(metrics)  # the next append meets a folder
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    lines = errors(stderr)
    assert len(lines) == 1 and f"could not write to the run directory {workdir}" in lines[0], stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGTERM])
def test_a_signal_as_soon_as_jaxformer_is_imported_is_one_line_and_the_shells_status(sig, tmp_path):
    """Issue 34 F: before `main` installed its handler (~0.1 s: the options' imports, argparse), SIGINT was a
    KeyboardInterrupt traceback and SIGTERM a silent death. The child reports each import (-X importtime); the
    signal goes the moment the `jaxformer` package is imported, just before cli.py's first line runs."""
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "jaxformer.cli", "train", *RUN, "--workdir",
                             str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.rstrip().endswith("| jaxformer"):
                proc.send_signal(sig)
                break
        _, rest = proc.communicate(timeout=60)
    finally:
        proc.kill()
    stderr = "".join(lines) + rest
    said = [x for x in stderr.splitlines() if x.strip() and not x.startswith("import time:")]
    assert proc.returncode == 128 + sig.value, stderr[-2000:]
    assert said == [f"jaxformer: interrupted by {sig.name}"], said


@pytest.mark.parametrize("content", [None, b"", bytes(range(256)) * 4, b"To be, or not to be\n"])
def test_a_manual_dir_without_the_checksummed_text_is_an_error_even_with_the_cache(content, tmp_path,
                                                                                  shakespeare_dir, tfds_data_dir):
    """Issue 34 G: with TFDS's prepared copy cached, data.manual_dir was never looked at (a missing, empty,
    binary or other file there was silently ignored)."""
    from jaxformer.configs import shakespeare_char

    from jaxformer import data as data_lib

    cfg = shakespeare_char.get_config()
    cfg.data.data_dir = tfds_data_dir
    cfg.data.manual_dir = shakespeare_dir
    data_lib.load_dataset(cfg.data)  # prepares the cache from the real text
    manual = tmp_path / "manual"
    manual.mkdir()
    if content is not None:
        (manual / "input.txt").write_bytes(content)
    cfg.data.manual_dir = str(manual)
    with pytest.raises(data_lib.DataError, match=str(manual)):
        data_lib.load_dataset(cfg.data)
