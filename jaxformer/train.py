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
from jaxformer import prepare as prepare_lib
from jaxformer import run as run_lib
from jaxformer import sharding as sharding_lib
from jaxformer.loader import (  # noqa: F401 -- train.* names kept
    build_model,
    follow_run_matmul,
    restore_params,
    split_model,
)
from jaxformer.model import count_params
from jaxformer.optim import init_state, make_optimizer, make_schedule  # noqa: F401 -- train.* names kept
from jaxformer.prepare import (  # noqa: F401 -- train.* names kept (the pre-run checks moved to prepare.py)
    Run,
    check_config,
    check_init_source,
    check_init_vocabulary,
    device_memory,
    eval_batches_bytes,
    inherit_derived,
    load_init_params,
    memory_estimate,
    param_count,
    positions_draw_bytes,
)

log = logging.getLogger("jaxformer")


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


class Evaluator:
    """A resolved config's model and evaluation: data, model structure, the compiled eval step, shardings. No
    optimizer and no train step: what `eval` and the research tools need (`Trainer` adds the training side)."""

    def __init__(self, cfg: ml_collections.ConfigDict, dataset=None, *, validated: bool = False):
        self.dataset = dataset if dataset is not None else data_lib.load_dataset(cfg.data)
        if not validated:  # a prepared Run's config is resolved and validated already (prepare.py)
            cfg = config_lib.resolve(cfg, vocab_size=self.dataset.vocab_size)
            config_lib.validate(cfg, n_devices=jax.device_count())
            config_lib.check_vocab(cfg, self.dataset.vocab_size)
        self.cfg = cfg
        self.mesh = sharding_lib.make_mesh(cfg.mesh)
        model = build_model(cfg)
        self.n_params = count_params(model)
        self.n_params_non_embedding = count_params(model, non_embedding=True)
        self.graphdef, params = split_model(model)
        self.objective = losses.for_model(cfg.model)  # the model's loss: the loop sees only its interface
        self._params0 = params
        abstract_params = jax.eval_shape(lambda: params)
        self.params_sharding = sharding_lib.tree_shardings(abstract_params, self.mesh)
        self.replicated_params = sharding_lib.replicated_names(abstract_params, self.mesh)
        self.compute_sharding = sharding_lib.compute_shardings(abstract_params, self.mesh)
        self.eval_sharding = sharding_lib.batch_sharding(self.mesh)
        self.eval_step = jax.jit(
            functools.partial(eval_step, graphdef=self.graphdef, compute_sharding=self.compute_sharding),
            in_shardings=(self.params_sharding, self.eval_sharding))
        self._eval_cache: dict[str, list] = {}  # the fixed evaluation batches, built once per split

    @classmethod
    def for_run(cls, run):
        """Built from a prepared `prepare.Run` (its config resolved and validated once, there)."""
        return cls(run.cfg, run.dataset, validated=True)

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
        if self.objective.family.token_accuracy:  # masked LM: the share of masked tokens predicted right
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


class Trainer(Evaluator):
    """Everything needed to run steps for one resolved config: the evaluator's, plus the optimizer, the train
    state's shardings and the compiled train step."""

    def __init__(self, cfg: ml_collections.ConfigDict, dataset=None, *, validated: bool = False):
        super().__init__(cfg, dataset, validated=validated)
        cfg = self.cfg
        self.optimizer = make_optimizer(cfg.optim)
        self._init_fn = functools.partial(init_state, optimizer=self.optimizer, seed=cfg.train.seed,
                                          log_every=cfg.train.log_every)
        abstract = jax.eval_shape(self._init_fn, self._params0)
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self.state_sharding = {
            **jax.tree.map(lambda _: replicated, {k: v for k, v in abstract.items()
                                                  if k not in ("params", "opt_state")}),
            "params": self.params_sharding,
            "opt_state": sharding_lib.tree_shardings(abstract["opt_state"], self.mesh),
        }
        accum = cfg.optim.accum_steps
        self.batch_sharding = sharding_lib.batch_sharding(self.mesh, leading_axes=1 if accum > 1 else 0)
        step = functools.partial(train_step, graphdef=self.graphdef, optimizer=self.optimizer,
                                 use_dropout=cfg.model.dropout > 0, stop_on_nonfinite=cfg.train.nonfinite == "stop",
                                 compute_sharding=self.compute_sharding,
                                 randomize_max_len=cfg.model.position.randomize_max_len,
                                 randomize_per=cfg.model.position.randomize_per, objective=self.objective)
        self.train_step = jax.jit(step, in_shardings=(self.state_sharding, self.batch_sharding),
                                  out_shardings=self.state_sharding, donate_argnums=0)
        self.schedule = make_schedule(cfg.optim)

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
    changed = ()
    if init_from is not None:
        if resume:
            raise run_lib.RunDirError("--init-from starts a new run and --resume continues one; give only one")
        cfg, changed = prepare_lib.init_from_config(cfg, init_from, init_checkpoint, workdir)
    intent = "init_from" if init_from is not None else "resume" if resume else "new"
    if dataset is None:
        dataset = prepare_lib.load_data(cfg, workdir, intent, init_from)
    # Bad input (config, data, a model that cannot fit) is refused before the run directory is made or touched; a
    # resumed run's saved files are read once the directory is locked (in _train).
    run = None if resume else prepare_lib.prepare(cfg, workdir, intent, dataset=dataset, init_from=init_from,
                                                  init_checkpoint=init_checkpoint, changed=changed)
    # Process 0 alone readies (and locks) the directory (--overwrite deletes it); the others wait for its answer.
    created = is_main and not os.path.exists(workdir)
    resuming = sharding_lib.broadcast_from_main(
        run_lib.prepare(workdir, resume=resume, overwrite=overwrite) if is_main else False)
    try:
        try:
            if run is None:
                run = prepare_lib.prepare(cfg, workdir, "resume" if resuming else "new", dataset=dataset)
            return _train(run, resuming=resuming, stop_after=stop_after, is_main=is_main, hooks=hooks)
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


def _train(run: Run, *, resuming, stop_after, is_main, hooks=()) -> dict:
    workdir = run.workdir
    first_checkpoint = (run.saved.train.checkpoint_every or run.saved.train.steps) if resuming else 0
    trainer = Trainer.for_run(run)
    init_info = None
    if run.init_from is not None:  # the source's parameters, their shapes checked (a refusal leaves no run directory)
        trainer._params0, init_info = load_init_params(run.init_from, run.init_checkpoint, trainer._params0)
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
                start, state = checkpoints.restore(trainer.abstract_state(), convert=checkpoint_lib.restore_layout,
                                                   set_aside=True)  # an older layout converted on the checkpoint side
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
