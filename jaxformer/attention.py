"""Scaled dot-product attention: one head, many heads, grouped-query; three implementations of one function.

    Attention(Q, K, V) = softmax(Q·Kᵀ/√d_k + bias, masked) · V                  (Vaswani et al., 2017)

One head is the unit (`scaled_dot_product_attention`); multi-head attention is that function under
`jax.vmap` over heads and batch. Grouped-query attention (Ainslie et al., 2023) lets K key/value heads serve
H query heads, query head h reading kv head h // G with G = H // K. `multi_head_attention(implementation=)`
picks one of three implementations of the same function (the registry `IMPLEMENTATIONS`):

  reference  the vmapped single-head function; materialises the [T, S] weights and can return them;
  chunked    online softmax over key blocks (Rabe & Staats, 2021; Dao et al., 2022; Dao, 2023): O(T·block)
             memory in the forward and, through a custom VJP that recomputes each block from the saved output
             and log-sum-exp (the FlashAttention-2 backward), in the backward as well;
  fused      `jax.nn.dot_product_attention`: XLA, or cuDNN flash attention on a GPU where it takes the inputs.

Shapes are in names: B batch, T queries, S keys, H query heads, K kv heads, G = H // K, d head width,
dv value width, D model width.
"""

import functools
import logging
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

log = logging.getLogger(__name__)

# Masked logits get a finite large negative, not -inf: a row whose keys are all masked would otherwise give
# exp(-inf - -inf) = NaN, which reaches the gradient even through jnp.where (the unselected branch is still
# differentiated, 0 · NaN = NaN). Such a row gets a finite softmax, zeroed explicitly; in any other row a
# masked entry is exp(MASK_VALUE - row max) = 0 exactly. 0.7 · max(float32) keeps `logit - row max` finite.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

_F32 = jnp.float32


def _scale(d, scale):
    return 1.0 / math.sqrt(d) if scale is None else scale


def scaled_dot_product_attention(q_Txd, k_Sxd, v_Sxdv, *, mask=None, bias=None, scale=None,
                                 return_weights=False, dot_general=lax.dot_general):
    """One head: softmax(q·kᵀ·scale + bias, masked)·v, `scale` = 1/√d by default (Vaswani et al., 2017).

    `mask` bool [T, S], True where query t may attend key s; `bias` float [T, S], added to the scaled logits.
    A query with every key masked gets zero weights and a zero output. Returns out [T, dv] in v's dtype, and
    the float32 weights [T, S] when `return_weights`. `dot_general` (`lax.dot_general`'s signature) computes
    the two products: a machine's own matmul can be passed in (the model's construction does), the maths is
    the same.
    """
    # Logits and softmax in float32 whatever the input dtype: exp of bfloat16 logits loses the small weights.
    logits_TxS = dot_general(q_Txd, k_Sxd, (((q_Txd.ndim - 1,), (1,)), ((), ())), preferred_element_type=_F32)
    logits_TxS = logits_TxS * _scale(q_Txd.shape[-1], scale)
    if bias is not None:
        logits_TxS = logits_TxS + bias.astype(_F32)
    if mask is not None:
        logits_TxS = jnp.where(mask, logits_TxS, MASK_VALUE)
    # Subtracting the row maximum changes nothing mathematically and keeps exp from overflowing.
    exp_TxS = jnp.exp(logits_TxS - lax.stop_gradient(logits_TxS.max(axis=-1, keepdims=True)))
    # A row with no key at all is zeroed through its normaliser: no extra pass over [T, S] (XLA keeps one
    # [T, S] array fewer than with a jnp.where on the weights).
    live_Tx1 = True if mask is None else jnp.any(mask, axis=-1, keepdims=True)
    weights_TxS = exp_TxS * (live_Tx1 / exp_TxS.sum(axis=-1, keepdims=True))
    out_Txdv = dot_general(weights_TxS, v_Sxdv.astype(_F32), (((weights_TxS.ndim - 1,), (0,)), ((), ())))
    out_Txdv = out_Txdv.astype(v_Sxdv.dtype)
    return (out_Txdv, weights_TxS) if return_weights else out_Txdv


# ----------------------------------------------------------------------------------------------------- masks

