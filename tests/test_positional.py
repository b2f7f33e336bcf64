"""Positional encodings: float64 references from the papers, hand-computed cases, and the properties each
variant promises (relative-shift invariance, norm preservation, untouched pass-through dims, block-wise
biases, KV-cache decoding = full pass, every bias through every attention implementation)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_positional as ref

from jaxformer import positional as P

NAMES = P.list_positional_encodings()
BIAS_NAMES = [n for n in NAMES if "bias" in P.get_positional_encoding(n).acts_at]
ROTATE_NAMES = [n for n in NAMES if "rotation" in P.get_positional_encoding(n).acts_at]
D, H, HEAD = 32, 4, 8  # n_embd, n_head, head_dim of the small records below


# The fields resolve() derives from data.block_size, at the values these tests were written for (block 1024).
RESOLVED = {"t5": {"max_distance": 128}, "xpos": {"scale_base": 512.0}, "fire": {"init_L": 512.0},
            "sinusoidal": {"scale": 1.0}, "learned": {"max_len": 1024}}


def make(name, **fields):
    """(record, cfg, params), params random and non-zero (zero-initialised ones would hide position bugs)."""
    return _make(name, tuple(sorted(fields.items())))


@functools.cache
def _make(name, fields):
    pe = P.get_positional_encoding(name)
    cfg = {**pe.defaults, **RESOLVED.get(name, {}), **dict(fields)}
    if pe.validate is not None:
        pe.validate(cfg)
    params = jax.jit(lambda key: pe.init(key, cfg, n_embd=D, n_head=H, head_dim=HEAD))(jax.random.key(0))
    rng = np.random.default_rng(1)
    noise = lambda x: x + 0.1 * jnp.asarray(rng.standard_normal(x.shape), x.dtype)
    return pe, cfg, jax.tree.map(noise, params)


def jit_bias(pe, cfg):
    """The record's bias, compiled once per shape (eagerly, every op would compile on its own)."""
    return jax.jit(lambda params, q_pos, k_pos: pe.bias(params, q_pos, k_pos, cfg, n_head=H))


def normal(rng, *shape):
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def unit_rows(rng, *shape):
    x = rng.standard_normal(shape)
    return jnp.asarray(x / np.linalg.norm(x, axis=-1, keepdims=True), jnp.float32)


# ---------------------------------------------------------------------------------------------- registry


def test_registry_names_and_where_each_acts():
    acts = {n: P.get_positional_encoding(n).acts_at for n in NAMES}
    assert acts == {"none": (), "sinusoidal": ("embedding",), "learned": ("embedding",),
                    "rope": ("rotation",), "xpos": ("rotation",),
                    "alibi": ("bias",), "t5": ("bias",), "kerple": ("bias",), "fire": ("bias",)}


def test_unknown_name_is_one_line_error_listing_every_name():
    with pytest.raises(ValueError) as info:
        P.get_positional_encoding("foo")
    assert str(info.value) == ("model.position.name='foo'; choose one of: "
                               "alibi, fire, kerple, learned, none, rope, sinusoidal, t5, xpos")


def test_default_config_has_every_variant_and_takes_overrides():
    cfg = P.default_config()
    assert cfg.name == "rope"
    for name in NAMES:
        assert cfg[name].to_dict() == P.get_positional_encoding(name).defaults
    cfg.rope.theta = 500000  # what --config.model.position.rope.theta=500000 does
    assert cfg.rope.theta == 500000.0


def test_adding_a_variant_is_one_register_line(monkeypatch):
    monkeypatch.setattr(P, "_REGISTRY", dict(P._REGISTRY))
    P.register(P.PositionalEncoding(
        "constant", defaults={"value": -1.0}, init=lambda key, cfg, *, n_embd, n_head, head_dim: {},
        bias=lambda params, q, k, cfg, *, n_head: jnp.full((n_head, q.shape[0], k.shape[0]), cfg["value"])))
    assert "constant" in P.list_positional_encodings()
    assert P.default_config().constant.value == -1.0
    assert P.get_positional_encoding("constant").acts_at == ("bias",)
    with pytest.raises(ValueError, match="already registered"):
        P.register(P.get_positional_encoding("rope"))


BAD_FIELDS = [
    ("rope", {"scaling": "foo"}, "model.position.rope.scaling='foo'; choose one of: none, linear, ntk, yarn"),
    ("rope", {"fraction": 0.0}, "model.position.rope.fraction=0.0; must be in (0, 1]"),
    ("rope", {"fraction": 1.5}, "model.position.rope.fraction=1.5"),
    ("rope", {"factor": 0.5}, "model.position.rope.factor=0.5; must be >= 1"),
    ("rope", {"theta": -1.0}, "model.position.rope.theta=-1.0"),
    ("rope", {"scaling": "yarn", "factor": 4.0}, "model.position.rope.original_max_len=0; YaRN needs"),
    ("rope", {"yarn_alpha": 32.0}, "model.position.rope.yarn_alpha=32.0; must be below yarn_beta=32.0"),
    ("rope", {"yarn_alpha": 0.0}, "model.position.rope.yarn_alpha=0.0; must be > 0"),
    ("learned", {"max_len": 0}, "model.position.learned.max_len=0"),
    ("xpos", {"scale_base": -1.0}, "model.position.xpos.scale_base=-1.0; must be > 0 (0 = data.block_size / 2)"),
    ("xpos", {"theta": 0.0}, "model.position.xpos.theta=0.0; must be > 0"),
    ("xpos", {"gamma": -0.1}, "model.position.xpos.gamma=-0.1; must be > 0"),
    ("t5", {"num_buckets": 1}, "model.position.t5.num_buckets=1"),
    ("t5", {"max_distance": 8}, "model.position.t5.max_distance=8"),
    ("t5", {"num_buckets": 3, "bidirectional": True}, "model.position.t5.num_buckets=3; must leave >= 2"),
    ("fire", {"mlp_width": 0}, "model.position.fire.mlp_width=0"),
    ("fire", {"init_L": -2.0}, "model.position.fire.init_L=-2.0; must be > 0 (0 = data.block_size)"),
    ("sinusoidal", {"scale": -0.1}, "model.position.sinusoidal.scale=-0.1; must be >= 0 (0 = the scheme's"),
    ("sinusoidal", {"scheme": "vaswani"}, "model.position.sinusoidal.scheme='vaswani'; choose one of: sqrt_d, matched"),
    ("fire", {"eps": 0.0}, "model.position.fire.eps=0.0; must be > 0"),
]


