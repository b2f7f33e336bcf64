"""Sweeps and length extrapolation: points, validation, a tiny sweep end to end, n/a handling, resume, reports."""

import csv
import glob
import json
import os
import re
import shutil
import subprocess

import matplotlib.image
import ml_collections
import numpy as np
import pytest
from scipy import stats

from jaxformer import config as config_lib
from jaxformer import extrapolation, sweep
from jaxformer import train as train_lib

REPORTS = ("results.md", "results.csv", "extrapolation.png", "position_loss.png")


def _tiny(*overrides):
    return sweep.load_sweep("sweeps.tiny", list(overrides))


def test_points_names_overrides_and_na():
    sweep_cfg, base = _tiny("--config.train.steps=7", "--config.eval_lengths=(1, 2, 4)")
    assert base == ["--config.train.steps=7"] and tuple(sweep_cfg.eval_lengths) == (1, 2, 4)
    points = sweep.make_points(sweep_cfg, base)
    assert [p.name for p in points] == ["position=learned,seed=0", "position=alibi,seed=0"]
    assert [p.variant for p in points] == ["learned", "alibi"]
    learned, alibi = points
    assert learned.cfg.train.steps == 7 and learned.cfg.model.position.name == "learned"
    block = learned.cfg.data.block_size
    assert [x["length"] for x in learned.lengths] == [block, 2 * block, 4 * block]
    assert learned.lengths[0]["na"] is None
    assert learned.lengths[1]["na"] == f"n/a (learned table has {block} positions)"
    assert all(x["na"] is None for x in alibi.lengths)


def test_more_axes_any_field():
    sweep_cfg, base = _tiny("--config.axes.train.seed=(0, 1)")
    with sweep_cfg.unlocked():
        sweep_cfg.axes.model.n_layer = (1, 2)
    points = sweep.make_points(sweep_cfg, base)
    assert len(points) == 8
    assert points[0].name == "n_layer=1,position=learned,seed=0"
    assert points[0].variant == "n_layer=1,position=learned"
    assert {p.cfg.model.n_layer for p in points} == {1, 2}


def test_axes_take_plain_comma_lists_and_the_tuple_form(tmp_path, capsys):
    """Issue 39.3: `--config.axes.F=rope,alibi,none` and `--axis F=...` (which adds an axis) give the same points as
    the tuple form; items are typed (numbers stay numbers)."""
    assert sweep.axis_values("rope,alibi,none") == ("rope", "alibi", "none")
    assert sweep.axis_values("0, 1,2") == (0, 1, 2) and sweep.axis_values("3e-4,1e-3") == (3e-4, 1e-3)
    assert sweep.axis_values("True,False") == (True, False) and sweep.axis_values("rope") == ("rope",)
    assert sweep.axis_values("('rope', 'alibi')") == ("rope", "alibi") and sweep.axis_values("(0,)") == (0,)
    with pytest.raises(ValueError, match="has an empty item; give a comma list"):
        sweep.axis_values("rope,,alibi")
    names = lambda cfg: [p.name for p in sweep.make_points(*cfg)]  # noqa: E731
    plain = names(_tiny("--config.axes.model.position.name=rope,alibi,none", "--config.axes.train.seed=0,1"))
    tuples = names(_tiny("--config.axes.model.position.name=('rope','alibi','none')",
                         "--config.axes.train.seed=(0, 1)"))
    assert plain == tuples and len(plain) == 6 and plain[0] == "position=rope,seed=0"
    added = sweep.load_sweep("sweeps.tiny", [], ["model.n_layer=1,2", "model.position.name=rope"])
    assert [p.name for p in sweep.make_points(*added)] == ["n_layer=1,position=rope,seed=0",
                                                           "n_layer=2,position=rope,seed=0"]
    with pytest.raises(ValueError, match="--axis 'model.n_layer'; give FIELD=v1,v2"):
        sweep.load_sweep("sweeps.tiny", [], ["model.n_layer"])
    workdir = str(tmp_path / "s")
    assert sweep.sweep_main(["--config", "sweeps.tiny", "--workdir", workdir, "--dry-run",
                             "--axis", "model.position.name=rope,alibi,none"]) == 0
    assert "3 points" in capsys.readouterr().out
    from jaxformer import options

    assert "--config.axes.model.position.name=rope,alibi,none" in " ".join(options.parser("sweep").format_help()
                                                                            .split())


@pytest.mark.parametrize("override,message", [
    ("--config.model.position.nmae=x", "unknown config field 'model.position.nmae'"),
    ("--config.axes.model.position.name=('alibi', 'nope')", "sweep point position=nope,seed=0: model.position.name"),
    ("--config.eval_tokens=16", "eval_tokens=16 is less than the longest eval length"),
    ("--config.eval_stride=0", "eval_stride=0: the sliding window (data.block_size=32) needs a stride in [1, 32]"),
    ("--config.eval_stride=33", "eval_stride=33: the sliding window (data.block_size=32) needs a stride in [1, 32]"),
    ("--config.statistics=True", "statistics=True needs at least 2 seeds (axes.train.seed has 1)"),
    ("--config.reference=rope", None),  # without statistics the reference is not used: no error (see below)
])
def test_bad_sweeps_fail_before_running(override, message, tmp_path):
    if message is None:
        sweep_cfg, base = _tiny(override, "--config.statistics=True", "--config.axes.train.seed=(0, 1)")
        message = "reference='rope' is not a variant of this sweep; choose one of: learned, alibi"
        with pytest.raises(ValueError, match=re.escape(message)):
            sweep.run_sweep(sweep_cfg, str(tmp_path / "s"), base_overrides=base)
        assert not os.path.exists(tmp_path / "s" / "runs")
        return
    with pytest.raises(ValueError, match=re.escape(message)):
        sweep_cfg, base = _tiny(override)
        sweep.run_sweep(sweep_cfg, str(tmp_path / "s"), base_overrides=base)
    assert not os.path.exists(tmp_path / "s" / "runs")


