"""The `jaxformer` command as a user runs it: help, one-line errors (exit 2), signals, resume, sampling."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def jaxformer(*args, timeout=300, **kwargs):
    return subprocess.run([sys.executable, "-m", "jaxformer.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV, **kwargs)


def test_help_lists_subcommands():
    out = jaxformer("--help")
    assert out.returncode == 0
    for name in ("train", "eval", "sample"):
        assert name in out.stdout


@pytest.mark.parametrize("name", ["", "train", "eval", "sample", "config", "repro-check", "sweep", "report",
                                  "attention"])
def test_help_answers_before_jax_is_imported(name):
    """`jaxformer [CMD] --help` parses and prints without importing JAX (what makes it answer in a blink)."""
    code = ("import sys\nfrom jaxformer import cli\n"
            f"try:\n    status = cli.main([*{[name] if name else []!r}, '--help'])\n"
            "except SystemExit as e:\n    status = e.code\n"
            "assert status == 0, status\n"
            "assert 'jax' not in sys.modules and 'ml_collections' not in sys.modules, sorted(sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=ENV)
    assert out.returncode == 0, out.stderr
    assert "--debug" in out.stdout and "usage: jaxformer" in out.stdout


def test_every_option_has_help_with_its_default():
    from jaxformer import cli

    assert set(cli.ARGUMENTS) == set(cli.SUBCOMMANDS)
    for name in cli.ARGUMENTS:
        p = cli.parser(name)
        formatter = p._get_formatter()
        for action in p._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, f"jaxformer {name} {action.option_strings[0]} has no help text"
            text = formatter._get_help_string(action)
            if action.default is not None and action.default is not False:
                assert "default" in text, f"jaxformer {name} {action.option_strings[0]}: {text!r} hides its default"
        assert "--debug" in p.format_help()


def test_a_mistyped_option_is_one_line_naming_it():
    out = jaxformer("eval", "--workdir", "x", "--chekpoint", "best")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--chekpoint" in lines[0] and "did you mean --checkpoint?" in lines[0], out.stderr


@pytest.mark.parametrize("args,message", [
    (["train", "--config", "tiny", "--config.model.n_haed=3"], "unknown config field 'model.n_haed'"),
    (["train", "--config", "tiny", "--config.model.position.name=nope"], "model.position.name='nope'"),
    (["train", "--config", "tiny", "--config.train.steps=-5"], "train.steps=-5; must be a positive integer"),
    (["train", "--config", "no_such_config"], "--config='no_such_config'"),
    (["sample", "--workdir", "/nonexistent/run"], "has no config.json"),
    (["train", "--config", "tiny", "--config.data.bos=True", "--config.model.vocab_size=28"],
     "model.vocab_size=28 has no room for data.bos=True's token: the data has 28 tokens and BOS takes id 28"),
    # issue 39.5: each says what to type instead
    (["train", "--config", "tiny", "--config.model.position=alibi"],
     "--config.model.position=alibi: model.position is a section of fields, not a value; set one of its fields, "
     "e.g. --config.model.position.name=alibi (its fields: "),
    (["train", "--config", "tiny", "--steps", "200"], "--steps 200 (did you mean --config.train.steps=200? a config "
     "field is set as --config.section.field=value; --help lists the options)"),
    (["train", "--config", "tiny", "--lr=0.1"], "did you mean --config.optim.lr=0.1?"),
    (["attention", "--workdir", "/nonexistent/run", "--text-file", "nope.txt"],
     "--text-file=nope.txt: no such file; give the path of a text file, or the text itself with --text"),
])
def test_bad_input_exits_2_with_one_line(args, message, tmp_path):
    out = jaxformer(*args, "--workdir", str(tmp_path / "w")) if args[0] == "train" else jaxformer(*args)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr
    assert not os.path.exists(tmp_path / "w")  # a refused run leaves no (empty) run directory behind


def _wait_for_step(workdir, step, proc, timeout=240):
    deadline = time.time() + timeout
    path = os.path.join(workdir, "metrics.jsonl")
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        if os.path.exists(path):
            with open(path) as f:
                steps = [json.loads(line)["step"] for line in f if line.strip()]
            if steps and max(steps) >= step:
                return
        time.sleep(0.05)
    raise TimeoutError(f"no metrics at step {step} within {timeout}s")


LONG = ["--config", "tiny", "--config.train.steps=300", "--config.train.log_every=10",
        "--config.train.eval_every=100", "--config.train.checkpoint_every=100", "--config.train.sample_chars=0"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted") / "run")
    out = jaxformer("train", *LONG, "--workdir", workdir)
    assert out.returncode == 0, out.stderr
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return f.read()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_checkpoint_and_resume_is_exact(sig, uninterrupted, tmp_path):
    workdir = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-m", "jaxformer.cli", "train", *LONG, "--workdir", workdir],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    _wait_for_step(workdir, 20, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig.value, stderr  # a shell's convention: 130 for SIGINT, 143 for SIGTERM
    assert f"{sig.name} at step" in stderr and "checkpoint saved" in stderr
    steps = os.listdir(os.path.join(workdir, "checkpoints", "latest"))
    assert steps and max(int(s) for s in steps if s.isdigit()) < 300
    out = jaxformer("train", "--workdir", workdir, "--resume")
    assert out.returncode == 0, out.stderr
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert f.read() == uninterrupted


def test_sigkill_then_resume_from_last_checkpoint(uninterrupted, tmp_path):
    workdir = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-m", "jaxformer.cli", "train", *LONG, "--workdir", workdir],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    _wait_for_step(workdir, 110, proc)
    deadline = time.time() + 120  # orbax renames the step directory into place once the write is complete
    while not os.path.isdir(os.path.join(workdir, "checkpoints", "latest", "100")) and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=60)
    out = jaxformer("train", "--workdir", workdir, "--resume")
    assert out.returncode == 0, out.stderr
    assert "resumed from step" in out.stderr
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert f.read() == uninterrupted


def test_repro_check(tmp_path):
    workdir = str(tmp_path / "run")
    assert jaxformer("train", "--config", "tiny", "--workdir", workdir).returncode == 0
    out = jaxformer("repro-check", workdir, "--steps", "15")
    assert out.returncode == 0 and out.stdout.startswith("OK"), out.stdout + out.stderr
    # Tamper with the record: the check must notice.
    path = os.path.join(workdir, "metrics.jsonl")
    lines = open(path).read().splitlines()
    first = json.loads(lines[0])
    first["loss"] += 1e-7
    lines[0] = json.dumps(first, sort_keys=True)
    open(path, "w").write("\n".join(lines) + "\n")
    out = jaxformer("repro-check", workdir, "--steps", "15")
    assert out.returncode == 1 and "MISMATCH" in out.stdout
    # Same machine, same code: the mismatch is the record's, and the check says the environment is not the cause.
    assert "manifest shows no difference" in out.stdout, out.stdout
    out = jaxformer("repro-check", workdir, "--steps", "500")  # beyond the run: nothing to compare, an error
    assert out.returncode == 2 and "has recorded only 30 steps" in out.stderr, out.stderr
    # Sampling options are checked before the checkpoint loads.
    for args, message in ((["--top-k", "-3"], "--top-k=-3; must be >= 0"), (["--prompt", ""], "--prompt=''"),
                          (["--max-context", "-1"], "--max-context=-1; must be >= 0")):
        out = jaxformer("sample", "--workdir", workdir, *args)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr


def test_train_sample_eval_on_tiny_shakespeare(shakespeare_dir, tfds_data_dir, tmp_path):
    """30 steps on the real text through TFDS, then `sample` prints the requested number of characters."""
    workdir = str(tmp_path / "shakespeare")
    out = jaxformer("train", "--config", "tiny", "--config.data.name=tiny_shakespeare",
                    f"--config.data.manual_dir={shakespeare_dir}", f"--config.data.data_dir={tfds_data_dir}",
                    "--workdir", workdir)
    assert out.returncode == 0, out.stderr
    metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses[-1] < losses[0]
    out = jaxformer("sample", "--workdir", workdir, "--prompt", "ROMEO:", "--max-new-tokens", "50", "--seed", "1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ROMEO:") and len(out.stdout[:-1]) == len("ROMEO:") + 50
    out = jaxformer("sample", "--workdir", workdir, "--prompt", "ROMEO: \u00e9\u00e9")
    assert out.returncode == 2 and "\u00e9" in out.stderr
    out = jaxformer("eval", "--workdir", workdir, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["loss"] > 0


def test_resume_refuses_a_changed_model_or_nothing_to_resume_and_writes_nothing(tmp_path):
    workdir = str(tmp_path / "run")
    short = ["--config", "tiny", "--config.train.steps=20", "--config.train.checkpoint_every=10",
             "--config.train.eval_every=10", "--config.train.sample_chars=0"]
    assert jaxformer("train", *short, "--workdir", workdir).returncode == 0

    def snapshot():
        files = {}
        for root, _, names in os.walk(workdir):
            for name in names:
                with open(os.path.join(root, name), "rb") as f:
                    files[os.path.relpath(os.path.join(root, name), workdir)] = f.read()
        return files

    before = snapshot()
    refusals = [
        (["--config.model.n_embd=64"], "--resume: model.n_embd=64 differs from the run's 32"),
        (["--config", "tiny", "--config.model.position.name=alibi"], "model.position.name='alibi' differs"),
        (["--config.train.seed=5"], "train.seed=5 differs from the run's 0"),
    ]
    for args, message in refusals:
        out = jaxformer("train", "--workdir", workdir, "--resume", *args)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr
        assert snapshot() == before  # the run's files, checkpoints included, are untouched
    missing = str(tmp_path / "no_run")
    out = jaxformer("train", "--workdir", missing, "--resume")
    assert out.returncode == 2 and "holds no run to continue" in out.stderr, out.stderr
    assert not os.path.exists(missing)
    # What may change does: more steps (and a new eval cadence) continue the same run.
    out = jaxformer("train", "--workdir", workdir, "--resume", "--config.train.steps=30")
    assert out.returncode == 0 and "resumed from step 20" in out.stderr, out.stderr
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert max(json.loads(line)["step"] for line in f if line.strip()) == 30


def test_exit_status_says_how_the_run_ended():
    from jaxformer import cli

    assert cli.exit_status({"stopped": None, "signal": None}) == 0
    assert cli.exit_status({"stopped": "SIGINT at step 7; checkpoint saved", "signal": "SIGINT"}) == 130
    assert cli.exit_status({"stopped": "SIGTERM at step 7; checkpoint saved", "signal": "SIGTERM"}) == 143
    assert cli.exit_status({"stopped": "non-finite loss or gradient at step 3", "signal": None}) == 1


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Two tiny runs: RoPE on copy (block 32), and a learned table on parity_check (sizes 1..8)."""
    root = tmp_path_factory.mktemp("length")
    rope, learned = str(root / "rope"), str(root / "learned")
    out = jaxformer("train", "--config", "tiny", "--config.train.sample_chars=0", "--workdir", rope)
    assert out.returncode == 0, out.stderr
    out = jaxformer("train", "--config", "tiny", "--config.train.sample_chars=0", "--workdir", learned,
                    "--config.model.position.name=learned", "--config.data.name=synthetic/parity_check",
                    "--config.data.synthetic.min_items=1", "--config.data.synthetic.max_items=8")
    assert out.returncode == 0, out.stderr
    return rope, learned