@pytest.mark.parametrize("name,fields,message", BAD_FIELDS, ids=[f"{n}-{f}" for n, f, _ in BAD_FIELDS])
def test_bad_fields_are_one_line_errors_naming_the_field(name, fields, message):
    pe = P.get_positional_encoding(name)
    with pytest.raises(ValueError) as info:
        pe.validate({**pe.defaults, **fields})
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_every_variant_runs_with_the_model_signatures(name):
    """Under jit, with grouped-query shapes and bfloat16 q/k, as the model calls them (the other tests call
    the functions eagerly)."""
    pe, cfg, params = make(name)
    rng = np.random.default_rng(0)
    T, S, K = 5, 7, 2
    q_pos, k_pos = jnp.arange(2, 2 + T, dtype=jnp.int32), jnp.arange(S, dtype=jnp.int32)
    if pe.embed is not None:
        x = jax.jit(lambda p, pos: pe.embed(p, pos, cfg, n_embd=D))(params, q_pos)
        assert x.shape == (T, D) and np.isfinite(np.asarray(x)).all()
    if pe.rotate is not None:
        q = normal(rng, 2, T, H, HEAD).astype(jnp.bfloat16)
        k = normal(rng, 2, S, K, HEAD).astype(jnp.bfloat16)
        rotate = jax.jit(lambda p, q, k, a, b: pe.rotate(p, q, k, a, b, cfg))
        q2, k2 = rotate(params, q, k, q_pos, k_pos)
        assert q2.shape == q.shape and k2.shape == k.shape and q2.dtype == k2.dtype == jnp.bfloat16
    if pe.bias is not None:
        b = jit_bias(pe, cfg)(params, q_pos, k_pos)
        assert b.shape == (H, T, S) and b.dtype == jnp.float32 and np.isfinite(np.asarray(b)).all()
    assert pe.max_length(cfg) == (cfg["max_len"] if name == "learned" else None)


# ---------------------------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("dim", [64, 7])
def test_sinusoidal_equals_closed_form_in_float64(dim):
    positions = np.concatenate([np.arange(40), np.random.default_rng(0).integers(0, 5000, 60)])
    got = np.asarray(P.sinusoidal(jnp.asarray(positions, jnp.int32), dim), np.float64)
    assert got.shape == (len(positions), dim)
    # float32 angles carry a rounding error of about |p| * 2^-24 (documented on `sinusoidal`).
    tolerance = 1e-6 + 2.0 ** -22 * np.maximum(positions, 1)[:, None]
    assert (np.abs(got - ref.sinusoidal(positions, dim)) <= tolerance).all()


def test_sinusoidal_by_hand():
    got = np.asarray(P.sinusoidal(jnp.asarray([0, 1]), 4))  # frequencies 1 and 10000^(-1/2) = 0.01
    expected = [[0, 1, 0, 1], [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)]]
    np.testing.assert_allclose(got, expected, atol=1e-7)


def test_learned_reads_its_table_and_rejects_sequences_past_max_len():
    pe, cfg, params = make("learned", max_len=8)
    embed = lambda p, pos: pe.embed(p, pos, cfg, n_embd=D)
    np.testing.assert_array_equal(np.asarray(embed(params, jnp.asarray([3, 0, 7, 7]))),
                                  np.asarray(params["table"])[[3, 0, 7, 7]])
    message = "sequence of 9 positions exceeds model.position.learned.max_len=8"
    with pytest.raises(ValueError, match=message):
        embed(params, jnp.arange(9))
    with pytest.raises(ValueError, match=message):  # at trace time: the length is a static shape
        jax.jit(embed)(params, jnp.arange(9))
    computed = np.asarray(embed(params, jnp.asarray([1, 8])))  # a computed index past the table reads NaN
    assert np.isfinite(computed[0]).all() and np.isnan(computed[1]).all()


# ---------------------------------------------------------------------------------------------- rope


ROPE_CASES = [
    {},
    {"fraction": 0.5},
    {"theta": 500.0, "fraction": 0.25},
    {"scaling": "linear", "factor": 4.0},
    {"scaling": "ntk", "factor": 4.0},
    {"scaling": "yarn", "factor": 8.0, "original_max_len": 64},
]


@pytest.mark.parametrize("kwargs", ROPE_CASES, ids=lambda k: str(k) or "plain")
def test_rope_equals_rotation_matrices_in_float64(kwargs):
    rng = np.random.default_rng(0)
    x, positions = rng.standard_normal((3, 20, 16)), rng.integers(0, 300, 20)
    got = np.asarray(P.apply_rope(jnp.asarray(x, jnp.float32), jnp.asarray(positions), **kwargs))
    for b in range(3):
        np.testing.assert_allclose(got[b], ref.rope(x[b], positions, **kwargs), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("scaling", ["none", "linear", "ntk"])
def test_rope_preserves_norms(scaling):
    x = normal(np.random.default_rng(1), 4, 33, 16)
    y = P.apply_rope(x, jnp.arange(100, 133), scaling=scaling, factor=3.0)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-6)


