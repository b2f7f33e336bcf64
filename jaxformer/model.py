"""A GPT-style decoder, or a BERT-style encoder, as thin Flax NNX modules over the pure functions of `attention.py`
and `positional.py`.

Pre-norm blocks (Radford et al. 2019): x + Attn(N(x)), then x + MLP(N(x)); by default LayerNorm, a 4x GELU MLP, tied
input/output embeddings, optional biases, dropout on the embeddings and on each residual branch. The Llama family's
choices are fields of the same model, looked up in registries (`NORMS`, `MLPS`): `model.norm=rmsnorm`,
`model.mlp=swiglu`, `model.tie_embeddings=False`, `model.head_dim`, `model.qkv_bias`. The modules own parameters and
wire them; the math (attention, every positional encoding) lives in the pure functions they call, and the variant
and implementation are looked up by the config string, never branched on here.

Encoders are fields of the same model, not another class (Devlin et al. 2019, "BERT"): `model.causal=False` drops
the causal mask (bidirectional attention; a key-padding mask `mask_BxT` may be given instead);
`model.norm_placement=post` is Vaswani et al.'s / BERT's post-LayerNorm, x = N(x + Attn(x)), x = N(x + MLP(x)),
with a LayerNorm on the embeddings and none at the end; `model.type_vocab_size` > 0 adds a token-type (segment)
embedding; `model.head_transform` is BERT's masked-LM head (dense -> activation -> LayerNorm before the tied
decoder, plus an output bias); `model.pooler` BERT's tanh(dense) of the first ([CLS]) token (`encode`).

Decoding uses a KV cache: `init_cache` allocates `[B, C, K, d]` keys/values per layer, and `decode` writes the new
tokens' keys/values at the cache index and attends over all C slots with query positions `index + arange(T)` and key
positions `arange(C)`, so the causal rule `key position <= query position` also masks the unfilled slots.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxformer import attention, positional

Cache = dict[str, Any]  # {"index": int32 [], "layers": [{"k": [B,C,K,d], "v": [B,C,K,d]}, ...]}


def _values(tree):
    """The arrays inside a (nested) dict of nnx.Variables."""
    return jax.tree.map(lambda v: v[...], tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _as_params(tree):
    return nnx.data(jax.tree.map(nnx.Param, tree))


def _dropout(x, rate: float, key):
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class Position(nnx.Module):
    """Holds one positional-encoding variant's parameters and exposes its three hooks (or None where it has none)."""

    def __init__(self, position_cfg: ml_collections.ConfigDict, *, n_embd: int, n_head: int, head_dim: int,
                 rngs: nnx.Rngs):
        self.name = position_cfg.name
        self.record = positional.get_positional_encoding(self.name)
        self.cfg = tuple(sorted(position_cfg[self.name].to_dict().items()))  # hashable, static
        self.n_embd, self.n_head = n_embd, n_head
        self.params = _as_params(self.record.init(rngs.params(), dict(self.cfg), n_embd=n_embd, n_head=n_head,
                                                  head_dim=head_dim))

    def embed(self, positions_T):
        if self.record.embed is None:
            return None
        return self.record.embed(_values(self.params), positions_T, dict(self.cfg), n_embd=self.n_embd)

    def rotate_fn(self):
        if self.record.rotate is None:
            return None
        params, cfg = _values(self.params), dict(self.cfg)
        return lambda q, k, q_pos, k_pos: self.record.rotate(params, q, k, q_pos, k_pos, cfg)

    def bias_fn(self):
        if self.record.bias is None:
            return None
        params, cfg, n_head = _values(self.params), dict(self.cfg), self.n_head
        return lambda q_pos, k_pos: self.record.bias(params, q_pos, k_pos, cfg, n_head=n_head)


