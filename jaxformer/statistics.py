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