def causal_mask(T, S=None, *, offset=0):
    """bool [T, S]: query i, at absolute position offset + i, may attend keys j <= offset + i."""
    S = T if S is None else S
    return jnp.arange(S)[None, :] <= offset + jnp.arange(T)[:, None]


def padding_mask(lengths_B, S, *, T=None):
    """bool [B, 1, T or 1, S]: keys j < lengths[b] may be attended (over all heads, and queries if T=None)."""
    mask_BxS = jnp.arange(S)[None, :] < jnp.asarray(lengths_B)[:, None]
    mask_Bx1x1xS = mask_BxS[:, None, None, :]
    return mask_Bx1x1xS if T is None else jnp.broadcast_to(mask_Bx1x1xS, (mask_BxS.shape[0], 1, T, S))


def sliding_window_mask(T, S=None, *, window, offset=0):
    """bool [T, S]: causal, and at most `window` - 1 positions back (window=1: each query sees itself)."""
    S = T if S is None else S
    back_TxS = offset + jnp.arange(T)[:, None] - jnp.arange(S)[None, :]
    return (back_TxS >= 0) & (back_TxS < window)


# ------------------------------------------------------------------------------------- multi-head attention

def _positions(q_positions, k_positions, T, S):
    """Defaults: keys at 0..S-1, queries the last T of them (decoding after a cache of S - T)."""
    k_pos = jnp.arange(S, dtype=jnp.int32) if k_positions is None else jnp.asarray(k_positions, jnp.int32)
    if q_positions is None:
        return S - T + jnp.arange(T, dtype=jnp.int32), k_pos
    return jnp.asarray(q_positions, jnp.int32), k_pos


def _as_rank4(x, name, B, H, T, S):
    """[T,S] | [H,T,S] | [B,H,T,S] (each dim size 1 or full) -> rank 4, or a ValueError saying what fits."""
    if x is None:
        return None
    x = jnp.asarray(x)
    if x.ndim in (2, 3, 4):
        x = x.reshape((1,) * (4 - x.ndim) + x.shape)
        if all(n in (1, full) for n, full in zip(x.shape, (B, H, T, S), strict=True)):
            return x
    raise ValueError(f"{name} has shape {x.shape}; give [T,S], [H,T,S] or [B,H,T,S] (size 1 broadcasts) "
                     f"with B={B}, H={H}, T={T}, S={S}")


def _dense_mask_and_bias(mask, bias, bias_fn, causal, q_pos, k_pos, H):
    """Folds causal and bias_fn into full-size rank-4 mask/bias arrays (reference and fused take arrays)."""
    if causal:
        causal_1x1xTxS = (k_pos[None, :] <= q_pos[:, None])[None, None]
        mask = causal_1x1xTxS if mask is None else mask & causal_1x1xTxS
    if bias_fn is not None:
        fn_bias = _as_rank4(bias_fn(q_pos, k_pos), "bias_fn(q_positions, k_positions)", 1, H, *q_pos.shape,
                            *k_pos.shape)
        bias = fn_bias if bias is None else bias + fn_bias
    T_S = (q_pos.shape[0], k_pos.shape[0])
    full = lambda x: None if x is None else jnp.broadcast_to(x, x.shape[:2] + T_S)
    return full(mask), full(bias)


def _group_heads(x, K, G):
    """[B', H or 1, T', S'] -> [B', K or 1, G or 1, T', S'], matching queries grouped as [.., K, G, ..]."""
    if x is None:
        return None
    return x.reshape(x.shape[:1] + ((K, G) if x.shape[1] == K * G else (1, 1)) + x.shape[2:])


def _no_weights(name):
    return ValueError(f"implementation={name!r} cannot return attention weights; "
                      "use implementation='reference'")