class Attention(nnx.Module):
    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs, dot_general=jax.lax.dot_general,
                 vmap=jax.vmap):
        self.dot_general, self.vmap = dot_general, vmap
        self.n_head, self.n_kv_head = cfg.n_head, cfg.n_kv_head or cfg.n_head
        self.implementation, self.block_size = cfg.attention.implementation, cfg.attention.block_size
        self.causal = cfg.get("causal", True)
        self.dtype = jnp.dtype(cfg.dtype)
        params = attention.init_attention_params(
            rngs.params(), n_embd=cfg.n_embd, n_head=cfg.n_head, n_kv_head=self.n_kv_head,
            head_dim=head_dim(cfg), use_bias=cfg.bias, dtype=jnp.dtype(cfg.param_dtype),
            out_std=0.02 / math.sqrt(2 * cfg.n_layer))
        if cfg.qkv_bias and not cfg.bias:  # Qwen2: biases on q, k, v only
            params["qkv"]["bias"] = jnp.zeros(params["qkv"]["kernel"].shape[-1:], jnp.dtype(cfg.param_dtype))
        self.params = _as_params(params)

    def __call__(self, x_BxTxD, *, positions_T, rotate, bias_fn, layer_cache=None, cache_index=None,
                 return_weights=False, mask_BxT=None):
        params = jax.tree.map(lambda a: a.astype(self.dtype), _values(self.params))
        q_BxTxHxd, k_BxTxKxd, v_BxTxKxd = attention.qkv_projection(
            params, x_BxTxD, n_head=self.n_head, n_kv_head=self.n_kv_head, dot_general=self.dot_general)
        if rotate is not None:
            q_BxTxHxd, k_BxTxKxd = rotate(q_BxTxHxd, k_BxTxKxd, positions_T, positions_T)
        k_positions = positions_T
        if layer_cache is not None:
            k_BxSxKxd = jax.lax.dynamic_update_slice_in_dim(layer_cache["k"], k_BxTxKxd.astype(layer_cache["k"].dtype),
                                                            cache_index, axis=1)
            v_BxSxKxd = jax.lax.dynamic_update_slice_in_dim(layer_cache["v"], v_BxTxKxd.astype(layer_cache["v"].dtype),
                                                            cache_index, axis=1)
            layer_cache = {"k": k_BxSxKxd, "v": v_BxSxKxd}
            k_BxTxKxd, v_BxTxKxd = k_BxSxKxd.astype(self.dtype), v_BxSxKxd.astype(self.dtype)
            k_positions = jnp.arange(k_BxSxKxd.shape[1], dtype=jnp.int32)
        out = attention.multi_head_attention(
            q_BxTxHxd, k_BxTxKxd, v_BxTxKxd, causal=self.causal, q_positions=positions_T, k_positions=k_positions,
            mask=None if mask_BxT is None else mask_BxT[:, None, None, :],  # padded keys get no weight
            bias_fn=bias_fn, block_size=self.block_size, return_weights=return_weights, dot_general=self.dot_general,
            vmap=self.vmap,
            # Only the reference path forms the weights; the same parameters give the same function.
            implementation="reference" if return_weights else self.implementation)
        out_BxTxHxd, weights_BxHxTxS = out if return_weights else (out, None)
        y_BxTxD = attention.output_projection(params, out_BxTxHxd, dot_general=self.dot_general)
        return y_BxTxD, layer_cache, weights_BxHxTxS


def head_dim(cfg: ml_collections.ConfigDict) -> int:
    """Head width d: `model.head_dim`, or n_embd // n_head when 0 (Llama-family models may set d·H != D)."""
    return cfg.head_dim or cfg.n_embd // cfg.n_head


def mlp_hidden(cfg: ml_collections.ConfigDict) -> int:
    """Hidden width of the MLP: `model.mlp_hidden`, or 4·n_embd when 0."""
    return cfg.mlp_hidden or 4 * cfg.n_embd


def swiglu(gate, up):
    """SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer"): Swish(x·W_gate) ⊙ (x·W_up), Swish = x·σ(x)."""
    return jax.nn.silu(gate) * up


