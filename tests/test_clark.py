"""jaxformer.analysis.clark (Clark et al. 2019's measures) against independent computations on random attention:
scipy's Jensen-Shannon distance and entropy, explicit loops over tokens, and MDS recovering a known configuration."""

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy

from jaxformer.analysis import clark


def _weights(L=2, H=3, T=9, real=7, seed=0):
    """Random row-stochastic attention over the first `real` keys (padding gets exactly zero, as the model gives)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(L, H, T, T)) * 2
    logits[..., real:] = -np.inf
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    w[:, :, real:] = rng.uniform(size=(L, H, T - real, T))  # rows of padded queries: garbage, must be ignored
    return w, np.arange(T) < real


def test_attention_to_and_offsets_match_loops():
    w, valid = _weights()
    is_key = np.zeros(9, bool)
    is_key[[0, 3, 8]] = True  # 8 is padding: never counted
    got = clark.attention_to(w, valid, is_key)
    want = np.array([[np.mean([w[l, h, i, [0, 3]].sum() for i in range(7)]) for h in range(3)] for l in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    for offset in (-1, 0, 1):
        got = clark.offset_attention(w, valid, offset)
        rows = [i for i in range(7) if 0 <= i + offset < 7]
        want = np.array([[np.mean([w[l, h, i, i + offset] for i in rows]) for h in range(3)] for l in range(2)])
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_entropy_matches_scipy_and_uniform_is_its_maximum():
    w, valid = _weights()
    mean_h, cls_h = clark.entropy(w, valid)
    want = np.array([[np.mean([scipy_entropy(w[l, h, i, :7]) for i in range(7)]) for h in range(3)]
                     for l in range(2)])
    np.testing.assert_allclose(mean_h, want, rtol=1e-9)
    np.testing.assert_allclose(cls_h, [[scipy_entropy(w[l, h, 0, :7]) for h in range(3)] for l in range(2)],
                               rtol=1e-9)
    assert clark.uniform_entropy(valid) == pytest.approx(np.log(7))
    assert (mean_h < np.log(7)).all()


def test_js_divergence_sum_matches_scipy():
    w, valid = _weights(seed=3)
    got = clark.js_divergence_sum(w, valid)
    flat = w.reshape(6, 9, 9)
    want = np.array([[sum(jensenshannon(flat[a, i, :7], flat[b, i, :7]) ** 2 for i in range(7)) for b in range(6)]
                     for a in range(6)])  # scipy's distance is the square root of the divergence (natural log)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-12)
    assert np.allclose(np.diag(got), 0.0) and np.allclose(got, got.T)


def test_classical_mds_recovers_a_planar_configuration():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(12, 2))
    distance = np.linalg.norm(points[:, None] - points[None], axis=-1)
    xy = clark.classical_mds(distance)
    np.testing.assert_allclose(np.linalg.norm(xy[:, None] - xy[None], axis=-1), distance, atol=1e-9)