def _json(out):
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # subprocesses: ~20 s each
def test_eval_context_extension_zero_shot_and_per_size(tiny_runs):
    """`eval --lengths` with and without a scaling override (zero-shot context extension): other numbers with it,
    the overrides reported; `--sizes` gives every size, which are OOD, and their mean."""
    rope, learned = tiny_runs
    plain = _json(jaxformer("eval", "--workdir", rope, "--lengths", "32,64", "--json"))
    assert [x["length"] for x in plain["lengths"]] == [32, 64] and plain["overrides"] == {}
    pi = _json(jaxformer("eval", "--workdir", rope, "--lengths", "32,64", "--config.model.position.rope.scaling=linear",
                         "--config.model.position.rope.factor=2", "--json"))
    assert pi["overrides"] == {"model.position.rope.factor": 2.0, "model.position.rope.scaling": "linear"}
    assert pi["lengths"][1]["loss"] != plain["lengths"][1]["loss"]
    for x in pi["lengths"]:
        assert 0 <= x["exact_match"] <= 1 and 0 <= x["token_accuracy"] <= 1 and x["loss"] > 0
    sized = _json(jaxformer("eval", "--workdir", learned, "--sizes", "1:12", "--size-examples", "16", "--json"))
    records = sized["sizes"]["records"]
    assert [r["items"] for r in records] == list(range(1, 13)) and sized["sizes"]["train_max_items"] == 8
    assert [r["ood"] for r in records] == [n > 8 for n in range(1, 13)]
    assert sized["sizes"]["ood"]["exact_match"] == pytest.approx(np.mean([r["exact_match"] for r in records[8:]]))


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--config.model.n_embd=64"], "eval override: model.n_embd=64 differs from 32 in"),
    (["--config.model.position.rope.fraction=0.5"], "eval override: model.position.rope.fraction=0.5 differs"),
    (["--lengths", "32,x"], "--lengths='32,x'; give positive integers"),
    (["--sizes", "9:3"], "--sizes='9:3'; give MIN:MAX task sizes with 1 <= MIN <= MAX"),
])
def test_eval_refuses_what_would_change_the_model(tiny_runs, args, message):
    rope, _ = tiny_runs
    out = jaxformer("eval", "--workdir", rope, *args)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], out.stderr