def _reference(q_BxTxHxd, k_BxSxKxd, v_BxSxKxdv, *, mask, bias, bias_fn, causal, q_positions, k_positions,
               scale, block_size, return_weights, dot_general, vmap):
    del block_size
    (B, T, H, d), (S, K), dv = q_BxTxHxd.shape, k_BxSxKxd.shape[1:3], v_BxSxKxdv.shape[-1]
    G = H // K
    q_pos, k_pos = _positions(q_positions, k_positions, T, S)
    mask, bias = _dense_mask_and_bias(mask, bias, bias_fn, causal, q_pos, k_pos, H)

    def batch_dims_first(x):  # drops the size-1 (broadcast) B/K/G dims; their vmap axis is None
        if x is None:
            return None, (None,) * 3
        axes = tuple(None if n == 1 else 0 for n in x.shape[:3])
        return x.reshape(tuple(n for n in x.shape[:3] if n != 1) + x.shape[3:]), axes

    mask, (mb, mk, mg) = batch_dims_first(_group_heads(mask, K, G))
    bias, (bb, bk, bg) = batch_dims_first(_group_heads(bias, K, G))
    head = functools.partial(scaled_dot_product_attention, scale=scale, return_weights=return_weights,
                             dot_general=dot_general)
    # Query heads grouped [K, G]: the G queries of a group share their k/v (in_axes None); GQA copies nothing.
    out_axes = lambda axis: (axis, 0) if return_weights else axis
    one_head = lambda q, k, v, m, b: head(q, k, v, mask=m, bias=b)
    over_g = vmap(one_head, (1, None, None, mg, bg), out_axes(1))
    over_k = vmap(over_g, (1, 1, 1, mk, bk), out_axes(1))
    over_b = vmap(over_k, (0, 0, 0, mb, bb), out_axes(0))
    out = over_b(q_BxTxHxd.reshape(B, T, K, G, d), k_BxSxKxd, v_BxSxKxdv, mask, bias)
    if not return_weights:
        return out.reshape(B, T, H, dv)
    out_BxTxKxGxdv, weights_BxKxGxTxS = out
    return out_BxTxKxGxdv.reshape(B, T, H, dv), weights_BxKxGxTxS.reshape(B, H, T, S)


def _chunked(q_BxTxHxd, k_BxSxKxd, v_BxSxKxdv, *, mask, bias, bias_fn, causal, q_positions, k_positions,
             scale, block_size, return_weights, dot_general, vmap):
    """Key blocks of `block_size`, all queries at once: each step holds [B, H, T, block] (queries are not
    blocked, as a scan over them would serialise work that XLA runs as one matmul)."""
    if return_weights:
        raise _no_weights("chunked")
    del dot_general, vmap  # its block products are einsums inside the custom VJP: XLA's dot; no vmap of heads
    (B, T, H, d), (S, K), dv = q_BxTxHxd.shape, k_BxSxKxd.shape[1:3], v_BxSxKxdv.shape[-1]
    G = H // K
    q_pos, k_pos = _positions(q_positions, k_positions, T, S)
    block = min(block_size, S)
    pad = -S % block  # S is padded to whole blocks; the padding keys are masked through `key_valid`

    def pad_keys(x, axis, value=0):
        if x is None:
            return None
        x = jnp.broadcast_to(x, x.shape[:axis] + (S,) + x.shape[axis + 1:])
        return jnp.pad(x, [(0, pad if a == axis else 0) for a in range(x.ndim)], constant_values=value)

    key_valid_S = pad_keys(jnp.ones((S,), bool), 0, False)
    k_pos = jnp.pad(k_pos, (0, pad), mode="edge")  # finite positions for bias_fn; the keys are masked anyway
    converted_bias_fn, consts = None, ()
    if bias_fn is not None:  # arrays it closes over (learned tables, slopes) become differentiable inputs
        converted_bias_fn, consts = jax.closure_convert(bias_fn, q_pos, k_pos[:block])
        consts = tuple(consts)
    q_BxKxGxTxd = q_BxTxHxd.reshape(B, T, K, G, d).transpose(0, 2, 3, 1, 4)
    kv_layout = lambda x: pad_keys(x.transpose(0, 2, 1, 3), 2)  # [B, S, K, _] -> [B, K, S + pad, _]
    static = _Static(converted_bias_fn, causal, scale, block, H)
    mask_BxKxGxTxS = pad_keys(_group_heads(mask, K, G), 4, False)
    bias_BxKxGxTxS = pad_keys(_group_heads(bias, K, G), 4)
    out_BxKxGxTxdv = _flash(static, q_BxKxGxTxd, kv_layout(k_BxSxKxd), kv_layout(v_BxSxKxdv), mask_BxKxGxTxS,
                            bias_BxKxGxTxS, q_pos, k_pos, key_valid_S, consts)
    return out_BxKxGxTxdv.transpose(0, 3, 1, 2, 4).reshape(B, T, H, dv).astype(v_BxSxKxdv.dtype)