def test_not_a_sweep_config():
    with pytest.raises(ValueError, match="is not a sweep config"):
        sweep.load_sweep("tiny")


class _Text:
    """A stand-in text dataset: 1,000 validation tokens."""

    def __init__(self, n=1000):
        self.tokens = np.arange(n) % 7

    def split_tokens(self, split):
        return self.tokens

    def windows(self, split, *, length, max_windows):
        x = self.tokens[:max_windows * length].reshape(max_windows, length)
        return {"inputs": x, "targets": x, "weights": np.ones_like(x)}


def test_window_counts_predict_the_same_tokens_at_every_length():
    counts = extrapolation.window_counts(_Text(), "val", [64, 128, 256, 512], eval_tokens=4096)
    # 999 predictable tokens hold one 512-window: 512 tokens at every length.
    assert counts == {64: 8, 128: 4, 256: 2, 512: 1}
    counts = extrapolation.window_counts(_Text(), "val", [64, 128, 2048], eval_tokens=256)
    assert counts == {64: 4, 128: 2, 2048: 0}  # 2048 does not fit: n/a, the others share the budget


def test_point_state(tmp_path):
    run = tmp_path / "run"
    assert sweep.point_state(str(run), 20) == "new"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "checkpoints" / "latest" / "10").mkdir(parents=True)
    assert sweep.point_state(str(run), 20) == "resume"
    (run / "checkpoints" / "latest" / "20").mkdir()
    assert sweep.point_state(str(run), 20) == "evaluate"
    (run / extrapolation.RESULT_FILE).write_text(json.dumps({"stopped": None}))
    assert sweep.point_state(str(run), 20) == "done"
    (run / "checkpoints" / "latest" / "20").rmdir()
    (run / extrapolation.RESULT_FILE).write_text(json.dumps({"stopped": "non-finite loss at step 7"}))
    assert sweep.point_state(str(run), 20) == "done"  # diverged before the end: reported, not retried


