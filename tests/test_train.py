"""Training: schedule, optimizer, accumulation, non-finite guard, end-to-end runs, resume and determinism."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxformer import config as config_lib
from jaxformer import matmul
from jaxformer import run as run_lib
from jaxformer import train as train_lib
from jaxformer.analysis import end_of_run


def nanogpt_lr(it, *, lr, min_lr, warmup, decay):
    """nanoGPT's get_lr, written out in float64."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    ratio = (it - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


@pytest.mark.parametrize("warmup", [None, 0])
def test_schedule_matches_nanogpt(warmup):
    o = config_lib.resolve(config_lib.load("shakespeare_char_cpu")).optim
    if warmup is not None:
        o.warmup_steps = warmup
    schedule = train_lib.make_schedule(o)
    for it in [0, 1, 50, 99, 100, 101, 500, 1000, 1999, 2000, 2500]:
        expected = nanogpt_lr(it, lr=o.lr, min_lr=o.min_lr, warmup=o.warmup_steps, decay=o.decay_steps)
        assert float(schedule(it)) == pytest.approx(expected, rel=1e-5), it  # float32 of the same formula


def test_weight_decay_on_matrices_only():
    o = config_lib.load("tiny").optim
    o.grad_clip = 0.0
    opt = train_lib.make_optimizer(o)
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones((4,))}
    state = opt.init(params)
    updates, _ = opt.update(jax.tree.map(jnp.zeros_like, params), state, params)
    # With a zero gradient AdamW's step is the decoupled decay alone: -lr(0) * weight_decay * w.
    lr0 = float(train_lib.make_schedule(o)(0))
    np.testing.assert_allclose(np.asarray(updates["w"]), -lr0 * o.weight_decay * np.ones((3, 4)), rtol=1e-6)
    assert o.weight_decay > 0
    np.testing.assert_array_equal(np.asarray(updates["b"]), 0.0)  # vectors (biases, norms) are not


