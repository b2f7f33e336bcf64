"""Training and evaluation: pure, jit-compiled `train_step` / `eval_step` over pytrees, and the loop around them.

The train state is a plain pytree `{"step", "params", "opt_state", "rng", "nonfinite", "first_nonfinite"}`; the model's
structure (an NNX GraphDef) is static and merged with the params inside the step. Batches are pure functions of
(seed, step), dropout keys are `fold_in(rng, step)`, so a run resumed from a checkpoint at step s reproduces the
uninterrupted run exactly on CPU.

A non-finite loss or gradient norm never reaches the parameters: the update is skipped inside the compiled step and
counted. With `train.nonfinite="stop"` every later update is skipped too, and the host stops the run at its next
check (log or checkpoint step) with the first bad step reported and the last good checkpoint kept (nothing is saved
once a step was non-finite, nor any non-finite parameters); with `"skip"` training goes on and the count is logged,
until `train.max_skipped_steps` steps in a row were skipped. Checking on the device keeps the step free of per-step
host syncs.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from jaxformer import checkpoint as checkpoint_lib
from jaxformer import config as config_lib
from jaxformer import data as data_lib
from jaxformer import losses, positional
from jaxformer import run as run_lib
from jaxformer import sharding as sharding_lib
from jaxformer.loader import (  # noqa: F401 -- train.* names kept
    build_model,
    follow_run_matmul,
    restore_params,
    split_model,
)
from jaxformer.model import count_params

log = logging.getLogger("jaxformer")


# ----------------------------------------------------------------------------------------------- model and optimizer

def make_schedule(o: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warm-up to `lr` over `warmup_steps` (nanoGPT's (it+1)/(warmup+1) ramp), cosine decay to `min_lr`."""
    if o.warmup_steps == 0:
        return optax.cosine_decay_schedule(o.lr, o.decay_steps, alpha=o.min_lr / o.lr)
    return optax.warmup_cosine_decay_schedule(
        init_value=o.lr / (o.warmup_steps + 1), peak_value=o.lr, warmup_steps=o.warmup_steps,
        decay_steps=max(o.decay_steps, o.warmup_steps + 1), end_value=o.min_lr)