@pytest.mark.slow  # subprocesses: ~20 s each
def test_eval_length_beyond_a_learned_table_and_train_init_from_errors(tiny_runs, tmp_path):
    rope, learned = tiny_runs
    before = {name: os.path.getmtime(os.path.join(rope, name)) for name in ("config.json", "manifest.json")}
    # A length beyond a learned table is n/a with the reason, and the others are evaluated (issue 39.8).
    out = jaxformer("eval", "--workdir", learned, "--lengths", "32,64")
    assert out.returncode == 0, out.stderr
    assert "n/a (the learned table has 32 positions)" in out.stdout and "loss" in out.stdout
    beyond = _json(jaxformer("eval", "--workdir", learned, "--lengths", "32,64", "--json"))["lengths"]
    assert "na" not in beyond[0] and beyond[0]["loss"] > 0 and 0 <= beyond[0]["exact_match"] <= 1
    assert beyond[1]["na"] == "n/a (the learned table has 32 positions)" and "loss" not in beyond[1]
    cases = [
        (["train", "--init-from", str(tmp_path), "--workdir", str(tmp_path / "a")], "holds no run (no config.json)"),
        (["train", "--init-from", rope, "--workdir", str(tmp_path / "b"), "--config.model.n_layer=2"],
         "--init-from: model.n_layer=2 differs from 1"),
        (["train", "--config", "tiny", "--config.model.position.randomize_max_len=8", "--workdir",
          str(tmp_path / "c")], "model.position.randomize_max_len=8 is smaller than data.block_size=32"),
        (["train", "--config", "tiny", "--config.data.name=synthetic/parity", "--workdir", str(tmp_path / "d")],
         "data.name='synthetic/parity'; choose one of:"),
        (["train", "--config", "tiny", "--config.data.name=synthetic/sorting", "--config.data.synthetic.min_items=9",
          "--config.data.synthetic.max_items=3", "--workdir", str(tmp_path / "e")],
         "data.synthetic.max_items=3 is below data.synthetic.min_items=9"),
    ]
    for args, message in cases:
        out = jaxformer(*args)
        assert out.returncode == 2, (args, out.stderr)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], out.stderr
    for name in "abcde":
        assert not os.path.exists(tmp_path / name)
    assert before == {name: os.path.getmtime(os.path.join(rope, name)) for name in before}