ROTATIONS = {  # name -> rotate(x, positions, is_key)
    "rope": lambda x, pos, is_key: P.apply_rope(x, pos),
    "rope-half-ntk": lambda x, pos, is_key: P.apply_rope(x, pos, fraction=0.5, scaling="ntk", factor=4.0),
    "rope-linear": lambda x, pos, is_key: P.apply_rope(x, pos, scaling="linear", factor=2.0),
    "rope-yarn": lambda x, pos, is_key: P.apply_rope(x, pos, scaling="yarn", factor=4.0, original_max_len=32),
    "xpos": lambda x, pos, is_key: P.apply_xpos(x, pos, is_key=is_key),
}


@pytest.mark.parametrize("variant", list(ROTATIONS))
def test_rotated_logits_depend_only_on_the_offset(variant):
    """Shift both positions by a random c < 1000: q.k unchanged within 1e-5. q and k are unit vectors: the
    float32 angle error grows as |position| * 2^-24, so the tolerance is in units of |q||k|."""
    rotate, rng = ROTATIONS[variant], np.random.default_rng(2)
    q, k = unit_rows(rng, 64, 32), unit_rows(rng, 64, 32)
    n, m = rng.integers(0, 64, 64), rng.integers(0, 64, 64)
    logits = lambda n, m: np.asarray(
        jnp.sum(rotate(q, jnp.asarray(n), False) * rotate(k, jnp.asarray(m), True), axis=-1))
    for c in rng.integers(1, 1000, 3):
        np.testing.assert_allclose(logits(n + c, m + c), logits(n, m), atol=1e-5)


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_partial_rope_leaves_the_unrotated_dims_untouched(fraction):
    x = normal(np.random.default_rng(3), 2, 10, 16)
    y = P.apply_rope(x, jnp.arange(1, 11), fraction=fraction)
    rot = P.rotary_dim(16, fraction)
    assert rot == int(16 * fraction)
    np.testing.assert_array_equal(np.asarray(y[..., rot:]), np.asarray(x[..., rot:]))
    assert not np.allclose(np.asarray(y[..., :rot]), np.asarray(x[..., :rot]))
    with pytest.raises(ValueError, match="rotates none of the 16 head dims"):
        P.apply_rope(x, jnp.arange(10), fraction=0.1)


@pytest.mark.parametrize("scaling", ["linear", "ntk", "yarn"])
def test_rope_scaling_factor_one_is_the_identity(scaling):
    x, positions = normal(np.random.default_rng(4), 12, 16), jnp.arange(500, 512)
    scaled = P.apply_rope(x, positions, scaling=scaling, factor=1.0, original_max_len=64)
    np.testing.assert_allclose(np.asarray(scaled), np.asarray(P.apply_rope(x, positions)), atol=1e-6)


def test_linear_scaling_is_rope_at_positions_over_factor():
    x, positions = normal(np.random.default_rng(5), 40, 16), jnp.arange(0, 400, 10)
    np.testing.assert_allclose(np.asarray(P.apply_rope(x, positions, scaling="linear", factor=4.0)),
                               np.asarray(P.apply_rope(x, positions / 4.0)), atol=1e-5)


def test_ntk_and_yarn_frequencies():
    base = P.rope_frequencies(16)
    ntk = P.rope_frequencies(16, scaling="ntk", factor=8.0)  # base theta * s^(d/(d-2))
    np.testing.assert_allclose([ntk[0], ntk[-1]], [base[0], base[-1] / 8.0], rtol=1e-12)
    yarn = P.rope_frequencies(16, scaling="yarn", factor=8.0, original_max_len=256, yarn_ramp_form="paper")
    turns = 256 * base / (2 * np.pi)  # full turns within the original context
    fast, slow = turns > 32, turns < 1
    between = ~fast & ~slow
    assert fast.any() and slow.any() and between.any()
    np.testing.assert_array_equal(yarn[fast], base[fast])  # high frequencies extrapolate (unchanged)
    np.testing.assert_allclose(yarn[slow], base[slow] / 8.0, rtol=1e-12)  # low frequencies interpolate
    assert ((yarn[between] < base[between]) & (yarn[between] > base[between] / 8.0)).all()
    expected = ref.rope_frequencies(16, scaling="yarn", factor=8.0, original_max_len=256, yarn_ramp="paper")
    np.testing.assert_allclose(yarn, expected, rtol=1e-12)


@pytest.mark.parametrize("d,theta,original", [(16, 10000.0, 256), (64, 10000.0, 4096), (32, 500.0, 64),
                                              (128, 1e6, 8192)])
def test_yarn_code_ramp_equals_the_authors_code_and_brackets_like_the_paper(d, theta, original):
    """The code form against transformers' formula (written out in float64), and both forms agree at the ends."""
    code = P.rope_frequencies(d, theta=theta, scaling="yarn", factor=4.0, original_max_len=original)
    np.testing.assert_allclose(code, ref.rope_frequencies(d, theta, "yarn", 4.0, original, "code"), rtol=1e-12)
    paper = P.yarn_ramp(d, theta=theta, original_max_len=original, form="paper")
    ramp = P.yarn_ramp(d, theta=theta, original_max_len=original, form="code")
    np.testing.assert_array_equal(ramp[paper == 1.0], 1.0)  # > 32 rotations: kept by both
    np.testing.assert_array_equal(ramp[paper == 0.0], 0.0)  # < 1 rotation: interpolated by both
    steps = np.diff(ramp[(ramp > 0) & (ramp < 1)])
    np.testing.assert_allclose(steps, steps[0] if steps.size else steps, rtol=1e-9)  # linear in the index
    assert (np.diff(ramp) <= 0).all() and (np.diff(paper) <= 0).all()