class _Static(NamedTuple):
    bias_fn: Callable | None  # closure-converted: bias_fn(q_pos, k_pos, *consts)
    causal: bool
    scale: float
    block: int
    H: int


def _block_logits(static, q, k, mask, bias, q_pos, k_pos, key_valid, consts, j):
    """Masked float32 logits of key block j, [B, K, G, T, block], and where they are allowed."""
    in_block = lambda x, axis: lax.dynamic_slice_in_dim(x, j * static.block, static.block, axis)
    k_pos_j = in_block(k_pos, 0)
    s = jnp.einsum("bkgtd,bksd->bkgts", q, in_block(k, 2), preferred_element_type=_F32) * static.scale
    if bias is not None:
        s = s + in_block(bias, 4).astype(_F32)
    if static.bias_fn is not None:
        bias_Hxtxs = static.bias_fn(q_pos, k_pos_j, *consts)
        if bias_Hxtxs.shape[0] not in (1, static.H):
            raise ValueError(f"bias_fn returned shape {bias_Hxtxs.shape}; expected [H={static.H} or 1, t, s]")
        s = s + _group_heads(bias_Hxtxs[None], q.shape[1], q.shape[2]).astype(_F32)
    allowed = in_block(key_valid, 0)
    if static.causal:
        allowed = allowed & (k_pos_j[None, :] <= q_pos[:, None])
    if mask is not None:
        allowed = allowed & in_block(mask, 4)
    return jnp.where(allowed, s, MASK_VALUE), allowed


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(static, q, k, v, mask, bias, q_pos, k_pos, key_valid, consts):
    return _flash_forward(static, q, k, v, mask, bias, q_pos, k_pos, key_valid, consts)[0]


