"""Positional encodings as pure functions, and a registry of the variants by name.

Every variant acts at one or more of three points of a transformer, and nowhere else: the embedding, a rotation
of (q, k), or a bias on the logits. docs/positional.md holds the table of variants, their fields and papers
(tests/test_positional.py checks it against this registry).

The math is the public functions (`sinusoidal`, `learned_embedding`, `apply_rope`, `apply_xpos`,
`alibi_slopes`, `alibi_bias`, `t5_relative_bucket`, `t5_bias`, `kerple_log_bias`, `fire_bias`); a variant is a
`PositionalEncoding` record of small adapters from the model's call signatures to them. Every function takes
explicit position indices (int32), so a decoder with a KV cache passes the new tokens' absolute positions and
the cache slots' positions and gets the numbers of the full forward pass: a rotation depends only on each
vector's own position, a bias only on the (query position, key position) pair -- which also lets the chunked
attention evaluate a bias block by block.

How to add a variant (nothing outside this file, its tests and the docs table changes):
  1. Write the math as a pure function, with the formula and the paper in its docstring.
  2. Write its adapters: `init(key, cfg, *, n_embd, n_head, head_dim) -> params`, whichever of `embed`,
     `rotate`, `bias` it needs (signatures on `PositionalEncoding`), and `validate(cfg)` for its fields.
  3. Add one line: `register(PositionalEncoding("name", defaults={...}, init=..., bias=..., validate=...))`.
     Its `defaults` become the `model.position.<name>.*` config fields (`default_config()`). A field sized to the
     training length defaults to 0 and the record declares its rule: `derived={"field": "`data.block_size` / 2"}`
     (as docs/positional.md's table writes it) and `derive=lambda cfg, *, block_size, positions: {"field": ...}`;
     `config.resolve` fills it (`derived_defaults`), nothing else changes. Add the variant's row to the table.
  4. Add its property tests to tests/test_positional.py and a float64 reference to
     tests/reference_positional.py; the model tests (causality, KV cache = full forward) pick every name up.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

Params = dict  # pytree of arrays, {} when the variant has none


# ---------------------------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True, eq=False)  # compared and hashed by identity: one record per name
class PositionalEncoding:
    """One variant: its config fields and the pure functions for the points where it acts (None elsewhere).

    init(key, cfg, *, n_embd, n_head, head_dim) -> Params
    embed(params, positions_T, cfg, *, n_embd) -> x_TxD                   (added to the token embeddings)
    token_scale(cfg, *, n_embd) -> float                                  (the token embeddings' factor, with embed)
    rotate(params, q_BxTxHxd, k_BxSxKxd, q_positions_T, k_positions_S, cfg) -> (q, k)
    bias(params, q_positions_T, k_positions_S, cfg, *, n_head) -> bias_HxTxS  (float32, added to the logits)
    max_length(cfg) -> int | None                                          (longest sequence; None = any)
    derive(cfg, *, block_size, positions) -> {field: value}                (the fields `derived` names)
    validate(cfg) -> None                                                  (raises a one-line ValueError)
    extension_fields                     the fields that rescale positions without touching parameters (context
                                         extension): a trained model may take new values zero-shot or to fine-tune
    derived                              {field: its rule as docs/positional.md writes it}: the fields whose
                                         default 0 means "derived when the config is resolved", from the
                                         training length `data.block_size` (`block_size`), the positions
                                         training draws from (`positions`: randomize_max_len or block_size), or
                                         the variant's other fields; `derive` computes them (`derived_defaults`)
    `cfg` is the variant's own sub-config (`model.position.<name>`) as a plain Mapping.
    """

    name: str
    defaults: dict
    init: Callable
    embed: Callable | None = None
    rotate: Callable | None = None
    bias: Callable | None = None
    max_length: Callable = lambda cfg: None
    validate: Callable | None = None
    extension_fields: tuple[str, ...] = ()
    token_scale: Callable = lambda cfg, *, n_embd: 1.0
    # Why the variant cannot run without the causal mask (an encoder), or None where it has a bidirectional form.
    bidirectional: Callable[[Mapping], str | None] = lambda cfg: None
    derived: Mapping[str, str] = dataclasses.field(default_factory=dict)
    derive: Callable = lambda cfg, *, block_size, positions: {}

    @property
    def acts_at(self) -> tuple[str, ...]:
        points = (("embedding", self.embed), ("rotation", self.rotate), ("bias", self.bias))
        return tuple(point for point, fn in points if fn is not None)


_REGISTRY: dict[str, PositionalEncoding] = {}


def register(pe: PositionalEncoding) -> PositionalEncoding:
    if pe.name in _REGISTRY:
        raise ValueError(f"positional encoding {pe.name!r} is already registered")
    _REGISTRY[pe.name] = pe
    return pe


def list_positional_encodings() -> list[str]:
    return sorted(_REGISTRY)


def get_positional_encoding(name: str) -> PositionalEncoding:
    if name not in _REGISTRY:
        names = ", ".join(list_positional_encodings())
        raise ValueError(f"model.position.name={name!r}; choose one of: {names}")
    return _REGISTRY[name]


def max_length(position_cfg) -> int | None:
    """The most positions the configured variant can encode (a learned table's size), None where unbounded;
    `position_cfg` is the `model.position` section (name + each variant's fields). The one lookup of it."""
    return get_positional_encoding(position_cfg.name).max_length(position_cfg[position_cfg.name].to_dict())


def bidirectional_problem(position_cfg) -> str | None:
    """Why the configured variant has no bidirectional (encoder) form, or None; `position_cfg` = `model.position`."""
    return get_positional_encoding(position_cfg.name).bidirectional(position_cfg[position_cfg.name].to_dict())


def default_config() -> ml_collections.ConfigDict:
    """`model.position`: `{"name": "rope", "<variant>": {its defaults}}` for every registered variant."""
    # randomize_max_len: Ruoss et al. 2023's randomized positions in training (see `random_positions`); 0 = off.
    # randomize_per: "sequence" (a draw for every training sequence, as the paper describes it) or "batch" (one draw
    # shared by the micro-batch, as the authors' code does it).
    cfg = ml_collections.ConfigDict({"name": "rope", "randomize_max_len": 0, "randomize_per": "sequence"})
    for name in list_positional_encodings():
        cfg[name] = ml_collections.ConfigDict(dict(_REGISTRY[name].defaults))
    return cfg


def derived_defaults(position_cfg: Mapping, *, block_size: int) -> dict[str, dict]:
    """{variant: {field: value}} for every field a variant derives (`PositionalEncoding.derived`) that is 0 in
    `position_cfg` (the `model.position` section as a plain dict); what `config.resolve` writes into the config.

    Every variant present is derived, not only the chosen one, so a resolved config records one value for each
    field. A field missing from the section (a config saved before it existed) stays missing.
    """
    positions = position_cfg.get("randomize_max_len", 0) or block_size  # a learned row for every position drawn
    filled = {}
    for name in list_positional_encodings():
        cfg, pe = position_cfg.get(name), _REGISTRY[name]
        zeros = [f for f in pe.derived if isinstance(cfg, Mapping) and cfg.get(f, None) == 0]
        if zeros:
            values = pe.derive(cfg, block_size=block_size, positions=positions)
            filled[name] = {f: values[f] for f in zeros}
    return filled


def block_size_fields() -> list[str]:
    """The dotted fields derived from `data.block_size` (for `config.DERIVED_FROM`), in registry order."""
    return [f"model.position.{name}.{field}" for name in _REGISTRY for field, rule in _REGISTRY[name].derived.items()
            if "data.block_size" in rule]


def _require(ok: bool, variant: str, field: str, value, rule: str) -> None:
    if not ok:
        raise ValueError(f"model.position.{variant}.{field}={value!r}; {rule}")


def _resolved(cfg: Mapping, variant: str, field: str):
    """A field whose 0 means "derived from data.block_size": the model needs the resolved value."""
    if cfg[field] == 0:
        raise ValueError(f"model.position.{variant}.{field}=0 is derived from data.block_size; resolve the config "
                         "first (jaxformer.config.resolve) or set it")
    return cfg[field]


def _no_params(key, cfg, *, n_embd, n_head, head_dim) -> Params:
    return {}


def _f32(positions):
    return jnp.asarray(positions).astype(jnp.float32)


def random_positions(key, length: int, max_len: int):
    """Randomized positions (Ruoss et al. 2023): a sorted sample of `length` distinct positions from [0, max_len).

    Trained on such positions, a model sees the position values (and distances) of sequences up to max_len long
    while training on `length`-token ones, and at evaluation gets 0..T-1 for any T <= max_len. One sample, int32 `[T]`:
    the paper gives every training sequence its own (`model.position.randomize_per=sequence`, vmapped over keys),
    the authors' code one per forward pass (`batch`).
    """
    if not 1 <= length <= max_len:
        raise ValueError(f"model.position.randomize_max_len={max_len} must be >= the sequence length {length}")
    return jnp.sort(jax.random.choice(key, max_len, (length,), replace=False)).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------- none (NoPE)

register(PositionalEncoding(
    "none", defaults={}, init=_no_params,
    # NoPE's positions come from the causal mask alone; without it the model is a bag of tokens.
    bidirectional=lambda cfg: "NoPE's only position signal is the causal mask, so an encoder would see a bag of "
    "tokens; choose learned, sinusoidal, rope, alibi, t5 (bidirectional=True), kerple or fire"))


# ---------------------------------------------------------------------------------------------- sinusoidal


def sinusoidal(positions_T, dim: int):
    """Vaswani et al. 2017: PE(p, 2i) = sin(p / 10000^(2i/D)), PE(p, 2i+1) = cos(p / 10000^(2i/D)); `[T, D]`.

    Any position, no table; an odd `dim` drops the last cosine. The frequencies are computed in float64 and
    rounded once; the float32 angles then carry an absolute error of about |p| * 2^-24.
    """
    inv_freq_F = 10000.0 ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)  # F = ceil(dim / 2)
    angle_TxF = _f32(positions_T)[:, None] * jnp.asarray(inv_freq_F, jnp.float32)[None, :]
    x_TxFx2 = jnp.stack([jnp.sin(angle_TxF), jnp.cos(angle_TxF)], axis=-1)
    return x_TxFx2.reshape(angle_TxF.shape[0], -1)[:, :dim]


# The token embeddings' initial standard deviation (model.py's `wte`, GPT-2's 0.02), which the table is matched to.
TOKEN_EMBEDDING_STD = 0.02
# sin^2 + cos^2 = 1 per pair, so the table's root mean square over its elements is 1/sqrt(2).
SINUSOIDAL_RMS = 1.0 / math.sqrt(2.0)
SINUSOIDAL_SCHEMES = ("sqrt_d", "matched")


def sinusoidal_matched_scale() -> float:
    """The factor that gives the sinusoidal table the token embeddings' RMS: 0.02 / (1/sqrt 2) = 0.0283."""
    return TOKEN_EMBEDDING_STD / SINUSOIDAL_RMS


def sinusoidal_scale(scheme: str) -> float:
    """The table's factor under each scheme that keeps position from swamping content at the input.

    - "sqrt_d" (Vaswani et al. 2017, §3.4): the token embeddings are multiplied by sqrt(D) (`_sinusoidal_token_scale`)
      and the unit-amplitude table is added as it is: 0.02 sqrt(D) per element against 0.71.
    - "matched": the token embeddings stay as GPT initialises them (std 0.02) and the table is scaled to their RMS.
    With GPT-style 0.02 embeddings and neither, the table (RMS 0.71) outweighs content ~35:1 and must be unlearned
    first. At 2L/64D on tiny_shakespeare, sqrt_d measured 1.980 +- 0.015 against matched 2.063 +- 0.034 (2 seeds,
    experiments/pe_extrapolation/sinusoidal_scheme), so it is the default.
    """
    return 1.0 if scheme == "sqrt_d" else sinusoidal_matched_scale()


def _sinusoidal_token_scale(cfg: Mapping, *, n_embd: int) -> float:
    return math.sqrt(n_embd) if cfg.get("scheme", "matched") == "sqrt_d" else 1.0


def _sinusoidal_validate(cfg: Mapping) -> None:
    _require(cfg.get("scheme", "matched") in SINUSOIDAL_SCHEMES, "sinusoidal", "scheme", cfg.get("scheme"),
             f"choose one of: {', '.join(SINUSOIDAL_SCHEMES)}")
    _require(cfg["scale"] >= 0, "sinusoidal", "scale", cfg["scale"],
             "must be >= 0 (0 = the scheme's: 1 for sqrt_d, 0.0283 for matched)")


register(PositionalEncoding(
    "sinusoidal", defaults={"scheme": "sqrt_d", "scale": 0.0}, init=_no_params,
    embed=lambda params, positions_T, cfg, *, n_embd: (
        (cfg["scale"] or sinusoidal_scale(cfg.get("scheme", "matched"))) * sinusoidal(positions_T, n_embd)),
    token_scale=_sinusoidal_token_scale, validate=_sinusoidal_validate,
    derived={"scale": "the scheme's"},
    derive=lambda cfg, *, block_size, positions: {"scale": sinusoidal_scale(cfg.get("scheme", "matched"))}))


# ---------------------------------------------------------------------------------------------- learned


def learned_embedding(table_LxD, positions_T):
    """A trained absolute table (Gehring et al. 2017; GPT, Radford et al. 2018): x_p = W[p]; `[T, D]`.

    The sequence length is checked statically, at trace time. A position index outside the table -- possible
    only when positions are computed, e.g. while decoding -- reads NaN rather than a silently clamped row.
    """
    max_len, T = table_LxD.shape[0], positions_T.shape[0]
    if T > max_len:
        raise ValueError(f"sequence of {T} positions exceeds model.position.learned.max_len={max_len}")
    return jnp.take(table_LxD, positions_T, axis=0, mode="fill", fill_value=jnp.nan)


def _learned_validate(cfg: Mapping) -> None:
    _require(cfg["max_len"] >= 1, "learned", "max_len", cfg["max_len"], "must be >= 1 (0 = data.block_size)")


register(PositionalEncoding(
    "learned", defaults={"max_len": 0},  # 0 = the positions trained
    init=lambda key, cfg, *, n_embd, n_head, head_dim: {
        "table": 0.02 * jax.random.normal(key, (cfg["max_len"], n_embd), jnp.float32)},
    embed=lambda params, positions_T, cfg, *, n_embd: learned_embedding(params["table"], positions_T),
    max_length=lambda cfg: cfg["max_len"], validate=_learned_validate,
    # With randomized positions (Ruoss et al. 2023) a row for every position drawn, else for the block.
    derived={"max_len": "`data.block_size`"},
    derive=lambda cfg, *, block_size, positions: {"max_len": positions}))


# ---------------------------------------------------------------------------------------------- rope

ROPE_SCALINGS = ("none", "linear", "ntk", "yarn", "llama3")
YARN_RAMPS = ("code", "paper")  # YaRN's ramp: linear in the dimension index (authors' code) or in rotations (paper)
YARN_ALPHA, YARN_BETA = 1.0, 32.0  # Peng et al. 2023: ramp bounds, in rotations per original context
YARN_REFERENCE_LEN = 4096  # the context (Llama 2) those bounds were chosen for: `yarn_bounds_scaled` scales from it


def rotary_dim(head_dim: int, fraction: float) -> int:
    """Dims rotated by partial RoPE (GPT-NeoX's rotary_pct): floor(fraction * d), rounded down to even."""
    return 2 * int(fraction * head_dim // 2)


def yarn_bounds_scaled(original_max_len: int) -> tuple[float, float]:
    """YaRN's ramp bounds for a short training context L: the paper's (alpha, beta) = (1, 32) times L / 4096.

    r_i = L theta_i / (2 pi) is proportional to L, so at L = 64 even the fastest frequency makes only 10.2 turns
    and beta = 32 keeps no dimension: YaRN degenerates to PI plus a temperature. Scaling both bounds by L / 4096
    (Llama 2's context, for which Peng et al. 2023 chose them) keeps the same dimensions as the paper does at 4096:
    at L = 64 (alpha, beta) = (1/64, 1/2), i.e. about the first third of the frequencies kept, the last quarter
    interpolated. A documented choice for small-scale experiments, not the paper's setting; it keeps dimensions with
    alpha < r < 1, which never completed a turn in training (the paper's alpha = 1 interpolates them), and on passkey
    at L = 32 it retrieved worse than the paper's bounds (experiments/effective_context/README.md).
    """
    scale = original_max_len / YARN_REFERENCE_LEN
    return YARN_ALPHA * scale, YARN_BETA * scale


def yarn_ramp(rot_dim: int, *, theta: float, original_max_len: int, form: str = "code", alpha: float = YARN_ALPHA,
              beta: float = YARN_BETA) -> np.ndarray:
    """YaRN's gamma_i in [0, 1] per frequency (1 = keep theta_i, 0 = interpolate it by the factor); `[d/2]`.

    With r_i = L theta_i / (2 pi) rotations of frequency i in the original context L (Peng et al. 2023, eq. 17):
    - "paper" (eq. 18): gamma = clip((r_i - alpha) / (beta - alpha), 0, 1), by default alpha = 1, beta = 32
      (`model.position.rope.yarn_alpha`, `yarn_beta`; `yarn_bounds_scaled` for short contexts) -- linear in r;
    - "code" (the authors' released code, as transformers and the released YaRN models compute it): the dimension
      index where r = n is i(n) = d ln(L / (2 pi n)) / (2 ln theta); lo = floor(i(beta)), hi = ceil(i(alpha)),
      clipped to [0, d - 1]; gamma_i = 1 - clip((i - lo) / (hi - lo), 0, 1) -- linear in the index i.
    Both keep the frequencies with more than beta rotations and interpolate those with fewer than alpha; they differ
    in between (r falls geometrically in i), and the "code" form is what a checkpoint trained with YaRN expects.
    """
    if form not in YARN_RAMPS:
        raise ValueError(f"model.position.rope.yarn_ramp={form!r}; choose one of: {', '.join(YARN_RAMPS)}")
    if not 0 < alpha < beta:
        raise ValueError(f"model.position.rope.yarn_alpha={alpha!r}, yarn_beta={beta!r}; need 0 < yarn_alpha < "
                         "yarn_beta (the paper's 1 and 32)")
    i = np.arange(rot_dim // 2, dtype=np.float64)
    if form == "paper":
        rotations = original_max_len * theta ** (-2.0 * i / rot_dim) / (2.0 * np.pi)
        return np.clip((rotations - alpha) / (beta - alpha), 0.0, 1.0)
    index_of = lambda n: rot_dim * math.log(original_max_len / (2.0 * math.pi * n)) / (2.0 * math.log(theta))
    lo = max(math.floor(index_of(beta)), 0)
    hi = min(math.ceil(index_of(alpha)), rot_dim - 1)
    hi = hi + 0.001 if hi == lo else hi  # the authors' guard against a zero-width ramp
    return 1.0 - np.clip((i - lo) / (hi - lo), 0.0, 1.0)


def rope_frequencies(rot_dim: int, *, theta: float = 10000.0, scaling: str | None = None, factor: float = 1.0,
                     original_max_len: int = 0, low_freq_factor: float = 1.0,
                     high_freq_factor: float = 4.0, yarn_ramp_form: str = "code", yarn_alpha: float = YARN_ALPHA,
                     yarn_beta: float = YARN_BETA) -> np.ndarray:
    """RoPE's frequencies theta_i = theta^(-2i/d), i < d/2, and their context-extension rescalings; `[d/2]`.

    - linear (position interpolation, Chen et al. 2023): theta_i / s -- RoPE at positions p / s;
    - ntk (NTK-aware, bloc97 2023): base theta * s^(d/(d-2)): the highest frequency is unchanged, the lowest
      is divided by exactly s;
    - yarn (NTK-by-parts, Peng et al. 2023, eqs. 17-20): r_i = L / lambda_i full turns of the wavelength
      lambda_i = 2 pi / theta_i fit in the original context L; gamma(r) = clip((r - alpha) / (beta - alpha),
      0, 1) with alpha = 1, beta = 32 by default (`yarn_alpha`, `yarn_beta`);
      h(theta_i) = (1 - gamma) theta_i / s + gamma theta_i, with gamma from
      `yarn_ramp` in the paper's form (linear in r) or the authors' code's (linear in the dimension index).
    - llama3 (Meta's Llama 3.1 release, `apply_scaling`): wavelengths lambda_i shorter than L / high_freq_factor
      keep theta_i, longer than L / low_freq_factor become theta_i / s, and between them
      (1 - g) theta_i / s + g theta_i with g = (L / lambda_i - low_freq_factor) / (high - low): a ramp in
      L / lambda_i like YaRN's, with no attention temperature.
    Static (config and shape only), so float64 NumPy, rounded to float32 once where used.
    """
    scaling = "none" if scaling is None else scaling
    if scaling not in ROPE_SCALINGS:
        names = ", ".join(ROPE_SCALINGS)
        raise ValueError(f"model.position.rope.scaling={scaling!r}; choose one of: {names}")
    i = np.arange(rot_dim // 2, dtype=np.float64)
    if scaling == "ntk":
        if rot_dim <= 2:
            raise ValueError(f"NTK-aware scaling needs more than 2 rotated dims, got {rot_dim}")
        theta = theta * factor ** (rot_dim / (rot_dim - 2))
    freq = theta ** (-2.0 * i / rot_dim)
    if scaling == "linear":
        freq = freq / factor
    elif scaling == "yarn":
        if original_max_len <= 0:
            raise ValueError(f"model.position.rope.original_max_len={original_max_len!r}; YaRN needs the "
                             "original (training) context length, > 0")
        ramp = yarn_ramp(rot_dim, theta=theta, original_max_len=original_max_len, form=yarn_ramp_form,
                         alpha=yarn_alpha, beta=yarn_beta)
        freq = (1.0 - ramp) * freq / factor + ramp * freq
    elif scaling == "llama3":
        if original_max_len <= 0 or not 0 < low_freq_factor < high_freq_factor:
            raise ValueError(f"model.position.rope: llama3 scaling needs original_max_len > 0 (got {original_max_len}) "
                             f"and 0 < low_freq_factor < high_freq_factor (got {low_freq_factor}, {high_freq_factor})")
        ratio = original_max_len * freq / (2.0 * np.pi)  # L / lambda_i
        smooth = np.clip((ratio - low_freq_factor) / (high_freq_factor - low_freq_factor), 0.0, 1.0)
        freq = (1.0 - smooth) * freq / factor + smooth * freq
    return freq


def yarn_attention_factor(factor: float) -> float:
    """YaRN's attention temperature (Peng et al. 2023, eq. 22): sqrt(1/t) = 0.1 ln(s) + 1, on q and k each."""
    return 0.1 * math.log(factor) + 1.0 if factor > 1.0 else 1.0


def _rotate_pairs(x, cos, sin):
    """(x_2i, x_2i+1) -> (x_2i cos - x_2i+1 sin, x_2i sin + x_2i+1 cos): Su et al.'s block-diagonal R."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).reshape(x.shape)


def _cos_sin(x, positions_T, freq_F):
    """cos and sin of p * theta_i, shaped `[1, ..., T, F]` to meet x `[..., T, .]` without rank promotion."""
    angle_TxF = _f32(positions_T)[:, None] * jnp.asarray(freq_F, jnp.float32)[None, :]
    shape = (1,) * (x.ndim - 2) + angle_TxF.shape
    return jnp.cos(angle_TxF).reshape(shape), jnp.sin(angle_TxF).reshape(shape)


def apply_rope(x, positions_T, *, theta: float = 10000.0, fraction: float = 1.0, scaling: str | None = None,
               factor: float = 1.0, original_max_len: int = 0, low_freq_factor: float = 1.0,
               high_freq_factor: float = 4.0, yarn_ramp: str = "code", yarn_alpha: float = YARN_ALPHA,
               yarn_beta: float = YARN_BETA):
    """RoPE (Su et al. 2021): rotates each pair (x_2i, x_2i+1) of the last axis by the angle p * theta_i.

    `x` is `[..., T, d]`, `positions_T` its positions (int; float for interpolated positions). Since
    R_n^T R_m = R_{m-n}, q_n . k_m depends only on m - n. Only the first `rotary_dim(d, fraction)` dims rotate
    (partial rotary, GPT-NeoX); the rest pass through. `scaling` (None/"none", "linear", "ntk", "yarn") with
    `factor` s >= 1 rescales the frequencies (`rope_frequencies`); "yarn" also multiplies the whole vector,
    rotated dims or not, by YaRN's sqrt(1/t) = 0.1 ln(s) + 1, so with q and k both rotated the logits carry
    the paper's 1/t. Computed in float32, returned in x's dtype.
    """
    rot = rotary_dim(x.shape[-1], fraction)
    if rot == 0:
        raise ValueError(f"model.position.rope.fraction={fraction!r} rotates none of the {x.shape[-1]} "
                         "head dims")
    freq_F = rope_frequencies(rot, theta=theta, scaling=scaling, factor=factor,
                              original_max_len=original_max_len, low_freq_factor=low_freq_factor,
                              high_freq_factor=high_freq_factor, yarn_ramp_form=yarn_ramp, yarn_alpha=yarn_alpha,
                              yarn_beta=yarn_beta)
    cos, sin = _cos_sin(x, positions_T, freq_F)
    x32 = x.astype(jnp.float32)
    y = jnp.concatenate([_rotate_pairs(x32[..., :rot], cos, sin), x32[..., rot:]], axis=-1)
    if scaling == "yarn":
        y = y * yarn_attention_factor(factor)
    return y.astype(x.dtype)


def _per_head(fn, x_BxTxHxd, positions_T):
    """Applies fn, which transforms `[..., T, d]`, to `[B, T, H, d]`: the heads axis moves out of the way."""
    return jnp.swapaxes(fn(jnp.swapaxes(x_BxTxHxd, 1, 2), positions_T), 1, 2)


def _rope_rotate(params, q_BxTxHxd, k_BxSxKxd, q_positions_T, k_positions_S, cfg: Mapping):
    fields = ("theta", "fraction", "scaling", "factor", "original_max_len", "low_freq_factor", "high_freq_factor",
              "yarn_ramp", "yarn_alpha", "yarn_beta")
    rope = lambda x, positions: apply_rope(x, positions, **{f: cfg[f] for f in fields})
    return _per_head(rope, q_BxTxHxd, q_positions_T), _per_head(rope, k_BxSxKxd, k_positions_S)


def _rope_validate(cfg: Mapping) -> None:
    _require(cfg["scaling"] in ROPE_SCALINGS, "rope", "scaling", cfg["scaling"],
             f"choose one of: {', '.join(ROPE_SCALINGS)}")
    _require(0.0 < cfg["fraction"] <= 1.0, "rope", "fraction", cfg["fraction"], "must be in (0, 1]")
    _require(cfg["theta"] > 0, "rope", "theta", cfg["theta"], "must be > 0")
    _require(cfg["factor"] >= 1.0, "rope", "factor", cfg["factor"], "must be >= 1 (1 = no context extension)")
    _require(cfg["scaling"] not in ("yarn", "llama3") or cfg["original_max_len"] > 0, "rope", "original_max_len",
             cfg["original_max_len"],
             f"{'YaRN' if cfg['scaling'] == 'yarn' else 'llama3 scaling'} needs the original (training) context "
             "length, > 0")
    _require(0 < cfg["low_freq_factor"] < cfg["high_freq_factor"], "rope", "low_freq_factor",
             cfg["low_freq_factor"], f"must be in (0, high_freq_factor={cfg['high_freq_factor']})")
    _require(cfg["yarn_ramp"] in YARN_RAMPS, "rope", "yarn_ramp", cfg["yarn_ramp"],
             f"choose one of: {', '.join(YARN_RAMPS)}")
    _require(0 < cfg["yarn_alpha"], "rope", "yarn_alpha", cfg["yarn_alpha"], "must be > 0 (the paper's 1)")
    _require(cfg["yarn_alpha"] < cfg["yarn_beta"], "rope", "yarn_alpha", cfg["yarn_alpha"],
             f"must be below yarn_beta={cfg['yarn_beta']} (the ramp runs from alpha up to beta rotations; the "
             "paper's 1 and 32)")


register(PositionalEncoding(
    "rope",
    defaults={"theta": 10000.0, "fraction": 1.0, "scaling": "none", "factor": 1.0, "original_max_len": 0,
              "low_freq_factor": 1.0, "high_freq_factor": 4.0,  # the last two: llama3 scaling only
              "yarn_ramp": "code", "yarn_alpha": YARN_ALPHA, "yarn_beta": YARN_BETA},  # the last three: YaRN only
    init=_no_params, rotate=_rope_rotate, validate=_rope_validate,
    extension_fields=("theta", "scaling", "factor", "original_max_len", "low_freq_factor", "high_freq_factor",
                      "yarn_ramp", "yarn_alpha", "yarn_beta"),
    derived={"original_max_len": "`data.block_size`"},  # YaRN's and llama3's "trained context"
    derive=lambda cfg, *, block_size, positions: {"original_max_len": block_size}))


# ---------------------------------------------------------------------------------------------- xpos


def apply_xpos(x, positions_T, *, is_key: bool, theta: float = 10000.0, scale_base: float = 512.0,
               gamma: float = 0.4, center: int = 0):
    """xPos (Sun et al. 2022): RoPE scaled so that q_n . k_m decays as zeta_i^((n - m) / scale_base) per pair.

    zeta_i = (2i/d + gamma) / (1 + gamma) in (0, 1). A query at n is scaled by zeta_i^(n'/scale_base) and a
    key at m (`is_key`) by zeta_i^(-m'/scale_base), where p' = p - center: each vector depends on its own
    position only (a KV cache works), and the shift cancels in q . k. The paper's scale_base = 512 keeps the
    factors within float32's range (1e+-38) for |p - center| up to ~36k, float16's for ~4.5k; the paper's code
    centres on half of each call's length, which a KV cache cannot reproduce per position, so `center` is a
    fixed config field (set it near the middle of the longest sequences when they are long and in float16).
    `x` is `[..., T, d]`; computed in float32, returned in x's dtype.
    """
    d = x.shape[-1]
    cos, sin = _cos_sin(x, positions_T, rope_frequencies(d, theta=theta))
    log_zeta_F = np.log((np.arange(0, d, 2, dtype=np.float64) / d + gamma) / (1.0 + gamma))
    power_T = (_f32(positions_T) - center) / scale_base
    power_T = -power_T if is_key else power_T
    scale_TxF = jnp.exp(power_T[:, None] * jnp.asarray(log_zeta_F, jnp.float32)[None, :])
    scale = jnp.repeat(scale_TxF, 2, axis=-1).reshape(cos.shape[:-1] + (d,))  # both dims of a pair
    return (_rotate_pairs(x.astype(jnp.float32), cos, sin) * scale).astype(x.dtype)


def _xpos_rotate(params, q_BxTxHxd, k_BxSxKxd, q_positions_T, k_positions_S, cfg: Mapping):
    kw = {f: cfg[f] for f in ("theta", "gamma", "center")}
    kw["scale_base"] = _resolved(cfg, "xpos", "scale_base")
    q = _per_head(lambda x, positions: apply_xpos(x, positions, is_key=False, **kw), q_BxTxHxd, q_positions_T)
    k = _per_head(lambda x, positions: apply_xpos(x, positions, is_key=True, **kw), k_BxSxKxd, k_positions_S)
    return q, k


def xpos_scale_base(block_size: int) -> float:
    """xPos's scale_base for a training length L: L / 2, the paper's ratio (512 at L = 1024, Sun et al. 2022).

    The decay zeta_i^(distance / scale_base) is meant to act within the training length; at 512 a model trained on
    64 tokens sees at most zeta^(1/8), i.e. almost plain RoPE. float32 holds the key factors zeta_i^(-p/scale_base)
    up to |p - center| ~ 70 scale_base (35 L).
    """
    return block_size / 2.0


def _xpos_validate(cfg: Mapping) -> None:
    _require(cfg["scale_base"] >= 0, "xpos", "scale_base", cfg["scale_base"],
             "must be > 0 (0 = data.block_size / 2)")
    for field in ("theta", "gamma"):
        _require(cfg[field] > 0, "xpos", field, cfg[field], "must be > 0")


register(PositionalEncoding(
    "xpos", defaults={"theta": 10000.0, "scale_base": 0.0, "gamma": 0.4, "center": 0},  # 0 = xpos_scale_base(L)
    init=_no_params, rotate=_xpos_rotate, validate=_xpos_validate,
    extension_fields=("theta", "scale_base", "center"),
    derived={"scale_base": "`data.block_size` / 2"},
    derive=lambda cfg, *, block_size, positions: {"scale_base": xpos_scale_base(block_size)},
    # The decay zeta^((i - j)/scale_base) grows without bound for keys after the query (Sun et al. 2022 §3.2).
    bidirectional=lambda cfg: "xPos's decay becomes a growth for keys after the query (Sun et al. 2022 use it "
    "causally); choose rope, the same rotation without the decay"))


# ---------------------------------------------------------------------------------------------- alibi


def alibi_slopes(num_heads: int) -> np.ndarray:
    """ALiBi's per-head slopes (Press et al. 2022); float64 `[H]`.

    H a power of two: the geometric sequence 2^(-8/H), 2^(-16/H), ..., 2^-8. Otherwise the paper's rule: the
    slopes for the largest power of two P < H, then every other slope for 2P, for the remaining H - P heads.
    """
    if num_heads & (num_heads - 1) == 0:
        return 2.0 ** (-8.0 * np.arange(1, num_heads + 1) / num_heads)
    closest = 2 ** int(math.floor(math.log2(num_heads)))
    return np.concatenate([alibi_slopes(closest), alibi_slopes(2 * closest)[0::2][: num_heads - closest]])


def alibi_bias(q_positions_T, k_positions_S, num_heads: int):
    """ALiBi (Press et al. 2022): bias[h, i, j] = -slope_h * |i - j|; float32 `[H, T, S]`.

    The paper's -slope * (i - j) for keys at or before the query; |i - j| agrees there and stays sensible for
    later keys (masked in a decoder, attended to by a bidirectional encoder).
    """
    distance_TxS = jnp.abs(q_positions_T[:, None] - k_positions_S[None, :]).astype(jnp.float32)
    slopes_H = jnp.asarray(alibi_slopes(num_heads), jnp.float32)
    return -slopes_H[:, None, None] * distance_TxS[None]


register(PositionalEncoding(
    "alibi", defaults={}, init=_no_params,
    bias=lambda params, q_positions_T, k_positions_S, cfg, *, n_head: alibi_bias(
        q_positions_T, k_positions_S, n_head)))


# ---------------------------------------------------------------------------------------------- t5


def t5_relative_bucket(relative_position, *, bidirectional: bool, num_buckets: int = 32,
                       max_distance: int = 128):
    """T5's bucket of relative_position = key position - query position (Raffel et al. 2020; the T5 code).

    Bidirectional: half the buckets for keys after the query. Unidirectional (decoder): only earlier keys
    count, n = max(-relative_position, 0). With nb buckets per direction and max_exact = nb / 2, each distance
    below max_exact has its own bucket, longer ones share log-spaced buckets and all from max_distance on
    share the last: bucket(n) = n if n < max_exact, else
    min(max_exact + floor(log(n / max_exact) / log(max_distance / max_exact) * (nb - max_exact)), nb - 1).
    The log is taken in float32, as in the T5 code. int32, relative_position's shape.
    """
    rp = jnp.asarray(relative_position, jnp.int32)
    bucket = jnp.zeros_like(rp)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + jnp.where(rp > 0, num_buckets, 0)
        n = jnp.abs(rp)
    else:
        n = jnp.maximum(-rp, 0)
    max_exact = num_buckets // 2
    log_ratio = jnp.log(jnp.maximum(n, max_exact).astype(jnp.float32) / max_exact)
    log_ratio = log_ratio / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
    return bucket + jnp.where(n < max_exact, n, jnp.minimum(large, num_buckets - 1))


def t5_bias(table_NxH, q_positions_T, k_positions_S, *, bidirectional: bool, max_distance: int = 128):
    """T5's relative attention bias (Raffel et al. 2020): bias[h, i, j] = table[bucket(j - i), h]; [H, T, S].

    `table_NxH` holds one learned scalar per (bucket, head); float32 out.
    """
    relative_TxS = k_positions_S[None, :] - q_positions_T[:, None]
    bucket_TxS = t5_relative_bucket(relative_TxS, bidirectional=bidirectional, num_buckets=table_NxH.shape[0],
                                    max_distance=max_distance)
    return jnp.transpose(table_NxH.astype(jnp.float32)[bucket_TxS], (2, 0, 1))


def t5_max_distance(block_size: int, *, num_buckets: int = 32, bidirectional: bool = False) -> int:
    """T5's max_distance for a training length L: L // 2, so every bucket sees distances during training.

    Raffel et al. use 128 at L = 512. With max_distance > L, the last buckets (distances that never occur in
    training) keep their initial values and are met only past the training length; at L // 2 the last bucket already
    collects every distance from L/2 up, so what is beyond L reads a trained value. Kept above the exact range
    (buckets per direction / 2), which `_t5_validate` requires.
    """
    per_direction = num_buckets // 2 if bidirectional else num_buckets
    return max(block_size // 2, per_direction // 2 + 1)


def _t5_validate(cfg: Mapping) -> None:
    per_direction = cfg["num_buckets"] // 2 if cfg["bidirectional"] else cfg["num_buckets"]
    _require(per_direction >= 2, "t5", "num_buckets", cfg["num_buckets"],
             "must leave >= 2 buckets per direction (>= 4 when bidirectional)")
    # 0 = derived from data.block_size when the config is resolved (t5_max_distance)
    _require(cfg["max_distance"] == 0 or cfg["max_distance"] > per_direction // 2, "t5", "max_distance",
             cfg["max_distance"], f"must exceed the exact range, buckets per direction / 2 = {per_direction // 2} "
             "(0 = data.block_size // 2)")


register(PositionalEncoding(
    "t5", defaults={"num_buckets": 32, "max_distance": 0, "bidirectional": False},  # 0 = t5_max_distance(L)
    init=lambda key, cfg, *, n_embd, n_head, head_dim: {
        "table": 0.02 * jax.random.normal(key, (cfg["num_buckets"], n_head), jnp.float32)},
    bias=lambda params, q_positions_T, k_positions_S, cfg, *, n_head: t5_bias(
        params["table"], q_positions_T, k_positions_S, bidirectional=cfg["bidirectional"],
        max_distance=_resolved(cfg, "t5", "max_distance")),
    validate=_t5_validate,
    derived={"max_distance": "`data.block_size` // 2"},
    derive=lambda cfg, *, block_size, positions: {"max_distance": t5_max_distance(
        block_size, num_buckets=cfg["num_buckets"], bidirectional=cfg["bidirectional"])},
    bidirectional=lambda cfg: None if cfg["bidirectional"] else (
        "the unidirectional buckets put every later key in bucket 0; set model.position.t5.bidirectional=True "
        "(Raffel et al.'s encoder form)")))


# ---------------------------------------------------------------------------------------------- kerple


def kerple_log_bias(r1_H, r2_H, q_positions_T, k_positions_S):
    """KERPLE, logarithmic variant (Chi et al. 2022): bias[h, i, j] = -r1_h * log(1 + r2_h * |i - j|), r > 0.

    A conditionally positive definite kernel of the distance used as a logit bias; float32 `[H, T, S]`.
    """
    distance_TxS = jnp.abs(q_positions_T[:, None] - k_positions_S[None, :]).astype(jnp.float32)
    r1_Hx1x1, r2_Hx1x1 = (r.astype(jnp.float32)[:, None, None] for r in (r1_H, r2_H))
    return -r1_Hx1x1 * jnp.log1p(r2_Hx1x1 * distance_TxS[None])


def _softplus_inverse(y):
    return y + jnp.log(-jnp.expm1(-y))


def _kerple_init(key, cfg, *, n_embd, n_head, head_dim) -> Params:
    # The paper's code draws r1 ~ U(0, 2), r2 ~ U(0, 1) and clamps both to >= 1e-2 after every step. A pure
    # function cannot clamp its parameters in place, so r = softplus(raw): positive, a gradient everywhere.
    k1, k2 = jax.random.split(key)
    r1 = jax.random.uniform(k1, (n_head,), jnp.float32, 1e-2, 2.0)
    r2 = jax.random.uniform(k2, (n_head,), jnp.float32, 1e-2, 1.0)
    return {"r1_raw": _softplus_inverse(r1), "r2_raw": _softplus_inverse(r2)}


register(PositionalEncoding(
    "kerple", defaults={}, init=_kerple_init,
    bias=lambda params, q_positions_T, k_positions_S, cfg, *, n_head: kerple_log_bias(
        jax.nn.softplus(params["r1_raw"]), jax.nn.softplus(params["r2_raw"]), q_positions_T, k_positions_S)))


# ---------------------------------------------------------------------------------------------- fire


def fire_bias(params: Params, q_positions_T, k_positions_S, *, init_L: float = 512.0, eps: float = 1e-6):
    """FIRE (Li et al. 2023): bias[h, i, j] = f(psi(i - j) / psi(max(L, i)))_h, psi(x) = log(|c x| + 1).

    f is an MLP 1 -> W -> H with a ReLU (`w1`, `b1` `[W]`; `w2` `[W, H]`, `b2` `[H]`); c is learned, and so is
    the threshold L = |L_multiplier * init_L| (the paper's parameterisation). Normalising by the query's own
    log position maps distances into [0, 1] at any length; the threshold keeps short prefixes from being
    stretched. Later keys (j > i) give finite values, masked in a decoder. float32 `[H, T, S]`.
    """
    c = params["c"].astype(jnp.float32)
    psi = lambda x: jnp.log(jnp.abs(c * x) + 1.0)
    i_T, j_S = _f32(q_positions_T), _f32(k_positions_S)
    threshold = jnp.abs(params["L_multiplier"].astype(jnp.float32) * init_L)
    normaliser_T = psi(jnp.maximum(i_T, threshold)) + eps
    x_TxS = psi(i_T[:, None] - j_S[None, :]) / normaliser_T[:, None]
    w1_W, b1_W, w2_WxH, b2_H = (params[name].astype(jnp.float32) for name in ("w1", "b1", "w2", "b2"))
    hidden_TxSxW = jax.nn.relu(x_TxS[:, :, None] * w1_W[None, None, :] + b1_W[None, None, :])
    return jnp.einsum("tsw,wh->hts", hidden_TxSxW, w2_WxH) + b2_H[:, None, None]


def _fire_init(key, cfg, *, n_embd, n_head, head_dim) -> Params:
    # PyTorch nn.Linear's default, as in the paper's code: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    width, keys = cfg["mlp_width"], jax.random.split(key, 4)
    u = lambda k, shape, fan_in: jax.random.uniform(k, shape, jnp.float32, -1.0, 1.0) / math.sqrt(fan_in)
    return {"c": jnp.asarray(cfg["init_c"], jnp.float32), "L_multiplier": jnp.ones((), jnp.float32),
            "w1": u(keys[0], (width,), 1), "b1": u(keys[1], (width,), 1),
            "w2": u(keys[2], (width, n_head), width), "b2": u(keys[3], (n_head,), width)}


def fire_init_L(block_size: int) -> float:
    """FIRE's initial threshold L for a training length L_train: L_train itself (Li et al. 2023).

    Below the threshold every query is normalised by psi(L), so within the training length FIRE is a learned
    function of log distance; beyond it, by psi(i): the progressive interpolation that lets it extrapolate. The
    paper's 512 was sized for its own training lengths; at 64 tokens it would never let the normalisation vary.
    """
    return float(block_size)


def _fire_validate(cfg: Mapping) -> None:
    _require(cfg["mlp_width"] >= 1, "fire", "mlp_width", cfg["mlp_width"], "must be >= 1")
    _require(cfg["init_L"] >= 0, "fire", "init_L", cfg["init_L"], "must be > 0 (0 = data.block_size)")
    _require(cfg["eps"] > 0, "fire", "eps", cfg["eps"], "must be > 0")


register(PositionalEncoding(
    "fire", defaults={"mlp_width": 32, "init_c": 0.1, "init_L": 0.0, "eps": 1e-6},  # init_L 0 = fire_init_L(L)
    init=_fire_init,
    bias=lambda params, q_positions_T, k_positions_S, cfg, *, n_head: fire_bias(
        params, q_positions_T, k_positions_S, init_L=_resolved(cfg, "fire", "init_L"), eps=cfg["eps"]),
    validate=_fire_validate,
    derived={"init_L": "`data.block_size`"},
    derive=lambda cfg, *, block_size, positions: {"init_L": fire_init_L(block_size)}))