@pytest.mark.parametrize("form", ["paper", "code"])
def test_yarn_bounds_are_fields_and_the_scaled_ones_keep_dimensions_at_short_contexts(form):
    """The paper's bounds at L = 64 keep no frequency (10.2 turns at most); bounds scaled by L / 4096 keep the same
    dimensions as the paper's at 4096 (d = 32: its fastest frequencies kept, its slowest interpolated), and both
    agree with the float64 reference."""
    alpha, beta = P.yarn_bounds_scaled(64)
    assert (alpha, beta) == (1 / 64, 0.5)
    paper = P.yarn_ramp(32, theta=10000.0, original_max_len=64, form=form)
    scaled = P.yarn_ramp(32, theta=10000.0, original_max_len=64, form=form, alpha=alpha, beta=beta)
    at_4096 = P.yarn_ramp(32, theta=10000.0, original_max_len=4096, form=form)
    assert (paper == 1.0).sum() <= 1 and (paper[1:] < 0.85).all()  # degenerate: dim 0 at most kept, then a ramp
    np.testing.assert_allclose(scaled, at_4096, atol=1e-12)  # r_i scales with L, so do the bounds
    assert scaled[0] == 1.0 and scaled[-1] == 0.0
    freqs = P.rope_frequencies(32, scaling="yarn", factor=4.0, original_max_len=64, yarn_ramp_form=form,
                               yarn_alpha=alpha, yarn_beta=beta)
    np.testing.assert_allclose(freqs, ref.rope_frequencies(32, 10000.0, "yarn", 4.0, 64, yarn_ramp=form,
                                                           yarn_alpha=alpha, yarn_beta=beta), rtol=1e-12)
    x, positions = normal(np.random.default_rng(3), 10, 32), jnp.arange(10) * 7
    kw = dict(scaling="yarn", factor=4.0, original_max_len=64, yarn_ramp=form, yarn_alpha=alpha, yarn_beta=beta)
    np.testing.assert_allclose(np.asarray(P.apply_rope(x, positions, **kw)),
                               ref.rope(x, np.asarray(positions), **kw), atol=2e-5)
    with pytest.raises(ValueError, match="yarn_alpha=2.0, yarn_beta=1.0; need 0 < yarn_alpha < yarn_beta"):
        P.yarn_ramp(32, theta=10000.0, original_max_len=64, form=form, alpha=2.0, beta=1.0)


def test_yarn_ramp_field_reaches_the_rotation():
    x, positions = normal(np.random.default_rng(7), 12, 16), jnp.arange(12) * 9
    kw = dict(scaling="yarn", factor=4.0, original_max_len=64)
    for form in P.YARN_RAMPS:
        np.testing.assert_allclose(np.asarray(P.apply_rope(x, positions, yarn_ramp=form, **kw)),
                                   ref.rope(x, np.asarray(positions), yarn_ramp=form, **kw), atol=2e-5)
    assert not np.allclose(P.apply_rope(x, positions, yarn_ramp="code", **kw),
                           P.apply_rope(x, positions, yarn_ramp="paper", **kw), atol=1e-3)


@pytest.mark.parametrize("length,max_len", [(1, 1), (8, 8), (16, 64), (40, 2048)])
def test_random_positions_are_sorted_distinct_in_range_and_a_function_of_the_key(length, max_len):
    draw = jax.jit(P.random_positions, static_argnums=(1, 2))
    a = np.asarray(draw(jax.random.key(3), length, max_len))
    assert a.shape == (length,) and a.dtype == np.int32
    assert (np.diff(a) > 0).all() and a.min() >= 0 and a.max() < max_len  # sorted, distinct, in [0, R)
    np.testing.assert_array_equal(a, np.asarray(draw(jax.random.key(3), length, max_len)))
    if length < max_len:
        draws = {tuple(np.asarray(draw(jax.random.key(s), length, max_len))) for s in range(6)}
        assert len(draws) > 1
    if length == max_len:
        np.testing.assert_array_equal(a, np.arange(length))
    with pytest.raises(ValueError, match="randomize_max_len=4 must be >= the sequence length 5"):
        P.random_positions(jax.random.key(0), 5, 4)


def test_random_positions_cover_the_range_uniformly():
    """Every position of [0, R) is drawn with probability T / R: a chi-square test over many draws."""
    from scipy import stats

    T, R, n = 8, 32, 4000
    draws = jax.vmap(lambda k: P.random_positions(k, T, R))(jax.random.split(jax.random.key(0), n))
    counts = np.bincount(np.asarray(draws).ravel(), minlength=R)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_yarn_temperature_scales_logits_by_one_over_t():
    """sqrt(1/t) = 0.1 ln(s) + 1 multiplies q and k, so q.k at equal positions gains (0.1 ln s + 1)^2."""
    rng = np.random.default_rng(6)
    q, k, positions = normal(rng, 8, 16), normal(rng, 8, 16), jnp.arange(8) * 17
    yarn = lambda x: np.asarray(P.apply_rope(x, positions, scaling="yarn", factor=16.0, original_max_len=128))
    expected = (0.1 * math.log(16.0) + 1.0) ** 2 * np.sum(np.asarray(q) * np.asarray(k), -1)
    np.testing.assert_allclose(np.sum(yarn(q) * yarn(k), -1), expected, rtol=1e-5)


@pytest.mark.parametrize("name", ROTATE_NAMES)
def test_rotate_is_per_head_and_per_position(name):
    """[B,T,H,d] rotates each head alike and each token by its own position only, so rotating a new token
    alone before writing it into a KV cache gives what the full sequence gives."""
    pe, cfg, params = make(name)
    rng = np.random.default_rng(7)
    q, k = normal(rng, 2, 6, H, HEAD), normal(rng, 2, 6, 2, HEAD)
    positions = jnp.arange(10, 16, dtype=jnp.int32)
    rotate = jax.jit(lambda p, q, k, q_pos, k_pos: pe.rotate(p, q, k, q_pos, k_pos, cfg))
    q_all, k_all = (np.asarray(a) for a in rotate(params, q, k, positions, positions))
    for t in range(6):
        pos = positions[t:t + 1]
        q_t, k_t = rotate(params, q[:, t:t + 1], k[:, t:t + 1], pos, pos)
        np.testing.assert_allclose(np.asarray(q_t[:, 0]), q_all[:, t], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(k_t[:, 0]), k_all[:, t], rtol=1e-6, atol=1e-6)
    one = ROTATIONS[name]
    tol = dict(rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(q_all[:, :, 3], np.asarray(one(q[:, :, 3], positions, False)), **tol)
    np.testing.assert_allclose(k_all[:, :, 1], np.asarray(one(k[:, :, 1], positions, True)), **tol)


# ---------------------------------------------------------------------------------------------- xpos


@pytest.mark.parametrize("center", [0, 300])
def test_xpos_equals_the_paper_in_float64(center):
    rng = np.random.default_rng(8)
    x, positions = rng.standard_normal((20, 16)), rng.integers(0, 600, 20)
    for is_key in (False, True):
        got = P.apply_xpos(jnp.asarray(x, jnp.float32), jnp.asarray(positions), is_key=is_key, center=center)
        expected = ref.xpos(x, positions, is_key=is_key, center=center)
        np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-5, atol=2e-5)


