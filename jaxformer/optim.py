"""The optimizer, its schedule and the train state they update: AdamW with decoupled weight decay (Loshchilov &
Hutter 2019) after global-norm clipping, on nanoGPT's warm-up + cosine schedule.

Pure constructors over a resolved `optim` config section; the loop (`train.py`) jit-compiles the step around them.
Evaluation and sampling never build one (`train.Evaluator`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


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