def _flash_forward(static, q, k, v, mask, bias, q_pos, k_pos, key_valid, consts):
    """Online softmax: running max m, normaliser l and unnormalised output per query, rescaled per block."""
    (B, K, G, T, _), dv, block = q.shape, v.shape[-1], static.block
    logits = functools.partial(_block_logits, static, q, k, mask, bias, q_pos, k_pos, key_valid, consts)

    def step(carry, j):
        m_BxKxGxT, l_BxKxGxT, acc_BxKxGxTxdv = carry
        s, allowed = logits(j)
        m_new = jnp.maximum(m_BxKxGxT, s.max(axis=-1))
        # Zeroing masked entries also covers a row masked so far: its max is MASK_VALUE, exp(s - max) = 1.
        p = jnp.where(allowed, jnp.exp(s - m_new[..., None]), 0.0)
        alpha = jnp.exp(m_BxKxGxT - m_new)
        v_j = lax.dynamic_slice_in_dim(v, j * block, block, 2).astype(_F32)
        acc = alpha[..., None] * acc_BxKxGxTxdv + jnp.einsum("bkgts,bksv->bkgtv", p, v_j)
        return (m_new, alpha * l_BxKxGxT + p.sum(axis=-1), acc), None

    init = (jnp.full((B, K, G, T), MASK_VALUE, _F32), jnp.zeros((B, K, G, T), _F32),
            jnp.zeros((B, K, G, T, dv), _F32))
    (m, l, acc), _ = lax.scan(step, init, jnp.arange(k.shape[2] // block))
    live = l > 0  # False only for a query with every key masked: zero output, as in the reference
    l_safe = jnp.where(live, l, 1.0)
    out_BxKxGxTxdv = jnp.where(live[..., None], acc / l_safe[..., None], 0.0)
    lse_BxKxGxT = jnp.where(live, m + jnp.log(l_safe), 0.0)
    residuals = (q, k, v, mask, bias, q_pos, k_pos, key_valid, consts, out_BxKxGxTxdv, lse_BxKxGxT)
    return out_BxKxGxTxdv, residuals


def _sum_to(x, shape):
    """Sums x over the axes where `shape` has size 1 (the transpose of broadcasting)."""
    return x.sum(axis=tuple(a for a, n in enumerate(shape) if n == 1 and x.shape[a] != 1), keepdims=True)


def _flash_backward(static, residuals, dout_BxKxGxTxdv):
    """FlashAttention-2 backward: per key block, rebuild p = exp(s - lse) and push dout through it."""
    q, k, v, mask, bias, q_pos, k_pos, key_valid, consts, out, lse = residuals
    block, scale = static.block, static.scale
    logits = functools.partial(_block_logits, static, q, k, mask, bias, q_pos, k_pos, key_valid, consts)
    q32, k32, v32 = q.astype(_F32), k.astype(_F32), v.astype(_F32)
    delta_BxKxGxT = jnp.sum(dout_BxKxGxTxdv * out, axis=-1)  # rowsum(dP ∘ P) = rowsum(dO ∘ O)

    def step(carry, j):
        dq, dbias, dconsts = carry
        in_block = lambda x, axis: lax.dynamic_slice_in_dim(x, j * block, block, axis)
        s, allowed = logits(j)
        p = jnp.where(allowed, jnp.exp(s - lse[..., None]), 0.0)
        dv_j = jnp.einsum("bkgts,bkgtv->bksv", p, dout_BxKxGxTxdv)
        dp = jnp.einsum("bkgtv,bksv->bkgts", dout_BxKxGxTxdv, in_block(v32, 2))
        ds = p * (dp - delta_BxKxGxT[..., None])  # d loss / d (scaled logits + bias)
        dq = dq + jnp.einsum("bkgts,bksd->bkgtd", ds, in_block(k32, 2)) * scale
        dk_j = jnp.einsum("bkgts,bkgtd->bksd", ds, q32) * scale
        if bias is not None:
            dbias_j = _sum_to(ds, bias.shape[:4] + (block,)).astype(bias.dtype)
            dbias = lax.dynamic_update_slice_in_dim(dbias, dbias_j, j * block, 4)
        if static.bias_fn is not None:
            ds_Hxtxs = ds.sum(axis=0).reshape(static.H, *ds.shape[3:])
            fn_bias, vjp = jax.vjp(lambda *c: static.bias_fn(q_pos, in_block(k_pos, 0), *c), *consts)
            dconsts_j = vjp(_sum_to(ds_Hxtxs, fn_bias.shape).astype(fn_bias.dtype))
            dconsts = jax.tree.map(jnp.add, dconsts, dconsts_j)
        return (dq, dbias, dconsts), (dk_j, dv_j)

    init = (jnp.zeros_like(q32), None if bias is None else jnp.zeros_like(bias),
            jax.tree.map(jnp.zeros_like, consts))
    blocks = jnp.arange(k.shape[2] // block)
    (dq, dbias, dconsts), (dk_NxBxKxbxd, dv_NxBxKxbxdv) = lax.scan(step, init, blocks)
    unblock = lambda x: jnp.moveaxis(x, 0, 2).reshape(x.shape[1:3] + (-1,) + x.shape[-1:])
    return (dq.astype(q.dtype), unblock(dk_NxBxKxbxd).astype(k.dtype), unblock(dv_NxBxKxbxdv).astype(v.dtype),
            None, dbias, None, None, None, dconsts)


_flash.defvjp(_flash_forward, _flash_backward)


def _fused_backend(dtype, width, *, has_arrays):
    """'cudnn' where its flash attention takes these inputs, else 'xla' (with the reason logged on a GPU)."""
    device = jax.devices()[0]
    if device.platform != "gpu":
        return "xla"
    capability = getattr(device, "compute_capability", None)
    reasons = [why for why, bad in [
        (f"device compute capability {capability} (needs CUDA >= 8.0)",
         capability is None or float(capability) < 8.0),
        (f"dtype {jnp.dtype(dtype).name} (takes bfloat16/float16)", dtype not in (jnp.bfloat16, jnp.float16)),
        (f"head width {width} (takes a multiple of 8, at most 128)", width % 8 or width > 128),
        # cuDNN takes some mask/bias arrays, with shape rules of its own; only plain causal is sent to it.
        ("a mask or bias array (sent to cuDNN: none, or causal with T == S)", has_arrays),
    ] if bad]
    if reasons:
        log.info("fused attention: cuDNN cannot take %s; using XLA", "; ".join(reasons))
        return "xla"
    return "cudnn"


def _fused(q_BxTxHxd, k_BxSxKxd, v_BxSxKxdv, *, mask, bias, bias_fn, causal, q_positions, k_positions,
           scale, block_size, return_weights, dot_general, vmap):
    if return_weights:
        raise _no_weights("fused")
    del block_size, dot_general, vmap  # jax.nn.dot_product_attention chooses its own kernels
    (_, T, H, d), S, dv = q_BxTxHxd.shape, k_BxSxKxd.shape[1], v_BxSxKxdv.shape[-1]
    # jax's is_causal is aligned top-left (query i sees keys <= i): ours only if T == S at default positions.
    is_causal = causal and q_positions is None and k_positions is None and T == S
    q_pos, k_pos = _positions(q_positions, k_positions, T, S)
    mask, bias = _dense_mask_and_bias(mask, bias, bias_fn, causal and not is_causal, q_pos, k_pos, H)
    # jax requires v shaped like k; zero-padding the narrower of d and dv changes no dot product.
    width = max(d, dv)
    widen = lambda x: jnp.pad(x, [(0, 0)] * 3 + [(0, width - x.shape[-1])])
    backend = _fused_backend(q_BxTxHxd.dtype, width, has_arrays=mask is not None or bias is not None)
    out_BxTxHxdv = jax.nn.dot_product_attention(
        widen(q_BxTxHxd), widen(k_BxSxKxd), widen(v_BxSxKxdv), bias=bias, mask=mask, scale=scale,
        is_causal=is_causal, implementation=backend)[..., :dv]
    if mask is not None:  # jax gives a fully masked query uniform weights (the mean of v); ours are zero
        allowed = mask & causal_mask(T, S) if is_causal else mask  # is_causal's mask is jax's, not in `mask`
        live_BxTxHx1 = jnp.any(allowed, axis=-1).transpose(0, 2, 1)[..., None]
        out_BxTxHxdv = jnp.where(live_BxTxHx1, out_BxTxHxdv, 0)
    return out_BxTxHxdv


IMPLEMENTATIONS = {"reference": _reference, "chunked": _chunked, "fused": _fused}


def multi_head_attention(q_BxTxHxd, k_BxSxKxd, v_BxSxKxdv, *, mask=None, bias=None, bias_fn=None,
                         causal=False, q_positions=None, k_positions=None, scale=None,
                         implementation="reference", return_weights=False, block_size=512,
                         dot_general=lax.dot_general, vmap=jax.vmap):
    """Multi-head (K = H) or grouped-query (K divides H) attention: the single-head function per head.

    mask: bool [T,S], [H,T,S] or [B,H,T,S] (size-1 dims broadcast), True = may attend. bias: float, same
    ranks, added to the scaled logits. bias_fn(q_positions [t], k_positions [s]) -> [H, t, s]: a positional
    bias that `chunked` evaluates block by block. causal: keys at k_positions <= the query's q_positions
    (defaults: keys at 0..S-1, queries the last T). Returns out [B,T,H,dv], and weights [B,H,T,S] (reference
    only) when `return_weights`. dot_general: the products of `reference` (see scaled_dot_product_attention);
    vmap (`jax.vmap(f, in_axes, out_axes)`'s signature): how `reference` maps the head function over the groups,
    kv heads and batch. A machine's own of either can be passed in (the model's construction does); same function.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r}; choose one of: {', '.join(IMPLEMENTATIONS)}")
    if q_BxTxHxd.ndim != 4 or k_BxSxKxd.ndim != 4 or v_BxSxKxdv.ndim != 4:
        raise ValueError(f"q, k, v have shapes {q_BxTxHxd.shape}, {k_BxSxKxd.shape}, {v_BxSxKxdv.shape}; "
                         "give q [B,T,H,d], k [B,S,K,d], v [B,S,K,dv]")
    (B, T, H, d), (_, S, K, _) = q_BxTxHxd.shape, k_BxSxKxd.shape
    if (k_BxSxKxd.shape[0], k_BxSxKxd.shape[3]) != (B, d) or v_BxSxKxdv.shape[:3] != k_BxSxKxd.shape[:3] \
            or H % K:
        raise ValueError(f"q, k, v have shapes {q_BxTxHxd.shape}, {k_BxSxKxd.shape}, {v_BxSxKxdv.shape}; "
                         "need q [B,T,H,d], k [B,S,K,d], v [B,S,K,dv] with K dividing H")
    return IMPLEMENTATIONS[implementation](
        q_BxTxHxd, k_BxSxKxd, v_BxSxKxdv, mask=_as_rank4(mask, "mask", B, H, T, S),
        bias=_as_rank4(bias, "bias", B, H, T, S), bias_fn=bias_fn, causal=causal, q_positions=q_positions,
        k_positions=k_positions, scale=_scale(d, scale), block_size=block_size, return_weights=return_weights,
        dot_general=dot_general, vmap=vmap)


# ------------------------------------------------------------------------------------------------ projections

def init_attention_params(key, *, n_embd, n_head, n_kv_head=None, head_dim=None, use_bias=False,
                          dtype=jnp.float32, out_std=0.02):
    """{"qkv": {"kernel": [D, (H + 2K)·d], "bias"?}, "out": {"kernel": [H·d, D], "bias"?}}.

    Kernels are normal(0.02), biases zero. The fused QKV kernel's columns are [q heads | k heads | v heads],
    d each. `out_std` lets a model scale the output kernel (GPT-2: 0.02 / √(2·n_layer)).
    """
    K = n_kv_head or n_head
    if head_dim is None:
        if n_embd % n_head:
            raise ValueError(f"model.n_embd={n_embd} is not divisible by model.n_head={n_head}; set head_dim")
        head_dim = n_embd // n_head
    if n_head % K:
        raise ValueError(f"model.n_kv_head={K} must divide model.n_head={n_head}")
    width = (n_head + 2 * K) * head_dim
    qkv_key, out_key = jax.random.split(key)
    params = {"qkv": {"kernel": 0.02 * jax.random.normal(qkv_key, (n_embd, width), dtype)},
              "out": {"kernel": out_std * jax.random.normal(out_key, (n_head * head_dim, n_embd), dtype)}}
    if use_bias:
        params["qkv"]["bias"] = jnp.zeros((width,), dtype)
        params["out"]["bias"] = jnp.zeros((n_embd,), dtype)
    return params


def _dense(params, x_BxTxD, dot_general):
    y_BxTxF = dot_general(x_BxTxD, params["kernel"], (((x_BxTxD.ndim - 1,), (0,)), ((), ())))
    return y_BxTxF + params["bias"] if "bias" in params else y_BxTxF


def qkv_projection(params, x_BxTxD, *, n_head, n_kv_head=None, dot_general=lax.dot_general):
    """x·W_qkv (+ b), split into q [B,T,H,d], k [B,T,K,d], v [B,T,K,d]."""
    H, K = n_head, n_kv_head or n_head
    qkv_BxTxW = _dense(params["qkv"], x_BxTxD, dot_general)
    B, T, W = qkv_BxTxW.shape
    if W % (H + 2 * K):
        raise ValueError(f"qkv kernel width {W} is not (n_head + 2·n_kv_head)·head_dim "
                         f"for n_head={H}, n_kv_head={K}")
    d = W // (H + 2 * K)
    q_BxTxHxd, k_BxTxKxd, v_BxTxKxd = jnp.split(qkv_BxTxW, [H * d, (H + K) * d], axis=-1)
    return q_BxTxHxd.reshape(B, T, H, d), k_BxTxKxd.reshape(B, T, K, d), v_BxTxKxd.reshape(B, T, K, d)


def output_projection(params, o_BxTxHxd, *, dot_general=lax.dot_general):
    """Concatenated heads · W_out (+ b): [B, T, H, d] -> [B, T, D]."""
    B, T, H, d = o_BxTxHxd.shape
    return _dense(params["out"], o_BxTxHxd.reshape(B, T, H * d), dot_general)