def test_xpos_centre_cancels_and_long_positions_stay_finite():
    rng = np.random.default_rng(9)
    q, k = unit_rows(rng, 32, 32), unit_rows(rng, 32, 32)
    n = jnp.asarray(rng.integers(8000, 8192, 32))
    m = n - jnp.asarray(rng.integers(0, 64, 32))

    def logits(n, m, center=0):
        q_n = P.apply_xpos(q, n, is_key=False, center=center)
        return np.asarray(jnp.sum(q_n * P.apply_xpos(k, m, is_key=True, center=center), axis=-1))

    assert np.isfinite(logits(n, m)).all()
    np.testing.assert_allclose(logits(n, m), logits(n, m, center=4096), atol=1e-5)
    # Against positions 8000 lower: float32 angles at p ~ 8000 carry errors ~ p * 2^-24.
    np.testing.assert_allclose(logits(n, m), logits(n - 8000, m - 8000), atol=1e-4)


# ---------------------------------------------------------------------------------------------- alibi


def test_alibi_slopes_for_eight_heads_are_powers_of_one_half():
    np.testing.assert_array_equal(P.alibi_slopes(8), [1 / 2 ** k for k in range(1, 9)])


def test_alibi_slopes_follow_the_papers_rule_otherwise():
    # H = 12: the 8 slopes of H = 8, then every other slope of H = 16 (2^-0.5, 2^-1.5, ...) for the other 4.
    expected = [2.0 ** -k for k in range(1, 9)] + [2.0 ** -0.5, 2.0 ** -1.5, 2.0 ** -2.5, 2.0 ** -3.5]
    np.testing.assert_allclose(P.alibi_slopes(12), expected, rtol=1e-14)
    for h in range(1, 40):
        np.testing.assert_allclose(P.alibi_slopes(h), ref.alibi_slopes(h), rtol=1e-14)


def test_alibi_bias_is_minus_slope_times_distance():
    rng = np.random.default_rng(10)
    q_pos, k_pos = rng.integers(0, 500, 9), rng.integers(0, 500, 11)
    got = np.asarray(P.alibi_bias(jnp.asarray(q_pos), jnp.asarray(k_pos), 12))
    np.testing.assert_allclose(got, ref.alibi_bias(q_pos, k_pos, 12), rtol=1e-6)
    assert got[0, 0, 0] == -0.5 * abs(q_pos[0] - k_pos[0])


# ---------------------------------------------------------------------------------------------- t5

# Worked by hand from the definition, for a key n positions back (relative_position = key - query = -n).
# Unidirectional, 32 buckets, max_distance 128: exact below 16, then 16 + floor(log(n/16) / log(8) * 16),
# capped at 31; keys after the query (n < 0) all land in bucket 0.
T5_UNIDIRECTIONAL = {0: 0, 1: 1, 15: 15, 16: 16, 20: 17, 31: 21, 32: 21, 45: 23, 64: 26, 100: 30, 127: 31,
                     128: 31, 1000: 31, -5: 0, -100: 0}
# Bidirectional: 16 buckets a direction, exact below 8, then 8 + floor(log(n/8) / log(16) * 8) capped at 15;
# keys after the query add 16.
T5_BIDIRECTIONAL = {0: 0, 7: 7, 8: 8, 12: 9, 16: 10, 50: 13, 128: 15, -3: 19, -12: 25, -200: 31}


def test_t5_buckets_by_hand():
    bucket = jax.jit(P.t5_relative_bucket, static_argnames="bidirectional")
    for table, bidirectional in ((T5_UNIDIRECTIONAL, False), (T5_BIDIRECTIONAL, True)):
        got = bucket(-jnp.asarray(list(table)), bidirectional=bidirectional)
        np.testing.assert_array_equal(np.asarray(got), list(table.values()))


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 20), (64, 256)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_t5_buckets_equal_the_reference(bidirectional, num_buckets, max_distance):
    relative = np.arange(-600, 600)
    got = P.t5_relative_bucket(jnp.asarray(relative), bidirectional=bidirectional, num_buckets=num_buckets,
                               max_distance=max_distance)
    expected = [ref.t5_bucket(int(r), bidirectional, num_buckets, max_distance) for r in relative]
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_t5_bias_looks_up_its_table():
    rng = np.random.default_rng(11)
    table = rng.standard_normal((32, 3))
    q_pos, k_pos = rng.integers(0, 300, 7), rng.integers(0, 300, 9)
    bias = jax.jit(P.t5_bias, static_argnames="bidirectional")
    for bidirectional in (False, True):
        got = bias(jnp.asarray(table, jnp.float32), jnp.asarray(q_pos), jnp.asarray(k_pos),
                   bidirectional=bidirectional)
        expected = ref.t5_bias(table, q_pos, k_pos, bidirectional)
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------- kerple, fire


