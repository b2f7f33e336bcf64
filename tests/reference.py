"""Attention spelled out as float64 NumPy loops over heads and positions, straight from the formula.

    z[t, s] = scale · q[t]·k[s] + bias[t, s]     (only where mask[t, s]: other keys do not exist for query t)
    w[t, :] = softmax(z[t, :]) over allowed keys  (all zero when query t may attend no key)
    out[t]  = Σ_s w[t, s] · v[s]

and its vector-Jacobian product, derived by hand, for the gradient tests. No JAX here: this is what the
implementations in jaxformer/attention.py are held to.
"""

import math

import numpy as np


def _head_inputs(q, k, v, mask, bias, scale):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    T, S = q.shape[0], k.shape[0]
    mask = np.ones((T, S), bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), (T, S))
    bias = np.zeros((T, S)) if bias is None else np.broadcast_to(np.asarray(bias, np.float64), (T, S))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return q, k, v, mask, bias, scale


def attention_head(q_Txd, k_Sxd, v_Sxdv, mask_TxS=None, bias_TxS=None, scale=None):
    """One head: (out [T, dv], weights [T, S]), float64."""
    q, k, v, mask, bias, scale = _head_inputs(q_Txd, k_Sxd, v_Sxdv, mask_TxS, bias_TxS, scale)
    T, S = mask.shape
    weights = np.zeros((T, S))
    out = np.zeros((T, v.shape[-1]))
    for t in range(T):
        allowed = [s for s in range(S) if mask[t, s]]
        if not allowed:
            continue
        z = {s: scale * float(np.dot(q[t], k[s])) + bias[t, s] for s in allowed}
        z_max = max(z.values())
        total = sum(math.exp(z[s] - z_max) for s in allowed)
        for s in allowed:
            weights[t, s] = math.exp(z[s] - z_max) / total
            out[t] += weights[t, s] * v[s]
    return out, weights


def attention_head_vjp(q_Txd, k_Sxd, v_Sxdv, dout_Txdv, mask_TxS=None, bias_TxS=None, scale=None,
                       magnitudes=False):
    """Cotangents (dq, dk, dv, dbias) of Σ out ∘ dout for one head, float64.

    dv[s] = Σ_t w[t,s]·dout[t];  dw[t,s] = dout[t]·v[s];  dz[t,s] = w[t,s]·(dw[t,s] - Σ_s' w[t,s']·dw[t,s']);
    dq[t] = scale·Σ_s dz[t,s]·k[s];  dk[s] = scale·Σ_t dz[t,s]·q[t];  dbias[t,s] = dz[t,s].

    magnitudes=True: the same sums over the absolute values of their terms (|q|, |k|, |v|, |dout|, and
    dw + mean for dw - mean). Floating-point error is proportional to these, not to the (possibly cancelled)
    results, so they are the scale to measure a relative error against when a gradient nearly cancels.
    """
    q, k, v, mask, bias, scale = _head_inputs(q_Txd, k_Sxd, v_Sxdv, mask_TxS, bias_TxS, scale)
    dout = np.asarray(dout_Txdv, np.float64)
    _, w = attention_head(q, k, v, mask, bias, scale)
    if magnitudes:
        q, k, v, dout, scale = np.abs(q), np.abs(k), np.abs(v), np.abs(dout), abs(scale)
    T, S = w.shape
    dq, dk, dv, dz = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v), np.zeros((T, S))
    for t in range(T):
        dw = np.array([float(np.dot(dout[t], v[s])) for s in range(S)])
        mean = sum(w[t, s] * dw[s] for s in range(S))
        for s in range(S):
            dz[t, s] = w[t, s] * (dw[s] + mean if magnitudes else dw[s] - mean)
            dv[s] += w[t, s] * dout[t]
            dq[t] += scale * dz[t, s] * k[s]
            dk[s] += scale * dz[t, s] * q[t]
    return dq, dk, dv, dz


def _per_head(fn, q_BxTxHxd, k_BxSxKxd, v_BxSxKxdv, mask, bias, *extra):
    """Runs fn per (batch, query head) with kv head h // (H // K); mask/bias broadcast to [B, H, T, S]."""
    B, T, H, _ = q_BxTxHxd.shape
    S, K = k_BxSxKxd.shape[1:3]
    mask = np.ones((B, H, T, S), bool) if mask is None else np.broadcast_to(mask, (B, H, T, S))
    bias = np.zeros((B, H, T, S)) if bias is None else np.broadcast_to(bias, (B, H, T, S))
    results = {}
    for b in range(B):
        for h in range(H):
            kv = h // (H // K)
            results[b, h] = fn(q_BxTxHxd[b, :, h], k_BxSxKxd[b, :, kv], v_BxSxKxdv[b, :, kv],
                               *[x[b, :, h] for x in extra], mask[b, h], bias[b, h])
    return results, (B, T, H, S, K)


def multi_head_attention(q_BxTxHxd, k_BxSxKxd, v_BxSxKxdv, mask=None, bias=None, scale=None):
    """(out [B, T, H, dv], weights [B, H, T, S]); mask/bias broadcastable to [B, H, T, S]; GQA when K < H."""
    heads, (B, T, H, S, _) = _per_head(lambda q, k, v, m, b: attention_head(q, k, v, m, b, scale),
                                       q_BxTxHxd, k_BxSxKxd, v_BxSxKxdv, mask, bias)
    out = np.zeros((B, T, H, v_BxSxKxdv.shape[-1]))
    weights = np.zeros((B, H, T, S))
    for (b, h), (o, w) in heads.items():
        out[b, :, h], weights[b, h] = o, w
    return out, weights


def multi_head_attention_vjp(q_BxTxHxd, k_BxSxKxd, v_BxSxKxdv, dout_BxTxHxdv, mask=None, bias=None,
                             scale=None):
    """(dq, dk, dv, dbias [B, H, T, S]) of Σ out ∘ dout; kv heads sum the cotangents of their query heads."""
    heads, (B, T, H, S, _) = _per_head(lambda q, k, v, do, m, b: attention_head_vjp(q, k, v, do, m, b, scale),
                                       q_BxTxHxd, k_BxSxKxd, v_BxSxKxdv, mask, bias, dout_BxTxHxdv)
    K = k_BxSxKxd.shape[2]
    dq, dk, dv = (np.zeros(x.shape) for x in (q_BxTxHxd, k_BxSxKxd, v_BxSxKxdv))
    dbias = np.zeros((B, H, T, S))
    for (b, h), (dq_h, dk_h, dv_h, dz_h) in heads.items():
        kv = h // (H // K)
        dq[b, :, h] = dq_h
        dk[b, :, kv] += dk_h
        dv[b, :, kv] += dv_h
        dbias[b, h] = dz_h
    return dq, dk, dv, dbias
