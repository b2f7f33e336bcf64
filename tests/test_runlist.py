"""`jaxformer runs` / `jaxformer compare` (jaxformer/runlist.py): the table of run directories and the loss plot."""

import json
import os
import subprocess
import sys
import time

import matplotlib.image
import pytest

from jaxformer import cli, runlist

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def jaxformer(*args):
    return subprocess.run([sys.executable, "-m", "jaxformer.cli", *args], capture_output=True, text=True,
                          timeout=300, env=ENV)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real run directory, written by the training loop (20 steps of configs/tiny.py)."""
    from jaxformer import config as config_lib
    from jaxformer import train as train_lib

    cfg = config_lib.load("tiny")
    cfg.train.progress = False
    cfg.train.steps = 20
    cfg.train.eval_every = 10
    cfg.train.log_every = 5
    cfg.train.sample_chars = 0
    workdir = str(tmp_path_factory.mktemp("runs") / "tiny-rope")
    train_lib.train(cfg, workdir)
    return workdir


def fake_run(path, *, steps=100, done=100, nonfinite="stop", metrics=None, timing=None, argv=None, age_s=3600):
    """A run directory written by hand (config, manifest, metrics, timing), `age_s` seconds old."""
    os.makedirs(path)
    config = {"data": {"name": "synthetic/copy"}, "model": {"position": {"name": "alibi"}},
              "train": {"steps": steps, "nonfinite": nonfinite}}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump({"argv": argv or ["jaxformer", "train", "--config", "tiny"]}, f)
    if metrics is None:
        metrics = [{"step": s, "loss": 3.0 - s / 100} for s in range(10, done + 1, 10)]
        metrics += [{"step": 50, "val_loss": 2.0, "val_accuracy": 0.25}, {"step": done, "val_loss": 2.5,
                                                                          "val_accuracy": 0.5}]
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(m) + "\n" for m in sorted(metrics, key=lambda m: m["step"]))
    if timing is None:
        timing = [{"step": s, "ms_per_step": 100.0, "tokens_per_s": 1000.0 + s} for s in range(10, done + 1, 10)]
    with open(os.path.join(path, "timing.jsonl"), "w") as f:
        f.writelines(json.dumps(t) + "\n" for t in timing)
    old = time.time() - age_s
    for name in os.listdir(path):
        os.utime(os.path.join(path, name), (old, old))
    return path


def test_summary_of_a_real_run_matches_its_files(tiny_run):
    row = runlist.summarize(tiny_run)
    metrics = [json.loads(line) for line in open(os.path.join(tiny_run, "metrics.jsonl"))]
    evals = [m for m in metrics if "val_loss" in m]
    assert row["status"] == "finished" and (row["done"], row["steps"]) == (20, 20)
    assert row["best_val"] == min(m["val_loss"] for m in evals)
    assert row["exact_match"] == evals[-1]["val_accuracy"]
    assert (row["data"], row["position"]) == ("synthetic/copy", "rope")
    assert row["wall_s"] > 0 and row["tokens_per_s"] > 0


def test_status_and_figures_from_the_files(tmp_path):
    finished = runlist.summarize(fake_run(str(tmp_path / "a")))
    assert finished["status"] == "finished" and finished["config"] == "tiny"
    assert (finished["best_val"], finished["best_step"], finished["final_val"]) == (2.0, 50, 2.5)
    assert finished["exact_match"] == 0.5
    assert finished["wall_s"] == pytest.approx(10 * 100.0 * 10 / 1000)  # 10 lines of 10 steps at 100 ms
    assert finished["tokens_per_s"] == pytest.approx(1055.0)  # the median of 1010 .. 1100
    assert runlist.summarize(fake_run(str(tmp_path / "b"), done=40))["status"] == "stopped"
    assert runlist.summarize(fake_run(str(tmp_path / "c"), done=40, age_s=1))["status"] == "running"
    diverged = [{"step": 10, "loss": 3.0}, {"step": 20, "loss": float("nan"), "nonfinite_steps": 1}]
    assert runlist.summarize(fake_run(str(tmp_path / "d"), done=20, metrics=diverged))["status"] == "diverged"
    # train.nonfinite=skip: the run goes on past a bad step, and finishes.
    skipped = [*diverged, {"step": 100, "loss": 1.0, "nonfinite_steps": 1}]
    assert runlist.summarize(fake_run(str(tmp_path / "e"), metrics=skipped, nonfinite="skip"))["status"] == "finished"
    bare = runlist.summarize(fake_run(str(tmp_path / "f"), argv=["/x/bin/jaxformer", "train"]))
    assert bare["config"] == "default"
    resumed = runlist.summarize(fake_run(str(tmp_path / "g"), argv=["jaxformer", "train", "--resume"]))
    assert resumed["config"] == "-"


def test_broken_and_half_written_runs_are_listed_not_fatal(tmp_path):
    root = tmp_path / "runs"
    fake_run(str(root / "good"))
    (root / "empty").mkdir()
    (root / "half").mkdir()
    (root / "half" / "metrics.jsonl").write_text('{"step": 5, "loss": 3.0}\n')
    fake_run(str(root / "truncated"))
    (root / "truncated" / "config.json").write_text('{"data": {"na')
    fake_run(str(root / "sweeps" / "s" / "runs" / "position=rope,seed=0"))
    (root / "sweeps" / "s" / "results.md").write_text("# a report, not a run\n")
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("a folder that is not a run is not listed\n")
    paths = runlist.find_runs(str(root))
    assert [os.path.relpath(p, root) for p in paths] == ["good", "half", "sweeps/s/runs/position=rope,seed=0",
                                                        "truncated"]  # an empty folder is no run
    rows = {os.path.basename(p): runlist.summarize(p) for p in paths}
    assert rows["half"]["status"] == rows["truncated"]["status"] == "broken"
    assert rows["half"]["problem"] == "no config.json"
    assert "JSONDecodeError" in rows["truncated"]["problem"]
    out = jaxformer("runs", str(root))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["run", "config", "data", "position"] and len(lines) == 2 + 4 + 1
    assert lines[-1].startswith("1 folder that are not runs passed over")
    assert any(line.startswith("half ") and "broken (no config.json)" in line for line in lines)
    assert any(line.startswith("good ") and "100/100" in line and "finished" in line for line in lines)


def test_runs_on_a_folder_with_no_runs_or_no_folder(tmp_path):
    out = jaxformer("runs", str(tmp_path))
    assert out.returncode == 0 and out.stdout.startswith("no runs in"), out.stdout + out.stderr
    out = jaxformer("runs", str(tmp_path / "missing"))
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "is not a directory" in lines[0], out.stderr


def test_runs_and_compare_import_no_jax(tmp_path):
    fake_run(str(tmp_path / "a"))
    code = ("import sys\nfrom jaxformer import cli\n"
            f"assert cli.main(['runs', {str(tmp_path)!r}]) == 0\n"
            "assert 'jax' not in sys.modules, 'jaxformer runs imported JAX'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=ENV)
    assert out.returncode == 0, out.stderr


def test_compare_draws_one_png_and_prints_the_table(tiny_run, tmp_path):
    other = fake_run(str(tmp_path / "other"))
    out_png = str(tmp_path / "cmp.png")
    assert cli.main(["compare", tiny_run, other, "--out", out_png]) == 0
    image = matplotlib.image.imread(out_png)
    assert image.ndim == 3 and image.shape[0] > 200 and image.std() > 0  # drawn, not blank
    out = jaxformer("compare", tiny_run, other, "--out", out_png)
    assert out.returncode == 0 and out_png in out.stdout
    assert "tiny-rope" in out.stdout and "other" in out.stdout


@pytest.mark.parametrize("make", ["missing", "not_a_run", "broken"])
def test_compare_refuses_what_is_not_a_run(make, tmp_path):
    good = fake_run(str(tmp_path / "good"))
    bad = tmp_path / "bad"
    if make == "not_a_run":
        bad.mkdir()
        (bad / "notes.txt").write_text("hello")
    elif make == "broken":
        fake_run(str(bad))
        (bad / "config.json").write_text("{")
    out = jaxformer("compare", good, str(bad), "--out", str(tmp_path / "c.png"))
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and str(bad) in lines[0], out.stderr
    assert not os.path.exists(tmp_path / "c.png")


def test_runs_before_the_first_run(tmp_path):
    out = subprocess.run([sys.executable, "-m", "jaxformer.cli", "runs"], capture_output=True, text=True,
                         timeout=60, env=ENV, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("no runs yet"), out.stdout + out.stderr


def test_runs_passes_over_what_is_not_a_run_and_labels_imported_models(tmp_path, capsys):
    """Issue 39.4: `jaxformer runs` on a folder that is not only runs (a project folder): hidden folders, virtual
    environments, empty folders and Hugging Face model folders are passed over and counted; an imported model is
    labelled as imported, not as a stopped run of 0/1 steps on tiny_shakespeare."""
    fake_run(str(tmp_path / "x9"))
    (tmp_path / ".git" / "branches").mkdir(parents=True)
    (tmp_path / ".venv" / "include" / "python3.11").mkdir(parents=True)
    (tmp_path / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (tmp_path / "venv2" / "lib").mkdir(parents=True)
    (tmp_path / "venv2" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (tmp_path / "gpt2-hf").mkdir()
    (tmp_path / "gpt2-hf" / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"], "n_layer": 2}')
    imported = tmp_path / "mygpt2"
    fake_run(str(imported), steps=1, done=0, metrics=[], timing=[])
    (imported / "manifest.json").write_text(json.dumps({"argv": ["jaxformer", "import"],
                                                         "source": {"architecture": "GPT2LMHeadModel"}}))
    assert cli.main(["runs", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:-1]] == ["mygpt2", "x9"], lines
    header = lines[0]
    for column in ("final val loss", "best val loss", "final exact match"):
        assert column in header
    row = dict(zip(runlist.COLUMNS, [c.strip() for c in _columns(lines[0], lines[2])], strict=True))
    assert (row["config"], row["data"], row["steps"], row["status"]) == ("import", "-", "-",
                                                                         "imported (GPT2LMHeadModel)")
    good = dict(zip(runlist.COLUMNS, [c.strip() for c in _columns(lines[0], lines[3])], strict=True))
    # final and best side by side: the last evaluation (step 100) and the best one (step 50)
    assert (good["final val loss"], good["best val loss"], good["final exact match"]) == ("2.5000", "2.0000 @50",
                                                                                          "50.0%")
    assert lines[-1] == ("4 folders that are not runs passed over: hidden, virtual environments, empty, or not a "
                         "jaxformer config.json")


def _columns(header: str, line: str) -> list[str]:
    """Cut a table line where the header's columns start (names with spaces kept whole)."""
    starts = [header.index(name) for name in runlist.COLUMNS]
    return [line[a:b] for a, b in zip(starts, [*starts[1:], None], strict=True)]