# model.mlp -> the activation of the hidden layer; "swiglu" also has a gate projection. GELU (Hendrycks & Gimpel,
# 2016): x·Φ(x), exact or its tanh approximation. A machine's tuned form of one is injected at construction
# (`activations=`, from `platform.model_ops()`), never chosen here.
MLPS = {"gelu": functools.partial(jax.nn.gelu, approximate=False),
        "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True), "swiglu": None}


class MLP(nnx.Module):
    """x·W_fc -> activation -> ·W_proj; for `swiglu`, swiglu(x·W_gate, x·W_fc)·W_proj (Llama's gate/up/down)."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs, dot_general=jax.lax.dot_general,
                 activations=None):
        if cfg.mlp not in MLPS:
            raise ValueError(f"model.mlp={cfg.mlp!r}; choose one of: {', '.join(MLPS)}")
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        init = nnx.initializers.normal(0.02)
        proj_init = nnx.initializers.normal(0.02 / math.sqrt(2 * cfg.n_layer))
        hidden = mlp_hidden(cfg)
        linear = dict(use_bias=cfg.bias, dtype=dtype, param_dtype=param_dtype, dot_general=dot_general,
                      rngs=rngs)
        self.fc = nnx.Linear(cfg.n_embd, hidden, kernel_init=init, **linear)
        self.proj = nnx.Linear(hidden, cfg.n_embd, kernel_init=proj_init, **linear)
        # Made after fc and proj, so the default model draws the same parameters as before the field existed.
        self.gate = nnx.Linear(cfg.n_embd, hidden, kernel_init=init, **linear) if cfg.mlp == "swiglu" else None
        # model.gelu_approximate predates model.mlp: with mlp=gelu it still selects the tanh form.
        self.activation = "gelu_tanh" if cfg.mlp == "gelu" and cfg.gelu_approximate else cfg.mlp
        self.activation_fn = {**MLPS, **(activations or {})}[self.activation]

    def __call__(self, x_BxTxD):
        if self.gate is not None:
            h_BxTxF = swiglu(self.gate(x_BxTxD), self.fc(x_BxTxD))
        else:
            h_BxTxF = self.activation_fn(self.fc(x_BxTxD))
        return self.proj(h_BxTxF)


def _layernorm(cfg, dim, rngs):
    return nnx.LayerNorm(dim, epsilon=cfg.norm_eps, use_bias=cfg.bias, dtype=jnp.dtype(cfg.dtype),
                         param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)


def _rmsnorm(cfg, dim, rngs):
    # RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x²) + eps) · g, no centring and no bias.
    return nnx.RMSNorm(dim, epsilon=cfg.norm_eps, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                       rngs=rngs)


NORMS = {"layernorm": _layernorm, "rmsnorm": _rmsnorm}  # model.norm -> constructor(cfg, dim, rngs)


def norm(cfg: ml_collections.ConfigDict, dim: int, rngs: nnx.Rngs) -> nnx.Module:
    if cfg.norm not in NORMS:
        raise ValueError(f"model.norm={cfg.norm!r}; choose one of: {', '.join(NORMS)}")
    return NORMS[cfg.norm](cfg, dim, rngs)


class Block(nnx.Module):
    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs, dot_general=jax.lax.dot_general,
                 activations=None, vmap=jax.vmap):
        self.ln1 = norm(cfg, cfg.n_embd, rngs)
        self.attn = Attention(cfg, rngs=rngs, dot_general=dot_general, vmap=vmap)
        self.ln2 = norm(cfg, cfg.n_embd, rngs)
        self.mlp = MLP(cfg, rngs=rngs, dot_general=dot_general, activations=activations)
        self.dropout = cfg.dropout
        self.post_norm = cfg.get("norm_placement", "pre") == "post"

    def __call__(self, x_BxTxD, *, positions_T, rotate, bias_fn, layer_cache=None, cache_index=None,
                 dropout_key=None, return_weights=False, mask_BxT=None):
        keys = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
        attend = functools.partial(self.attn, positions_T=positions_T, rotate=rotate, bias_fn=bias_fn,
                                   layer_cache=layer_cache, cache_index=cache_index, return_weights=return_weights,
                                   mask_BxT=mask_BxT)
        if self.post_norm:  # Vaswani et al. 2017 / BERT: the norm after each residual sum
            y, layer_cache, weights = attend(x_BxTxD)
            x_BxTxD = self.ln1(x_BxTxD + _dropout(y, self.dropout, keys[0]))
            x_BxTxD = self.ln2(x_BxTxD + _dropout(self.mlp(x_BxTxD), self.dropout, keys[1]))
            return x_BxTxD, layer_cache, weights
        y, layer_cache, weights = attend(self.ln1(x_BxTxD))
        x_BxTxD = x_BxTxD + _dropout(y, self.dropout, keys[0])
        x_BxTxD = x_BxTxD + _dropout(self.mlp(self.ln2(x_BxTxD)), self.dropout, keys[1])
        return x_BxTxD, layer_cache, weights


class GPT(nnx.Module):
    """Decoder-only transformer; `model_cfg` is the `model` section of a resolved config.

    `dot_general` (`lax.dot_general`'s signature) computes the dense layers' and attention's matrix products,
    `activations` ({model.mlp name: function}) replaces entries of `MLPS`, and `vmap` (`jax.vmap`'s) maps the
    attention head function over heads and batch: the machine's tuned forms are injected here
    (`loader.build_model` passes `matmul.default_dot_general()` and `platform.model_ops()`), never read inside the
    forward pass. Same function, same parameters, whichever is given.
    """

    def __init__(self, model_cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs, dot_general=jax.lax.dot_general,
                 activations=None, vmap=jax.vmap):
        cfg = model_cfg
        if cfg.vocab_size <= 0:
            raise ValueError(f"model.vocab_size={cfg.vocab_size}; resolve the config with the dataset's vocabulary "
                             "first")
        self.dtype = jnp.dtype(cfg.dtype)
        self.n_layer, self.n_head, self.n_kv_head = cfg.n_layer, cfg.n_head, cfg.n_kv_head or cfg.n_head
        self.head_dim = head_dim(cfg)
        self.dropout, self.remat = cfg.dropout, cfg.remat
        self.wte = nnx.Embed(cfg.vocab_size, cfg.n_embd, embedding_init=nnx.initializers.normal(0.02),
                             dtype=self.dtype, param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.position = Position(cfg.position, n_embd=cfg.n_embd, n_head=cfg.n_head, head_dim=self.head_dim,
                                 rngs=rngs)
        # Vaswani et al. 2017 (§3.4) multiply the token embeddings by sqrt(D); GPT-2 does not (1.0). The positional
        # variant may ask for its own factor (sinusoidal's sqrt_d scheme), on top of the model-wide one.
        multiplier = cfg.get("embed_multiplier", 1.0)
        self.embed_multiplier = (math.sqrt(cfg.n_embd) if multiplier == 0 else float(multiplier)) * float(
            self.position.record.token_scale(dict(self.position.cfg), n_embd=cfg.n_embd))
        self.blocks = nnx.List([Block(cfg, rngs=rngs, dot_general=dot_general, activations=activations, vmap=vmap)
                                for _ in range(cfg.n_layer)])
        post = cfg.get("norm_placement", "pre") == "post"
        self.ln_f = None if post else norm(cfg, cfg.n_embd, rngs)  # post-norm blocks end normalised already
        # An untied output head [D, V] (Llama); tied (GPT-2) reuses the token table: logits = x·Eᵀ.
        self.lm_head = (None if cfg.tie_embeddings else
                        nnx.Linear(cfg.n_embd, cfg.vocab_size, use_bias=False,
                                   kernel_init=nnx.initializers.normal(0.02), dtype=self.dtype,
                                   param_dtype=jnp.dtype(cfg.param_dtype), dot_general=dot_general,
                                   rngs=rngs))
        # The encoder's parts, made after everything above so that a decoder draws the same parameters as before.
        self.causal = cfg.get("causal", True)
        dense = dict(dtype=self.dtype, param_dtype=jnp.dtype(cfg.param_dtype), dot_general=dot_general, rngs=rngs)
        n_types = cfg.get("type_vocab_size", 0)
        self.wtt = (nnx.Embed(n_types, cfg.n_embd, embedding_init=nnx.initializers.normal(0.02), dtype=self.dtype,
                              param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs) if n_types else None)
        self.ln_embed = norm(cfg, cfg.n_embd, rngs) if post else None
        if cfg.get("head_transform", False):  # BERT's MLM head: x -> N(act(x·W + b)) -> x·Eᵀ + b_out
            self.head_dense = nnx.Linear(cfg.n_embd, cfg.n_embd, kernel_init=nnx.initializers.normal(0.02),
                                         **dense)
            self.head_norm = norm(cfg, cfg.n_embd, rngs)
            self.head_bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.dtype(cfg.param_dtype)))
            self.head_activation = {**MLPS, **(activations or {})}[
                "gelu_tanh" if cfg.mlp == "gelu" and cfg.gelu_approximate else cfg.mlp]
        else:
            self.head_dense = self.head_norm = self.head_bias = self.head_activation = None
        self.pooler = (nnx.Linear(cfg.n_embd, cfg.n_embd, kernel_init=nnx.initializers.normal(0.02), **dense)
                       if cfg.get("pooler", False) else None)

    def __call__(self, tokens_BxT, *, positions_T=None, dropout_key=None, token_types_BxT=None, mask_BxT=None):
        """Logits `[B, T, V]` (float32) for a batch of token ids; `dropout_key` turns dropout on.

        Encoders: `token_types_BxT` (segment ids, 0 when None) and `mask_BxT` (True = a real token; padded keys
        get no attention weight)."""
        logits_BxTxV, _, _ = self._forward(tokens_BxT, positions_T=positions_T, dropout_key=dropout_key,
                                           token_types_BxT=token_types_BxT, mask_BxT=mask_BxT)
        return logits_BxTxV

    def attention_weights(self, tokens_BxT, *, positions_T=None, token_types_BxT=None, mask_BxT=None,
                          logits=True):
        """Logits (None with `logits=False`, which skips the output head) and the attention weights of every layer,
        `[L, B, H, T, T]` (through the reference path)."""
        if not logits:
            _, weights, _ = self._forward(tokens_BxT, positions_T=positions_T, return_weights=True,
                                          token_types_BxT=token_types_BxT, mask_BxT=mask_BxT, return_hidden=True)
            return None, jnp.stack(weights)
        logits_BxTxV, _, weights = self._forward(tokens_BxT, positions_T=positions_T, return_weights=True,
                                                 token_types_BxT=token_types_BxT, mask_BxT=mask_BxT)
        return logits_BxTxV, jnp.stack(weights)

    def encode(self, tokens_BxT, *, token_types_BxT=None, mask_BxT=None, positions_T=None):
        """(hidden states `[L + 1, B, T, D]`: the embeddings' output then each block's, pooled `[B, D]` or None):
        BertModel's `hidden_states` and `pooler_output` (tanh(W·h_[CLS] + b), Devlin et al. 2019 §3)."""
        _, _, hidden = self._forward(tokens_BxT, positions_T=positions_T, token_types_BxT=token_types_BxT,
                                     mask_BxT=mask_BxT, return_hidden=True)
        hidden_LxBxTxD = jnp.stack(hidden)
        pooled_BxD = None if self.pooler is None else jnp.tanh(self.pooler(hidden_LxBxTxD[-1, :, 0]))
        return hidden_LxBxTxD, pooled_BxD

    def init_cache(self, batch_size: int, capacity: int, dtype=None) -> Cache:
        shape = (batch_size, capacity, self.n_kv_head, self.head_dim)
        dtype = dtype or self.dtype
        return {"index": jnp.zeros((), jnp.int32),
                "layers": [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(self.n_layer)]}

    def decode(self, tokens_BxT, cache: Cache):
        """Runs T new tokens at positions `cache.index + arange(T)`; returns their logits and the updated cache."""
        if not self.causal:
            raise ValueError("model.causal=False: an encoder sees the whole sequence at once and has no KV-cache "
                             "decoding; use `jaxformer fill-mask` (or call the model on the full sequence)")
        logits_BxTxV, cache, _ = self._forward(tokens_BxT, cache=cache)
        return logits_BxTxV, cache

    def _forward(self, tokens_BxT, *, positions_T=None, cache=None, dropout_key=None, return_weights=False,
                 token_types_BxT=None, mask_BxT=None, return_hidden=False):
        T = tokens_BxT.shape[1]
        index = cache["index"] if cache is not None else 0
        if positions_T is None:
            positions_T = index + jnp.arange(T, dtype=jnp.int32)
        x_BxTxD = self.wte(tokens_BxT)
        if self.embed_multiplier != 1.0:  # the input side only: a tied output head reads the table as it is
            x_BxTxD = x_BxTxD * jnp.asarray(self.embed_multiplier, x_BxTxD.dtype)
        embedding_TxD = self.position.embed(positions_T)
        if embedding_TxD is not None:
            x_BxTxD = x_BxTxD + embedding_TxD.astype(x_BxTxD.dtype)[None]
        if self.wtt is not None:
            types_BxT = jnp.zeros_like(tokens_BxT) if token_types_BxT is None else token_types_BxT
            x_BxTxD = x_BxTxD + self.wtt(types_BxT)
        if self.ln_embed is not None:
            x_BxTxD = self.ln_embed(x_BxTxD)
        keys = (jax.random.split(dropout_key, self.n_layer + 1) if dropout_key is not None
                else [None] * (self.n_layer + 1))
        x_BxTxD = _dropout(x_BxTxD, self.dropout, keys[-1])
        rotate, bias_fn = self.position.rotate_fn(), self.position.bias_fn()
        new_layers, all_weights, hidden = [], [], [x_BxTxD]
        for i, block in enumerate(self.blocks):
            layer_cache = cache["layers"][i] if cache is not None else None
            call = nnx.remat(Block.__call__, static_argnums=()) if self.remat else Block.__call__
            x_BxTxD, layer_cache, weights = call(
                block, x_BxTxD, positions_T=positions_T, rotate=rotate, bias_fn=bias_fn, layer_cache=layer_cache,
                cache_index=index, dropout_key=keys[i], return_weights=return_weights, mask_BxT=mask_BxT)
            new_layers.append(layer_cache)
            all_weights.append(weights)
            hidden.append(x_BxTxD)
        if return_hidden:  # (no logits, the weights, the hidden states)
            return None, all_weights, hidden
        if self.ln_f is not None:
            x_BxTxD = self.ln_f(x_BxTxD)
        B, T, D = x_BxTxD.shape
        if self.head_dense is not None:
            x_BxTxD = self.head_norm(self.head_activation(self.head_dense(x_BxTxD)))
        head = self.wte.attend if self.lm_head is None else self.lm_head
        logits_BxTxV = head(x_BxTxD.reshape(B * T, D)).reshape(B, T, -1).astype(jnp.float32)
        if self.head_bias is not None:
            logits_BxTxV = logits_BxTxV + self.head_bias[...].astype(jnp.float32)
        new_cache = {"index": index + T, "layers": new_layers} if cache is not None else None
        return logits_BxTxV, new_cache, all_weights


def count_params(model: nnx.Module, *, non_embedding: bool = False) -> int:
    """Parameter count; `non_embedding` leaves out the token table and absolute position tables (nanoGPT's N)."""
    state = nnx.state(model, nnx.Param)
    total = sum(x.size for x in jax.tree.leaves(state))
    if non_embedding:
        total -= model.wte.embedding[...].size
        total -= 0 if model.wtt is None else model.wtt.embedding[...].size
        total -= sum(x.size for x in jax.tree.leaves(nnx.state(model.position, nnx.Param))
                     if model.position.record.embed is not None)
    return int(total)
