"""Choosing between code paths that compute the same thing by timing them here, once per machine, with a cache.

`choose(candidates, make_timer, key=...)` runs rounds of every candidate, alternated (each round starts with the
next candidate, so none always runs first on a warm or a cold cache), until `budget_s` of wall time has gone and
at least `min_rounds` rounds are done; the candidate with the lowest time (the sum of its parts' medians over the
rounds) wins, except that a
candidate listed earlier (the default path) keeps the choice unless another one is faster by more than `margin`
(a relative gap: noise on a shared machine must not flip the path, and so the numbers, between two runs).

The choice is written to `cache_dir/<name>-<hash of key>.json` with the key itself, the medians and the rounds;
a later process with the same key reads it instead of measuring. The key is whatever makes the timing differ: the
CPU model, the library versions, the shapes timed (`jaxformer.matmul` builds it). A different key -- a new CPU, a
new jaxlib, other shapes -- is a new file, so it is measured again; nothing is ever overwritten by another key.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Choice:
    """The path chosen, why (one line), and the evidence: median seconds per round of each candidate."""

    name: str
    why: str
    medians_s: dict[str, float]
    rounds: int
    source: str  # "measured" (in this process) or "cache" (read from `file`)
    file: str | None = None

    def record(self) -> dict:
        """For run manifests and benchmark tables (JSON-able)."""
        return {"path": self.name, "why": self.why, "source": self.source, "rounds": self.rounds,
                "median_ms": {k: round(1e3 * v, 4) for k, v in self.medians_s.items()}, "cache_file": self.file}


def cpu_model() -> dict:
    """The CPU's identity for the cache key: vendor, family, model, stepping and name of the first processor in
    /proc/cpuinfo, and a digest of its feature flags (a VM may hide AVX-512 or AMX of the same model); where there
    is no /proc/cpuinfo, Python's `platform.machine()` and `platform.processor()`."""
    import platform

    fields = {"vendor_id": "vendor", "cpu family": "family", "model": "model", "stepping": "stepping",
              "model name": "name", "flags": "flags"}
    info: dict = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key in fields:
                    info[fields[key]] = value
                elif not key and info:  # the blank line after the first processor
                    break
    except OSError:
        pass
    if not info:
        return {"machine": platform.machine(), "processor": platform.processor()}
    flags = " ".join(sorted(info.pop("flags", "").split()))
    return {**info, "flags_sha": hashlib.sha256(flags.encode()).hexdigest()[:12]}


def usable_cores() -> int:
    """Cores this process may run on (affinity/cgroup-restricted where the OS says so)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cache_file(cache_dir: Path, name: str, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{name}-{digest}.json"


def read_cached(path: Path, key: dict) -> Choice | None:
    """The choice cached at `path` for exactly `key`; None when there is none, it is unreadable or for another
    key (a hash collision or a hand-edited file: measured again, never trusted)."""
    try:
        entry = json.loads(Path(path).read_text())
        if entry.get("key") != json.loads(json.dumps(key, sort_keys=True)):
            return None
        return Choice(entry["name"], entry["why"] + f" (cached {entry['created'][:10]})",
                      {k: float(v) for k, v in entry["medians_s"].items()}, int(entry["rounds"]), "cache", str(path))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write(path: Path, key: dict, choice: Choice) -> None:
    entry = {"key": key, "name": choice.name, "why": choice.why, "medians_s": choice.medians_s,
             "rounds": choice.rounds, "created": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=path.parent)  # renamed into place: no reader sees half a file
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(entry, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def measure(candidates: Sequence[str], time_round: Callable[[str], Sequence[float]], *, budget_s: float = 0.3,
            min_rounds: int = 5, max_rounds: int = 200, margin: float = 0.03,
            clock: Callable[[], float] = time.perf_counter) -> Choice:
    """Alternated rounds of `time_round(name)` for each candidate, as the module docstring says: it returns the
    seconds each part of one round took (a part: one product of the step, weighted by how often the step runs
    it); a candidate's time is the sum over parts of the part's median over rounds, so a round disturbed by
    another process costs one sample of each part, not the round. The winner and a one-line why."""
    if len(candidates) < 1 or len(set(candidates)) != len(candidates):
        raise ValueError(f"candidates={list(candidates)!r}; give one or more distinct names")
    times: dict[str, list[Sequence[float]]] = {c: [] for c in candidates}
    start, n = clock(), 0
    while n < max_rounds and (n < min_rounds or clock() - start < budget_s):
        order = list(candidates[n % len(candidates):]) + list(candidates[:n % len(candidates)])
        for c in order:
            times[c].append([float(t) for t in time_round(c)])
        n += 1
    medians = {c: sum(statistics.median(part) for part in zip(*t, strict=True)) for c, t in times.items()}
    default = candidates[0]
    fastest = min(candidates, key=lambda c: medians[c])
    chosen = fastest if medians[fastest] < medians[default] * (1 - margin) else default
    others = ", ".join(f"{c} {1e3 * medians[c]:.3f} ms" for c in candidates if c != chosen)
    why = (f"measured: {chosen} {1e3 * medians[chosen]:.3f} ms vs {others} (sum of medians over {n} alternated "
           f"rounds)")
    if chosen == default and fastest != default:
        why += f"; {fastest} within the {100 * margin:.0f}% margin, the default {default} kept"
    return Choice(chosen, why, medians, n, "measured")


def choose(candidates: Sequence[str], make_timer: Callable[[], Callable[[str], Sequence[float]]], *, key: dict,
           cache_dir: Path, name: str = "choice", **measure_kw) -> Choice:
    """The cached choice for `key` in `cache_dir`, else `measure(candidates, make_timer(), ...)`'s, written there
    for the next process. `make_timer` (building and compiling what is timed) runs only when measuring, before
    the clock starts. A cache that cannot be written (read-only home) costs one warning and a measurement in
    every process."""
    path = cache_file(cache_dir, name, key)
    cached = read_cached(path, key)
    if cached is not None and cached.name in candidates:
        return cached
    choice = dataclasses.replace(measure(candidates, make_timer(), **measure_kw), file=str(path))
    try:
        _write(path, key, choice)
    except OSError as e:
        log.warning("could not cache the %s choice in %s (%s); it is measured again in each process", name, path, e)
        choice = dataclasses.replace(choice, file=None)
    return choice