def test_compare_legend_names_what_tells_the_runs_apart(tmp_path):
    """Issue 39.2: runs made with the same config and encoding but other overrides get legend labels that say
    which fields differ (those of the variant in use only), and none where the names already say it."""
    configs = []
    for name, theta, fraction in (("a", 10000.0, 1.0), ("b", 500000.0, 1.0), ("c", 10000.0, 0.25)):
        path = fake_run(str(tmp_path / name))
        cfg = {"data": {"name": "synthetic/copy", "manual_dir": f"/data/{name}"},
               "model": {"position": {"name": "rope", "rope": {"theta": theta, "fraction": fraction},
                                      "alibi": {"max_bias": float(len(name))}}}, "train": {"steps": 100}}
        configs.append(cfg)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(cfg, f)
    assert runlist.distinguishing_fields(configs) == [{"rope.fraction": 1.0, "rope.theta": 10000.0},
                                                      {"rope.fraction": 1.0, "rope.theta": 500000.0},
                                                      {"rope.fraction": 0.25, "rope.theta": 10000.0}]
    paths = [str(tmp_path / n) for n in "abc"]
    labels = runlist.legend_labels(paths)
    assert labels[paths[1]] == "b (rope.fraction=1.0, rope.theta=500000.0)"
    named = tmp_path / "copy_task-rope-theta5e5"
    os.rename(paths[1], named)
    assert runlist.legend_labels([paths[0], str(named)])[str(named)] == "copy_task-rope-theta5e5 (rope.theta=500000.0)"
