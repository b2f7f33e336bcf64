"""Statistics over seeds for the sweep reports: t intervals for a mean and for paired per-seed differences.

Both from scipy.stats (Student's t with n - 1 degrees of freedom); a difference whose interval contains 0 is a tie:
the seeds do not tell the two variants apart at that level.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats


def t_interval(values: Sequence[float], level: float = 0.95) -> dict | None:
    """Mean, sample standard deviation (ddof 1) and the `level` Student-t interval of the mean of `values`:
    mean +- t_{(1+level)/2, n-1} * std / sqrt(n). None for fewer than 2 finite values (no spread to estimate)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if x.size < 2:
        return None
    mean, std = float(x.mean()), float(x.std(ddof=1))
    lo, hi = stats.t.interval(level, x.size - 1, loc=mean, scale=std / math.sqrt(x.size)) if std > 0 else (mean, mean)
    return {"n": int(x.size), "mean": mean, "std": std, "lo": float(lo), "hi": float(hi), "level": level}


def paired_difference(values: Mapping[int, float], reference: Mapping[int, float], level: float = 0.95) -> dict | None:
    """The t interval of the per-seed differences values[s] - reference[s] over the seeds both have (a paired t
    interval: seed-to-seed variation shared by the two variants cancels), and whether it is a tie (contains 0).
    None with fewer than 2 shared seeds."""
    seeds = sorted(set(values) & set(reference))
    interval = t_interval([values[s] - reference[s] for s in seeds], level)
    if interval is None:
        return None
    return {**interval, "seeds": seeds, "tie": bool(interval["lo"] <= 0.0 <= interval["hi"])}


def paired_test(values: Mapping[int, float], reference: Mapping[int, float], level: float = 0.95) -> dict | None:
    """`paired_difference` plus `p`: the two-sided paired t test of mean difference 0 (scipy.stats.ttest_rel on
    the shared seeds). Differences with no spread: p = 0 when their mean is not 0, else 1 (t is undefined)."""
    d = paired_difference(values, reference, level)
    if d is None:
        return None
    if d["std"] <= 1e-12 * max(1.0, abs(d["mean"])):  # identical differences up to rounding: t is undefined
        return {**d, "p": 0.0 if d["mean"] != 0 else 1.0}
    p = stats.ttest_rel([values[s] for s in d["seeds"]], [reference[s] for s in d["seeds"]]).pvalue
    return {**d, "p": float(p)}


CORRECTIONS = ("holm", "bh")  # Holm 1979 (family-wise error), Benjamini & Hochberg 1995 (false discovery rate)
ALPHA = 0.05


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979): with p_(1) <= .. <= p_(m) sorted,
    p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)); rejecting p~ <= alpha controls the family-wise error."""
    p = np.asarray(p_values, np.float64)
    order = np.argsort(p, kind="stable")
    m = p.size
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate; scipy.stats.false_discovery_control)."""
    p = np.asarray(p_values, np.float64)
    return stats.false_discovery_control(p, method="bh") if p.size else p


def adjust(tests: list[dict], correction: str = "holm", alpha: float = ALPHA) -> list[dict]:
    """Adds `p_holm`, `p_bh` and `significant` (the `correction`'s adjusted p <= alpha) to each test of one family
    (dicts with `p`; None entries are skipped); returns the tests."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction={correction!r}; choose one of: {', '.join(CORRECTIONS)}")
    ran = [t for t in tests if t is not None and t.get("p") is not None]
    p = [t["p"] for t in ran]
    for t, h, b in zip(ran, holm(p), benjamini_hochberg(p), strict=True):
        t.update({"p_holm": float(h), "p_bh": float(b), "correction": correction,
                  "significant": bool((h if correction == "holm" else b) <= alpha)})
    return tests
