"""Float64 NumPy references for jaxformer/positional.py, written from the papers' formulas with plain loops.

Deliberately slow and literal: one scalar formula per entry, nothing shared with the code under test.
"""

import math

import numpy as np


def sinusoidal(positions, dim):
    """Vaswani et al. 2017, section 3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)."""
    out = np.zeros((len(positions), dim))
    for t, pos in enumerate(positions):
        for k in range(dim):
            i = k // 2
            angle = pos / 10000.0 ** (2 * i / dim)
            out[t, k] = math.sin(angle) if k % 2 == 0 else math.cos(angle)
    return out


def yarn_code_ramp(d, theta, original_max_len, alpha=1.0, beta=32.0):
    """gamma_i of the YaRN authors' code (as transformers' `_compute_yarn_parameters` writes it): the correction
    range [floor(dim(beta_fast=32)), ceil(dim(beta_slow=1))], dim(n) = d ln(L / (n 2 pi)) / (2 ln base), and
    extrapolation factor 1 - clamp((i - low) / (high - low), 0, 1)."""
    dim_of = lambda n: (d * math.log(original_max_len / (n * 2 * math.pi))) / (2 * math.log(theta))
    low, high = max(math.floor(dim_of(beta)), 0), min(math.ceil(dim_of(alpha)), d - 1)
    if low == high:
        high += 0.001
    return [1.0 - min(max((i - low) / (high - low), 0.0), 1.0) for i in range(d // 2)]


def rope_frequencies(d, theta=10000.0, scaling="none", factor=1.0, original_max_len=0, low_freq_factor=1.0,
                     high_freq_factor=4.0, yarn_ramp="code", yarn_alpha=1.0, yarn_beta=32.0):
    """theta_i = theta^(-2(i-1)/d) (Su et al. 2021, eq. 15) and the context-extension rescalings:
    PI (Chen et al. 2023): theta_i / s; NTK-aware (bloc97 2023): base * s^(d/(d-2));
    YaRN NTK-by-parts (Peng et al. 2023, eqs. 17-20): r = L / lambda, gamma ramp from alpha (1) to beta (32),
    h(theta_i) = (1 - gamma) theta_i / s + gamma theta_i; gamma as in the paper or in the authors' code.
    Llama 3 (Meta's reference `apply_scaling`): by wavelength against L / high_freq_factor and L / low_freq_factor,
    written as Meta's three branches."""
    code_ramp = (yarn_code_ramp(d, theta, original_max_len, yarn_alpha, yarn_beta)
                 if scaling == "yarn" and yarn_ramp == "code" else None)
    freqs = []
    base = theta * factor ** (d / (d - 2)) if scaling == "ntk" else theta
    for i in range(d // 2):
        f = base ** (-2.0 * i / d)
        if scaling == "linear":
            f = f / factor
        elif scaling == "yarn":
            wavelength = 2 * math.pi / f
            r = original_max_len / wavelength
            if r < yarn_alpha:
                g = 0.0
            elif r > yarn_beta:
                g = 1.0
            else:
                g = (r - yarn_alpha) / (yarn_beta - yarn_alpha)
            g = code_ramp[i] if code_ramp is not None else g
            f = (1 - g) * f / factor + g * f
        elif scaling == "llama3":
            wavelength = 2 * math.pi / f
            if wavelength < original_max_len / high_freq_factor:
                pass
            elif wavelength > original_max_len / low_freq_factor:
                f = f / factor
            else:
                smooth = (original_max_len / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
                f = (1 - smooth) * f / factor + smooth * f
        freqs.append(f)
    return np.array(freqs)


def rope(x, positions, theta=10000.0, fraction=1.0, scaling="none", factor=1.0, original_max_len=0,
         low_freq_factor=1.0, high_freq_factor=4.0, yarn_ramp="code", yarn_alpha=1.0, yarn_beta=32.0):
    """R^d_{Theta,m} x (Su et al. 2021, eq. 15): a 2x2 rotation by m * theta_i of each pair (x_2i, x_2i+1).
    x: [T, d]. Partial rotary rotates the first 2 * floor(fraction * d / 2) dims. YaRN multiplies by
    0.1 ln(s) + 1 (eq. 22, applied to q and k alike)."""
    x = np.asarray(x, np.float64)
    T, d = x.shape
    rot = 2 * int(fraction * d // 2)
    freqs = rope_frequencies(rot, theta, scaling, factor, original_max_len, low_freq_factor, high_freq_factor,
                             yarn_ramp, yarn_alpha, yarn_beta)
    out = x.copy()
    for t in range(T):
        for i in range(rot // 2):
            a = positions[t] * freqs[i]
            R = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            out[t, 2 * i: 2 * i + 2] = R @ x[t, 2 * i: 2 * i + 2]
    if scaling == "yarn" and factor > 1:
        out = out * (0.1 * math.log(factor) + 1.0)
    return out


def xpos(x, positions, *, is_key, theta=10000.0, scale_base=512.0, gamma=0.4, center=0):
    """Sun et al. 2022: f_q(x, n) = R_n x * zeta^(n / scale_base), f_k(x, m) = R_m x * zeta^(-m / scale_base),
    zeta_i = (i / (d/2) + gamma) / (1 + gamma), positions shifted by -center (cancels in q.k). x: [T, d]."""
    rotated = rope(x, positions, theta)
    T, d = rotated.shape
    for t in range(T):
        power = (positions[t] - center) / scale_base
        for i in range(d // 2):
            zeta = (i / (d / 2) + gamma) / (1 + gamma)
            rotated[t, 2 * i: 2 * i + 2] *= zeta ** (-power if is_key else power)
    return rotated


def alibi_slopes(n):
    """The ALiBi paper's code (Press et al. 2022, `get_slopes`)."""
    def power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][: n - closest]


def alibi_bias(q_positions, k_positions, num_heads):
    """bias[h, i, j] = -m_h * |i - j| (Press et al. 2022, fig. 3)."""
    slopes = alibi_slopes(num_heads)
    out = np.zeros((num_heads, len(q_positions), len(k_positions)))
    for h in range(num_heads):
        for a, i in enumerate(q_positions):
            for b, j in enumerate(k_positions):
                out[h, a, b] = -slopes[h] * abs(i - j)
    return out


def t5_bucket(relative_position, bidirectional, num_buckets=32, max_distance=128):
    """T5's `_relative_position_bucket` for one integer (relative_position = key - query)."""
    ret = 0
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret += num_buckets if n < 0 else 0
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    log_ratio = math.log(n / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + int(log_ratio * (num_buckets - max_exact))
    return ret + min(large, num_buckets - 1)


def t5_bias(table, q_positions, k_positions, bidirectional, max_distance=128):
    num_buckets, H = table.shape
    out = np.zeros((H, len(q_positions), len(k_positions)))
    for a, i in enumerate(q_positions):
        for b, j in enumerate(k_positions):
            out[:, a, b] = table[t5_bucket(j - i, bidirectional, num_buckets, max_distance)]
    return out


def kerple_log(r1, r2, q_positions, k_positions):
    """Chi et al. 2022, eq. (logarithmic variant): bias = -r1 * log(1 + r2 * |m - n|)."""
    out = np.zeros((len(r1), len(q_positions), len(k_positions)))
    for h in range(len(r1)):
        for a, i in enumerate(q_positions):
            for b, j in enumerate(k_positions):
                out[h, a, b] = -r1[h] * math.log(1 + r2[h] * abs(i - j))
    return out


def fire(params, q_positions, k_positions, init_L=512.0, eps=1e-6):
    """Li et al. 2023: b(i, j) = f(psi(i - j) / psi(max(L, i))), psi(x) = log(|c x| + 1), f a ReLU MLP 1-W-H,
    L = |L_multiplier * init_L| (the paper's code, which also adds eps to the normaliser)."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    c, L = float(p["c"]), abs(float(p["L_multiplier"]) * init_L)
    psi = lambda x: math.log(abs(c * x) + 1)
    H = p["b2"].shape[0]
    out = np.zeros((H, len(q_positions), len(k_positions)))
    for a, i in enumerate(q_positions):
        for b, j in enumerate(k_positions):
            x = psi(i - j) / (psi(max(L, i)) + eps)
            hidden = np.maximum(x * p["w1"] + p["b1"], 0.0)
            out[:, a, b] = hidden @ p["w2"] + p["b2"]
    return out