def make_optimizer(o: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with decoupled weight decay on matrices only (ndim >= 2), after global-norm clipping (Pascanu et al.,
    2013: g·min(1, grad_clip / ||g||)). optax's clip computes the norm the step also computes for its guard and
    log, inside the update's cond where XLA cannot share it: a hand-written clip reusing it bought nothing
    measurable (benchmarks/NOTES.md, 2026-12-06) and was removed; the state trees are the same."""
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)
    tx = optax.adamw(make_schedule(o), b1=o.beta1, b2=o.beta2, eps=1e-8, weight_decay=o.weight_decay,
                     mask=decay_mask)
    if o.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
    return tx


def init_state(params, optimizer: optax.GradientTransformation, seed: int, log_every: int = 1) -> dict:
    """The train state; `recent` keeps the last `log_every` steps' loss and gradient norm, so that a logged
    window mean survives a resume mid-window (it is checkpointed with everything else)."""
    return {
        "step": jnp.zeros((), jnp.int32),
        "recent": {"step": jnp.full((log_every,), -1, jnp.int32), "loss": jnp.zeros((log_every,), jnp.float32),
                   "grad_norm": jnp.zeros((log_every,), jnp.float32)},
        "params": params,
        "opt_state": optimizer.init(params),
        "rng": jax.random.key_data(jax.random.key(seed + 1)),
        "nonfinite": jnp.zeros((), jnp.int32),
        "first_nonfinite": jnp.full((), -1, jnp.int32),
    }


# ----------------------------------------------------------------------------------------------------- pure steps

def token_losses(params, graphdef, inputs_BxT, targets_BxT, dropout_key=None, positions_T=None):
    """The forward pass and its per-token next-token cross-entropy, with whether each argmax prediction is right:
    (losses_BxT, correct_BxT). The one forward+loss of training (`loss_fn`), evaluation (`eval_step`) and the
    length-extrapolation evaluation (`extrapolation.compile_losses`); unused outputs cost nothing under jit.
    `positions_T`: the tokens' positions (None = 0..T-1), e.g. randomized ones in training (`training_positions`):
    `[T]` for every sequence, or `[B, T]`, a row per sequence (the model is vmapped over the batch)."""
    model = nnx.merge(graphdef, params)
    if positions_T is not None and jnp.ndim(positions_T) == 2:  # [B, T]: each sequence at its own positions
        def one(tokens_T, positions_T, key):
            return model(tokens_T[None], positions_T=positions_T, dropout_key=key)[0]

        keys = None if dropout_key is None else jax.random.split(dropout_key, inputs_BxT.shape[0])
        logits_BxTxV = jax.vmap(one, in_axes=(0, 0, None if keys is None else 0))(inputs_BxT, positions_T, keys)
    else:
        logits_BxTxV = model(inputs_BxT, positions_T=positions_T, dropout_key=dropout_key)
    losses_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
    return losses_BxT, jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT


def loss_fn(params, graphdef, batch, dropout_key=None, positions_T=None):
    """Weighted mean next-token cross-entropy (weights select the predicted tokens; all ones for plain text)."""
    losses_BxT, _ = token_losses(params, graphdef, batch["inputs"], batch["targets"], dropout_key, positions_T)
    weights_BxT = batch["weights"]
    return jnp.sum(losses_BxT * weights_BxT) / jnp.maximum(jnp.sum(weights_BxT), 1.0)


def _gathered_loss(params, graphdef, batch, dropout_key=None, positions_T=None, *, compute_sharding=None):
    if compute_sharding is not None:
        params = jax.lax.with_sharding_constraint(params, compute_sharding)
    return loss_fn(params, graphdef, batch, dropout_key, positions_T)


_POSITIONS_STREAM = 0x504F53  # folded into the step key: the positions' draws are apart from dropout's


def training_positions(rng_data, step, micro: int, length: int, randomize_max_len: int, per_sequence: int = 0):
    """The positions of a training (micro-)batch: 0..T-1 (None), or with `model.position.randomize_max_len` = R > 0
    a sorted sample of T distinct positions from [0, R) (Ruoss et al. 2023), a function of (train.seed, step, micro):
    one `[T]` for the micro-batch, or with `per_sequence` = B > 0 a `[B, T]` draw, a row for each sequence."""
    if not randomize_max_len:
        return None
    key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(rng_data), step), _POSITIONS_STREAM)
    key = jax.random.fold_in(key, micro)
    if per_sequence:
        return jax.vmap(lambda k: positional.random_positions(k, length, randomize_max_len))(
            jax.random.split(key, per_sequence))
    return positional.random_positions(key, length, randomize_max_len)


_OBJECTIVE_STREAM = 0x4F424A  # folded into the step key: the objective's draws (MLM masking) are apart from dropout's


def train_step(state, batch, *, graphdef, optimizer, use_dropout: bool, stop_on_nonfinite: bool,
               compute_sharding=None, randomize_max_len: int = 0, randomize_per: str = "sequence",
               objective: losses.Objective = losses.CAUSAL_LM):
    """One optimizer step; a batch with a leading accumulation axis `[A, B, T]` averages A micro-batch gradients.

    `compute_sharding` (sharding.compute_shardings): where the forward and backward use the parameters, e.g.
    gathered over the fsdp axis; the gradients come back in the parameters' own (stored) sharding.
    `randomize_max_len` > 0: randomized positions (`training_positions`), a draw per sequence or, with
    `randomize_per="batch"`, one per micro-batch. `objective` (losses.py) turns each micro-batch into the
    (inputs, targets, weights) of the loss, with a key of (train.seed, step, micro-batch) when it draws.
    """
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    grad_fn = jax.value_and_grad(functools.partial(_gathered_loss, compute_sharding=compute_sharding))
    params = state["params"]
    length = batch["inputs"].shape[-1]
    positions = functools.partial(training_positions, state["rng"], state["step"], length=length,
                                  randomize_max_len=randomize_max_len,
                                  per_sequence=batch["inputs"].shape[-2] if randomize_per == "sequence" else 0)
    objective_key = jax.random.fold_in(step_key, _OBJECTIVE_STREAM) if objective.needs_key else None
    prepare = lambda b, i: objective.prepare(
        b, None if objective_key is None else jax.random.fold_in(objective_key, i))
    if batch["inputs"].ndim == 2:
        loss, grads = grad_fn(params, graphdef, prepare(batch, 0), step_key if use_dropout else None, positions(0))
    else:
        def micro(carry, xs):
            i, micro_batch = xs
            micro_batch = prepare(micro_batch, i)
            key = jax.random.fold_in(step_key, i) if use_dropout else None
            loss, grads = grad_fn(params, graphdef, micro_batch, key, positions(i))
            return jax.tree.map(jnp.add, carry, (loss, grads)), None

        n = batch["inputs"].shape[0]
        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        (loss, grads), _ = jax.lax.scan(micro, zeros, (jnp.arange(n), batch))
        loss, grads = jax.tree.map(lambda x: x / n, (loss, grads))
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    apply = finite & (state["nonfinite"] == 0) if stop_on_nonfinite else finite

    def update(params, opt_state, grads):
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_opt_state

    # A skipped update is the other branch of a cond, not a select over every parameter and moment: the select
    # read both versions of ~3N floats each step and made XLA copy the donated buffers before updating them.
    new_params, new_opt_state = jax.lax.cond(apply, update, lambda params, opt_state, grads: (params, opt_state),
                                             params, state["opt_state"], grads)
    slot = state["step"] % state["recent"]["step"].shape[0]
    recent = {"step": state["recent"]["step"].at[slot].set(state["step"] + 1),
              "loss": state["recent"]["loss"].at[slot].set(loss.astype(jnp.float32)),
              "grad_norm": state["recent"]["grad_norm"].at[slot].set(grad_norm.astype(jnp.float32))}
    new_state = {
        "step": state["step"] + 1,
        "recent": recent,
        "params": new_params,
        "opt_state": new_opt_state,
        "rng": state["rng"],
        "nonfinite": state["nonfinite"] + (~finite).astype(jnp.int32),
        "first_nonfinite": jnp.where(~finite & (state["first_nonfinite"] < 0), state["step"] + 1,
                                     state["first_nonfinite"]),
    }
    return new_state


def eval_step(params, batch, *, graphdef, compute_sharding=None):
    """Sums for the weighted loss and the exact-match accuracy (every weighted target of an example right)."""
    if compute_sharding is not None:
        params = jax.lax.with_sharding_constraint(params, compute_sharding)
    losses_BxT, correct_BxT = token_losses(params, graphdef, batch["inputs"], batch["targets"])
    weights_BxT = batch["weights"]
    correct_BxT = correct_BxT | (weights_BxT == 0)
    has_answer_B = jnp.any(weights_BxT > 0, axis=-1)
    return {
        "loss_sum": jnp.sum(losses_BxT * weights_BxT),
        "weight_sum": jnp.sum(weights_BxT),
        "exact_sum": jnp.sum(jnp.all(correct_BxT, axis=-1) & has_answer_B),
        "correct_sum": jnp.sum(correct_BxT * weights_BxT),  # token accuracy of the weighted (e.g. masked) positions
        "examples": jnp.sum(has_answer_B),
    }


# ------------------------------------------------------------------------------------------------------- the loop

class _StopSignal:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the current step and exits cleanly."""

    def __init__(self):
        self.received = None
        self._old = {}

    def __enter__(self):
        if threading_is_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
                # The entry point's start-up handler (cli.py) records a signal whose exception Python may have
                # swallowed (one raised inside a garbage-collection callback is only printed): stop at once.
                self.received = self.received or getattr(self._old[sig], "received", None)
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class Trainer:
    """Everything needed to run steps for one resolved config: data, model structure, compiled steps, shardings."""

    def __init__(self, cfg: ml_collections.ConfigDict, dataset=None):
        self.dataset = dataset if dataset is not None else data_lib.load_dataset(cfg.data)
        self.cfg = cfg = config_lib.resolve(cfg, vocab_size=self.dataset.vocab_size)
        config_lib.validate(cfg, n_devices=jax.device_count())
        config_lib.check_vocab(cfg, self.dataset.vocab_size)
        self.mesh = sharding_lib.make_mesh(cfg.mesh)
        model = build_model(cfg)
        self.n_params = count_params(model)
        self.n_params_non_embedding = count_params(model, non_embedding=True)
        self.graphdef, params = split_model(model)
        self.optimizer = make_optimizer(cfg.optim)
        self.objective = losses.for_model(cfg.model)  # the model's loss: the loop sees only its interface
        self._init_fn = functools.partial(init_state, optimizer=self.optimizer, seed=cfg.train.seed,
                                          log_every=cfg.train.log_every)

        abstract = jax.eval_shape(self._init_fn, params)
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self.state_sharding = {
            **jax.tree.map(lambda _: replicated, {k: v for k, v in abstract.items()
                                                  if k not in ("params", "opt_state")}),
            "params": sharding_lib.tree_shardings(abstract["params"], self.mesh),
            "opt_state": sharding_lib.tree_shardings(abstract["opt_state"], self.mesh),
        }
        self.replicated_params = sharding_lib.replicated_names(abstract["params"], self.mesh)
        compute_sharding = sharding_lib.compute_shardings(abstract["params"], self.mesh)
        self._params0 = params
        accum = cfg.optim.accum_steps
        self.batch_sharding = sharding_lib.batch_sharding(self.mesh, leading_axes=1 if accum > 1 else 0)
        self.eval_sharding = sharding_lib.batch_sharding(self.mesh)
        step = functools.partial(train_step, graphdef=self.graphdef, optimizer=self.optimizer,
                                 use_dropout=cfg.model.dropout > 0, stop_on_nonfinite=cfg.train.nonfinite == "stop",
                                 compute_sharding=compute_sharding,
                                 randomize_max_len=cfg.model.position.randomize_max_len,
                                 randomize_per=cfg.model.position.randomize_per, objective=self.objective)
        self.train_step = jax.jit(step, in_shardings=(self.state_sharding, self.batch_sharding),
                                  out_shardings=self.state_sharding, donate_argnums=0)
        self.eval_step = jax.jit(
            functools.partial(eval_step, graphdef=self.graphdef, compute_sharding=compute_sharding),
            in_shardings=(self.state_sharding["params"], self.eval_sharding))
        self.schedule = make_schedule(cfg.optim)
        self._eval_cache: dict[str, list] = {}  # the fixed evaluation batches, built once per split

    def initial_state(self) -> dict:
        return jax.jit(self._init_fn, out_shardings=self.state_sharding)(self._params0)

    def abstract_state(self):
        abstract = jax.eval_shape(self._init_fn, self._params0)
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract,
                            self.state_sharding)

    def batch(self, step: int):
        """The global batch of optimizer step `step`, placed on the mesh (each process feeds its devices' rows)."""
        cfg = self.cfg
        accum, B = cfg.optim.accum_steps, cfg.data.batch_size
        batch = self.dataset.batch("train", step, batch_size=B * accum, block_size=cfg.data.block_size,
                                   seed=cfg.train.seed)
        if accum > 1:
            batch = {k: v.reshape(accum, B, *v.shape[1:]) for k, v in batch.items()}
        return sharding_lib.shard_batch(batch, self.batch_sharding)

    def evaluate(self, params, split: str) -> dict:
        """Loss (and exact-match accuracy on tasks) over the fixed `train.eval_iters` batches of the split."""
        result = self._evaluate(params, self._eval_batches(split))
        del result["tokens"]
        return result

    def evaluate_full(self, params, split: str) -> dict:
        """Loss over every non-overlapping block of the split (text), or over the task's fixed eval examples:
        the whole-split figure, without the sampling noise of `evaluate`'s `train.eval_iters` random batches."""
        cfg = self.cfg
        windows = self.dataset.windows(split, length=cfg.data.block_size)
        n, B = windows["inputs"].shape[0], cfg.data.batch_size
        batches = (sharding_lib.shard_batch(self._eval_prepare({k: v[start:start + B] for k, v in windows.items()},
                                                               split, start // B), self.eval_sharding)
                   for start in range(0, n - n % B, B))  # whole batches: the sharded eval step has a fixed size
        return self._evaluate(params, batches)

    def _evaluate(self, params, batches) -> dict:
        totals = None
        for batch in batches:
            out = self.eval_step(params, batch)
            totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
        totals = jax.device_get(totals)
        result = {"loss": float(totals["loss_sum"] / max(totals["weight_sum"], 1.0)),
                  "tokens": int(totals["weight_sum"])}
        if self.dataset.has_accuracy:
            result["accuracy"] = float(totals["exact_sum"] / max(totals["examples"], 1))
        if self.objective.needs_key:  # masked LM: the share of masked tokens predicted right
            result["accuracy"] = float(totals["correct_sum"] / max(totals["weight_sum"], 1.0))
        return result

    def _eval_prepare(self, batch: dict, split: str, index: int) -> dict:
        """An evaluation batch as the objective presents it, with a fixed key per (seed, split, batch index)."""
        if not self.objective.needs_key:
            return batch
        key = losses.eval_key(self.cfg.train.seed, index, split=split)
        return jax.device_get(self.objective.prepare(batch, key))

    def _eval_batches(self, split: str):
        if split in self._eval_cache:
            return self._eval_cache[split]
        cfg = self.cfg
        batches = self.dataset.eval_batches(split, batch_size=cfg.data.batch_size, block_size=cfg.data.block_size,
                                            num_batches=cfg.train.eval_iters, seed=cfg.train.seed)
        self._eval_cache[split] = [sharding_lib.shard_batch(self._eval_prepare(b, split, i), self.eval_sharding)
                                   for i, b in enumerate(batches)]
        return self._eval_cache[split]


def _window(recent: dict, done: int, log_every: int) -> np.ndarray:
    """Indices (in step order) of the steps logged at `done`: those after the previous regular log step."""
    previous = ((done - 1) // log_every) * log_every
    steps = recent["step"]
    chosen = np.nonzero((steps > previous) & (steps <= done))[0]
    return chosen[np.argsort(steps[chosen])]


def _should(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


@dataclasses.dataclass(frozen=True)
class Hook:
    """An action the training loop runs every `every` steps (and at the last step; 0 = never): `fn(trainer, params,
    step)` returns a record of metrics for metrics.jsonl, or None. It runs on process 0 with whole parameters.
    `at_end`: also once after the run, when it reached `train.steps` (not stopped or cut short by `stop_after`)
    and its final checkpoint is saved; what `fn` returns then is not logged (samples, plots: `analysis.end_of_run`).
    The loop knows no research tool: the CLI registers them (e.g. `analysis.diagnostics.training_hooks`)."""

    every: int
    fn: Callable[..., dict | None]
    at_end: bool = False


def check_init_source(source: str, which: str, workdir: str) -> ml_collections.ConfigDict:
    """The saved config of the run `--init-from` names, after checking it is a run with that checkpoint (read only:
    nothing is created or written there)."""
    if which not in ("latest", "best"):
        raise run_lib.RunDirError(f"--init-checkpoint={which!r}; choose one of: latest, best")
    if os.path.abspath(source) == os.path.abspath(workdir):
        raise run_lib.RunDirError(f"--init-from={source} is the new run's --workdir; give the new run another one")
    if not os.path.isfile(os.path.join(source, "config.json")):
        raise run_lib.RunDirError(f"--init-from={source} holds no run (no config.json); give a run directory made "
                                  "by `jaxformer train`")
    directory = os.path.join(source, "checkpoints", which)
    if not os.path.isdir(directory) or not any(name.isdigit() for name in os.listdir(directory)):
        raise run_lib.RunDirError(f"--init-from={source} has no {which} checkpoint ({directory} holds none); "
                                  f"train it first{' or use --init-checkpoint=latest' if which == 'best' else ''}")
    return run_lib.load_config(source)


def inherit_derived(cfg: ml_collections.ConfigDict, source_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`cfg` with the derived position fields left at 0 taken from the source run, not from the new block size: a
    learned table keeps its rows, YaRN's `original_max_len` stays the context the source was trained at, and T5's
    max_distance, xPos's scale_base and FIRE's init_L stay what the source was trained with."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    source = config_lib.resolve(source_cfg)
    fields = [f[len("model.position."):] for f in config_lib.DERIVED_FROM if f.startswith("model.position.")]
    for field in fields:  # learned.max_len, rope.original_max_len, and the others derived from the block size
        variant, name = field.split(".")
        if cfg.model.position[variant].get(name) == 0 and variant in source.model.position:
            cfg.model.position[variant][name] = source.model.position[variant][name]
    return cfg


def check_init_vocabulary(source: str, dataset, cfg: ml_collections.ConfigDict) -> None:
    """A one-line error when the new run's data has another vocabulary than the source run's tokenizer."""
    source_tok, new_tok = data_lib.run_tokenizer(source), dataset.tokenizer
    if (type(source_tok) is not type(new_tok) or source_tok.vocab_size != new_tok.vocab_size
            or getattr(source_tok, "vocab", None) != getattr(new_tok, "vocab", None)):
        raise run_lib.RunDirError(f"--init-from: data.name={cfg.data.name!r} has another vocabulary than "
                                  f"{source}/{source_tok.filename} ({new_tok.vocab_size} vs {source_tok.vocab_size} "
                                  "tokens); fine-tune on data with the source run's vocabulary")


def load_init_params(source: str, which: str, trainer: Trainer) -> tuple[dict, dict]:
    """(parameters of the source run's checkpoint in the new model's structure, what the manifest records); a
    one-line error for other parameter shapes."""
    _, _, params, step = restore_params(source, which=which)
    want = jax.tree_util.tree_flatten_with_path(trainer._params0)[0]
    got = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    for path, x in want:
        y = got.get(path)
        if y is None or y.shape != x.shape:
            name = jax.tree_util.keystr(path)
            raise run_lib.RunDirError(f"--init-from: parameter {name} has shape {None if y is None else y.shape} in "
                                      f"{source}, the new model's is {x.shape}; keep the model fields of the source")
    params = jax.tree.map(lambda x, y: jnp.asarray(y, x.dtype), trainer._params0, params)
    manifest = run_lib.read_json(os.path.join(source, "manifest.json")) if os.path.isfile(
        os.path.join(source, "manifest.json")) else {}
    info = {"run": os.path.abspath(source), "checkpoint": which, "step": int(step),
            "config_hash": manifest.get("config_hash"), "git_revision": manifest.get("git_revision")}
    return params, info


def check_config(cfg: ml_collections.ConfigDict, dataset) -> ml_collections.ConfigDict:
    """The resolved config, validated against the data and this machine: everything refused here is refused before
    the run directory is made or touched (one-line ConfigError)."""
    resolved = config_lib.resolve(cfg, vocab_size=dataset.vocab_size)
    config_lib.validate(resolved, n_devices=jax.device_count())
    m, d, t = resolved.model, resolved.data, resolved.train
    if config_lib.warmup_too_long(cfg):  # resolve() shortened it: a quick trial of a long config, said once
        log.info("optim.warmup_steps=%d is longer than the run: shortened to train.steps=%d (recorded in "
                 "config.json)", cfg.optim.warmup_steps, resolved.train.steps)
    config_lib.check_vocab(resolved, dataset.vocab_size)
    for split in ("train", "val"):
        tokens = dataset.split_tokens(split)
        if tokens is not None and d.block_size + 1 > len(tokens):
            raise config_lib.ConfigError(
                f"data.block_size={d.block_size} needs {d.block_size + 1} tokens per row; the {split} split of "
                f"{d.name!r} has {len(tokens)}: choose data.block_size <= {len(tokens) - 1}")
    # The data as training will ask for it (a synthetic task's sizes must fit the block size, ...): refused here,
    # before the run directory is made, not at the first step after config.json was written.
    dataset.batch("train", 0, batch_size=1, block_size=d.block_size, seed=t.seed)
    dataset.eval_batches("val", batch_size=1, block_size=d.block_size, num_batches=1, seed=t.seed)
    need, n_params = memory_estimate(resolved)
    have = device_memory()
    evals = eval_batches_bytes(resolved)
    if evals > have / 4:
        raise config_lib.ConfigError(
            f"train.eval_iters={t.eval_iters} keeps {evals / 2**30:,.1f} GiB of fixed evaluation batches (two splits "
            f"x {t.eval_iters} x data.batch_size={d.batch_size} x data.block_size={d.block_size}); this machine's "
            f"{jax.devices()[0].platform} memory is {have / 2**30:,.1f} GiB: choose train.eval_iters <= "
            f"{max(1, int(t.eval_iters * have / 4 / evals)):,}")
    draw = positions_draw_bytes(resolved)
    if draw > have / 2:
        raise config_lib.ConfigError(
            f"model.position.randomize_max_len={m.position.randomize_max_len:,} draws its positions from a "
            f"permutation of that range per sequence: about {draw / 2**30:,.1f} GiB a step; this machine's memory is "
            f"{have / 2**30:,.1f} GiB: choose a range of a few times data.block_size={d.block_size}")
    if need > have:
        raise config_lib.ConfigError(
            f"the model ({n_params:,} parameters, model.n_layer={m.n_layer}, model.n_embd={m.n_embd}) needs about "
            f"{need / 2**30:,.1f} GiB for parameters, optimizer state and activations at data.batch_size="
            f"{d.batch_size}, data.block_size={d.block_size}; this machine's {jax.devices()[0].platform} memory is "
            f"{have / 2**30:,.1f} GiB: shrink the model or the batch, or add devices (mesh.fsdp)")
    return resolved


def memory_estimate(cfg: ml_collections.ConfigDict) -> tuple[int, int]:
    """(bytes, parameter count) a training step needs at least, per device: parameters, gradients and AdamW's two
    moments (4 copies, split by mesh.fsdp/tensor), plus the activations kept for the backward pass, from the
    per-layer count of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
    s*b*h*(34 + 5*a*s/h) bytes at 16 bits, doubled for float32) and the float32 logits and their gradient.

    The parameter count is `param_count`'s (closed form in the depth: milliseconds at any model.n_layer)."""
    n_params = param_count(cfg)
    m, d = cfg.model, cfg.data
    width = np.dtype(jnp.dtype(m.param_dtype)).itemsize
    act = np.dtype(jnp.dtype(m.dtype)).itemsize
    n_devices = jax.device_count()
    shards = max(1, cfg.mesh.fsdp if cfg.mesh.fsdp > 0 else 1) * max(1, cfg.mesh.tensor if cfg.mesh.tensor > 0 else 1)
    B = d.batch_size / max(1, n_devices // shards)  # rows per device
    T, D, H = d.block_size, m.n_embd, m.n_head
    per_layer = T * B * D * (34 + 5 * H * T / D) * act / 2
    layers = per_layer * (1 if m.remat else m.n_layer) + (m.n_layer * T * B * D * act if m.remat else 0)
    logits = 2 * B * T * m.vocab_size * 4
    return int(4 * n_params * width / shards + layers + logits), n_params


def param_count(cfg: ml_collections.ConfigDict) -> int:
    """The model's parameter count, P(L) = P(1) + (L - 1) (P(2) - P(1)): every block holds the same parameters, so
    the count is affine in the depth L, and two abstract builds (`nnx.eval_shape`, nothing allocated) of one and
    two blocks give it exactly; one abstract build of L blocks takes seconds at L=100 and minutes at L=500."""
    def count(n_layer: int) -> int:
        shallow = ml_collections.ConfigDict(cfg.to_dict())
        shallow.model.n_layer = n_layer
        return count_params(nnx.eval_shape(lambda: build_model(shallow)))

    one, two = count(1), count(2)
    return one + (cfg.model.n_layer - 1) * (two - one)


def eval_batches_bytes(cfg: ml_collections.ConfigDict) -> int:
    """Bytes of the fixed evaluation batches a run keeps (`Trainer._eval_batches`): two splits of
    train.eval_iters batches of int32 inputs, int32 targets and float32 weights."""
    return 2 * cfg.train.eval_iters * cfg.data.batch_size * cfg.data.block_size * 3 * 4


def positions_draw_bytes(cfg: ml_collections.ConfigDict) -> int:
    """Bytes one step's randomized positions take while drawn: `jax.random.choice` without replacement permutes
    the whole range R (int32 values and their sort keys, ~3 x 4 bytes each), per sequence of a micro-batch or once
    (model.position.randomize_per)."""
    pe = cfg.model.position
    R = pe.get("randomize_max_len", 0)
    draws = cfg.data.batch_size if pe.get("randomize_per", "sequence") == "sequence" else 1
    return 3 * 4 * R * draws


def device_memory() -> int:
    """Bytes of memory of one device: the accelerator's allocator limit, or the host's RAM for the CPU."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if stats.get("bytes_limit"):
            return int(stats["bytes_limit"])
    import psutil

    return int(psutil.virtual_memory().total)


def restore_layout(saved_tree, abstract: dict):
    """(target, finish) for restoring a train state saved under another `train.log_every` or `optim.grad_clip`
    (both allowed to change on resume): the arrays are matched by path, with optax's clip-chain prefix
    (`opt_state/1/...` with clipping, `opt_state/...` without; the clip holds no arrays) added or dropped, and the
    `recent` window re-laid for the new log_every. None, None when the layouts are the same."""
    def names(tree):
        return {checkpoint_lib._path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}

    saved, current = names(saved_tree), names(abstract)
    if saved.keys() == current.keys() and all(tuple(saved[k].shape) == tuple(v.shape) for k, v in current.items()):
        return abstract, None

    def saved_name(name: str) -> str:
        if name in saved:
            return name
        head, _, rest = name.partition("/")
        for alternative in (f"{head}/1/{rest}", f"{head}/{rest[2:]}" if rest.startswith("1/") else None):
            if head == "opt_state" and alternative in saved:
                return alternative
        raise ValueError(f"the checkpoint holds no array {name} (it was saved by another model or optimizer)")

    mapping = {saved_name(name): name for name in current}
    unused = sorted(set(saved) - set(mapping))
    if unused:
        raise ValueError(f"the checkpoint holds array {unused[0]} that this run's train state has no place for")

    def target_leaf(path, meta):
        x = current[mapping[checkpoint_lib._path_name(path)]]
        shape = tuple(meta.shape) if checkpoint_lib._path_name(path).startswith("recent/") else x.shape
        return jax.ShapeDtypeStruct(shape, x.dtype, sharding=x.sharding)

    target = jax.tree_util.tree_map_with_path(target_leaf, saved_tree)

    def finish(restored):
        arrays = {mapping[k]: v for k, v in names(restored).items()}
        state = jax.tree_util.tree_map_with_path(lambda p, _: arrays[checkpoint_lib._path_name(p)], abstract)
        state["recent"] = _rewindow(state["recent"], abstract["recent"])
        return state

    return target, finish


def _rewindow(recent: dict, abstract: dict) -> dict:
    """The recent-steps window in a new length (log_every changed on resume): each kept step in its slot."""
    n = abstract["step"].shape[0]
    old = jax.device_get(recent)
    if old["step"].shape[0] == n:
        return recent
    new = {"step": np.full((n,), -1, np.int32), "loss": np.zeros((n,), np.float32),
           "grad_norm": np.zeros((n,), np.float32)}
    newest = int(old["step"].max())
    for i in np.argsort(old["step"]):
        s = int(old["step"][i])
        if s > 0 and s > newest - n:
            for key in new:
                new[key][(s - 1) % n] = old[key][i]
    return {k: jax.device_put(v, abstract[k].sharding) for k, v in new.items()}


def train(cfg: ml_collections.ConfigDict, workdir: str, *, resume: bool = False, overwrite: bool = False,
          dataset=None, stop_after: int | None = None, hooks: Sequence[Hook] = (), init_from: str | None = None,
          init_checkpoint: str = "latest") -> dict:
    """Trains `cfg` into `workdir` (see run.py for what it holds); returns the final metrics.

    `stop_after=N` runs only the first N steps of the same schedule (for `repro-check`), with no final-step extras.
    `hooks`: actions at their steps (`Hook`), after the step's log and evaluation, before its checkpoint.
    `init_from=RUN` starts from the parameters of RUN's `init_checkpoint` (latest | best) with a fresh optimizer: a
    fine-tune, e.g. at a longer `data.block_size` with a RoPE scaling; a change that gives another model is refused
    before anything is written, and RUN is only read. The manifest records where the parameters came from.
    The run directory is locked (run.py) from before it is touched until this returns or raises.
    """
    sharding_lib.maybe_initialize_distributed(cfg.mesh.multihost)
    is_main = sharding_lib.is_main_process()
    sharding_lib.assert_same_on_all_processes(os.path.abspath(workdir), "--workdir")
    if init_from is not None:
        if resume:
            raise run_lib.RunDirError("--init-from starts a new run and --resume continues one; give only one")
        source_cfg = check_init_source(init_from, init_checkpoint, workdir)
        cfg = inherit_derived(cfg, source_cfg)
        changed = run_lib.check_init_config(
            init_from, config_lib.resolve(source_cfg),
            config_lib.resolve(cfg, vocab_size=config_lib.data_vocab_size(source_cfg)))
        if changed:
            log.info("initialising from %s with changed fields: %s", init_from, ", ".join(changed))
        if dataset is None:  # a subword run's own tokenizer (the BPE it trained), not a new one
            dataset = data_lib.load_dataset(cfg.data, tokenizer=data_lib.cached_tokenizer(cfg.data, init_from))
        check_init_vocabulary(init_from, dataset, cfg)
    # Bad input (config, data, a model that cannot fit) is refused before the run directory is made or touched.
    if dataset is None:
        # A resumed run's own subword tokenizer (a trained BPE is not trained again).
        saved_run = resume and os.path.exists(os.path.join(workdir, "config.json"))
        dataset = data_lib.load_dataset(cfg.data, tokenizer=data_lib.cached_tokenizer(cfg.data, workdir)
                                        if saved_run else None)
    if not resume:
        check_config(cfg, dataset)
    # Process 0 alone readies (and locks) the directory (--overwrite deletes it); the others wait for its answer.
    created = is_main and not os.path.exists(workdir)
    resuming = sharding_lib.broadcast_from_main(
        run_lib.prepare(workdir, resume=resume, overwrite=overwrite) if is_main else False)
    try:
        try:
            return _train(cfg, workdir, resuming=resuming, dataset=dataset, stop_after=stop_after, is_main=is_main,
                          hooks=hooks, init_from=init_from, init_checkpoint=init_checkpoint)
        except OSError as e:
            if e.errno not in _UNWRITABLE:
                raise
            raise checkpoint_lib.CheckpointError(f"could not write to the run directory {workdir}: {e.strerror}"
                                                 f"{f' ({e.filename})' if e.filename else ''}") from e
    except BaseException:
        if created and os.path.isdir(workdir):
            run_lib.release(workdir)
            if not os.listdir(workdir):
                os.rmdir(workdir)  # made by this call and still empty: leave no trace of a refused run
        raise
    finally:
        if is_main:
            run_lib.release(workdir)


# A run directory that stopped taking writes mid-run (made read-only, a full disk, a file where a folder was).
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR)


def _train(cfg, workdir, *, resuming, dataset, stop_after, is_main, hooks=(), init_from=None,
           init_checkpoint="latest") -> dict:
    first_checkpoint = 0
    if resuming:  # before anything is built or written: the run's own files stay as they are on a refusal
        saved = run_lib.load_config(workdir)
        first_checkpoint = saved.train.checkpoint_every or saved.train.steps
        changed = run_lib.check_resume_config(
            workdir, saved, config_lib.resolve(cfg, vocab_size=config_lib.data_vocab_size(saved)))
        if changed:
            log.info("resuming with changed fields: %s", ", ".join(changed))
        done = max([int(name) for kind in ("latest", "best") if os.path.isdir(d := os.path.join(
            workdir, "checkpoints", kind)) for name in os.listdir(d) if name.isdigit()], default=0)
        if done > cfg.train.steps:
            raise run_lib.RunDirError(f"--resume: {workdir} has trained {done} steps; train.steps={cfg.train.steps} "
                                      f"is fewer: give train.steps >= {done} (more extends the run)")
        check_config(cfg, dataset)
        follow_run_matmul(workdir)  # the path the run was trained with, before the model is built
    trainer = Trainer(cfg, dataset)
    init_info = None
    if init_from is not None:  # the source's parameters, their shapes checked (a refusal leaves no run directory)
        trainer._params0, init_info = load_init_params(init_from, init_checkpoint, trainer)
    cfg = trainer.cfg
    dataset = trainer.dataset
    t = cfg.train

    manifest_path = os.path.join(workdir, "manifest.json")
    if resuming and init_info is None and os.path.isfile(manifest_path):  # a resumed fine-tune keeps its origin
        init_info = run_lib.read_json(manifest_path).get("init_from")

    def write_run_files():
        if is_main:
            run_lib.save_config(workdir, cfg)
            run_lib.write_json(manifest_path, run_lib.manifest(cfg, data_hash=dataset.data_hash, init_from=init_info))
            dataset.tokenizer.save(os.path.join(workdir, dataset.tokenizer.filename))

    if not resuming:
        write_run_files()
    log.info("model: %s parameters (%s non-embedding); %s, %s attention, %s compute; %s",
             f"{trainer.n_params:,}", f"{trainer.n_params_non_embedding:,}", cfg.model.position.name,
             cfg.model.attention.implementation, cfg.model.dtype, sharding_lib.describe(trainer.mesh))
    if trainer.replicated_params:
        log.info("fsdp: replicated (no dimension divisible by %d): %s", cfg.mesh.fsdp,
                 ", ".join(trainer.replicated_params))

    # Every process takes part in a checkpoint: each writes the shards its devices hold, process 0 the metadata.
    checkpoints = checkpoint_lib.Checkpoints(workdir, keep=t.keep_checkpoints, writer=True)
    writer = progress = None
    try:
        start = 0
        if resuming:
            recorded = run_lib.recorded_steps(workdir)  # repairs a torn last line of metrics.jsonl
            if checkpoints.has_any():
                start, state = checkpoints.restore(trainer.abstract_state(), convert=restore_layout, set_aside=True)
                log.info("resumed from step %d", start)
            elif recorded >= first_checkpoint:
                raise checkpoint_lib.NoUsableCheckpoint(
                    f"--resume: {workdir}/checkpoints holds no checkpoint, yet metrics.jsonl records steps up to "
                    f"{recorded} (past the first checkpoint, step {first_checkpoint}); --overwrite starts the run "
                    "again from step 0")
            else:  # stopped before its first checkpoint: nothing was saved that restarting could lose
                log.warning("--resume: %s stopped before its first checkpoint (step %d); starting from step 0",
                            workdir, first_checkpoint)
                state = trainer.initial_state()
            if is_main:
                run_lib.truncate_metrics(workdir, start)
            write_run_files()  # the checkpoint restored: now the run's files may say how it goes on
        else:
            state = trainer.initial_state()
            if init_info is not None:
                log.info("initialised from %s (%s checkpoint, step %d); fresh optimizer", init_info["run"],
                         init_info["checkpoint"], init_info["step"])

        writer = run_lib.MetricsWriter(workdir, enabled=is_main)
        progress = _progress(start, t.steps, enabled=is_main and t.progress)
        result = _loop(trainer, state, checkpoints, writer, progress, start=start, stop_after=stop_after,
                       hooks=hooks)
        state = result.pop("state")
        checkpoints.finish()
    finally:
        checkpoints.close()  # joins orbax's threads, also after an error: a failed save never leaves a hung process
        if writer is not None:
            writer.close()
        if progress is not None:
            progress.close()
    if result["stopped"]:
        log.warning("stopped: %s", result["stopped"])
    end_hooks = [hook for hook in hooks if hook.at_end]
    if end_hooks and not result["stopped"] and result["step"] == t.steps:
        # The hooks run on process 0 alone, so they get whole parameters (gathering them takes every process).
        params = sharding_lib.to_host(state["params"]) if jax.process_count() > 1 else state["params"]
        if is_main:
            for hook in end_hooks:
                hook.fn(trainer, params, result["step"])
    result["params"] = state["params"]
    result["trainer"] = trainer
    return result


def _loop(trainer: Trainer, state, checkpoints, writer, progress, *, start: int, stop_after: int | None,
          hooks: Sequence[Hook] = ()) -> dict:
    cfg, t = trainer.cfg, trainer.cfg.train
    is_main = sharding_lib.is_main_process()
    tokens_per_step = cfg.data.batch_size * cfg.data.block_size * cfg.optim.accum_steps
    last_time, last_step = time.perf_counter(), start
    result: dict = {"step": start, "stopped": None, "signal": None}
    best_val = checkpoints.best_loss()  # a resumed run's best stays best until an evaluation beats it
    # nonfinite=skip: the count of skipped steps is read every step (one scalar transfer), so that the run stops at
    # exactly max_skipped_steps in a row and never checkpoints a skipped step. ("stop" skips every update after the
    # first bad step on the device, so it needs no per-step look.)
    skip = t.nonfinite == "skip"
    skipped_total = int(jax.device_get(state["nonfinite"])) if skip else 0
    skipped_in_a_row, run_start = 0, None
    with _StopSignal() as stop:
        for step in range(start, t.steps if stop_after is None else min(stop_after, t.steps)):
            state = trainer.train_step(state, trainer.batch(step))
            done = step + 1
            if skip:
                count = int(jax.device_get(state["nonfinite"]))
                skipped_in_a_row, skipped_total = (skipped_in_a_row + 1 if count > skipped_total else 0), count
                run_start = (done if skipped_in_a_row == 1 else run_start) if skipped_in_a_row else None
            if _should(done, t.log_every, t.steps):
                recent, nonfinite, first_bad = jax.device_get((state["recent"], state["nonfinite"],
                                                               state["first_nonfinite"]))
                nonfinite, first_bad = int(nonfinite), int(first_bad)
                now = time.perf_counter()
                window = _window(recent, done, t.log_every)
                record = {"step": done, "loss": float(np.mean(recent["loss"][window], dtype=np.float64)),
                          "grad_norm": float(recent["grad_norm"][window][-1]), "lr": float(trainer.schedule(done - 1))}
                if nonfinite:
                    record["nonfinite_steps"] = nonfinite
                elapsed = now - last_time
                timing = {"ms_per_step": 1000 * elapsed / (done - last_step),
                          "tokens_per_s": tokens_per_step * (done - last_step) / elapsed}
                writer.write(record, timing=timing)
                progress.update(done - last_step)
                progress.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{timing['tokens_per_s']:.0f}")
                last_time, last_step = now, done
                result.update(record)
                if nonfinite and t.nonfinite == "stop":
                    result["stopped"] = _nonfinite_stop(first_bad, checkpoints)
                    break
            if skip and t.max_skipped_steps and skipped_in_a_row >= t.max_skipped_steps:
                kept = checkpoints.set_aside_unproven(run_start)
                result["stopped"] = (f"{skipped_in_a_row} non-finite steps in a row, steps {run_start}-{done} "
                                     f"(train.max_skipped_steps={t.max_skipped_steps}): the run diverged; "
                                     + _kept(kept))
                break
            if _should(done, t.eval_every, t.steps):
                val = trainer.evaluate(state["params"], "val")
                train_eval = trainer.evaluate(state["params"], "train")
                record = {"step": done, "val_loss": val["loss"], "train_eval_loss": train_eval["loss"]}
                if "accuracy" in val:
                    record["val_accuracy"] = val["accuracy"]
                writer.write(record)
                result.update(record)
                log.info("step %d: train %.4f, val %.4f%s", done, train_eval["loss"], val["loss"],
                         f", val exact match {100 * val['accuracy']:.1f}%" if "accuracy" in val else "")
                # `best` is only ever a state evaluated here, labelled with this loss (and with finite parameters).
                if val["loss"] < best_val and checkpoint_lib.all_finite(state["params"]):
                    checkpoints.save_best(done, state, val_loss=val["loss"])
                    best_val = val["loss"]
            due = [hook for hook in hooks if hook.every and _should(done, hook.every, t.steps)]
            if due:
                # Computed apart from the mesh, so with several processes on whole (gathered) parameters.
                params = sharding_lib.to_host(state["params"]) if jax.process_count() > 1 else state["params"]
                for hook in due:
                    record = hook.fn(trainer, params, done) if is_main else None
                    if record:
                        writer.write({"step": done, **record})
            stopping = stop.received is not None
            if jax.process_count() > 1:
                # A signal reaches the processes at different steps: they agree on it at a log step, and stop
                # (and checkpoint) together there.
                stopping = _should(done, t.log_every, t.steps) and sharding_lib.any_process(stopping)
            if _should(done, t.checkpoint_every, t.steps) or stopping:
                # A state is saved only when every step so far was finite (under "stop") and its parameters are:
                # keep-last-k then never prunes the last good checkpoint in favour of a diverged one.
                nonfinite, first_bad = (int(x) for x in jax.device_get((state["nonfinite"],
                                                                        state["first_nonfinite"])))
                if nonfinite and t.nonfinite == "stop":
                    result["stopped"] = _nonfinite_stop(first_bad, checkpoints)
                    break
                if not checkpoint_lib.all_finite(state["params"]):
                    result["stopped"] = (f"non-finite parameters at step {done}; not saved; "
                                         + _kept(checkpoints.set_aside_unproven(done + 1)))
                    break
                if not skipped_in_a_row:  # a skipped step's parameters are unproven: the last save holds them
                    checkpoints.save(done, state)
            if stopping:
                signal_name = stop.received or "a signal to another process"
                saved = ("checkpoint saved" if not skipped_in_a_row else
                         f"not saved (a skipped non-finite step); {_kept(checkpoints.latest_step())}")
                result["stopped"] = f"{signal_name} at step {done}; {saved}"
                result["signal"] = stop.received or "SIGTERM"  # what the job got (another process's, as a TERM)
                break
            result["step"] = done
    result["state"] = state
    return result


def _nonfinite_stop(first_bad: int, checkpoints) -> str:
    kept = checkpoints.set_aside_unproven(first_bad)
    return f"non-finite loss or gradient at step {first_bad} (its update not applied); {_kept(kept)}"


def _kept(step: int | None) -> str:
    return (f"resumable from checkpoint step {step} (a step from its parameters was finite)" if step is not None
            else "no checkpoint from before it is usable (set aside, or none saved)")


def _progress(start: int, total: int, *, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, disable=not enabled or not sys.stderr.isatty(), unit="step",
                dynamic_ncols=True)
