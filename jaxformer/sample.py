"""Text generation with a KV cache, jit-compiled.

The prompt is run once (prefill) into a cache of capacity `min(len(prompt) + new tokens, max_context)`; each new token
then costs one cached step of a single position. Past `max_context` positions (the training block size by default,
since a learned position table, or an extrapolating variant, has seen no more), generation continues as nanoGPT
does: the context is cropped to the last `max_context` tokens and run in full each step.

Sampling: logits / temperature, then keep the `top_k` largest (nanoGPT's `generate`); temperature 0 is greedy.
`vocab_size`: only ids below it are drawn -- a model vocabulary padded past its tokenizer's (an imported model's
320 rows for a 300-token tokenizer, nanoGPT's 50304 for GPT-2's 50257) has ids no text decodes to.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def sample_logits(logits_V, key, *, temperature: float, top_k: int | None, vocab_size: int | None = None):
    logits_V = logits_V[..., :vocab_size]  # None: every id
    if temperature == 0.0:
        return jnp.argmax(logits_V, axis=-1).astype(jnp.int32)
    logits_V = logits_V / temperature
    if top_k is not None and top_k < logits_V.shape[-1]:
        kth = jax.lax.top_k(logits_V, top_k)[0][..., -1:]
        logits_V = jnp.where(logits_V < kth, -jnp.inf, logits_V)
    return jax.random.categorical(key, logits_V, axis=-1).astype(jnp.int32)


class Generator:
    """Jit-compiled prefill / cached step / full-window forward for one model (compiled once, reused per call)."""

    def __init__(self, model):
        graphdef, state = nnx.split(model)
        self.params = nnx.to_pure_dict(state)

        def prefill(params, tokens_1xT, capacity):
            model = nnx.merge(graphdef, params)
            cache = model.init_cache(1, capacity)
            logits_1xTxV, cache = model.decode(tokens_1xT, cache)
            return logits_1xTxV[0, -1], cache

        def cached_step(params, logits_V, cache, key, temperature, top_k, vocab_size):
            token = sample_logits(logits_V, key, temperature=temperature, top_k=top_k, vocab_size=vocab_size)
            logits_1x1xV, cache = nnx.merge(graphdef, params).decode(token[None, None], cache)
            return token, logits_1x1xV[0, 0], cache

        def full_logits(params, tokens_1xT, last):
            """Logits at position `last` of a full (uncached) forward pass over a fixed-size window."""
            return nnx.merge(graphdef, params)(tokens_1xT)[0, last]

        self.prefill = jax.jit(prefill, static_argnums=2)
        self.cached_step = jax.jit(cached_step, static_argnums=(4, 5, 6), donate_argnums=2)
        self.full_logits = jax.jit(full_logits)

    def __call__(self, prompt_ids, *, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 seed: int = 0, max_context: int | None = None, use_cache: bool = True,
                 vocab_size: int | None = None) -> np.ndarray:
        prompt_ids = np.asarray(prompt_ids, np.int32)
        if prompt_ids.ndim != 1 or prompt_ids.size == 0:
            raise ValueError("prompt must be a non-empty 1-D sequence of token ids")
        max_context = max_context or prompt_ids.size + max_new_tokens
        prompt_ids = prompt_ids[-max_context:]
        capacity = min(prompt_ids.size + max_new_tokens, max_context)
        key = jax.random.key(seed)
        draw = lambda logits_V, i: sample_logits(logits_V, jax.random.fold_in(key, i), temperature=temperature,
                                                 top_k=top_k, vocab_size=vocab_size)
        out, i = list(prompt_ids), 0
        if use_cache:
            logits_V, cache = self.prefill(self.params, jnp.asarray(prompt_ids)[None], capacity)
            while len(out) < capacity and i < max_new_tokens:
                token, logits_V, cache = self.cached_step(self.params, logits_V, cache, jax.random.fold_in(key, i),
                                                          temperature, top_k, vocab_size)
                out.append(int(token))
                i += 1
            if i < max_new_tokens:  # the cache is full; the last token's logits are known, then crop
                out.append(int(draw(logits_V, i)))
                i += 1
        while i < max_new_tokens:
            window = np.asarray(out[-capacity:], np.int32)
            padded = np.zeros(capacity, np.int32)
            padded[: window.size] = window  # causal: the padding after `last` cannot affect its logits
            out.append(int(draw(self.full_logits(self.params, jnp.asarray(padded)[None], window.size - 1), i)))
            i += 1
        return np.asarray(out, np.int32)


def generate(model, prompt_ids, **kwargs) -> np.ndarray:
    """Prompt + `max_new_tokens` sampled ids (see `Generator.__call__`); `use_cache=False` is the uncached baseline."""
    return Generator(model)(prompt_ids, **kwargs)


def bos_prefix(cfg, tokenizer) -> np.ndarray:
    """The ids every prompt starts with: [BOS] for a run trained with data.bos (each row began with BOS, the id
    after the tokenizer's last: `data.dataset.prepend_bos`), else none. The one rule of `sample`, scoring and
    samples.txt; BOS is never printed (the tokenizer cannot decode it)."""
    return np.asarray([tokenizer.vocab_size] if cfg.data.get("bos", False) else [], np.int32)


def sample_for_run(model, dataset, cfg, *, num_tokens: int, seed: int = 0) -> str:
    """What `train` writes into samples.txt: generated text for text data; answers to eval prompts for tasks."""
    tokenizer = dataset.tokenizer
    bos_ids = bos_prefix(cfg, tokenizer)
    if not dataset.has_accuracy:
        try:  # a newline where the vocabulary has one (characters: maybe not; subwords: always)
            prompt = tokenizer.encode("\n")
        except ValueError:
            prompt = np.zeros(1, np.int32)
        prompt = np.concatenate([bos_ids, np.asarray(prompt, np.int32)])
        ids = Generator(model)( prompt, max_new_tokens=num_tokens, temperature=0.8, top_k=200, seed=seed,
                       max_context=cfg.data.block_size, vocab_size=tokenizer.vocab_size)
        return tokenizer.decode(ids[len(prompt):])
    batch = dataset.eval_batches("val", batch_size=cfg.data.batch_size, block_size=cfg.data.block_size,
                                 num_batches=1, seed=cfg.train.seed)[0]
    lines, generator = [], Generator(model)
    for b in range(min(5, batch["inputs"].shape[0])):
        answer = np.nonzero(batch["weights"][b] > 0)[0]
        if answer.size == 0:
            continue
        start, n = int(answer[0]), int(answer.size)
        prompt = batch["inputs"][b, : start + 1]
        ids = generator(prompt, max_new_tokens=n, temperature=0.0)
        predicted = tokenizer.decode(ids[start + 1:])
        expected = tokenizer.decode(batch["targets"][b, answer])
        shown = prompt[~np.isin(prompt, bos_ids)]
        lines.append(f"prompt:   {tokenizer.decode(shown)}\nexpected: {expected}\ngreedy:   {predicted}"
                     f"   [{'ok' if predicted == expected else 'WRONG'}]\n")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ fill-mask


def fill_mask(model, token_ids_T, *, mask_token_id: int, token_types_T=None, top_k: int = 5):
    """An encoder's predictions at its mask tokens (Devlin et al. 2019's masked LM): for each position holding
    `mask_token_id`, in order, `(position, [(token id, probability), ...top_k])` from the softmax over the vocabulary.
    A sequence without a mask token is a one-line ValueError."""
    ids_T = np.asarray(token_ids_T, np.int32)
    positions = np.flatnonzero(ids_T == mask_token_id)
    if positions.size == 0:
        raise ValueError(f"the input has no mask token (id {mask_token_id}); put [MASK] where a token should be "
                         "predicted")
    types = None if token_types_T is None else jnp.asarray(token_types_T, jnp.int32)[None]
    logits_TxV = _encoder_logits(model, jnp.asarray(ids_T)[None], types)[0]
    probs_PxV = np.asarray(jax.nn.softmax(logits_TxV[positions], axis=-1), np.float64)
    out = []
    for position, probs_V in zip(positions.tolist(), probs_PxV, strict=True):
        best = np.argsort(-probs_V, kind="stable")[:top_k]
        out.append((position, [(int(i), float(probs_V[i])) for i in best]))
    return out


def _encoder_logits(model, tokens_BxT, types_BxT):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, t, y: nnx.merge(graphdef, s)(t, token_types_BxT=y))(state, tokens_BxT, types_BxT)