def test_dry_run_lists_points_and_runs_nothing(tmp_path, capsys):
    assert sweep.sweep_main(["--config", "sweeps.tiny", "--workdir", str(tmp_path / "s"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 points" in out and "position=learned,seed=0" in out and "n/a (learned table has" in out
    assert not os.path.exists(tmp_path / "s")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The tiny sweep, with one point interrupted at step 10 beforehand (it must be resumed, not restarted)."""
    workdir = str(tmp_path_factory.mktemp("sweep"))
    sweep_cfg, base = _tiny()
    points = sweep.make_points(sweep_cfg, base)
    train_lib.train(points[1].cfg, os.path.join(workdir, "runs", points[1].name), stop_after=10)
    lines = []
    sweep.run_sweep(sweep_cfg, workdir, base_overrides=base, print_fn=lines.append)
    return workdir, points, lines


def _results(workdir, name):
    with open(os.path.join(workdir, "runs", name, extrapolation.RESULT_FILE)) as f:
        return json.load(f)


def test_tiny_sweep_end_to_end(swept):
    workdir, points, lines = swept
    assert any("[new     ] position=learned,seed=0" in line for line in lines)
    assert any("[resume  ] position=alibi,seed=0" in line for line in lines)
    for name in REPORTS:
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    for name in ("extrapolation.png", "position_loss.png"):
        assert matplotlib.image.imread(os.path.join(workdir, name)).ndim == 3
    with open(os.path.join(workdir, "sweep.json")) as f:
        assert [p["name"] for p in json.load(f)["points"]] == [p.name for p in points]
    for p in points:  # ordinary run directories, finished
        assert sweep.point_state(os.path.join(workdir, "runs", p.name), p.cfg.train.steps) == "done"

    with open(os.path.join(workdir, "results.csv")) as f:
        rows = {(r["variant"], int(r["multiplier"])): r for r in csv.DictReader(f)}
    assert set(rows) == {("learned", 1), ("learned", 2), ("alibi", 1), ("alibi", 2)}
    block = points[0].cfg.data.block_size
    assert rows[("learned", 2)]["status"] == f"n/a (learned table has {block} positions)"
    assert rows[("learned", 2)]["loss_mean"] == ""
    for key in (("learned", 1), ("alibi", 1), ("alibi", 2)):
        assert rows[key]["status"] == "ok" and np.isfinite(float(rows[key]["loss_mean"]))
        assert float(rows[key]["val_loss_mean"]) > 0 and int(rows[key]["n_params"]) > 0
        assert float(rows[key]["ms_per_step"]) > 0
    with open(os.path.join(workdir, "results.md")) as f:
        md = f.read()
    assert "| learned |" in md and "| alibi |" in md and f"n/a (learned table has {block} positions)" in md

    # the sliding-window baseline: at 1x the full-context numbers; for learned past its table, instead of n/a
    learned = _results(workdir, "position=learned,seed=0")
    assert learned["lengths"][0]["sliding"]["loss"] == learned["lengths"][0]["loss"]
    assert "loss" not in learned["lengths"][1] and learned["lengths"][1]["sliding"]["loss"] > 0
    assert learned["lengths"][1]["sliding"] == {**learned["lengths"][1]["sliding"], "window": block, "stride": 16}
    assert float(rows[("learned", 2)]["sliding_loss_mean"]) == pytest.approx(learned["lengths"][1]["sliding"]["loss"])
    assert "| learned (sliding 32) |" in md and "Sliding-window baseline" in md

    alibi = _results(workdir, "position=alibi,seed=0")
    one, two = alibi["lengths"]
    assert (one["length"], two["length"]) == (block, 2 * block)
    # The synthetic task has one answer token per example: the same number of examples (and answers) per length.
    assert one["predicted_tokens"] == two["predicted_tokens"] == 256 == one["windows"] == two["windows"]
    assert 0 <= one["exact_match"] <= 1 and rows[("alibi", 2)]["exact_match_mean"] != ""
    assert len(one["position_loss"]) == block and len(two["position_loss"]) == 2 * block
    assert alibi["n_params"] > 0 and alibi["step"] == points[1].cfg.train.steps


def test_rerun_skips_finished_and_evaluates_trained(swept):
    workdir, points, _ = swept
    sweep_cfg, base = _tiny()
    checkpoints = os.path.join(workdir, "runs", points[0].name, "checkpoints", "latest")
    before = {name: os.path.getmtime(os.path.join(checkpoints, name)) for name in os.listdir(checkpoints)}
    done_path = os.path.join(workdir, "runs", points[1].name, extrapolation.RESULT_FILE)
    done_mtime = os.path.getmtime(done_path)
    os.remove(os.path.join(workdir, "runs", points[0].name, extrapolation.RESULT_FILE))

    lines = []
    sweep.run_sweep(sweep_cfg, workdir, base_overrides=base, print_fn=lines.append)
    assert any("[evaluate] position=learned,seed=0" in line for line in lines)
    assert any("[done    ] position=alibi,seed=0" in line for line in lines)
    assert os.path.getmtime(done_path) == done_mtime  # finished: untouched
    after = {name: os.path.getmtime(os.path.join(checkpoints, name)) for name in os.listdir(checkpoints)}
    assert after == before  # trained: evaluated only, not trained again
    assert os.path.exists(os.path.join(workdir, "runs", points[0].name, extrapolation.RESULT_FILE))


def test_changed_config_is_refused_not_mixed(swept):
    workdir, _, _ = swept
    sweep_cfg, base = _tiny("--config.optim.lr=0.002")
    with pytest.raises(ValueError, match="was run with optim.lr=0.003"):
        sweep.run_sweep(sweep_cfg, workdir, base_overrides=base, dry_run=True)
    # A changed train.steps is named as itself, not as the optim.decay_steps derived from it.
    steps = sweep.make_points(*_tiny())[0].cfg.train.steps
    sweep_cfg, base = _tiny(f"--config.train.steps={steps + 5}")
    with pytest.raises(ValueError, match=rf"was run with train.steps={steps}, the sweep now gives {steps + 5} "
                                         r"\(and 1 more: optim.decay_steps\)"):
        sweep.run_sweep(sweep_cfg, workdir, base_overrides=base, dry_run=True)
    # Settings of a variant no point uses do not touch the runs: not a difference.
    sweep_cfg, base = _tiny("--config.model.position.rope.theta=500.0")
    lines = []
    sweep.run_sweep(sweep_cfg, workdir, base_overrides=base, dry_run=True, print_fn=lines.append)
    assert "2 finished" in lines[0]


def test_report_regenerates_from_run_dirs(swept, capsys):
    workdir, _, _ = swept
    with open(os.path.join(workdir, "results.csv")) as f:
        csv_before = f.read()
    for name in (*REPORTS, "sweep.json"):
        os.remove(os.path.join(workdir, name))
    assert sweep.report_main([workdir]) == 0
    for name in REPORTS:
        assert os.path.exists(os.path.join(workdir, name)), name
    with open(os.path.join(workdir, "results.csv")) as f:
        assert f.read() == csv_before
    out = capsys.readouterr().out
    assert "learned:" in out and "alibi:" in out
    with pytest.raises(ValueError, match="has no runs/ directory"):
        sweep.report_main([os.path.join(workdir, "runs")])


def test_packaged_sweep_configs_validate():
    """The shipped sweeps load, name every registered variant, and validate every point (nothing runs)."""
    from jaxformer import positional

    for name in ("sweeps.positional", "sweeps.positional_synthetic"):
        sweep_cfg, base = sweep.load_sweep(name)
        points = sweep.make_points(sweep_cfg, base)
        assert {p.cfg.model.position.name for p in points} == set(positional.list_positional_encodings()), name
        assert len({p.cfg.train.seed for p in points}) >= 2
        assert config_lib.list_configs()  # packaged configs are found by name


def test_cli_subcommands(tmp_path, capsys):
    """`jaxformer sweep` / `jaxformer report` through cli.main: dry run, and a one-line error (exit 2)."""
    from jaxformer import cli

    assert cli.main(["sweep", "--config", "sweeps.tiny", "--workdir", str(tmp_path / "s"), "--dry-run"]) == 0
    assert "position=alibi,seed=0" in capsys.readouterr().out
    assert cli.main(["report", str(tmp_path / "nothing")]) == 2
    assert "has no runs/ directory" in capsys.readouterr().err


def test_a_signal_stops_the_sweep_with_its_exit_status(tmp_path, monkeypatch, capsys):
    def interrupted(cfg, workdir, **kwargs):
        return {"stopped": "SIGTERM at step 4; checkpoint saved", "signal": "SIGTERM", "step": 4}

    monkeypatch.setattr(train_lib, "train", interrupted)
    status = sweep.sweep_main(["--config", "sweeps.tiny", "--workdir", str(tmp_path / "s")])
    assert status == 143
    out = capsys.readouterr().out
    assert "sweep stopped at point position=learned,seed=0: SIGTERM at step 4; checkpoint saved" in out
    assert "position=alibi" not in out.split("sweep stopped")[1]  # nothing after the stopped point ran


@pytest.mark.slow  # ~1 minute
def test_sweep_with_the_per_size_protocol_and_randomized_positions(tmp_path):
    """eval_sizes: every size evaluated, OOD means and the reached column in results.md, sizes.csv and sizes.png;
    the randomized-positions axis gives a point of its own, evaluated at randomized positions too
    (eval_random_positions: a "(random eval positions)" row; the plain point has none)."""
    sweep_cfg, base = _tiny("--config.data.name=synthetic/parity_check", "--config.data.block_size=16",
                            "--config.data.synthetic.min_items=1", "--config.data.synthetic.max_items=6",
                            "--config.train.steps=10", "--config.train.eval_every=10")
    with sweep_cfg.unlocked():
        sweep_cfg.eval_sizes, sweep_cfg.eval_size_examples = (1, 9), 8
        sweep_cfg.eval_random_positions = True
        sweep_cfg.axes.model = {"position": {"name": ("rope",), "randomize_max_len": (0, 64)}}
    workdir = str(tmp_path / "sizes")
    sweep.run_sweep(sweep_cfg, workdir, base_overrides=base, print_fn=lambda *a: None)
    result = _results(workdir, "position=rope,randomize_max_len=64,seed=0")
    assert result["randomize_max_len"] == 64
    sizes = result["sizes"]
    assert sizes["train_max_items"] == 6 and [r["items"] for r in sizes["records"]] == list(range(1, 10))
    assert sizes["ood"]["sizes"] == [7, 9]
    assert sizes["ood"]["exact_match"] == pytest.approx(np.mean([r["exact_match"] for r in sizes["records"][6:]]))
    with open(os.path.join(workdir, "sizes.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 9 and {r["variant"] for r in rows} == {
        "position=rope,randomize_max_len=0", "position=rope,randomize_max_len=64",
        "position=rope,randomize_max_len=64 (random eval positions)"}
    with open(os.path.join(workdir, "results.md")) as f:
        md = f.read()
    assert "## Per task size" in md and "| position=rope,randomize_max_len=64 | " in md
    randomized = result["sizes_random_positions"]
    assert randomized["max_len"] == 64 and [r["items"] for r in randomized["records"]] == list(range(1, 10))
    assert [r["loss"] for r in randomized["records"]] != [r["loss"] for r in sizes["records"]]
    assert "sizes_random_positions" not in _results(workdir, "position=rope,randomize_max_len=0,seed=0")
    assert "| position=rope,randomize_max_len=64 (random eval positions) | " in md
    assert matplotlib.image.imread(os.path.join(workdir, "sizes.png")).ndim == 3
    with sweep_cfg.unlocked():
        sweep_cfg.eval_sizes = (5, 2)
    with pytest.raises(ValueError, match="eval sizes \\(5, 2\\)"):
        sweep.make_points(sweep_cfg, base)


def test_packaged_length_generalization_sweeps_validate():
    """sweeps.algorithmic: 12 named variants (3 randomized) x 4 tasks x 3 seeds; sweeps.context_extension: every point
    starts from the base run of its seed, with YaRN's original length the base's block, evaluated at 64..512."""
    sweep_cfg, base = sweep.load_sweep("sweeps.algorithmic")
    points = sweep.make_points(sweep_cfg, base)
    assert len(points) == 144 and len({p.cfg.train.seed for p in points}) == 3
    by_variant = {dict(p.values)["variant"]: p.cfg for p in points}
    assert len(by_variant) == 12
    assert by_variant["rope_randomized"].model.position.randomize_max_len == 256
    assert by_variant["rope"].model.position.randomize_max_len == 0
    assert by_variant["learned"].model.position.learned.max_len == 32
    assert by_variant["rope_randomized"].model.position.randomize_per == "sequence"
    assert {p.cfg.data.name for p in points} >= {"synthetic/sorting", "synthetic/reverse_string"}
    assert all(p.cfg.data.bos for p in points) and sweep_cfg.eval_random_positions
    steps = {(dict(p.values)["variant"], p.cfg.data.name): p.cfg.train.steps for p in points}
    assert {n for (_, task), n in steps.items() if task.endswith(("reverse_string", "duplicate_string"))} == {6000}
    assert {n for (_, task), n in steps.items() if task.endswith("sort") or task.endswith("sorting")} == {3000}

    sweep_cfg, base = sweep.load_sweep("sweeps.context_extension")
    points = sweep.make_points(sweep_cfg, base)
    assert len(points) == 12
    for p in points:
        assert p.init_from == f"base/runs/seed={p.cfg.train.seed}"
        assert p.cfg.data.block_size == 256 and p.cfg.model.position.rope.original_max_len == 64
        assert [x["length"] for x in p.lengths] == [64, 128, 256, 512]
        assert [x["multiplier"] for x in p.lengths] == [0.25, 0.5, 1, 2]


@pytest.mark.slow  # ~3 minutes on a loaded 2-core machine
def test_init_sweep_trains_the_base_first_then_fine_tunes_and_reports_zero_shot(tmp_path):
    """A sweep with `init`: the base sweep runs into <workdir>/base, each point starts from the base run of its seed
    (its manifest says so), and the `none` zero-shot row is the base model's own loss at the same windows."""
    base_file = tmp_path / "base_sweep.py"
    base_file.write_text(
        "import ml_collections\n"
        "def get_config():\n"
        "    c = ml_collections.ConfigDict()\n"
        "    c.base = 'tiny'\n"
        "    c.overrides = ('--config.train.steps=10', '--config.train.eval_every=10', "
        "'--config.train.checkpoint_every=10', '--config.train.sample_chars=0', '--config.train.progress=False')\n"
        "    c.axes = ml_collections.ConfigDict()\n"
        "    c.axes.train = {'seed': (0,)}\n"
        "    c.eval_lengths = (1, 2)\n"
        "    c.eval_tokens = 256\n"
        "    c.eval_batch_tokens = 256\n"
        "    return c\n")
    sweep_cfg, base = _tiny("--config.data.block_size=64", "--config.model.position.rope.factor=2.0",
                            "--config.train.steps=6", "--config.train.eval_every=6",
                            "--config.train.checkpoint_every=6")
    with sweep_cfg.unlocked():
        sweep_cfg.overrides = tuple(o for o in sweep_cfg.overrides if "data.name" not in o)  # tiny's copy task
        sweep_cfg.axes.model = {"position": {"rope": {"scaling": ("none", "yarn")}}}
        sweep_cfg.init = {"sweep": str(base_file), "match": ("train.seed",), "checkpoint": "latest", "overrides": ()}
        sweep_cfg.eval_at = (32, 64)
    workdir = str(tmp_path / "ext")
    sweep.run_sweep(sweep_cfg, workdir, base_overrides=base, print_fn=lambda *a: None)
    base_result = _results(os.path.join(workdir, "base"), "seed=0")
    for name in ("scaling=none,seed=0", "scaling=yarn,seed=0"):
        with open(os.path.join(workdir, "runs", name, "manifest.json")) as f:
            assert json.load(f)["init_from"]["run"] == os.path.abspath(os.path.join(workdir, "base", "runs", "seed=0"))
    none = _results(workdir, "scaling=none,seed=0")
    assert none["zero_shot"]["lengths"][0]["loss"] == pytest.approx(base_result["lengths"][0]["loss"], rel=1e-6)
    yarn = _results(workdir, "scaling=yarn,seed=0")
    # The same parameters and windows: with the override ignored the two would be equal bit for bit.
    assert yarn["zero_shot"]["lengths"][1]["loss"] != none["zero_shot"]["lengths"][1]["loss"]
    with open(os.path.join(workdir, "results.csv")) as f:
        variants = [r["variant"] for r in csv.DictReader(f)]
    assert variants[:4] == ["none zero-shot"] * 2 + ["yarn zero-shot"] * 2 and "yarn" in variants


def test_a_point_committed_without_checkpoints_is_finished_and_reruns_reproduce_it(swept, tmp_path, capsys):
    """Issue 22 (6): the small files alone mark a point finished; re-running it from scratch with `jaxformer sweep`
    reproduces its recorded losses."""
    import shutil

    workdir, points, _ = swept
    committed = tmp_path / "committed"
    for p in points:  # what git holds: the small files, no checkpoints
        shutil.copytree(os.path.join(workdir, "runs", p.name), committed / "runs" / p.name,
                        ignore=shutil.ignore_patterns("checkpoints", "events.out.tfevents*"))
    lines = []
    sweep.run_sweep(*_tiny()[:1], str(committed), base_overrides=_tiny()[1], print_fn=lines.append)
    assert "2 finished" in lines[0] and not any("sweep: point" in line for line in lines)
    assert not any((committed / "runs" / p.name / "checkpoints").exists() for p in points)  # nothing retrained

    fresh = str(tmp_path / "fresh")
    assert sweep.sweep_main(["--config", "sweeps.tiny", "--workdir", fresh,
                             "--config.axes.model.position.name=('alibi',)"]) == 0
    recorded, again = _results(workdir, "position=alibi,seed=0"), _results(fresh, "position=alibi,seed=0")
    for x, y in zip(recorded["lengths"], again["lengths"], strict=True):
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-6)
        assert y["sliding"]["loss"] == pytest.approx(x["sliding"]["loss"], abs=1e-6)


def test_overrides_by_variant_reach_only_that_variants_points():
    sweep_cfg, base = _tiny()
    with sweep_cfg.unlocked():
        sweep_cfg.overrides_by_variant = {"alibi": ("--config.optim.lr=0.001",)}
    learned, alibi = sweep.make_points(sweep_cfg, base)
    assert alibi.cfg.optim.lr == 0.001 and learned.cfg.optim.lr == 0.003
    with sweep_cfg.unlocked():  # a variant the sweep does not run (narrowed axes): nothing to apply it to
        sweep_cfg.overrides_by_variant = {"rope": ("--config.optim.lr=0.001",)}
    assert [p.cfg.optim.lr for p in sweep.make_points(sweep_cfg, base)] == [0.003, 0.003]


def _fake_run(sweep_dir, variant, seed, index, losses, sliding):
    """A finished run's small files with the given per-length losses (what the reports read)."""
    run = os.path.join(sweep_dir, "runs", f"position={variant},seed={seed}")
    os.makedirs(run)
    lengths = [{"multiplier": m, "length": 16 * m, "na": None, "loss": loss, "windows": 4, "predicted_tokens": 64,
                "token_accuracy": 0.5, "exact_match": 0.0, "position_loss": [loss] * 16 * m,
                "sliding": {"window": 16, "stride": 8, "loss": s, "token_accuracy": 0.5, "exact_match": 0.0}}
               for m, loss, s in zip((1, 2), losses, sliding, strict=True)]
    result = {"point": os.path.basename(run), "variant": variant, "index": index, "position": variant, "seed": seed,
              "data": "fake", "split": "val", "block_size": 16, "steps": 10, "step": 10, "stopped": None,
              "model": {"n_layer": 1, "n_head": 2, "n_embd": 8}, "has_accuracy": False, "n_params": 100,
              "lengths": lengths, "seconds": {"train": 1.0, "eval": 1.0}, "cpu_seconds": {"train": 1.0, "eval": 1.0}}
    extrapolation.write_result(os.path.join(run, extrapolation.RESULT_FILE), result)
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": 10, "val_loss": losses[0]}) + "\n")


def test_report_statistics_against_values_by_hand(tmp_path):
    sweep_dir = str(tmp_path)
    rope = {0: (2.00, 2.50), 1: (2.10, 2.40), 2: (2.05, 2.60)}
    alibi = {0: (2.10, 2.55), 1: (2.20, 2.35), 2: (2.15, 2.70)}  # 1x: +0.10 every seed; 2x: +0.05, -0.05, +0.10
    for i, (variant, table) in enumerate((("rope", rope), ("alibi", alibi))):
        for seed, losses in table.items():
            _fake_run(sweep_dir, variant, seed, 10 * i + seed, losses, [x - 0.01 for x in losses])
    run_lib_write = {"config": {"statistics": True, "reference": "rope"}}
    with open(os.path.join(sweep_dir, "sweep.json"), "w") as f:
        json.dump(run_lib_write, f)
    sweep.write_reports(sweep_dir)
    with open(os.path.join(sweep_dir, "results.csv")) as f:
        rows = {(r["variant"], int(r["multiplier"])): r for r in csv.DictReader(f)}
    # rope at 1x: 2.00, 2.10, 2.05 -> mean 2.05, std 0.05, 95% t interval 2.05 -+ 4.3027 * 0.05 / sqrt(3)
    half = 4.3027 * 0.05 / 3 ** 0.5
    assert float(rows[("rope", 1)]["loss_ci95_low"]) == pytest.approx(2.05 - half, abs=2e-4)
    assert float(rows[("rope", 1)]["loss_ci95_high"]) == pytest.approx(2.05 + half, abs=2e-4)
    # alibi - rope at 1x: +0.10 on every seed -> zero spread, a significant difference
    assert float(rows[("alibi", 1)]["diff_vs_reference_mean"]) == pytest.approx(0.10, abs=1e-9)
    assert rows[("alibi", 1)]["diff_tie"] == "False"
    # at 2x: +0.05, -0.05, +0.10 -> mean 1/30, std sqrt(((1/60)^2 + (5/60)^2... ) computed below; contains 0: a tie
    d = np.array([0.05, -0.05, 0.10])
    half = 4.3027 * d.std(ddof=1) / 3 ** 0.5
    assert float(rows[("alibi", 2)]["diff_ci95_low"]) == pytest.approx(d.mean() - half, abs=2e-4)
    assert rows[("alibi", 2)]["diff_tie"] == "True" and rows[("rope", 2)]["diff_tie"] == ""
    assert float(rows[("alibi", 2)]["sliding_diff_mean"]) == pytest.approx(d.mean(), abs=1e-9)
    with open(os.path.join(sweep_dir, "results.md")) as f:
        md = f.read()
    # one family ("all": alibi) of 4 tests: p = 0 (1x, twice) and ttest_rel's p at 2x (twice): Holm multiplies the
    # two 2x p-values by 2 and 1, then takes the running maximum; BH by 4/3 and 4/4, then the running minimum
    p2 = stats.ttest_rel([2.55, 2.35, 2.70], [2.50, 2.40, 2.60]).pvalue
    assert float(rows[("alibi", 2)]["diff_p"]) == pytest.approx(p2, rel=1e-9)
    assert float(rows[("alibi", 2)]["diff_p_holm"]) == pytest.approx(min(1, 2 * p2), rel=1e-9)
    assert float(rows[("alibi", 2)]["diff_p_bh"]) == pytest.approx(p2, rel=1e-9)
    assert rows[("alibi", 1)]["diff_significant"] == "True" and rows[("alibi", 2)]["diff_significant"] == "False"
    assert rows[("alibi", 2)]["family"] == "all"
    assert "**+0.100 [+0.100, +0.100] p=0/0/0**" in md  # significant after Holm: bold
    assert f"+0.033 [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}] p={p2:.3f}/{min(1, 2 * p2):.3f}/" in md
    assert "95% Student-t confidence interval" in md and "| alibi (sliding 16) |" in md
    assert "after the Holm correction" in md and "`all`: alibi" in md


def test_report_leaves_the_selection_seed_out_and_adjusts_within_declared_families(tmp_path):
    sweep_dir = str(tmp_path)
    rope = {0: (2.00, 2.50), 1: (2.10, 2.40), 2: (2.05, 2.60), 3: (2.00, 2.45)}
    alibi = {0: (9.00, 9.00), 1: (2.20, 2.35), 2: (2.15, 2.70), 3: (2.12, 2.52)}  # seed 0: the selection run
    for i, (variant, table) in enumerate((("rope", rope), ("alibi", alibi))):
        for seed, losses in table.items():
            _fake_run(sweep_dir, variant, seed, 10 * i + seed, losses, [x - 0.01 for x in losses])
    with open(os.path.join(sweep_dir, "sweep.json"), "w") as f:
        json.dump({"config": {"statistics": True, "reference": "rope", "selection_seeds": [0], "correction": "bh",
                              "families": {"pe": ["alibi"]}}}, f)
    sweep.write_reports(sweep_dir)
    with open(os.path.join(sweep_dir, "results.csv")) as f:
        rows = {(r["variant"], int(r["multiplier"])): r for r in csv.DictReader(f)}
    d = np.array([0.10, 0.10, 0.12])  # seeds 1-3 only
    assert float(rows[("alibi", 1)]["diff_vs_reference_mean"]) == pytest.approx(d.mean(), abs=1e-9)
    full = [stats.ttest_rel([2.20, 2.15, 2.12], [2.10, 2.05, 2.00]).pvalue,
            stats.ttest_rel([2.35, 2.70, 2.52], [2.40, 2.60, 2.45]).pvalue]
    p = np.array(full * 2)  # the sliding-window differences are the same numbers shifted by -0.01 on both sides
    assert float(rows[("alibi", 2)]["diff_p_bh"]) == pytest.approx(stats.false_discovery_control(p)[1], rel=1e-6)
    assert rows[("alibi", 1)]["family"] == "pe"
    with open(os.path.join(sweep_dir, "results.md")) as f:
        md = f.read()
    assert "after the Benjamini–Hochberg correction" in md and "selection seeds: 0." in md


@pytest.mark.parametrize("field,value,message", [
    ("families", {"pe": ("alibi", "nope")}, "families.pe names 'nope', not a variant of this sweep; choose from: "
                                            "learned, alibi"),
    ("families", {"a": ("alibi",), "b": ("alibi",)}, "families.b and families.a both hold 'alibi'"),
    ("correction", "bonferroni", "correction='bonferroni'; choose one of: holm, bh"),
    ("selection_seeds", (5,), "selection_seeds=(5,): seed 5 is not in axes.train.seed (0, 1)"),
    ("selection_seeds", (0,), "selection_seeds=(0,) leaves 1 of the seeds (0, 1) for the comparisons"),
])
def test_bad_statistics_settings_fail_before_running(field, value, message, tmp_path):
    sweep_cfg, base = _tiny("--config.statistics=True", "--config.axes.train.seed=(0, 1)",
                            "--config.reference=alibi")
    with sweep_cfg.unlocked():
        sweep_cfg[field] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        sweep.run_sweep(sweep_cfg, str(tmp_path / "s"), base_overrides=base)
    assert not os.path.exists(tmp_path / "s" / "runs")


EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
COMMITTED_SWEEPS = sorted(os.path.dirname(os.path.relpath(path, EXPERIMENTS))
                          for path in glob.glob(os.path.join(EXPERIMENTS, "**", "sweep.json"), recursive=True)
                          if os.path.isdir(os.path.join(os.path.dirname(path), "runs")))


def test_a_committed_sweep_has_its_run_files():
    """.gitignore must not hide experiments/*/runs/ (it once did: `runs/` matched at every depth)."""
    assert "pe_extrapolation/copy" in COMMITTED_SWEEPS
    out = subprocess.run(["git", "-C", EXPERIMENTS, "check-ignore", "-q",
                          os.path.join(EXPERIMENTS, "pe_extrapolation", "copy", "runs", "x", "metrics.jsonl")])
    assert out.returncode == 1, "experiments/*/runs/ is git-ignored"


@pytest.mark.parametrize("sweep_dir", COMMITTED_SWEEPS)
def test_committed_sweep_regenerates_byte_for_byte(sweep_dir, tmp_path):
    """The README's own command, `jaxformer report experiments/...`, on the committed files alone (a copy, so the
    repository is untouched) gives the committed results.md and results.csv, byte for byte."""
    from jaxformer import cli

    source = os.path.join(EXPERIMENTS, sweep_dir)
    copy = str(tmp_path / "sweep")
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("*.png", "results.*"))
    assert cli.main(["report", copy]) == 0
    for name in ("results.md", "results.csv"):
        with open(os.path.join(source, name), "rb") as a, open(os.path.join(copy, name), "rb") as b:
            assert a.read() == b.read(), f"{sweep_dir}/{name} does not regenerate from its run files"


@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_copy_task_config_is_the_committed_copy_sweeps_runs(position):
    """configs/copy_task.py trains exactly what experiments/pe_extrapolation/copy's runs trained (the README sends
    users there for the numbers each variant gives); only how often it evaluates and samples differs."""

    observed = ("train.eval_every", "train.checkpoint_every", "train.sample_chars", "train.progress",
                "model.vocab_size", "data.manual_dir", "data.data_dir",
                "model.position.rope.yarn_ramp",  # read only with rope.scaling=yarn; the runs predate the field
                "train.max_skipped_steps")  # acts only on non-finite steps, which these runs never had
    cfg = config_lib.load("copy_task", [f"--config.model.position.name={position}"])
    run = os.path.join(EXPERIMENTS, "pe_extrapolation", "copy", "runs", f"position={position},seed=0")
    with open(os.path.join(run, "config.json")) as f:
        saved = config_lib.from_json(f.read())
    ours = config_lib.flat_fields(config_lib.resolve(cfg, vocab_size=saved.model.vocab_size))
    theirs = config_lib.flat_fields(saved)
    # the other positional variants' settings build nothing in these runs (their fair defaults changed in issue 22)
    other = lambda k: k.startswith("model.position.") and k.split(".")[2] not in ("name", position)  # noqa: E731
    differ = sorted(k for k in ours.keys() | theirs.keys()
                    if k not in observed and not other(k) and ours.get(k) != theirs.get(k))
    assert not differ, [(k, ours.get(k), theirs.get(k)) for k in differ]


def test_a_point_saved_before_a_field_existed_matches_when_the_field_is_unread(tmp_path):
    """A finished point's config.json from before train.max_skipped_steps and rope.yarn_ramp existed gets their
    legacy values (0, "paper"); the sweep's current defaults (10, "code") are no difference while the point's
    settings never read them (nonfinite=stop, no YaRN scaling), and are one once they would be read."""
    cfg = config_lib.resolve(config_lib.load("tiny", ["--config.model.position.name=rope"]), vocab_size=20)
    saved = cfg.to_dict()
    del saved["train"]["max_skipped_steps"], saved["model"]["position"]["rope"]["yarn_ramp"]
    run_dir = tmp_path / "point"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(saved))
    sweep.check_same_config(str(run_dir), cfg, "position=rope,seed=0")  # unread: the same point
    skip = ml_collections.ConfigDict(cfg.to_dict())
    skip.train.nonfinite = "skip"
    saved["train"]["nonfinite"] = "skip"
    (run_dir / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="train.max_skipped_steps=0, the sweep now gives 10"):
        sweep.check_same_config(str(run_dir), skip, "position=rope,seed=0")
    yarn = ml_collections.ConfigDict(cfg.to_dict())
    yarn.model.position.rope.scaling = "yarn"
    saved["train"]["nonfinite"] = "stop"
    saved["model"]["position"]["rope"]["scaling"] = "yarn"
    (run_dir / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="rope.yarn_ramp='paper', the sweep now gives 'code'"):
        sweep.check_same_config(str(run_dir), yarn, "position=rope,seed=0")


def test_a_sweep_over_several_tasks_gets_a_size_plot_and_a_title_per_task():
    """One plot of every task's per-size curves under the first task's title mislabelled them: a sweep over several
    datasets gets `sizes_<task>.png` each, and its report title counts the datasets and gives the step range."""
    def variant(name, data, steps):
        run = {"data": data, "steps": steps, "block_size": 32, "model": {"n_layer": 2, "n_head": 4, "n_embd": 64}}
        return {"variant": name, "runs": [run], "sizes": {"per_size": []}}

    several = [variant("a,x", "synthetic/reverse_string", 6000), variant("b,x", "synthetic/sorting", 3000),
               variant("a,y", "synthetic/reverse_string", 6000), {"variant": "no sizes", "runs": [{}]}]
    plots = sweep.size_plots(several)
    assert [(name, [v["variant"] for v in group]) for name, group in plots] == [
        ("sizes_reverse_string.png", ["a,x", "a,y"]), ("sizes_sorting.png", ["b,x"])]
    assert sweep._title([v["runs"][0] for v in several[:3]]) == \
        "2 datasets, trained at T=32 for 3000-6000 steps (2L/4H/64D)"
    one = [variant("a", "synthetic/copy", 100), variant("b", "synthetic/copy", 100)]
    assert [name for name, _ in sweep.size_plots(one)] == ["sizes.png"]
    assert sweep._title([v["runs"][0] for v in one]) == "synthetic/copy, trained at T=32 for 100 steps (2L/4H/64D)"


@pytest.mark.parametrize("depths,overrides,message", [
    ((0.0, 1.5), (), "eval_depths=(0.0, 1.5): 1.5 is outside [0, 1]"),
    ((0.5,), (), "eval_depths needs a task with a depth (data.name='synthetic/associative_recall'); "
                 "choose one of: synthetic/passkey, synthetic/mqar"),
    ((0.5,), ("--config.data.name=synthetic/passkey", "--config.data.block_size=8"),
     "length 8 is too short for a synthetic/passkey example: the key and the query alone take 12 tokens"),
    ((0.5,), ("--config.data.name=synthetic/mqar", "--config.data.synthetic.pairs=40"),
     "data.synthetic.pairs=40 is more than the 16 distinct keys"),
])
def test_bad_depth_evaluations_fail_before_running(depths, overrides, message, tmp_path):
    sweep_cfg, base = _tiny(*overrides)
    with sweep_cfg.unlocked():
        sweep_cfg.eval_depths = depths
    with pytest.raises(ValueError, match=re.escape(message)):
        sweep.run_sweep(sweep_cfg, str(tmp_path / "s"), base_overrides=base)
    assert not os.path.exists(tmp_path / "s" / "runs")