@pytest.mark.slow  # subprocesses: ~20 s each
def test_train_init_from_with_overrides_only(tiny_runs, tmp_path):
    """`train --init-from RUN --config.x=v` (no --config): RUN's config with the overrides, a schedule of the new
    length, and the manifest's origin."""
    rope, _ = tiny_runs
    workdir = str(tmp_path / "tuned")
    out = jaxformer("train", "--init-from", rope, "--init-checkpoint", "best", "--workdir", workdir,
                    "--config.data.block_size=64", "--config.model.position.rope.scaling=ntk",
                    "--config.model.position.rope.factor=2", "--config.train.steps=6", "--config.train.eval_every=6")
    assert out.returncode == 0, out.stderr
    with open(os.path.join(workdir, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["data"]["block_size"] == 64 and cfg["optim"]["decay_steps"] == 6
    assert cfg["model"]["position"]["rope"]["scaling"] == "ntk"
    with open(os.path.join(workdir, "manifest.json")) as f:
        assert json.load(f)["init_from"]["run"] == os.path.abspath(rope)


@pytest.mark.slow
def test_train_and_sample_with_a_bos_token(tmp_path):
    """data.bos through the command line: a task run (samples.txt decodes prompts that start with BOS), then
    `sample` prepends BOS to the prompt and prints only the task's text."""
    workdir = str(tmp_path / "bos")
    out = jaxformer("train", "--config", "tiny", "--config.data.bos=True", "--workdir", workdir)
    assert out.returncode == 0, out.stderr
    cfg = json.load(open(os.path.join(workdir, "config.json")))
    vocab = json.load(open(os.path.join(workdir, "vocab.json")))["vocab"]
    assert cfg["data"]["bos"] is True and cfg["model"]["vocab_size"] == len(vocab) + 1  # the task's symbols + BOS
    assert "prompt:" in open(os.path.join(workdir, "samples.txt")).read()
    out = jaxformer("sample", "--workdir", workdir, "--prompt", "abc|")
    assert out.returncode == 0, out.stderr
    prompt, model, expected = out.stdout.splitlines()
    assert prompt == "prompt:   abc|" and len(model.split()[1]) == 3 and expected.split()[1] == "abc"


def test_first_hour_train_names_the_run_summarises_and_sample_answers_a_task(tmp_path):
    """`jaxformer train` with no --workdir: a readable run name, a summary with the run's files and the next
    commands; `jaxformer sample` on the task run with no --prompt answers a random task example and says whether it
    is right, and with a --prompt stops at the end of the answer."""
    import re

    out = jaxformer("train", "--config", "tiny", "--config.train.steps=20", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (name,) = os.listdir(tmp_path / "runs")
    assert re.fullmatch(r"tiny-rope-steps20-\d{8}-\d{6}", name), name  # the override is in the name
    # one name per metric: the training log says "exact match", as the summary below does
    assert re.search(r"step 20: train \d\.\d{4}, val \d\.\d{4}, val exact match \d+\.\d%", out.stderr), out.stderr
    workdir = os.path.join("runs", name)
    assert out.stdout.startswith("finished 20/20 steps in "), out.stdout
    assert f"run directory: {workdir}" in out.stdout and "plots/loss.png" in out.stdout
    assert re.search(r"val loss \d\.\d{4} \(best \d\.\d{4} at step 20\), val exact match \d+\.\d%", out.stdout)
    for command in ("sample", "eval", "attention", "runs"):
        assert f"  jaxformer {command} " in out.stdout, out.stdout
    assert "{" not in out.stdout  # no raw JSON dict

    out = jaxformer("sample", "--workdir", workdir, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    prompt, model, expected = out.stdout.splitlines()
    assert re.fullmatch(r"prompt:   [a-p]+\|", prompt), prompt
    copied = prompt.split()[1][:-1]
    assert expected.split()[1] == copied and len(model.split()[1]) == len(copied)  # stops at the end of the answer
    assert expected.endswith("right") or "answer tokens right" in expected
    again = jaxformer("sample", "--workdir", workdir, "--seed", "1", cwd=tmp_path)
    assert again.stdout.splitlines()[0] != prompt  # --seed draws another example

    out = jaxformer("sample", "--workdir", workdir, "--prompt", "abca|", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "prompt:   abca|" and len(out.stdout.splitlines()[1].split()[1]) == 4
    assert out.stdout.splitlines()[2].split()[1] == "abca"
    out = jaxformer("sample", "--workdir", workdir, "--prompt", "ab", cwd=tmp_path)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "is not a synthetic/copy prompt" in lines[0], out.stderr

    import shutil

    shutil.rmtree(os.path.join(tmp_path, workdir, "checkpoints"))
    out = jaxformer("sample", "--workdir", workdir, cwd=tmp_path)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "no latest checkpoint" in lines[0], out.stderr


def test_default_run_names_never_collide(tmp_path, monkeypatch):
    import re

    from jaxformer import run as run_lib

    monkeypatch.chdir(tmp_path)
    first = run_lib.default_workdir("configs/tiny.py", "alibi")
    assert first.startswith(os.path.join("runs", "tiny-alibi-"))
    os.makedirs(first)
    second = run_lib.default_workdir("configs/tiny.py", "alibi")
    assert second in (f"{first}-2", ) or not second.startswith(first)  # same second: -2; the next second: new name
    assert run_lib.default_workdir("sweeps.tiny", "rope").startswith(os.path.join("runs", "tiny-rope-"))
    theta = run_lib.default_workdir("configs/copy_task.py", "rope", ["--config.model.position.rope.theta=500000"])
    assert re.fullmatch(r"runs/copy_task-rope-theta5e5-\d{8}-\d{6}", theta), theta


def test_log_lines_go_above_the_progress_bar():
    """A log record emitted while a tqdm bar is drawn ends up on a line of its own, not appended to the bar."""
    import io
    import logging

    from tqdm import tqdm

    from jaxformer import cli

    stream = io.StringIO()
    bar = tqdm(total=10, file=stream, ascii=True)
    bar.update(3)
    handler = cli.TqdmLogHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit(logging.LogRecord("jaxformer", logging.INFO, __file__, 1, "step 3: val 1.2345", None, None))
    bar.update(1)
    bar.close()
    lines = [line.split("\r")[-1] for line in stream.getvalue().split("\n")]
    assert "step 3: val 1.2345" in lines, lines  # the whole line, after the bar was cleared


def test_readme_train_lines_are_valid_configs():
    """Every `jaxformer train --config ...` one-liner of the README and docs/positional.md (one line per variant)
    loads, resolves and validates."""
    import shlex

    from jaxformer import cli
    from jaxformer import config as config_lib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    readme = "".join(open(os.path.join(root, name), encoding="utf-8").read()
                     for name in ("README.md", os.path.join("docs", "positional.md")))
    lines = [line for line in readme.splitlines() if line.startswith("jaxformer train --config copy_task")]
    assert len(lines) >= 9, lines  # one per positional encoding at least
    for line in lines:
        args = cli.parse("train", shlex.split(line)[2:])
        cfg = config_lib.resolve(config_lib.load(args.config, args.overrides))
        config_lib.validate(cfg)
