"""Clark et al. 2019 ("What Does BERT Look At? An Analysis of BERT's Attention", BlackboxNLP) surface-level
measures of attention heads, as pure NumPy functions of one segment's weights `w_LxHxTxT` (row i = query i, rows
sum to one over the real keys) and its `valid_T` mask (False on padding, which no measure counts):

- `attention_to(w, valid, is_key)`: per head, the mean over real queries of the weight on keys where `is_key`
  ([CLS], [SEP], periods/commas: their Fig. 2);
- `offset_attention(w, valid, offset)`: the mean weight of query i on key i + offset (-1 previous, +1 next,
  0 itself: their §3.1);
- `entropy(w, valid)`: the mean entropy (nats) of the queries' distributions, and of the first ([CLS]) query's
  (their §3.4, Fig. 4), beside `uniform_entropy`, the value of attention spread evenly (the trivial baseline);
- `js_divergence_sum(w, valid)`: for every pair of heads, the sum over real queries of the Jensen-Shannon divergence
  between their distributions (their §6: the distance between heads is that sum over the corpus), and
  `classical_mds` to place heads in the plane from the resulting distances (Torgerson 1952).

Each function returns per-segment values; an experiment averages them over segments (experiments/clark_attention).
"""

from __future__ import annotations

import numpy as np


def _rows(w_LxHxTxT, valid_T):
    """The real queries' rows restricted to the real keys: `[L, H, t, t]` (t = number of real tokens)."""
    idx = np.flatnonzero(valid_T)
    return w_LxHxTxT[:, :, idx][..., idx]


def attention_to(w_LxHxTxT, valid_T, is_key_T) -> np.ndarray:
    """`[L, H]`: mean over real queries i of sum_j w[i, j] over real keys j with is_key[j]."""
    w = _rows(w_LxHxTxT, valid_T)
    key = np.asarray(is_key_T, bool)[np.flatnonzero(valid_T)]
    return w[..., key].sum(-1).mean(-1)


def offset_attention(w_LxHxTxT, valid_T, offset: int) -> np.ndarray:
    """`[L, H]`: mean over the real queries i that have a real key i + offset of w[i, i + offset]."""
    w = _rows(w_LxHxTxT, valid_T)
    t = w.shape[-1]
    i = np.arange(max(0, -offset), min(t, t - offset))
    if i.size == 0:
        return np.full(w.shape[:2], np.nan)
    return w[..., i, i + offset].mean(-1)


def _entropy_rows(p, eps=1e-12):
    return -(p * np.log(np.maximum(p, eps))).sum(-1)


def entropy(w_LxHxTxT, valid_T) -> tuple[np.ndarray, np.ndarray]:
    """(`[L, H]` mean entropy over real queries, `[L, H]` entropy of the first query's ([CLS]'s) distribution)."""
    h = _entropy_rows(_rows(w_LxHxTxT, valid_T))
    return h.mean(-1), h[..., 0]


def uniform_entropy(valid_T) -> float:
    """The entropy of attention spread evenly over the t real tokens: log t (every query's, [CLS]'s alike)."""
    return float(np.log(np.count_nonzero(valid_T)))


def js_divergence_sum(w_LxHxTxT, valid_T) -> np.ndarray:
    """`[LH, LH]`: sum over real queries of JS(P_a, P_b) = (KL(P_a || M) + KL(P_b || M)) / 2, M = (P_a + P_b) / 2,
    in nats, between every pair of heads (a = layer * H + head)."""
    w = _rows(w_LxHxTxT, valid_T)
    L, H, t, _ = w.shape
    p = w.reshape(L * H, t, t).astype(np.float64)
    plogp = (p * np.log(np.maximum(p, 1e-30))).sum(-1)  # [A, t]
    out = np.zeros((L * H, L * H))
    for a in range(L * H):  # M for one head against all: [A, t, t]
        m = 0.5 * (p[a][None] + p)
        m_log = np.log(np.maximum(m, 1e-30))
        cross = 0.5 * ((p[a][None] * m_log).sum(-1) + (p * m_log).sum(-1))  # E_{P_a, P_b}[log M] / 2 each
        js = 0.5 * (plogp[a][None] + plogp) - cross
        out[a] = np.maximum(js, 0.0).sum(-1)
    return out


def classical_mds(distance_NxN, dims: int = 2) -> np.ndarray:
    """Torgerson's classical multidimensional scaling: `[N, dims]` coordinates whose Euclidean distances best match
    `distance_NxN` (double-centred squared distances, top eigenvectors scaled by sqrt of their eigenvalues)."""
    d2 = np.asarray(distance_NxN, np.float64) ** 2
    n = d2.shape[0]
    centre = np.eye(n) - np.ones((n, n)) / n
    b = -0.5 * centre @ d2 @ centre
    values, vectors = np.linalg.eigh(b)
    order = np.argsort(values)[::-1][:dims]
    return vectors[:, order] * np.sqrt(np.maximum(values[order], 0.0))