def test_kerple_equals_the_paper_and_depends_only_on_the_offset():
    pe, cfg, params = make("kerple")
    rng = np.random.default_rng(12)
    q_pos, k_pos = rng.integers(0, 1000, 8), rng.integers(0, 1000, 10)
    jitted = jit_bias(pe, cfg)
    bias = lambda a, b: np.asarray(jitted(params, jnp.asarray(a), jnp.asarray(b)))
    r1, r2 = (np.asarray(jax.nn.softplus(params[k]), np.float64) for k in ("r1_raw", "r2_raw"))
    np.testing.assert_allclose(bias(q_pos, k_pos), ref.kerple_log(r1, r2, q_pos, k_pos), rtol=1e-5)
    np.testing.assert_array_equal(bias(q_pos + 777, k_pos + 777), bias(q_pos, k_pos))


def test_kerple_parameters_stay_positive_with_finite_gradients():
    pe, cfg, _ = make("kerple")
    positions = jnp.arange(5)
    distance = np.abs(np.arange(5)[:, None] - np.arange(5)[None])
    # Raw values of any sign (softplus keeps r1, r2 > 0): the bias is 0 at distance 0 and < 0 beyond it.
    raw = {"r1_raw": jnp.array([-3.0, -0.5, 0.7, 2.0]), "r2_raw": jnp.array([1.5, -2.0, 0.0, -1.0])}
    bias = np.asarray(jit_bias(pe, cfg)(raw, positions, positions))
    assert (bias[:, distance == 0] == 0).all() and (bias[:, distance > 0] < -1e-3).all()
    # Far negative raw values: the bias goes to 0 from below and the gradients stay finite.
    far = {"r1_raw": jnp.full((H,), -30.0), "r2_raw": jnp.full((H,), -30.0)}
    assert (np.asarray(jit_bias(pe, cfg)(far, positions, positions)) <= 0).all()
    grads = jax.jit(jax.grad(lambda p: pe.bias(p, positions, positions, cfg, n_head=H).sum()))(far)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_fire_equals_the_paper():
    pe, cfg, params = make("fire", init_L=40.0)
    rng = np.random.default_rng(13)
    q_pos, k_pos = rng.integers(0, 120, 8), rng.integers(0, 120, 9)  # queries on both sides of L = 40
    got = np.asarray(jit_bias(pe, cfg)(params, jnp.asarray(q_pos), jnp.asarray(k_pos)))
    np.testing.assert_allclose(got, ref.fire(params, q_pos, k_pos, init_L=40.0), rtol=1e-5, atol=1e-5)


def test_fire_depends_on_the_offset_and_its_length_normalisation_only():
    pe, cfg, params = make("fire")
    L = abs(float(params["L_multiplier"]) * cfg["init_L"])
    jitted = jit_bias(pe, cfg)
    bias = lambda a, b: np.asarray(jitted(params, jnp.asarray(a), jnp.asarray(b)))
    q_pos, k_pos = np.arange(100, 110), np.arange(0, 110, 3)
    np.testing.assert_allclose(bias(q_pos + 200, k_pos + 200), bias(q_pos, k_pos), atol=1e-6)  # i < L
    # Past the threshold the same offset r is normalised by the query's own position: f(psi(r) / psi(i)).
    far = np.array([int(L) + 500, int(L) + 900])
    at_far = bias(far, far - 7)
    assert not np.allclose(at_far[:, 0, 0], at_far[:, 1, 1])
    expected = ref.fire(params, far, far - 7, init_L=cfg["init_L"])
    np.testing.assert_allclose(at_far, expected, rtol=1e-5, atol=1e-5)


