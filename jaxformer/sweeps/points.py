"""Variant sweeps: a config lists a base config and the axes to vary; every point is an ordinary run directory.

A sweep config's `get_config()` returns a ConfigDict with

    base           a packaged config name ("shakespeare_char_cpu") or a path to one
    overrides      `--config.a.b=v` strings applied to the base for every point
    axes           the fields to vary, nested like the config: `axes.model.position.name = ("alibi", "rope")`,
                   `axes.train.seed = (0, 1)`; the sweep is the product of their values (seeds outermost, so a
                   stopped sweep has every variant of the first seed). On the command line a comma list:
                   `--config.axes.train.seed=0,1,2` or `--axis model.position.name=rope,alibi` (`axis_values`)
    eval_lengths   multipliers of `data.block_size` at which every trained model is evaluated, e.g. (1, 2, 4, 8)
    eval_tokens    predicted tokens per eval length, the same at every length (see extrapolation.py)
    eval_batch_tokens  tokens per forward batch during evaluation (bounds memory at long lengths)
    eval_split     the split the windows come from ("val")
    variants       optional named sets of overrides, an axis of their own (outermost after the seeds), for variants
                   that differ in several fields: `variants.rope_randomized = ("--config.model.position.name=rope",
                   "--config.model.position.randomize_max_len=256")`; the points are named `variant=<name>,...`
    eval_at        instead of eval_lengths: absolute eval lengths in tokens, e.g. (64, 128, 256, 512), for sweeps
                   whose points differ in data.block_size (a fine-tune at a longer context)
    init           optional: every point starts from another sweep's trained run (`train --init-from`):
                   init.sweep  the sweep config of the runs to start from, run first into <workdir>/base (so the
                               whole experiment is one command; finished base runs are reused);
                   init.match  the fields whose values pick a point's base run (default ("train.seed",));
                   init.checkpoint  latest | best;
                   init.overrides   --config.a.b=v applied to every run of init.sweep (e.g. a shorter smoke run).
                   Each such point is also evaluated zero-shot (the base run's parameters under the point's config,
                   e.g. a RoPE scaling, before the fine-tune): reported as the variant "<variant> zero-shot".
    eval_sizes     (min, max) task sizes (synthetic tasks): every size in between is evaluated with
                   `eval_size_examples` examples each, exact match and token accuracy per size and averaged over the
                   sizes beyond the training ones (the literature's protocol, extrapolation.evaluate_sizes); () = off
    eval_random_positions  True: points trained on randomized positions (model.position.randomize_max_len) are
                   also evaluated per task size with randomized positions, each example at its own sorted draw
                   from [0, randomize_max_len), as Ruoss et al. 2023's code evaluates (a report row
                   "<variant> (random eval positions)"); the plain rows keep 0..T-1
    eval_stride    stride of the sliding-window baseline (a window of data.block_size tokens, see
                   extrapolation.sliding_plan); absent = half the window
    overrides_by_variant  {variant: (`--config.a.b=v`, ...)}: extra overrides for the points of one variant (the
                   point name without the seed), e.g. each variant's own learning rate; a variant no point
                   has is skipped, so a sweep narrowed with `--config.axes...` keeps its settings
    eval_depths    depths in [0, 1] for the tasks where context pays (synthetic/passkey, synthetic/mqar): at every
                   eval length and depth, `eval_depth_examples` probes answered free-running, teacher-forced, by a
                   sliding window of data.block_size, and by the trivial baselines (effective_context.py,
                   `<run>/context.json`, the report's "Effective context" section); () = off
    statistics     True: the report gives t intervals over seeds and paired differences (needs >= 2 seeds)
    reference      the variant the paired differences are taken against (default "rope")
    families       the families of tests, declared before running: {name: (variant, ...)}; a family's tests are
                   every paired difference of its variants against `reference` in the report (full-context and
                   sliding-window loss at every eval length; the effective-context tables' differences form the
                   family "<name>/context"), adjusted together. Families are disjoint; none declared = one family
                   "all" of every variant. A variant in no family gets raw p-values and no claim
    correction     "holm" (family-wise error, the default) or "bh" (Benjamini-Hochberg false discovery rate): the
                   adjusted p-value that decides "significant" (both are reported beside the raw one)
    selection_seeds  seeds used to select hyperparameters (e.g. the learning rate): kept out of every interval and
                   test, so a comparison never reuses the run its setting was chosen on

The sweep directory holds `sweep.json` (the sweep config and its points) and `runs/<point>/`, each made by
`jaxformer.train.train` (so `jaxformer sample/eval --workdir` work on it) plus the point's `extrapolation.json`.
A point, named like `position=alibi,seed=0`, is finished when its `extrapolation.json` is there and either the final
checkpoint or, in `metrics.jsonl`, the final step (so a sweep committed without its checkpoints is still finished);
a sweep started again skips finished points, evaluates trained ones and resumes partly trained ones from their
latest checkpoint. Nothing is ever deleted. Every point's config is validated before the first one
runs; a learned table shorter than an eval length is not an error: that length is reported
"n/a (learned table has N positions)". After every point the reports (`results.md`, `results.csv`,
`extrapolation.png`, `position_loss.png`) are rewritten; `jaxformer report SWEEP_DIR` rewrites them from the run
directories alone.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import os

import ml_collections

from jaxformer import config as config_lib
from jaxformer import effective_context, extrapolation, positional, statistics
from jaxformer import run as run_lib

SEED_FIELD = "train.seed"  # the axis the reports average over
VARIANT_FIELD = "variant"  # the axis of the sweep config's named `variants`
SWEEP_FIELDS = ("base", "overrides", "axes", "eval_lengths", "eval_tokens", "eval_batch_tokens", "eval_split",
                "eval_stride", "overrides_by_variant", "statistics", "reference",
                "eval_sizes", "eval_size_examples", "eval_at", "init", "variants", "eval_random_positions",
                "eval_depths", "eval_depth_examples", "families", "correction", "selection_seeds")


@dataclasses.dataclass
class Point:
    """One run of the sweep: its name (its directory), the axis values, its config, and its eval lengths."""

    index: int
    name: str  # its directory, e.g. "position=alibi,seed=0"
    variant: str  # the name without the seed, e.g. "alibi": the report's row, averaged over seeds
    values: list  # [(field, value), ...] in axis order
    cfg: ml_collections.ConfigDict  # resolved (the vocabulary size is filled in by the run)
    lengths: list  # [{"multiplier": m, "length": T, "na": reason | None}, ...]
    init_from: str | None = None  # the base run it starts from (a sweep with `init`), relative to the sweep dir


# ---------------------------------------------------------------------------------------------- sweep configs

def axis_values(text: str) -> tuple:
    """An axis' values from the command line: a plain comma list (`rope,alibi,none`, `0,1,2`; each item a number,
    True/False or else a string) or the tuple form (`"('rope','alibi')"`), which keeps working."""
    text = text.strip()
    if text[:1] in "([":
        try:
            values = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"sweep axis value {text!r}; give a comma list, e.g. rope,alibi,none") from None
        return tuple(values) if isinstance(values, (list, tuple)) else (values,)
    out = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise ValueError(f"sweep axis value {text!r} has an empty item; give a comma list, e.g. rope,alibi,none")
        try:
            value = ast.literal_eval(item)
        except (ValueError, SyntaxError):
            value = item
        out.append(value if isinstance(value, (int, float, bool)) else item)
    return tuple(out)


def axis_override(arg: str) -> str:
    """`--config.axes.F=a,b` as the tuple form config files take, `--config.axes.F=('a', 'b')`; others unchanged."""
    field, sep, value = arg.partition("=")
    if not field.startswith("--config.axes.") or not sep:
        return arg
    return f"{field}={axis_values(value)!r}"


def load_sweep(config: str, overrides: list[str] = (), axes: list[str] = ()) -> tuple[ml_collections.ConfigDict,
                                                                                      list[str]]:
    """(sweep config, extra base overrides): `--config.<sweep field>...` changes the sweep config, any other
    `--config.<field>=v` is applied to the base config of every point. `axes`: `FIELD=v1,v2,...` (`--axis`) sets
    or adds the axis over FIELD; `--config.axes.FIELD=v1,v2` changes an axis the config has."""
    sweep_overrides, base_overrides = [], []
    for arg in overrides:
        field = arg[len("--config."):].split("=", 1)[0].split(".")[0] if arg.startswith("--config.") else ""
        (sweep_overrides if field in SWEEP_FIELDS else base_overrides).append(arg)
    sweep_cfg = config_lib.load(config, [axis_override(arg) for arg in sweep_overrides])
    for spec in axes:
        field, sep, values = spec.partition("=")
        if not sep or not field or not values:
            raise ValueError(f"--axis {spec!r}; give FIELD=v1,v2,..., e.g. --axis model.position.name=rope,alibi")
        with sweep_cfg.unlocked():
            node = sweep_cfg.axes
            *sections, leaf = field.split(".")
            for section in sections:
                if section not in node:
                    node[section] = ml_collections.ConfigDict()
                node = node[section]
            node[leaf] = axis_values(values)
    for field in ("base", "axes", "eval_lengths"):
        if field not in sweep_cfg:
            raise ValueError(f"--config={config!r} is not a sweep config: it has no {field!r} field "
                             f"(a sweep config defines {', '.join(SWEEP_FIELDS)})")
    defaults = {"overrides": (), "eval_tokens": 0, "eval_batch_tokens": 8192, "eval_split": "val",
                "overrides_by_variant": {}, "statistics": False, "reference": "rope",
                "eval_sizes": (), "eval_size_examples": 64, "eval_at": (), "eval_random_positions": False,
                "eval_depths": (), "eval_depth_examples": 64, "families": {}, "correction": "holm",
                "selection_seeds": ()}
    with sweep_cfg.unlocked():
        for key, value in defaults.items():
            if key not in sweep_cfg:
                sweep_cfg[key] = value
    return sweep_cfg, base_overrides


def flatten_axes(axes: ml_collections.ConfigDict, prefix: str = "") -> list[tuple[str, tuple]]:
    """`axes.model.position.name = (...)` -> [("model.position.name", (...)), ...] (sorted by field)."""
    out = []
    for key, value in axes.items():
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            out += flatten_axes(ml_collections.ConfigDict(value) if isinstance(value, dict) else value,
                                f"{prefix}{key}.")
        else:
            values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
            if not values:
                raise ValueError(f"sweep axis {prefix}{key} has no values; give a tuple of at least one")
            out.append((f"{prefix}{key}", values))
    return out


def _short_names(fields: list[str]) -> dict[str, str]:
    """`model.position.name` -> `position`, `train.seed` -> `seed`; the full field where short names collide."""
    parts = {f: f.split(".") for f in fields}
    short = {f: (p[-2] if p[-1] == "name" and len(p) > 1 else p[-1]) for f, p in parts.items()}
    counts = {s: list(short.values()).count(s) for s in short.values()}
    return {f: (s if counts[s] == 1 else f) for f, s in short.items()}


def _format_value(value) -> str:
    text = str(value) if not isinstance(value, float) else f"{value:g}"
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in text)


def _override_value(value) -> str:
    return repr(tuple(value)) if isinstance(value, (list, tuple)) else str(value)


def make_points(sweep_cfg: ml_collections.ConfigDict, base_overrides: list[str] = ()) -> list[Point]:
    """Every point of the sweep, its config loaded, resolved and validated (raises before anything runs)."""
    axes = flatten_axes(sweep_cfg.axes)
    variants = sweep_cfg.get("variants") or {}
    if variants:
        for key, value in variants.items():
            if not isinstance(value, (tuple, list)) or not all(str(o).startswith("--config.") for o in value):
                raise ValueError(f"variants.{key}={value!r}; give a tuple of --config.<field>=<value> overrides")
        axes = [(VARIANT_FIELD, tuple(variants.keys())), *axes]
    multipliers = [int(m) for m in sweep_cfg.eval_lengths]
    absolute = [int(T) for T in sweep_cfg.get("eval_at", ())]
    if any(T < 1 for T in absolute):
        raise ValueError(f"eval_at={tuple(absolute)}; give positive lengths in tokens")
    base_points = _init_points(sweep_cfg, base_overrides)
    if sweep_cfg.get("eval_sizes"):
        extrapolation.check_sizes(sweep_cfg.eval_sizes)
        if sweep_cfg.get("eval_size_examples", 64) < 1:
            raise ValueError(f"eval_size_examples={sweep_cfg.eval_size_examples}; must be >= 1")
    if not multipliers or any(m < 1 for m in multipliers):
        raise ValueError(f"eval_lengths={tuple(sweep_cfg.eval_lengths)}; give positive multipliers of data.block_size")
    names = _short_names([field for field, _ in axes])
    varied = [field for field, _ in axes if field != SEED_FIELD]
    run_order = sorted(range(len(axes)), key=lambda i: axes[i][0] != SEED_FIELD)  # seeds outermost
    points = []
    for index, combo in enumerate(itertools.product(*[axes[i][1] for i in run_order])):
        by_field = {axes[i][0]: value for i, value in zip(run_order, combo, strict=True)}
        values = [(field, by_field[field]) for field, _ in axes]
        name = ",".join(f"{names[field]}={_format_value(value)}" for field, value in values) or "base"
        variant = (_format_value(dict(values)[varied[0]]) if len(varied) == 1 else
                   ",".join(f"{names[f]}={_format_value(v)}" for f, v in values if f != SEED_FIELD) or "base")
        by_variant = dict(sweep_cfg.overrides_by_variant).get(variant, ())
        overrides = [*sweep_cfg.overrides, *by_variant, *base_overrides,
                     *[o for field, value in values for o in (
                         variants[value] if field == VARIANT_FIELD else
                         [f"--config.{field}={_override_value(value)}"])]]
        init_from = None
        try:
            cfg = config_lib.load(sweep_cfg.base, overrides)
            if base_points is not None:
                base = _match_base(base_points, cfg, tuple(sweep_cfg.init.get("match", ("train.seed",))), name)
                from jaxformer import train as train_lib

                cfg = train_lib.inherit_derived(cfg, base.cfg)
                run_lib.check_init_config(f"base/runs/{base.name}", base.cfg, config_lib.resolve(cfg))
                init_from = os.path.join("base", "runs", base.name)
            cfg = config_lib.resolve(cfg)
            config_lib.validate(cfg)
            lengths = eval_lengths_for(cfg, multipliers, absolute=absolute)
            config_lib.validate(cfg, eval_lengths=[x["length"] for x in lengths if x["na"] is None])
        except ValueError as e:
            raise ValueError(f"sweep point {name}: {str(e).splitlines()[0]}") from e
        if sweep_cfg.get("eval_depths"):
            _check_depth_eval(sweep_cfg, cfg, [x["length"] for x in lengths], name)
        window, stride = cfg.data.block_size, sweep_cfg.get("eval_stride", None)
        if stride is not None and not 1 <= stride <= window:
            raise ValueError(f"eval_stride={stride}: the sliding window (data.block_size={window}) needs a stride in "
                             f"[1, {window}]; leave it out for {window // 2}")
        longest = max(x["length"] for x in lengths)
        if sweep_cfg.eval_tokens and sweep_cfg.eval_tokens < longest:
            raise ValueError(f"eval_tokens={sweep_cfg.eval_tokens} is less than the longest eval length {longest} "
                             f"(point {name}); give at least one window's worth")
        points.append(Point(index, name, variant, values, cfg, lengths, init_from))
    duplicates = {p.name for p in points if [q.name for q in points].count(p.name) > 1}
    if duplicates:
        raise ValueError(f"sweep points share a directory name: {', '.join(sorted(duplicates))}; "
                         "make the axis values distinct")
    variants = list(dict.fromkeys(p.variant for p in points))
    if sweep_cfg.statistics:
        seeds = len(dict(flatten_axes(sweep_cfg.axes)).get(SEED_FIELD, (None,)))
        if seeds < 2:
            raise ValueError(f"statistics=True needs at least 2 seeds (axes.train.seed has {seeds}); add seeds or "
                             "set --config.statistics=False")
        if sweep_cfg.reference not in variants:
            raise ValueError(f"reference={sweep_cfg.reference!r} is not a variant of this sweep; choose one of: "
                             f"{', '.join(variants)}")
    check_statistics(sweep_cfg, variants, seeds=dict(flatten_axes(sweep_cfg.axes)).get(SEED_FIELD, ()))
    return points


def check_statistics(sweep_cfg: ml_collections.ConfigDict, variants: list[str], *, seeds=()) -> None:
    """The declared families, correction and selection seeds: one-line errors before anything trains."""
    correction = sweep_cfg.get("correction", "holm")
    if correction not in statistics.CORRECTIONS:
        raise ValueError(f"correction={correction!r}; choose one of: {', '.join(statistics.CORRECTIONS)}")
    if sweep_cfg.get("init"):  # the zero-shot rows are variants of the report too
        variants = [*variants, *(f"{v} zero-shot" for v in variants)]
    seen = {}
    for family, members in dict(sweep_cfg.get("families", {}) or {}).items():
        if isinstance(members, str) or not members:
            raise ValueError(f"families.{family}={members!r}; give a tuple of variant names")
        for v in members:
            if v not in variants:
                raise ValueError(f"families.{family} names {v!r}, not a variant of this sweep; choose from: "
                                 f"{', '.join(variants)}")
            if v in seen:
                raise ValueError(f"families.{family} and families.{seen[v]} both hold {v!r}; families are disjoint")
            seen[v] = family
    selection = list(sweep_cfg.get("selection_seeds", ()) or ())
    missing = [s for s in selection if s not in seeds]
    if missing:
        raise ValueError(f"selection_seeds={tuple(selection)}: seed {missing[0]} is not in axes.train.seed "
                         f"{tuple(seeds)}")
    if sweep_cfg.get("statistics") and len(seeds) - len(selection) < 2:
        raise ValueError(f"selection_seeds={tuple(selection)} leaves {len(seeds) - len(selection)} of the seeds "
                         f"{tuple(seeds)} for the comparisons; statistics need at least 2")


def _check_depth_eval(sweep_cfg: ml_collections.ConfigDict, cfg: ml_collections.ConfigDict, lengths: list[int],
                      name: str) -> None:
    """eval_depths' one-line errors before anything trains: depths in [0, 1], a task with a depth, lengths that
    hold the key and the query."""
    from jaxformer import data as data_lib

    effective_context.check_depths(sweep_cfg.eval_depths)
    if sweep_cfg.get("eval_depth_examples", 64) < 1:
        raise ValueError(f"eval_depth_examples={sweep_cfg.eval_depth_examples}; must be >= 1")
    task = data_lib.TASKS.get(cfg.data.name[len("synthetic/"):]) if cfg.data.name.startswith("synthetic/") else None
    if task is None or not task.placed:
        placed = ", ".join(f"synthetic/{t.name}" for t in data_lib.TASKS.values() if t.placed)
        raise ValueError(f"sweep point {name}: eval_depths needs a task with a depth (data.name={cfg.data.name!r}); "
                         f"choose one of: {placed}")
    dataset = data_lib.load_dataset(cfg.data)
    shortest = dataset.length(0) - 1
    for T in [cfg.data.block_size, *lengths]:
        if T < shortest:
            raise ValueError(f"sweep point {name}: length {T} is too short for a {dataset.name} example: the key "
                             f"and the query alone take {shortest} tokens")


# Overrides of a sweep with `init` that also reach the runs it starts from: where the data is on this machine.
_INIT_SHARED = ("--config.data.manual_dir", "--config.data.data_dir")


def init_overrides(sweep_cfg: ml_collections.ConfigDict, base_overrides=()) -> list[str]:
    return [*[o for o in base_overrides if o.startswith(_INIT_SHARED)], *sweep_cfg.init.get("overrides", ())]


def _init_points(sweep_cfg: ml_collections.ConfigDict, base_overrides=()) -> list[Point] | None:
    """The points of the sweep a sweep with `init` starts from (None without `init`)."""
    init = sweep_cfg.get("init")
    if not init:
        return None
    if "sweep" not in init:
        raise ValueError("init.sweep is missing: name the sweep config whose runs the points start from")
    if init.get("checkpoint", "latest") not in ("latest", "best"):
        raise ValueError(f"init.checkpoint={init.checkpoint!r}; choose one of: latest, best")
    base_cfg, base_overrides = load_sweep(init.sweep, init_overrides(sweep_cfg, base_overrides))
    if base_cfg.get("init"):
        raise ValueError(f"init.sweep={init.sweep!r} has an init of its own; start from a sweep that trains from "
                         "scratch")
    return make_points(base_cfg, base_overrides)


def _match_base(base_points: list[Point], cfg: ml_collections.ConfigDict, match: tuple, name: str) -> Point:
    flat = config_lib.flat_fields(cfg)
    found = [b for b in base_points if all(config_lib.flat_fields(b.cfg).get(f) == flat.get(f) for f in match)]
    if len(found) != 1:
        raise ValueError(f"sweep point {name}: {len(found)} runs of init.sweep have its {', '.join(match)}; "
                         "init.match must pick exactly one")
    return found[0]


def eval_lengths_for(cfg: ml_collections.ConfigDict, multipliers: list[int], *, absolute=()) -> list[dict]:
    """The eval lengths of one point (multipliers of its block size, or `absolute` lengths in tokens); those beyond
    a position table are n/a with the reason, not an error."""
    name = cfg.model.position.name
    limit = positional.max_length(cfg.model.position)
    out = []
    block = cfg.data.block_size
    for m, length in ([(round(T / block, 4), T) for T in absolute] if absolute else
                      [(m, m * block) for m in multipliers]):
        na = f"n/a ({name} table has {limit} positions)" if limit is not None and length > limit else None
        record = {"multiplier": int(m) if m == int(m) else m, "length": length, "na": na}
        if na is not None:  # the sliding window of the training length still fits the table
            record["sliding_ok"] = True
        out.append(record)
    return out
