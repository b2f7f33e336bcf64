"""Text generation with a KV cache, jit-compiled.

The prompt is run once (prefill) into a cache of capacity `min(len(prompt) + new tokens, max_context)`; each new token
then costs one cached step of a single position. Past `max_context` positions (the training block size by default,
since a learned position table, or an extrapolating variant, has seen no more), generation continues as nanoGPT
does: the context is cropped to the last `max_context` tokens and run in full each step.

Sampling: logits / temperature, then keep the `top_k` largest (nanoGPT's `generate`); temperature 0 is greedy.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def sample_logits(logits_V, key, *, temperature: float, top_k: int | None):
    if temperature == 0.0:
        return jnp.argmax(logits_V, axis=-1).astype(jnp.int32)
    logits_V = logits_V / temperature
    if top_k is not None and top_k < logits_V.shape[-1]:
        kth = jax.lax.top_k(logits_V, top_k)[0][..., -1:]
        logits_V = jnp.where(logits_V < kth, -jnp.inf, logits_V)
    return jax.random.categorical(key, logits_V, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "capacity"))
def _prefill(graphdef, params, tokens_1xT, *, capacity: int):
    model = nnx.merge(graphdef, params)
    cache = model.init_cache(1, capacity)
    logits_1xTxV, cache = model.decode(tokens_1xT, cache)
    return logits_1xTxV[0, -1], cache


@functools.partial(jax.jit, static_argnames=("graphdef", "temperature", "top_k"), donate_argnames=("cache",))
def _cached_step(graphdef, params, logits_V, cache, key, *, temperature, top_k):
    token = sample_logits(logits_V, key, temperature=temperature, top_k=top_k)
    model = nnx.merge(graphdef, params)
    logits_1x1xV, cache = model.decode(token[None, None], cache)
    return token, logits_1x1xV[0, 0], cache


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _full_logits(graphdef, params, tokens_1xT, last):
    """Logits at position `last` of a full (uncached) forward pass over a fixed-size window."""
    model = nnx.merge(graphdef, params)
    return model(tokens_1xT)[0, last]


def generate(model, prompt_ids, *, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             seed: int = 0, max_context: int | None = None, use_cache: bool = True) -> np.ndarray:
    """Prompt + `max_new_tokens` sampled ids. `use_cache=False` recomputes the whole window every token (baseline)."""
    prompt_ids = np.asarray(prompt_ids, np.int32)
    if prompt_ids.ndim != 1 or prompt_ids.size == 0:
        raise ValueError("prompt must be a non-empty 1-D sequence of token ids")
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    total = prompt_ids.size + max_new_tokens
    max_context = max_context or total
    if prompt_ids.size > max_context:
        prompt_ids = prompt_ids[-max_context:]
        total = prompt_ids.size + max_new_tokens
    key = jax.random.key(seed)
    out = list(prompt_ids)
    capacity = min(total, max_context)
    i = 0
    if use_cache:
        logits_V, cache = _prefill(graphdef, params, jnp.asarray(prompt_ids)[None], capacity=capacity)
        while len(out) < capacity and i < max_new_tokens:
            token, logits_V, cache = _cached_step(graphdef, params, logits_V, cache, jax.random.fold_in(key, i),
                                                  temperature=temperature, top_k=top_k)
            out.append(int(token))
            i += 1
        if len(out) == capacity and i < max_new_tokens:
            # The cache is full: the last sampled token has its logits; continue cropped.
            token = sample_logits(logits_V, jax.random.fold_in(key, i), temperature=temperature, top_k=top_k)
            out.append(int(token))
            i += 1
    while i < max_new_tokens:
        window = np.asarray(out[-capacity:], np.int32)
        last = window.size - 1
        padded = np.zeros(capacity, np.int32)
        padded[: window.size] = window  # causal: positions after `last` cannot affect its logits
        logits_V = _full_logits(graphdef, params, jnp.asarray(padded)[None], last)
        out.append(int(sample_logits(logits_V, jax.random.fold_in(key, i), temperature=temperature, top_k=top_k)))
        i += 1
    return np.asarray(out, np.int32)


def sample_for_run(model, dataset, cfg, *, num_tokens: int, seed: int = 0) -> str:
    """What `train` writes into samples.txt: generated text for text data; answers to eval prompts for tasks."""
    tokenizer = dataset.tokenizer
    if not dataset.has_accuracy:
        prompt = tokenizer.encode("\n") if "\n" in tokenizer.vocab else np.zeros(1, np.int32)
        ids = generate(model, prompt, max_new_tokens=num_tokens, temperature=0.8, top_k=200, seed=seed,
                       max_context=cfg.data.block_size)
        return tokenizer.decode(ids[len(prompt):])
    batch = dataset.eval_batches("val", batch_size=cfg.data.batch_size, block_size=cfg.data.block_size,
                                 num_batches=1, seed=cfg.train.seed)[0]
    lines = []
    for b in range(min(5, batch["inputs"].shape[0])):
        answer = np.nonzero(batch["weights"][b] > 0)[0]
        if answer.size == 0:
            continue
        start, n = int(answer[0]), int(answer.size)
        prompt = batch["inputs"][b, : start + 1]
        ids = generate(model, prompt, max_new_tokens=n, temperature=0.0)
        predicted = tokenizer.decode(ids[start + 1:])
        expected = tokenizer.decode(batch["targets"][b, answer])
        lines.append(f"prompt:   {tokenizer.decode(prompt)}\nexpected: {expected}\ngreedy:   {predicted}"
                     f"   [{'ok' if predicted == expected else 'WRONG'}]\n")
    return "\n".join(lines)