def test_fire_is_finite_for_later_keys_with_finite_gradients():
    pe, cfg, params = make("fire")
    q_pos, k_pos = jnp.arange(0, 8), jnp.arange(0, 64)
    assert np.isfinite(np.asarray(jit_bias(pe, cfg)(params, q_pos, k_pos))).all()
    grads = jax.jit(jax.grad(lambda p: pe.bias(p, q_pos, k_pos, cfg, n_head=H).sum()))(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


# ---------------------------------------------------------------------------------------------- blocks, cache


@pytest.mark.parametrize("name", BIAS_NAMES)
def test_bias_blocks_assemble_into_the_full_bias(name):
    """What the chunked attention relies on: bias(q block, k block) is that block of bias(all, all)."""
    pe, cfg, params = make(name)
    bias = jit_bias(pe, cfg)
    q_pos, k_pos = jnp.arange(40, 64, dtype=jnp.int32), jnp.arange(64, dtype=jnp.int32)
    full = np.asarray(bias(params, q_pos, k_pos))
    for qs in (slice(0, 12), slice(12, 24)):
        for ks in (slice(0, 16), slice(16, 32), slice(32, 48), slice(48, 64)):
            block = np.asarray(bias(params, q_pos[qs], k_pos[ks]))
            np.testing.assert_allclose(block, full[:, qs, ks], rtol=1e-6, atol=1e-6)


def _embed_and_rotate(pe, cfg, params, x_TxD, q_BxTxHxd, k_BxTxHxd, positions_T):
    """The position-dependent part of a toy layer: the embedding enters q and k through x; the rotation."""
    if pe.embed is not None:
        x_1xTxHxd = jnp.reshape(x_TxD + pe.embed(params, positions_T, cfg, n_embd=D), (1, -1, H, HEAD))
        q_BxTxHxd, k_BxTxHxd = q_BxTxHxd + x_1xTxHxd, k_BxTxHxd + x_1xTxHxd
    if pe.rotate is not None:
        q_BxTxHxd, k_BxTxHxd = pe.rotate(params, q_BxTxHxd, k_BxTxHxd, positions_T, positions_T, cfg)
    return q_BxTxHxd, k_BxTxHxd


def _causal_weights(pe, cfg, params, q_BxTxHxd, k_BxSxHxd, q_pos, k_pos):
    logits_BxHxTxS = jnp.einsum("bthd,bshd->bhts", q_BxTxHxd, k_BxSxHxd) / math.sqrt(HEAD)
    if pe.bias is not None:
        logits_BxHxTxS = logits_BxHxTxS + pe.bias(params, q_pos, k_pos, cfg, n_head=H)[None]
    visible_TxS = k_pos[None, :] <= q_pos[:, None]
    return jax.nn.softmax(jnp.where(visible_TxS[None, None], logits_BxHxTxS, -jnp.inf), axis=-1)


@pytest.mark.parametrize("name", NAMES)
def test_decoding_with_a_cache_gives_the_full_pass_weights(name):
    """Token t alone, at its absolute position, against a cache of capacity C (keys rotated when written, key
    positions arange(C), unfilled slots masked) gets row t of the full causal pass: positions offset right."""
    pe, cfg, params = make(name)
    rng = np.random.default_rng(14)
    T, C = 6, 9
    x, q, k = normal(rng, T, D), normal(rng, 1, T, H, HEAD), normal(rng, 1, T, H, HEAD)
    positions, slots = jnp.arange(T, dtype=jnp.int32), jnp.arange(C, dtype=jnp.int32)

    @jax.jit
    def full_and_steps(params, x, q, k):
        full = _causal_weights(pe, cfg, params, *_embed_and_rotate(pe, cfg, params, x, q, k, positions),
                               positions, positions)
        cache, steps = jnp.zeros((1, C, H, HEAD), jnp.float32), []
        for t in range(T):
            pos = positions[t:t + 1]
            q_t, k_t = _embed_and_rotate(pe, cfg, params, x[t:t + 1], q[:, t:t + 1], k[:, t:t + 1], pos)
            cache = cache.at[:, t].set(k_t[:, 0])
            steps.append(_causal_weights(pe, cfg, params, q_t, cache, pos, slots))
        return full, steps

    full, steps = full_and_steps(params, x, q, k)
    for t, step in enumerate(steps):
        step, full_t = np.asarray(step), np.asarray(full[:, :, t:t + 1])
        np.testing.assert_allclose(step[..., :T], full_t, rtol=2e-5, atol=2e-6)
        assert (step[..., t + 1:] == 0).all()


# ---------------------------------------------------------------------------------------------- attention


def _attention():
    from jaxformer import attention

    return attention


def _implementations():
    """Every attention implementation; all but the reference are marked slow (each compiles a forward and a
    backward pass per variant: about 15 s on two cores for the lot)."""
    from jaxformer import attention

    names = sorted(attention.IMPLEMENTATIONS)
    return [name if name == "reference" else pytest.param(name, marks=pytest.mark.slow) for name in names]


def _attention_float64(q, k, v, bias, q_pos, k_pos):
    q, k, v, bias = (np.asarray(a, np.float64) for a in (q, k, v, bias))
    logits = np.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1]) + bias[None]
    visible = np.asarray(k_pos)[None, :] <= np.asarray(q_pos)[:, None]
    logits = np.where(visible[None, None], logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bhts,bshd->bthd", weights / weights.sum(-1, keepdims=True), v)


BLOCK = 8  # attention block size: T = 24 gives three key blocks


@functools.cache
def _through_attention(name, implementation):
    """(out, float64 expected out, grads w.r.t. (q, k, v, params), the (T, S) shapes bias_fn saw) for one
    variant through `multi_head_attention(..., bias_fn=...)`; memoised: the reference runs once a variant."""
    attention = _attention()
    pe, cfg, params = make(name)
    rng = np.random.default_rng(15)
    q, k, v, cotangent = (normal(rng, 2, 24, H, HEAD) for _ in range(4))
    positions = jnp.arange(100, 124, dtype=jnp.int32)
    seen = []

    def loss(q, k, v, params):
        def bias_fn(q_pos, k_pos):
            seen.append((q_pos.shape[0], k_pos.shape[0]))
            return pe.bias(params, q_pos, k_pos, cfg, n_head=H)

        out = attention.multi_head_attention(q, k, v, bias_fn=bias_fn, causal=True, q_positions=positions,
                                             k_positions=positions, implementation=implementation,
                                             block_size=BLOCK)
        return jnp.sum(out * cotangent), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(q, k, v, params)
    expected = _attention_float64(q, k, v, pe.bias(params, positions, positions, cfg, n_head=H), positions,
                                  positions)
    return np.asarray(out), expected, grads, seen


@pytest.mark.parametrize("implementation", _implementations())
@pytest.mark.parametrize("name", BIAS_NAMES)
def test_every_bias_variant_with_every_attention_implementation(name, implementation):
    """Forward against a float64 softmax; gradients (w.r.t. q, k, v and the variant's parameters) against the
    reference implementation's; the chunked one calls bias_fn block by block, never for the full [T, S]."""
    out, expected, grads, seen = _through_attention(name, implementation)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    reference_grads = _through_attention(name, "reference")[2]
    for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(reference_grads), strict=True):
        assert np.isfinite(np.asarray(g)).all()
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-4, atol=1e-4)
    if implementation == "chunked":
        assert seen and max(s for _, s in seen) <= BLOCK, f"bias_fn was called for (T, S) = {seen}"


def test_max_length_of_a_position_section():
    section = P.default_config()
    section.learned.max_len = 48
    for name in P.list_positional_encodings():
        section.name = name
        assert P.max_length(section) == (48 if name == "learned" else None)


# ---------------------------------------------------------------------------------------------- fair defaults