@pytest.mark.parametrize("max_norm", [0.05, 50.0])  # clipped, and not
def test_optimizer_is_optax_clip_then_adamw_with_the_state_tree_checkpoints_hold(max_norm):
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(5, 7)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=(7,)), jnp.float32)}
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    o = config_lib.load("tiny").optim
    o.grad_clip = max_norm
    reference = optax.chain(optax.clip_by_global_norm(max_norm), optax.adamw(
        train_lib.make_schedule(o), b1=o.beta1, b2=o.beta2, weight_decay=o.weight_decay,
        mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
    ours = train_lib.make_optimizer(o)
    # Checkpoints written before the clip became optax's hold this optimizer-state tree (an EmptyState for the clip).
    assert jax.tree.structure(ours.init(params)) == jax.tree.structure(reference.init(params))
    updates, _ = ours.update(grads, ours.init(params), params)
    expected, _ = reference.update(grads, reference.init(params), params)
    for k in params:
        np.testing.assert_array_equal(np.asarray(updates[k]), np.asarray(expected[k]))


def test_environment_differences_name_what_can_change_the_numbers():
    recorded = {"versions": {"jax": "0.10.2", "optax": "0.2.8"}, "cpu_matmul": "blas", "openblas_core": "SkylakeX",
                "xla_flags": "", "git_revision": "abc", "host": "a", "created": "then", "argv": ["x"]}
    assert run_lib.environment_differences(recorded, dict(recorded, host="b", created="now", argv=["y"])) == []
    now = dict(recorded, versions={"jax": "0.10.3", "optax": "0.2.8"}, openblas_core="Haswell",
               xla_flags="--xla_cpu_use_xnnpack=false", host="b")
    assert run_lib.environment_differences(recorded, now) == [
        "versions.jax: recorded=0.10.2, now=0.10.3",
        "xla_flags: recorded=, now=--xla_cpu_use_xnnpack=false",
        "openblas_core: recorded=SkylakeX, now=Haswell (OPENBLAS_CORETYPE=SkylakeX selects the recorded kernels)"]
    older = {k: v for k, v in recorded.items() if k != "openblas_core"}  # manifests before the field existed
    (line,) = run_lib.environment_differences(older, now | {"versions": recorded["versions"], "xla_flags": ""})
    assert line.startswith("openblas_core: recorded=(not recorded), now=Haswell") and "OPENBLAS_CORETYPE=" in line


def test_gradient_accumulation_equals_big_batch(tiny_cfg):
    """accum_steps=2 over two halves == one step on the whole batch (no dropout)."""
    a_cfg = config_lib.resolve(tiny_cfg)
    b_cfg = config_lib.resolve(tiny_cfg)
    b_cfg.optim.accum_steps = 2
    b_cfg.data.batch_size = a_cfg.data.batch_size // 2
    a, b = train_lib.Trainer(a_cfg), train_lib.Trainer(b_cfg)
    batch = a.dataset.batch("train", 0, batch_size=a_cfg.data.batch_size, block_size=a_cfg.data.block_size,
                            seed=0)
    micro = {k: v.reshape(2, -1, *v.shape[1:]) for k, v in batch.items()}
    sa = a.train_step(a.initial_state(), batch)
    sb = b.train_step(b.initial_state(), micro)
    # Equal-weight micro-batches: the mean of the two means is the whole-batch mean.
    assert float(sa["recent"]["loss"][0]) == pytest.approx(float(sb["recent"]["loss"][0]), rel=1e-5)
    for x, y in zip(jax.tree.leaves(sa["params"]), jax.tree.leaves(sb["params"]), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_end_to_end_synthetic_train_resume_sample(tiny_cfg, tmp_path):
    """30 steps on a synthetic task: loss decreases, checkpoints written, resume reproduces the run exactly."""
    full_dir, part_dir = str(tmp_path / "full"), str(tmp_path / "part")
    full = train_lib.train(tiny_cfg, full_dir, hooks=end_of_run.hooks(full_dir))  # samples, plot: the CLI's hooks
    metrics = run_lib.read_metrics(full_dir)
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses[-1] < losses[0]
    for name in ("config.json", "manifest.json", "metrics.jsonl", "vocab.json", "samples.txt", "plots/loss.png"):
        assert os.path.exists(os.path.join(full_dir, name)), name
    assert sorted(os.listdir(os.path.join(full_dir, "checkpoints", "latest"))) == ["15", "30"]
    assert sorted(os.listdir(os.path.join(full_dir, "checkpoints", "best"))) == ["30"]
    manifest = run_lib.read_json(os.path.join(full_dir, "manifest.json"))
    assert manifest["versions"]["jax"] == jax.__version__ and manifest["data_hash"]
    assert manifest["cpu_matmul"] == matmul.cpu_backend_in_use()  # which product kernel the run used

    # Interrupted after 12 steps (mid log window; checkpoint there), then resumed: identical metrics, bit for bit.
    tiny_cfg.train.checkpoint_every = 12
    train_lib.train(tiny_cfg, part_dir, stop_after=12)
    tiny_cfg.train.checkpoint_every = 15
    train_lib.train(tiny_cfg, part_dir, resume=True)
    with open(os.path.join(full_dir, "metrics.jsonl")) as f, open(os.path.join(part_dir, "metrics.jsonl")) as g:
        assert f.read() == g.read()
    assert full["val_loss"] == pytest.approx(run_lib.read_metrics(part_dir)[-1]["val_loss"], abs=0)


def test_same_seed_bitwise_identical_metrics(tiny_cfg, tmp_path):
    tiny_cfg.train.steps = 10
    tiny_cfg.train.sample_chars = 0
    for name in ("a", "b"):
        train_lib.train(tiny_cfg, str(tmp_path / name))
    with open(tmp_path / "a" / "metrics.jsonl", "rb") as f, open(tmp_path / "b" / "metrics.jsonl", "rb") as g:
        assert f.read() == g.read()
    tiny_cfg.train.seed = 1
    train_lib.train(tiny_cfg, str(tmp_path / "c"))
    assert run_lib.read_metrics(str(tmp_path / "a")) != run_lib.read_metrics(str(tmp_path / "c"))


def test_nonfinite_stops_and_keeps_last_good_checkpoint(tiny_cfg, tmp_path):
    """An absurd learning rate drives the loss to NaN: training stops, naming the step; the checkpoint is good."""
    tiny_cfg.optim.lr = 1e30
    tiny_cfg.optim.min_lr = 0.0
    tiny_cfg.optim.warmup_steps = 0
    tiny_cfg.train.checkpoint_every = 1
    tiny_cfg.train.log_every = 1
    workdir = str(tmp_path / "nan")
    result = train_lib.train(tiny_cfg, workdir)
    assert result["stopped"] and "non-finite" in result["stopped"]
    first_bad = int(result["stopped"].split("at step ")[1].split()[0])
    # The checkpoint whose parameters gave the non-finite step is set aside, not resumed from (issue 34).
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "unusable", f"latest-{first_bad - 1}"))
    if first_bad > 2:
        _, _, params, step = train_lib.restore_params(workdir)
        assert step == first_bad - 2
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
    else:  # lr=1e30 diverges at step 2: only step 1 was saved, and its parameters gave the NaN
        assert "no checkpoint from before it is usable" in result["stopped"]


def test_nonfinite_skip_policy_counts_and_continues(tiny_cfg, tmp_path):
    tiny_cfg.optim.lr = 1e30
    tiny_cfg.optim.warmup_steps = 0
    tiny_cfg.optim.min_lr = 0.0
    tiny_cfg.train.nonfinite = "skip"
    tiny_cfg.train.steps = 10
    tiny_cfg.train.sample_chars = 0
    result = train_lib.train(tiny_cfg, str(tmp_path / "skip"))
    assert result["stopped"] is None and result["step"] == 10
    assert result["nonfinite_steps"] > 0
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(result["params"]))


