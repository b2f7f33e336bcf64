"""Capture the attention weights of a trained run: every layer and head, `[L, H, T, T]`, with the tokens.

Entry `(i, j)` of a head's matrix is the weight query token i puts on key token j (rows sum to one; causal, so
`j <= i`). The weights are recomputed through the reference attention path (`model.attention.implementation`
forced to "reference"; the parameters do not depend on the implementation), so runs trained with the chunked
or fused implementations, which never materialise the matrices, are captured the same way. Every
positional-encoding variant is included as the model applies it: rotations inside q and k, logit biases
(ALiBi, T5, KERPLE, FIRE) added before the softmax.

    cap = capture_text("runs/baby", "ROMEO: ", which="best", layers=[0, 1], heads=[2])
    cap.weights_LxHxTxT, cap.tokens

`save_npz` writes the raw arrays; `save_bertviz` / `load_bertviz` the list of per-layer `[1, H, T, T]` arrays
and the tokens that BertViz's `head_view(attention, tokens)` takes (convert with `torch.from_numpy` first).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxformer import attention, loader, positional
from jaxformer.model import GPT


@dataclasses.dataclass
class Capture:
    weights_LxHxTxT: np.ndarray  # float32, the selected layers x selected heads
    token_ids: np.ndarray  # [T] int32
    tokens: list[str]  # [T] the text of each token
    layers: list[int]  # model layer index of each row of weights_LxHxTxT
    heads: list[int]  # model head index of each column
    info: dict = dataclasses.field(default_factory=dict)  # run, checkpoint, step, position, implementation
    token_types: list[int] | None = None  # an encoder's segment of each token (0 = sentence A, 1 = B), or None
    qk: np.ndarray | None = None  # [L, H, T, 2, d] each selected head's query and key vectors (the neuron view)


# ---------------------------------------------------------------------------------- model on the reference


def reference_config(model_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of a `model` config section with the reference attention implementation (same parameters)."""
    cfg = ml_collections.ConfigDict(model_cfg.to_dict())
    cfg.attention.implementation = "reference"
    return cfg


@functools.lru_cache(maxsize=8)
def _graphdef(model_cfg_json: str):
    graphdef, _ = loader.abstract_model(ml_collections.ConfigDict(json.loads(model_cfg_json)))
    return graphdef


def reference_graphdef(model_cfg: ml_collections.ConfigDict):
    """The NNX structure of the model on the reference path (built abstractly: nothing is initialised)."""
    return _graphdef(json.dumps(reference_config(model_cfg).to_dict(), sort_keys=True))


def reference_model(model_cfg: ml_collections.ConfigDict, params) -> GPT:
    """The model of `model_cfg` with `params` (a pure dict, as `loader.restore_params` gives), on the reference
    attention path."""
    return nnx.merge(reference_graphdef(model_cfg), params)


def attention_weights(model: GPT, token_ids_T, token_types_T=None) -> tuple[np.ndarray, np.ndarray]:
    """(logits `[T, V]`, weights `[L, H, T, T]`) of one sequence, float32 NumPy (`token_types_T`: an encoder's
    segments)."""
    types = None if token_types_T is None else np.asarray(token_types_T)[None]
    logits_1xTxV, w_Lx1xHxTxT = attention_weights_batch(model, np.asarray(token_ids_T)[None], token_types_BxT=types)
    return logits_1xTxV[0], w_Lx1xHxTxT[:, 0]