def test_matched_sinusoidal_table_has_the_token_embeddings_rms():
    # Over whole periods of the fastest pairs and many positions the table's RMS is 1/sqrt(2); matched, it is 0.02,
    # the std of the token embeddings at initialisation.
    pe = P.get_positional_encoding("sinusoidal")
    positions = jnp.arange(4096, dtype=jnp.int32)
    for scale, rms in ((1.0, 2 ** -0.5), (0.0, 0.02)):
        x = np.asarray(pe.embed({}, positions, {"scale": scale}, n_embd=16), np.float64)
        # the slowest frequencies have not turned once in 4096 positions: take the pairs that have
        assert np.sqrt(np.mean(x[:, :8] ** 2)) == pytest.approx(rms, rel=0.02)
    assert pe.token_scale({"scheme": "sqrt_d", "scale": 0.0}, n_embd=16) == 4.0  # Vaswani et al.: x sqrt(D)
    assert pe.token_scale({"scheme": "matched", "scale": 0.0}, n_embd=16) == 1.0
    x = np.asarray(pe.embed({}, positions, {"scheme": "sqrt_d", "scale": 0.0}, n_embd=16), np.float64)
    assert np.sqrt(np.mean(x[:, :8] ** 2)) == pytest.approx(2 ** -0.5, rel=0.02)  # sqrt_d: the unit table
    assert all(P.get_positional_encoding(n).token_scale(P.get_positional_encoding(n).defaults, n_embd=16) == 1.0
               for n in P.list_positional_encodings() if n != "sinusoidal")
    x1 = np.asarray(pe.embed({}, positions[:50], {"scale": 1.0}, n_embd=16))
    x3 = np.asarray(pe.embed({}, positions[:50], {"scale": 3.0}, n_embd=16))
    np.testing.assert_allclose(x3, 3.0 * x1, rtol=1e-6)


@pytest.mark.parametrize("block", [32, 64, 256])
def test_t5_derived_max_distance_trains_every_bucket_within_the_block(block):
    # Every bucket is reached by some distance the model sees in training (0 .. block - 1), so past the training
    # length the farthest keys read a trained bias; the paper's 128 at block 64 leaves the last buckets untrained.
    def buckets(n, max_distance):
        return set(np.asarray(P.t5_relative_bucket(-np.arange(n), bidirectional=False,
                                                   max_distance=max_distance)).tolist())

    derived = P.t5_max_distance(block)
    assert buckets(block, derived) == buckets(16 * block, derived)  # nothing new past the training length
    assert max(buckets(block, derived)) == 31
    if block <= 64:  # the paper's 128, sized for 512 tokens: buckets first met past the training length
        assert buckets(16 * block, 128) - buckets(block, 128)


def test_xpos_and_fire_derived_defaults_act_within_the_training_length():
    # xPos: across the block the decay of the slowest-decaying pair is the paper's zeta^(2) at L = 2 * scale_base.
    assert P.xpos_scale_base(64) == 32.0 and P.fire_init_L(64) == 64.0
    x = np.ones((1, 64, 4), np.float32)
    q = np.asarray(P.apply_xpos(jnp.asarray(x), jnp.arange(64), is_key=False, scale_base=P.xpos_scale_base(64)))
    zeta0 = 0.4 / 1.4  # the first pair's zeta
    assert np.linalg.norm(q[0, 63, :2]) / np.linalg.norm(q[0, 0, :2]) == pytest.approx(
        zeta0 ** (63 / 32), rel=1e-4)


@pytest.mark.parametrize("name,field", [("t5", "max_distance"), ("xpos", "scale_base"), ("fire", "init_L")])
def test_an_unresolved_derived_field_is_a_clear_error_not_a_silent_zero(name, field):
    pe = P.get_positional_encoding(name)
    cfg = {**pe.defaults, **RESOLVED[name], field: 0}
    params = pe.init(jax.random.key(0), cfg, n_embd=8, n_head=2, head_dim=4)
    positions = jnp.arange(4)
    with pytest.raises(ValueError, match=f"model.position.{name}.{field}=0 is derived from data.block_size"):
        if pe.bias is not None:
            pe.bias(params, positions, positions, cfg, n_head=2)
        else:
            q = jnp.ones((1, 4, 2, 4))
            pe.rotate(params, q, q, positions, positions, cfg)


def test_the_variant_table_of_the_docs_agrees_with_the_registry():
    """docs/positional.md holds the one table of variants: one row per registered name, each naming every field of
    the variant's defaults (issue 39.8: two copies once disagreed on what original_max_len=0 means) and, for each
    field the variant derives, the rule its record declares: "`field` (0 = <rule>" (issue 35.4)."""
    import os
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    row = re.compile(r"^\| `(\w+)` \| (?:-|embedding|rotation|bias) \| .*\|$", re.M)  # the variants' table
    with open(os.path.join(root, "docs", "positional.md"), encoding="utf-8") as f:
        rows = {m.group(1): m.group(0) for m in row.finditer(f.read()) if m.group(1) in P.list_positional_encodings()}
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        readme = sorted(m.group(1) for m in row.finditer(f.read()) if m.group(1) in P.list_positional_encodings())
    assert not readme, f"README.md holds variant rows {readme}: the table lives in docs/positional.md only"
    assert set(rows) == set(P.list_positional_encodings())
    defaults = P.default_config()
    for name, line in rows.items():
        fields_cell = line.split(" | ")[2]
        missing = [f for f in defaults[name] if f"`{f}`" not in fields_cell]
        assert not missing, f"the {name} row does not name {missing}"
        for field, rule in P.get_positional_encoding(name).derived.items():
            assert f"`{field}` (0 = {rule}" in fields_cell, f"the {name} row does not say {field} 0 = {rule}"


def test_derived_fields_default_to_zero_and_derive_a_nonzero_value():
    """Every field a variant declares derived is 0 in its defaults (0 = derive it) and derives to a usable value."""
    declared = {name: P.get_positional_encoding(name).derived for name in NAMES}
    assert {n for n, d in declared.items() if d} == {"sinusoidal", "learned", "rope", "xpos", "t5", "fire"}
    for name, fields in declared.items():
        pe = P.get_positional_encoding(name)
        assert all(pe.defaults[f] == 0 for f in fields), name
        for block in (1, 64, 1000):
            values = pe.derive(pe.defaults, block_size=block, positions=2 * block)
            assert set(values) == set(fields) and all(v > 0 for v in values.values()), (name, values)
            if pe.validate is not None:
                pe.validate({**pe.defaults, **values})