def test_workdir_safety(tiny_cfg, tmp_path):
    tiny_cfg.train.steps = 2
    tiny_cfg.optim.warmup_steps = 1
    tiny_cfg.train.sample_chars = 0
    workdir = tmp_path / "run"
    train_lib.train(tiny_cfg, str(workdir))
    with pytest.raises(run_lib.RunDirError, match="not empty"):
        train_lib.train(tiny_cfg, str(workdir))
    other = tmp_path / "notes"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(run_lib.RunDirError, match="not a run directory"):
        train_lib.train(tiny_cfg, str(other), overwrite=True)
    assert (other / "precious.txt").read_text() == "keep me"
    train_lib.train(tiny_cfg, str(workdir), overwrite=True)
    assert json.loads((workdir / "config.json").read_text())["train"]["steps"] == 2


def test_hooks_log_at_their_steps_and_the_loop_runs_none_by_itself(tiny_cfg, tmp_path):
    from jaxformer import run as run_lib

    tiny_cfg.train.update(steps=6, log_every=3, eval_every=6, checkpoint_every=6, sample_chars=16,
                          attention_diagnostics_every=2)
    seen, ended = [], []

    def hook(trainer, params, step):
        seen.append(step)
        return {"hook/param_sum": float(sum(np.sum(x) for x in jax.tree.leaves(params)))}

    def at_end(trainer, params, step):
        ended.append((step, sorted(os.listdir(os.path.join(a, "checkpoints", "latest")))))
        return {"hook/at_end": 1.0}  # not logged: metrics.jsonl is closed by then

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    train_lib.train(tiny_cfg, a, hooks=[train_lib.Hook(4, hook), train_lib.Hook(0, hook),
                                        train_lib.Hook(0, at_end, at_end=True), *end_of_run.hooks(a)])
    assert seen == [4, 6]  # every 4 steps and the last; every=0 never
    assert ended == [(6, ["6"])]  # once, after the final checkpoint
    logged = [r for r in run_lib.read_metrics(a) if "hook/param_sum" in r]
    assert [r["step"] for r in logged] == [4, 6] and logged[0]["hook/param_sum"] != logged[1]["hook/param_sum"]
    assert not any("hook/at_end" in r for r in run_lib.read_metrics(a))
    # The CLI's end-of-run hooks: the samples and the loss plot.
    assert os.path.getsize(os.path.join(a, "samples.txt")) > 0
    assert open(os.path.join(a, "plots", "loss.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # Without hooks the loop logs no research-tool metrics and writes no samples or plots, whatever the config asks
    # (the CLI registers them); an end-of-run hook does not run for a run cut short (`stop_after`, repro-check).
    train_lib.train(tiny_cfg, b, stop_after=3, hooks=[train_lib.Hook(0, at_end, at_end=True)])
    train_lib.train(tiny_cfg, b, resume=True)
    assert len(ended) == 1
    assert not any(k.startswith(("attn/", "hook/")) for r in run_lib.read_metrics(b) for k in r)
    assert not os.path.exists(os.path.join(b, "samples.txt")) and not os.path.exists(os.path.join(b, "plots"))


def test_training_positions_are_a_function_of_seed_and_step():
    rng_a = jax.random.key_data(jax.random.key(1))
    rng_b = jax.random.key_data(jax.random.key(2))
    draw = jax.jit(train_lib.training_positions, static_argnums=(2, 3, 4))
    assert train_lib.training_positions(rng_a, 0, 0, 8, 0) is None  # off: 0..T-1
    p = np.asarray(draw(rng_a, 3, 0, 16, 64))
    assert (np.diff(p) > 0).all() and p.min() >= 0 and p.max() < 64
    np.testing.assert_array_equal(p, np.asarray(draw(rng_a, 3, 0, 16, 64)))  # same (seed, step): same positions
    for other in (draw(rng_a, 4, 0, 16, 64), draw(rng_b, 3, 0, 16, 64), draw(rng_a, 3, 1, 16, 64)):
        assert not np.array_equal(p, np.asarray(other))  # another step, seed or micro-batch: another draw
    # A draw per sequence (the default, randomize_per=sequence): rows sorted, distinct, in range, all different,
    # and again a function of (seed, step, micro).
    rows = np.asarray(jax.jit(train_lib.training_positions, static_argnums=(2, 3, 4, 5))(rng_a, 3, 0, 16, 64, 6))
    assert rows.shape == (6, 16) and (np.diff(rows, axis=1) > 0).all() and rows.min() >= 0 and rows.max() < 64
    assert len({tuple(r) for r in rows}) == 6
    np.testing.assert_array_equal(rows, np.asarray(train_lib.training_positions(rng_a, 3, 0, 16, 64, 6)))
    assert not np.array_equal(rows, np.asarray(train_lib.training_positions(rng_a, 4, 0, 16, 64, 6)))


@pytest.mark.parametrize("position", ["rope", "alibi", "sinusoidal"])
def test_token_losses_with_a_row_of_positions_per_sequence_equal_each_sequence_alone(tiny_cfg, position):
    """`[B, T]` positions (randomized per sequence) give each row the losses it gets alone at its own `[T]`."""
    tiny_cfg.model.position.name = position
    tiny_cfg.model.position.randomize_max_len = 96
    trainer = train_lib.Trainer(tiny_cfg)
    leaves, treedef = jax.tree.flatten(jax.device_get(trainer.initial_state()["params"]))
    rng_np = np.random.default_rng(1)
    params = jax.tree.unflatten(treedef, [x + 0.3 * rng_np.standard_normal(x.shape).astype(x.dtype) for x in leaves])
    B, T = 3, tiny_cfg.data.block_size
    tokens = jax.random.randint(jax.random.key(2), (B, T), 0, trainer.dataset.vocab_size)
    targets = jnp.roll(tokens, -1, axis=1)
    positions_BxT = train_lib.training_positions(jax.random.key_data(jax.random.key(3)), 0, 0, T, 96, B)
    losses, correct = train_lib.token_losses(params, trainer.graphdef, tokens, targets, positions_T=positions_BxT)
    for b in range(B):
        alone, alone_correct = train_lib.token_losses(params, trainer.graphdef, tokens[b:b + 1], targets[b:b + 1],
                                                      positions_T=positions_BxT[b])
        np.testing.assert_allclose(np.asarray(losses[b]), np.asarray(alone[0]), rtol=1e-5, atol=1e-5)
    plain, _ = train_lib.token_losses(params, trainer.graphdef, tokens, targets)
    assert not np.allclose(np.asarray(losses), np.asarray(plain), atol=1e-4)  # the positions are used


@pytest.mark.parametrize("position,per", [("rope", "sequence"), ("learned", "sequence"), ("rope", "batch")])
def test_randomized_training_step_uses_the_drawn_positions(tiny_cfg, position, per):
    """The step's loss is the loss at the positions `training_positions` draws for (seed, step), a row per sequence
    or one for the batch, not at 0..T-1; a learned table is sized to the randomized range."""
    tiny_cfg.model.position.name = position
    tiny_cfg.model.position.randomize_max_len = 96
    tiny_cfg.model.position.randomize_per = per
    trainer = train_lib.Trainer(tiny_cfg)
    cfg = trainer.cfg
    assert position != "learned" or cfg.model.position.learned.max_len == 96
    state = trainer.initial_state()
    # Random, non-zero parameters: at initialisation the logits barely depend on positions.
    leaves, treedef = jax.tree.flatten(jax.device_get(state["params"]))
    rng_np = np.random.default_rng(0)
    params = jax.tree.unflatten(treedef, [x + 0.3 * rng_np.standard_normal(x.shape).astype(x.dtype) for x in leaves])
    state = {**state, "params": params, "opt_state": trainer.optimizer.init(params)}
    rng = state["rng"]
    batch = trainer.dataset.batch("train", 0, batch_size=cfg.data.batch_size, block_size=cfg.data.block_size,
                                  seed=cfg.train.seed)
    rows = cfg.data.batch_size if per == "sequence" else 0
    positions = train_lib.training_positions(rng, 0, 0, cfg.data.block_size, 96, rows)
    assert positions.shape == ((rows,) if rows else ()) + (cfg.data.block_size,)
    assert int(positions.max()) >= cfg.data.block_size  # (with this seed) positions past the block are trained
    new = trainer.train_step(state, batch)
    at_drawn = float(train_lib.loss_fn(params, trainer.graphdef, batch, None, positions))
    at_plain = float(train_lib.loss_fn(params, trainer.graphdef, batch))
    assert float(new["recent"]["loss"][0]) == pytest.approx(at_drawn, rel=1e-5)
    assert at_drawn != pytest.approx(at_plain, rel=1e-3)


def test_randomized_range_smaller_than_the_block_is_a_config_error(tiny_cfg):
    tiny_cfg.model.position.randomize_max_len = 16
    with pytest.raises(config_lib.ConfigError, match="randomize_max_len=16 is smaller than data.block_size=32"):
        config_lib.validate(config_lib.resolve(tiny_cfg))
    tiny_cfg.model.position.randomize_max_len = 128
    tiny_cfg.model.position.name = "learned"
    tiny_cfg.model.position.learned.max_len = 64
    with pytest.raises(config_lib.ConfigError, match="randomize_max_len=128 is beyond the learned table"):
        config_lib.validate(config_lib.resolve(tiny_cfg))


def _snapshot(directory):
    """Every file under `directory` with its size and modification time (to show nothing was written there)."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            out[path] = (os.path.getsize(path), os.stat(path).st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    from jaxformer import config as config_lib

    cfg = config_lib.load("tiny")
    cfg.train.progress, cfg.train.sample_chars = False, 0
    workdir = str(tmp_path_factory.mktemp("source") / "run")
    train_lib.train(cfg, workdir)
    return workdir


def test_init_from_starts_at_the_source_parameters_with_a_longer_block_and_a_scaling(source_run, tmp_path):
    """The new run's first parameters are the source's checkpoint exactly; the block size and the RoPE scaling
    change, YaRN's original_max_len stays the source's training length, the manifest says where it came from,
    a resume keeps that, and the source is not written to."""
    before = _snapshot(source_run)
    cfg = run_lib.load_config(source_run)
    cfg.data.block_size = 64
    cfg.model.position.rope.scaling, cfg.model.position.rope.factor = "yarn", 2.0
    cfg.model.position.rope.original_max_len = 0  # 0 = the context the source was trained at, not the new block
    cfg.optim.decay_steps, cfg.train.steps = 0, 10
    start = train_lib.train(cfg, str(tmp_path / "zero"), init_from=source_run, stop_after=0)
    _, _, source_params, step = train_lib.restore_params(source_run)
    for x, y in zip(jax.tree.leaves(start["params"]), jax.tree.leaves(source_params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert int(start["trainer"].initial_state()["opt_state"][1][0].count) == 0  # a fresh optimizer

    workdir = str(tmp_path / "tuned")
    train_lib.train(cfg, workdir, init_from=source_run, init_checkpoint="best", stop_after=5)
    saved = run_lib.load_config(workdir)
    assert saved.data.block_size == 64 and saved.model.position.rope.original_max_len == 32
    manifest = run_lib.read_json(os.path.join(workdir, "manifest.json"))
    assert manifest["init_from"]["run"] == os.path.abspath(source_run)
    assert manifest["init_from"]["checkpoint"] == "best" and manifest["init_from"]["step"] == step == 30
    train_lib.train(run_lib.load_config(workdir), workdir, resume=True)  # as `train --resume` does: its own config
    assert run_lib.read_json(os.path.join(workdir, "manifest.json"))["init_from"] == manifest["init_from"]
    assert [m["step"] for m in run_lib.read_metrics(workdir) if "val_loss" in m] == [10]
    assert _snapshot(source_run) == before


@pytest.mark.parametrize("change, message", [
    ({"model.n_embd": 64}, "--init-from: model.n_embd=64 differs from 32 in .*/config.json; it would change the"),
    ({"model.position.name": "alibi"}, "--init-from: model.position.name='alibi' differs from 'rope'"),
    ({"model.position.rope.fraction": 0.5}, "model.position.rope.fraction=0.5 differs from 1.0"),
    ({"data.name": "synthetic/addition"}, "data.name='synthetic/addition' has another vocabulary than"),
])
def test_init_from_refuses_another_model_and_writes_nothing(source_run, tmp_path, change, message):
    before = _snapshot(source_run)
    cfg = run_lib.load_config(source_run)
    for field, value in change.items():
        section, *rest = field.split(".")
        node = cfg[section]
        for part in rest[:-1]:
            node = node[part]
        node[rest[-1]] = value
    workdir = tmp_path / "new"
    with pytest.raises(ValueError, match=message):
        train_lib.train(cfg, str(workdir), init_from=source_run)
    assert not workdir.exists() and _snapshot(source_run) == before


def test_init_from_bad_sources_are_one_line_errors(source_run, tmp_path, tiny_cfg):
    (tmp_path / "empty").mkdir()
    cases = [(str(tmp_path / "empty"), "latest", "holds no run \\(no config.json\\)"),
             (source_run, "oldest", "--init-checkpoint='oldest'; choose one of: latest, best"),
             (source_run, "latest", "is the new run's --workdir")]
    for source, which, message in cases:
        workdir = source_run if "workdir" in message else str(tmp_path / "new")
        with pytest.raises(ValueError, match=message):
            train_lib.train(tiny_cfg, workdir, init_from=source, init_checkpoint=which)
    no_best = tmp_path / "no_best"
    (no_best / "checkpoints" / "latest" / "30").mkdir(parents=True)
    (no_best / "config.json").write_text(open(os.path.join(source_run, "config.json")).read())
    with pytest.raises(ValueError, match="has no best checkpoint .* or use --init-checkpoint=latest"):
        train_lib.train(tiny_cfg, str(tmp_path / "new"), init_from=str(no_best), init_checkpoint="best")
    tiny_cfg.model.position.name = "learned"  # a table of 32 rows cannot take a block of 64
    learned_dir = str(tmp_path / "learned")
    tiny_cfg.train.steps, tiny_cfg.train.sample_chars = 5, 0
    train_lib.train(tiny_cfg, learned_dir)
    cfg = run_lib.load_config(learned_dir)
    cfg.data.block_size = 64
    with pytest.raises(ValueError, match="data.block_size=64 is beyond the learned table"):
        train_lib.train(cfg, str(tmp_path / "longer"), init_from=learned_dir)
    assert not (tmp_path / "new").exists() and not (tmp_path / "longer").exists()


def test_best_is_an_evaluated_model_labelled_with_its_own_loss(tiny_cfg, tmp_path):
    """The issue's repro, shortened: checkpoints every 5 steps, evaluations every 20, a learning rate high enough
    that the loss rises again. `best` must be a state evaluated at an eval step, its label that evaluation's loss,
    which re-evaluating the restored parameters gives again."""
    from jaxformer import checkpoint as checkpoint_lib

    tiny_cfg.optim.lr, tiny_cfg.optim.min_lr = 0.1, 0.001
    tiny_cfg.train.steps, tiny_cfg.train.eval_every = 60, 20
    tiny_cfg.train.checkpoint_every, tiny_cfg.train.log_every = 5, 5
    tiny_cfg.train.nonfinite, tiny_cfg.train.sample_chars = "skip", 0
    workdir = str(tmp_path / "run")
    result = train_lib.train(tiny_cfg, workdir, stop_after=55)  # stopped between evaluations, as by a SIGTERM
    checkpoints = checkpoint_lib.Checkpoints(workdir, keep=2)
    try:
        step, label = checkpoints.best.best_step(), checkpoints.best_loss()
    finally:
        checkpoints.close()
    evals = {m["step"]: m["val_loss"] for m in run_lib.read_metrics(workdir) if "val_loss" in m}
    assert step in evals and label == evals[step] == min(evals.values())
    _, _, params, restored_step = train_lib.restore_params(workdir, which="best")
    assert restored_step == step
    again = result["trainer"].evaluate(jax.device_put(params, result["trainer"].state_sharding["params"]), "val")
    assert again["loss"] == pytest.approx(label, rel=1e-6)


def test_resume_accepts_new_log_every_and_grad_clip(tiny_cfg, tmp_path):
    """The README lets a resumed run change train.* and optim.*: a new log window length re-lays the stored
    window, and clipping switched off (or on) maps the optimizer state across optax's chain."""
    workdir = str(tmp_path / "run")
    tiny_cfg.train.sample_chars = 0
    tiny_cfg.train.checkpoint_every = 12
    train_lib.train(tiny_cfg, workdir, stop_after=12)
    tiny_cfg.train.log_every = 4
    tiny_cfg.optim.grad_clip = 0.0
    result = train_lib.train(tiny_cfg, workdir, resume=True)
    assert result["step"] == 30 and result["stopped"] is None and np.isfinite(result["loss"])
    logged = [m["step"] for m in run_lib.read_metrics(workdir) if "loss" in m]
    assert logged == [5, 10, 16, 20, 24, 28, 30]
    # Back on: the state saved without the clip restores into the clipped chain.
    tiny_cfg.optim.grad_clip = 1.0
    tiny_cfg.train.steps = 36
    tiny_cfg.optim.decay_steps = 30
    assert train_lib.train(tiny_cfg, workdir, resume=True)["step"] == 36


def test_resume_repairs_a_torn_last_metrics_line(tiny_cfg, tmp_path):
    workdir = str(tmp_path / "run")
    tiny_cfg.train.sample_chars = 0
    tiny_cfg.train.checkpoint_every = 10
    train_lib.train(tiny_cfg, workdir, stop_after=12)
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"grad_norm": 0.5, "lo')  # a kill in the middle of a write
    result = train_lib.train(tiny_cfg, workdir, resume=True)
    assert result["step"] == 30
    assert [m["step"] for m in run_lib.read_metrics(workdir) if "loss" in m] == [5, 10, 15, 20, 25, 30]


def test_nonfinite_skip_ends_the_run_after_max_skipped_steps_in_a_row(tiny_cfg, tmp_path):
    from jaxformer import cli

    tiny_cfg.optim.lr, tiny_cfg.optim.min_lr, tiny_cfg.optim.warmup_steps = 1e30, 0.0, 0
    tiny_cfg.train.nonfinite, tiny_cfg.train.max_skipped_steps = "skip", 3
    tiny_cfg.train.log_every, tiny_cfg.train.sample_chars = 1, 0
    result = train_lib.train(tiny_cfg, str(tmp_path / "run"))
    assert "3 non-finite steps in a row" in result["stopped"] and "train.max_skipped_steps=3" in result["stopped"]
    assert result["step"] < 10 and cli.exit_status(result) == 1


@pytest.mark.parametrize("field,value,message", [
    ("model.vocab_size", 5, "model.vocab_size=5 is smaller than the"),
    ("model.n_embd", 10**6, "GiB for parameters, optimizer state and activations"),
])
def test_config_refused_against_the_data_and_the_machine_before_the_run_directory(tiny_cfg, tmp_path, field,
                                                                                  value, message):
    section, name = field.split(".")
    tiny_cfg[section][name] = value
    workdir = tmp_path / "run"
    with pytest.raises(config_lib.ConfigError, match=message):
        train_lib.train(tiny_cfg, str(workdir))
    assert not workdir.exists()


def test_a_block_longer_than_the_text_is_refused(shakespeare_dir, tfds_data_dir, tiny_cfg, tmp_path):
    from jaxformer import data as data_lib

    tiny_cfg.data.name, tiny_cfg.data.manual_dir, tiny_cfg.data.data_dir = "tiny_shakespeare", shakespeare_dir, \
        tfds_data_dir
    dataset = data_lib.load_dataset(tiny_cfg.data)
    tiny_cfg.data.block_size = 10**9
    with pytest.raises(config_lib.ConfigError, match="data.block_size=1000000000 needs 1000000001 tokens per row"):
        train_lib.check_config(tiny_cfg, dataset)


def test_resume_before_the_first_checkpoint_restarts_and_after_it_refuses(tiny_cfg, tmp_path, caplog):
    """Stopped before its first checkpoint, a run has nothing to lose: --resume starts it again (saying so). With
    metrics past the first checkpoint but no checkpoint left, restarting would wipe its history: an error."""
    import shutil

    from jaxformer import checkpoint as checkpoint_lib

    workdir = str(tmp_path / "run")
    tiny_cfg.train.sample_chars = 0
    train_lib.train(tiny_cfg, workdir, stop_after=7)  # logs step 5; first checkpoint at 15
    result = train_lib.train(tiny_cfg, workdir, resume=True)
    assert "stopped before its first checkpoint (step 15); starting from step 0" in caplog.text
    assert result["step"] == 30
    assert [m["step"] for m in run_lib.read_metrics(workdir) if "loss" in m] == [5, 10, 15, 20, 25, 30]
    shutil.rmtree(os.path.join(workdir, "checkpoints"))
    before = run_lib.read_metrics(workdir)
    with pytest.raises(checkpoint_lib.NoUsableCheckpoint, match="records steps up to 30"):
        train_lib.train(tiny_cfg, workdir, resume=True)
    assert run_lib.read_metrics(workdir) == before


def test_resume_ignores_the_task_settings_of_a_text_run_only():
    """The default's data.synthetic.min_items changed (0 -> 1): a text run saved before resumes with today's config,
    while a changed task setting of a synthetic run is still refused."""
    from jaxformer import config as config_lib
    from jaxformer import run as run_lib

    text = config_lib.resolve(config_lib.load("shakespeare_char_cpu"), vocab_size=65)
    saved = config_lib.resolve(config_lib.load("shakespeare_char_cpu", ["--config.data.synthetic.min_items=0"]),
                               vocab_size=65)
    assert run_lib.check_resume_config("w", saved, text) == []
    task = config_lib.resolve(config_lib.load("default"), vocab_size=28)
    saved_task = config_lib.resolve(config_lib.load("default", ["--config.data.synthetic.min_items=0"]), vocab_size=28)
    with pytest.raises(run_lib.RunDirError, match="data.synthetic.min_items"):
        run_lib.check_resume_config("w", saved_task, task)