def attention_weights_batch(model: GPT, tokens_BxT, *, token_types_BxT=None, mask_BxT=None,
                            logits: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """(logits `[B, T, V]`, weights `[L, B, H, T, T]`) as float32 NumPy: the model's `attention_weights`.

    The model must run the reference implementation (`reference_model`); the others cannot return weights.
    """
    graphdef, state = nnx.split(model)
    as_int = lambda x: None if x is None else jnp.asarray(x, jnp.int32)
    logits_BxTxV, w_LxBxHxTxT = _attention_weights(graphdef, state, as_int(tokens_BxT), as_int(token_types_BxT),
                                                   None if mask_BxT is None else jnp.asarray(mask_BxT, bool), logits)
    return (None if logits_BxTxV is None else np.asarray(logits_BxTxV, np.float32),
            np.asarray(w_LxBxHxTxT, np.float32))


@functools.partial(jax.jit, static_argnums=(0, 5))
def _attention_weights(graphdef, state, tokens_BxT, types_BxT, mask_BxT, logits):
    """Encoders: token types (segments) and a key-padding mask (padded keys get no weight); `logits=False` skips
    the output head (a 30k-word vocabulary costs as much as the encoder)."""
    return nnx.merge(graphdef, state).attention_weights(tokens_BxT, token_types_BxT=types_BxT, mask_BxT=mask_BxT,
                                                        logits=logits)


# ------------------------------------------------------------------------------------------------- from a run


def parse_indices(spec: str | None, n: int, *, flag: str) -> list[int]:
    """"0,2-3" -> [0, 2, 3]; None, "" or "all" -> all of range(n); anything else -> a one-line ValueError."""
    if spec is None or spec.strip() in ("", "all"):
        return list(range(n))
    out: list[int] = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise ValueError(f"{flag}={spec!r}; expected indices such as 0,2-3")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        for v in range(lo, hi + 1):
            if v >= n:
                raise ValueError(f"{flag}={spec!r}: index {v} is out of range; the run has {n} (0..{n - 1})")
            if v not in out:
                out.append(v)
    if not out:
        raise ValueError(f"{flag}={spec!r}; expected indices such as 0,2-3")
    return out


def token_labels(tokenizer, token_ids) -> list[str]:
    """The text of each token (a character for the char-level tokenizers, a subword for BPE ones)."""
    return [tokenizer.token_text(i) for i in np.asarray(token_ids).tolist()]


def check_length(cfg: ml_collections.ConfigDict, n_tokens: int, *, what: str = "--text") -> None:
    """Refuses sequences the model cannot position (learned tables) and too short ones (one-line error)."""
    if n_tokens < 2:
        raise ValueError(f"{what} has {n_tokens} token(s); give at least 2")
    name = cfg.model.position.name
    limit = positional.max_length(cfg.model.position)
    if limit is not None and n_tokens > limit:
        raise ValueError(f"{what} has {n_tokens} tokens, beyond the {name} table of this run "
                         f"(model.position.{name}.max_len={limit}); shorten it")


def prepare_text(workdir: str, text: str, *, layers: str | list[int] | None = None,
                 heads: str | list[int] | None = None):
    """(config, tokenizer, token ids, layers, heads): every check that needs no checkpoint, so that a bad
    text or index fails at once, with one line."""
    from jaxformer import data as data_lib
    from jaxformer import run as run_lib

    cfg = run_lib.load_config(workdir)  # "not a run directory" as a one-line error
    tokenizer = data_lib.run_tokenizer(workdir)  # vocab.json or tokenizer.json; neither: a one-line error
    token_ids = np.asarray(tokenizer.encode(text), np.int32)  # unknown characters: a one-line error
    check_length(cfg, int(token_ids.size))
    if not isinstance(layers, list):
        layers = parse_indices(layers, cfg.model.n_layer, flag="--layers")
    if not isinstance(heads, list):
        heads = parse_indices(heads, cfg.model.n_head, flag="--heads")
    return cfg, tokenizer, token_ids, layers, heads


def query_key_vectors(model: GPT, token_ids_T, token_types_T=None) -> np.ndarray:
    """`[L, H, T, 2, d]` float32: every layer's query and key vector per head, as its attention forms them (the block
    input, normed first in a pre-norm block, through the q/k projection, then the positional rotation, if any; a
    kv head's keys repeated for its query heads). softmax(q·kᵀ/√d + the variant's logit bias) is the captured
    weight: what BertViz's neuron view shows."""
    ids = jnp.asarray(token_ids_T, jnp.int32)[None]
    types = None if token_types_T is None else jnp.asarray(token_types_T, jnp.int32)[None]
    hidden_LxBxTxD, _ = model.encode(ids, token_types_BxT=types)
    T = ids.shape[1]
    positions_T = jnp.arange(T, dtype=jnp.int32)
    rotate = model.position.rotate_fn()
    out = []
    for layer, block in enumerate(model.blocks):
        x_BxTxD = hidden_LxBxTxD[layer] if block.post_norm else block.ln1(hidden_LxBxTxD[layer])
        params = nnx.to_pure_dict(nnx.state(block.attn, nnx.Param))["params"]
        q_BxTxHxd, k_BxTxKxd, _ = attention.qkv_projection(params, x_BxTxD, n_head=block.attn.n_head,
                                                           n_kv_head=block.attn.n_kv_head)
        if rotate is not None:
            q_BxTxHxd, k_BxTxKxd = rotate(q_BxTxHxd, k_BxTxKxd, positions_T, positions_T)
        k_BxTxHxd = jnp.repeat(k_BxTxKxd, block.attn.n_head // block.attn.n_kv_head, axis=2)
        out.append(jnp.stack([q_BxTxHxd[0], k_BxTxHxd[0]], axis=2).transpose(1, 0, 2, 3))  # [H, T, 2, d]
    return np.asarray(jnp.stack(out), np.float32)


def encoder_input(cfg: ml_collections.ConfigDict, tokenizer, text: str, text_pair: str | None = None):
    """(token ids, token types or None): a sentence (pair) as an encoder takes it, with the tokenizer's special
    tokens ([CLS] A [SEP] B [SEP]); a decoder's text as it is. A pair for a decoder, or for a tokenizer without
    special tokens, is a one-line ValueError."""
    from jaxformer.data import SubwordTokenizer

    subword = isinstance(tokenizer, SubwordTokenizer)
    if text_pair is not None and cfg.model.causal:
        raise ValueError("--text-pair is for an encoder (model.causal=False): a decoder reads one text; join the "
                         "two into --text")
    if text_pair is not None and not (subword and cfg.model.get("type_vocab_size", 0)):
        raise ValueError("--text-pair needs a model with token types and a tokenizer with special tokens (an "
                         "imported BERT); give --text only")
    if not cfg.model.causal and subword and cfg.model.get("type_vocab_size", 0):
        ids, types = tokenizer.encode_pair(text, text_pair)
        return ids, types
    return np.asarray(tokenizer.encode(text), np.int32), None


def load_model(workdir: str, *, which: str = "latest", step: int | None = None) -> tuple[GPT, int]:
    """(model on the reference path, step) from a run directory's latest or best checkpoint."""
    if which not in ("latest", "best"):
        raise ValueError(f"--checkpoint={which!r}; choose one of: latest, best")
    cfg, _, params, step = loader.restore_params(workdir, which=which, step=step)
    return reference_model(cfg.model, params), int(step)


def run_info(workdir: str, cfg: ml_collections.ConfigDict, *, which: str, step: int) -> dict:
    """What a capture records about where it came from (shown by the viewer, saved in weights.npz)."""
    return {"workdir": os.path.abspath(workdir), "checkpoint": which, "step": step,
            "position": cfg.model.position.name, "implementation": cfg.model.attention.implementation,
            "n_layer": cfg.model.n_layer, "n_head": cfg.model.n_head, "block_size": cfg.data.block_size,
            "data": cfg.data.name, "causal": bool(cfg.model.get("causal", True))}


def capture_ids(model: GPT, token_ids_T, tokens: list[str], *, layers: list[int] | None = None,
                heads: list[int] | None = None, info: dict | None = None, token_types=None,
                neurons: bool = True) -> Capture:
    """The weights of the selected layers and heads for one sequence of token ids (and an encoder's segments);
    with `neurons`, their query and key vectors too when they are small enough to travel in the page (<= 2M
    numbers)."""
    _, w_LxHxTxT = attention_weights(model, token_ids_T, token_types)
    layers = list(range(w_LxHxTxT.shape[0])) if layers is None else list(layers)
    heads = list(range(w_LxHxTxT.shape[1])) if heads is None else list(heads)
    qk = None
    if neurons and len(layers) * len(heads) * len(tokens) * 2 * model.head_dim <= 2_000_000:
        qk = query_key_vectors(model, token_ids_T, token_types)[np.ix_(layers, heads)]
    return Capture(weights_LxHxTxT=w_LxHxTxT[np.ix_(layers, heads)], qk=qk,
                   token_ids=np.asarray(token_ids_T, np.int32), tokens=list(tokens), layers=layers,
                   heads=heads, info=dict(info or {}),
                   token_types=None if token_types is None else [int(t) for t in np.asarray(token_types)])


def capture_text(workdir: str, text: str, *, which: str = "latest", step: int | None = None,
                 layers: str | list[int] | None = None, heads: str | list[int] | None = None,
                 text_pair: str | None = None) -> Capture:
    """Loads a run's checkpoint and captures the attention of every (selected) layer and head on `text` (an
    encoder's input gets its special tokens; `text_pair`: its sentence B)."""
    cfg, tokenizer, token_ids, layers, heads = prepare_text(workdir, text, layers=layers, heads=heads)
    token_ids, types = encoder_input(cfg, tokenizer, text, text_pair)
    check_length(cfg, int(token_ids.size))
    model, step = load_model(workdir, which=which, step=step)
    return capture_ids(model, token_ids, token_labels(tokenizer, token_ids), layers=layers, heads=heads,
                       info=run_info(workdir, cfg, which=which, step=step), token_types=types)


# ------------------------------------------------------------------------------------------------------ files


def save_npz(cap: Capture, path: str) -> None:
    """`weights [L, H, T, T]`, `token_ids [T]`, `tokens [T]`, `layers [L]`, `heads [H]`, `info` (JSON)."""
    np.savez_compressed(path, weights=cap.weights_LxHxTxT.astype(np.float32), token_ids=cap.token_ids,
                        tokens=np.asarray(cap.tokens, dtype=str), layers=np.asarray(cap.layers, np.int32),
                        heads=np.asarray(cap.heads, np.int32),
                        info=np.asarray(json.dumps(cap.info, sort_keys=True)))


def load_npz(path: str) -> Capture:
    with np.load(path) as z:
        return Capture(weights_LxHxTxT=z["weights"], token_ids=z["token_ids"],
                       tokens=[str(t) for t in z["tokens"]], layers=z["layers"].tolist(),
                       heads=z["heads"].tolist(), info=json.loads(str(z["info"])))


def save_bertviz(cap: Capture, path: str) -> None:
    """BertViz's input as an .npz: `attention_0 .. attention_{L-1}` each `[1, H, T, T]`, and `tokens`."""
    arrays = {f"attention_{a}": w_HxTxT[None].astype(np.float32)
              for a, w_HxTxT in enumerate(cap.weights_LxHxTxT)}
    np.savez_compressed(path, tokens=np.asarray(cap.tokens, dtype=str), **arrays)


def load_bertviz(path: str) -> tuple[list[np.ndarray], list[str]]:
    """(per-layer `[1, H, T, T]` arrays, tokens) for `bertviz.head_view`:

        attention, tokens = load_bertviz("out/bertviz.npz")
        head_view([torch.from_numpy(a) for a in attention], tokens)
    """
    with np.load(path) as z:
        n = sum(1 for k in z.files if k.startswith("attention_"))
        return [z[f"attention_{a}"] for a in range(n)], [str(t) for t in z["tokens"]]
