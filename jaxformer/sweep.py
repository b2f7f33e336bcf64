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
import functools
import itertools
import os
import signal
import time

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
# Fields that may differ between a run directory's saved config and the sweep's config for that point on resume:
# derived from the dataset, cosmetic, or where the data lives on this machine.
_RESUME_IGNORED = ("model.vocab_size", "train.progress", "data.manual_dir", "data.data_dir")


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


# ------------------------------------------------------------------------------------------------ run directories

def final_checkpoint_exists(run_dir: str, steps: int) -> bool:
    # orbax writes a step into a temporary directory and renames it when complete: the name means it is whole.
    return os.path.isdir(os.path.join(run_dir, "checkpoints", "latest", str(steps)))


def trained_to(run_dir: str, steps: int) -> bool:
    """metrics.jsonl has the final step: the run finished, whether or not its checkpoints are still there."""
    return os.path.exists(os.path.join(run_dir, "metrics.jsonl")) and any(
        m.get("step") == steps for m in run_lib.read_metrics(run_dir))


def point_state(run_dir: str, steps: int) -> str:
    """"done" (evaluated), "evaluate" (trained, not evaluated), "resume" (partly trained) or "new".

    An evaluated run counts as done from its small files alone (extrapolation.json of the final step and the final
    step in metrics.jsonl): a sweep committed without checkpoints continues where it stopped, without retraining.
    """
    result_path = os.path.join(run_dir, extrapolation.RESULT_FILE)
    if os.path.exists(result_path):
        result = run_lib.read_json(result_path)
        if (final_checkpoint_exists(run_dir, steps) or result.get("stopped")
                or (result.get("step") == steps and trained_to(run_dir, steps))):
            return "done"
    if final_checkpoint_exists(run_dir, steps):
        return "evaluate"
    if os.path.exists(os.path.join(run_dir, "config.json")):
        return "resume"
    return "new"


def check_same_config(run_dir: str, cfg: ml_collections.ConfigDict, name: str) -> None:
    """A run directory made by an earlier sweep must hold this point's config (else resuming would mix two).

    Compared after resolving both (a derived field the code learned to fill since is not a difference), on the fields
    both have, leaving out the other positional variants' settings (they do not touch this run).
    """
    saved = run_lib.load_config(run_dir)
    try:
        saved = config_lib.resolve(saved)
    except (AttributeError, KeyError, ValueError):  # a config from older code: compare it as saved
        pass
    saved, wanted = config_lib.flat_fields(saved), config_lib.flat_fields(cfg)

    def compared(field: str) -> bool:
        parts = field.split(".")
        other_variant = field.startswith("model.position.") and parts[2] not in ("name", "randomize_max_len",
                                                                                      "randomize_per",
                                                                                      cfg.model.position.name)
        unused_task = field.startswith("data.synthetic.") and not cfg.data.name.startswith("synthetic/")
        # Fields added since some points ran, read only in a setting these points do not use (their saved configs
        # hold the legacy value): the skip limit acts only under nonfinite=skip, YaRN's ramp only with its scaling.
        unread = ((field == "train.max_skipped_steps" and cfg.train.nonfinite != "skip")
                  or (field == "model.position.rope.yarn_ramp" and cfg.model.position.rope.scaling != "yarn")
                  or (field == "model.position.randomize_per" and not cfg.model.position.randomize_max_len))
        return field not in _RESUME_IGNORED and not other_variant and not unused_task and not unread

    differ = config_lib.cause_first(f for f in set(saved) & set(wanted) if compared(f) and saved[f] != wanted[f])
    if differ:
        field, more = differ[0], f" (and {len(differ) - 1} more: {', '.join(differ[1:])})" if len(differ) > 1 else ""
        raise ValueError(f"sweep point {name}: {run_dir} was run with {field}={saved[field]!r}, the sweep now gives "
                         f"{wanted[field]!r}{more}; use another --workdir or restore the sweep config")


def describe(point: Point, state: str) -> str:
    ok = " ".join(str(x["length"]) for x in point.lengths if x["na"] is None)
    na = [x for x in point.lengths if x["na"] is not None]
    na_text = f"; {' '.join(str(x['length']) for x in na)} {na[0]['na']}" if na else ""
    return f"  [{state:8s}] {point.name:32s} steps {point.cfg.train.steps}, eval at {ok}{na_text}"


# ------------------------------------------------------------------------------------------------------- running

def run_sweep(sweep_cfg: ml_collections.ConfigDict, workdir: str, *, base_overrides: list[str] = (),
              dry_run: bool = False, report: bool = True, print_fn=print) -> list[Point]:
    """Runs every unfinished point sequentially into `workdir/runs/<point>/`; returns the points."""
    points = make_points(sweep_cfg, base_overrides)
    runs_dir = os.path.join(workdir, "runs")
    states = {p.name: point_state(os.path.join(runs_dir, p.name), p.cfg.train.steps) for p in points}
    for p in points:
        if states[p.name] != "new":
            check_same_config(os.path.join(runs_dir, p.name), p.cfg, p.name)
    named = [(VARIANT_FIELD, tuple(sweep_cfg.variants))] if sweep_cfg.get("variants") else []
    axes = " x ".join(f"{field} ({len(values)})" for field, values in [*named, *flatten_axes(sweep_cfg.axes)])
    done = sum(s == "done" for s in states.values())
    print_fn(f"sweep: {len(points)} point{'s' * (len(points) != 1)} ({axes or 'no axes'}), {done} finished, "
             f"into {workdir}")
    for p in points:
        print_fn(describe(p, states[p.name]) + (f" (from {p.init_from})" if p.init_from else ""))
    if sweep_cfg.get("init"):  # the runs the points start from: trained first (finished ones are reused)
        base_cfg, base_base_overrides = load_sweep(sweep_cfg.init.sweep, init_overrides(sweep_cfg, base_overrides))
        print_fn(f"sweep: the points start from the runs of {sweep_cfg.init.sweep} in {workdir}/base")
        run_sweep(base_cfg, os.path.join(workdir, "base"), base_overrides=base_base_overrides, dry_run=dry_run,
                  report=report, print_fn=print_fn)
    if dry_run:
        return points

    os.makedirs(runs_dir, exist_ok=True)
    run_lib.write_json(os.path.join(workdir, "sweep.json"), {
        "config": sweep_cfg.to_dict(), "base_overrides": list(base_overrides),
        "points": [{"name": p.name, "values": p.values} for p in points]})
    datasets = {}
    for p in points:
        if states[p.name] == "done":
            continue
        print_fn(f"sweep: point {p.index + 1}/{len(points)}: {p.name} ({states[p.name]})")
        stopped = run_point(p, os.path.join(runs_dir, p.name), sweep_cfg, states[p.name], datasets)
        if report:
            write_reports(workdir)
        if stopped:
            reason, signal_name = stopped
            raise SweepStopped(f"sweep stopped at point {p.name}: {reason}; run the same command to resume",
                               signal_name)
    if report:
        for line in write_reports(workdir):
            print_fn(line)
    return points


class SweepStopped(RuntimeError):
    """A signal stopped a run (its checkpoint is saved); the sweep resumes from it when run again."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.signal_name = signal_name


def run_point(point: Point, run_dir: str, sweep_cfg: ml_collections.ConfigDict, state: str,
              datasets: dict) -> tuple[str, str] | None:
    """Trains (or resumes) and evaluates one point; returns (the stop reason, the signal's name) when a signal
    interrupted it."""
    from jaxformer import data as data_lib
    from jaxformer import loader
    from jaxformer import train as train_lib
    from jaxformer.analysis import run_hooks

    data_key = config_lib.to_json(point.cfg.data)
    if data_key not in datasets:
        datasets[data_key] = data_lib.load_dataset(point.cfg.data)
    dataset = datasets[data_key]
    stopped, train_time = None, None
    source = os.path.join(os.path.dirname(os.path.dirname(run_dir)), point.init_from) if point.init_from else None
    which = sweep_cfg.init.get("checkpoint", "latest") if source else "latest"
    if state in ("new", "resume"):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = train_lib.train(point.cfg, run_dir, resume=state == "resume", dataset=dataset,
                                 hooks=run_hooks.for_run(point.cfg, run_dir),
                                 init_from=source if state == "new" else None, init_checkpoint=which)
        train_time = (time.perf_counter() - start, time.process_time() - cpu_start)
        if result["signal"]:
            return result["stopped"], result["signal"]
        stopped = result["stopped"]  # a non-finite stop: the run is evaluated as it is, and says so
        trainer = result["trainer"]
        graphdef, params, cfg, step = trainer.graphdef, result["params"], trainer.cfg, result["step"]
    else:
        cfg, graphdef, params, step = loader.restore_params(run_dir)
    zero_shot = None
    if source:  # the base run's parameters under this point's config (e.g. a RoPE scaling), before its fine-tune
        _, _, base_params, base_step = loader.restore_params(source, which=which)
        zero_graphdef, _ = loader.abstract_model(cfg.model)
        zero_shot = {"from": point.init_from, "step": base_step, "lengths": extrapolation.evaluate_lengths(
            zero_graphdef, base_params, dataset, point.lengths, eval_tokens=sweep_cfg.eval_tokens,
            batch_tokens=sweep_cfg.eval_batch_tokens, split=sweep_cfg.eval_split)}
    if sweep_cfg.get("eval_depths"):  # before extrapolation.json, whose presence marks the point finished
        effective_context.evaluate_run(
            run_dir, graphdef, params, dataset, cfg, lengths=[x["length"] for x in point.lengths],
            depths=effective_context.check_depths(sweep_cfg.eval_depths),
            examples=sweep_cfg.get("eval_depth_examples", 64), batch_tokens=sweep_cfg.eval_batch_tokens,
            split=sweep_cfg.eval_split, zero_shot_params=base_params if source else None)
    extrapolation.evaluate_run(run_dir, graphdef, params, dataset, cfg, step=step, point=point.name,
                               variant=point.variant, index=point.index, values=point.values,
                               lengths=point.lengths, eval_tokens=sweep_cfg.eval_tokens,
                               batch_tokens=sweep_cfg.eval_batch_tokens, split=sweep_cfg.eval_split,
                               stopped=stopped, train_time=train_time, sizes=tuple(sweep_cfg.get("eval_sizes", ())),
                               size_examples=sweep_cfg.get("eval_size_examples", 64), zero_shot=zero_shot,
                               stride=sweep_cfg.get("eval_stride", None),
                               random_positions=bool(sweep_cfg.get("eval_random_positions", False)))
    return None


# -------------------------------------------------------------------------------------------------------- reports

def _fmt(stat, digits: int = 3, percent: bool = False) -> str:
    if stat is None:
        return "-"
    mean, std = stat
    scale, unit = (100.0, "%") if percent else (1.0, "")
    d = 1 if percent else digits
    return f"{mean * scale:.{d}f}{unit}" + (f" ± {std * scale:.{d}f}{unit}" if std else "")


def _params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def summary_lines(variants: list[dict]) -> list[str]:
    """One line per variant: loss at the training length, at the longest length it runs, and the change."""
    lines = []
    for v in variants:
        ok = [x for x in v["lengths"] if x["loss"] is not None]
        na = [x for x in v["lengths"] if x["loss"] is None]
        seeds = f"{len(v['seeds'])} seed{'s' if len(v['seeds']) != 1 else ''}"
        if not ok:
            reason = na[0]["na"] if na else "no results"
            lines.append(f"{v['variant']}: no eval length ran ({reason}; {seeds})")
            continue
        first, last = ok[0], ok[-1]
        text = f"{v['variant']}: loss {first['loss'][0]:.3f} at {first['multiplier']}× ({first['length']})"
        if last is not first:
            change = last["loss"][0] - first["loss"][0]
            relative = f" ({100 * change / first['loss'][0]:+.1f}%)" if first["loss"][0] >= 0.1 else ""
            text += f" -> {last['loss'][0]:.3f} at {last['multiplier']}× ({last['length']}), {change:+.3f}{relative}"
        if v["has_accuracy"] and first["exact_match"] is not None:
            text += f"; exact match {100 * first['exact_match'][0]:.0f}%"
            if last is not first:
                text += f" -> {100 * last['exact_match'][0]:.0f}%"
        if na:
            multipliers = ", ".join(f"{x['multiplier']}×" for x in na)
            text += f"; {multipliers} {na[0]['na']}"
        sliding = [x for x in v["lengths"] if x.get("sliding_loss")]
        if sliding and sliding[-1]["multiplier"] > first["multiplier"]:
            x = sliding[-1]
            text += f"; sliding window of {v['block_size']}: {x['sliding_loss'][0]:.3f} at {x['multiplier']}×"
        lines.append(f"{text} ({seeds})")
    if variants:
        longest = max(x["multiplier"] for x in variants[0]["lengths"])
        ranked = sorted((x["loss"][0], v["variant"]) for v in variants for x in v["lengths"]
                        if x["multiplier"] == longest and x["loss"] is not None)
        if len(ranked) > 1:
            order = " < ".join(f"{name} {loss:.3f}" for loss, name in ranked)
            lines.append(f"ranking at {longest}× (mean loss): {order}")
    return lines


def sweep_settings(workdir: str) -> dict:
    """The report settings (statistics, reference, families, correction, selection seeds) from the sweep's
    sweep.json; the defaults without one."""
    path = os.path.join(workdir, "sweep.json")
    cfg = run_lib.read_json(path).get("config", {}) if os.path.exists(path) else {}
    return {"statistics": bool(cfg.get("statistics", False)), "reference": cfg.get("reference", "rope"),
            "families": {k: tuple(v) for k, v in (cfg.get("families") or {}).items()},
            "correction": cfg.get("correction", "holm"), "selection_seeds": tuple(cfg.get("selection_seeds", ()))}


def families_of(variants: list[str], settings: dict) -> dict[str, tuple]:
    """The declared families (variant names), or one family "all" of every variant but the reference."""
    declared = settings.get("families") or {}
    return dict(declared) if declared else {"all": tuple(v for v in variants if v != settings.get("reference"))}


def add_statistics(variants: list[dict], reference: str, level: float = 0.95, *, settings: dict | None = None) -> None:
    """Adds to every length record `ci` (t interval of the mean loss over seeds) and `diff` (paired per-seed
    difference against the `reference` variant at that length: t interval, tie, paired t test p), and the same for
    the sliding-window loss (`sliding_ci`, `sliding_diff`); the selection seeds are left out of all of them. Then
    each declared family's differences get Holm and Benjamini-Hochberg adjusted p-values and `significant` under the
    declared correction (statistics.adjust); a difference outside every family keeps its raw p and no claim."""
    settings = {"selection_seeds": (), "correction": "holm", "families": {}, "reference": reference,
                **(settings or {})}
    skip = set(settings["selection_seeds"])
    kept = lambda seeds, values: {s: y for s, y in zip(seeds, values, strict=True) if s not in skip}
    ref = next((v for v in variants if v["variant"] == reference), None)
    for v in variants:
        for i, x in enumerate(v["lengths"]):
            own, own_sliding = kept(x["loss_seeds"], x["losses"]), kept(x["sliding_seeds"], x["sliding_losses"])
            x["ci"] = statistics.t_interval(list(own.values()), level)
            x["sliding_ci"] = statistics.t_interval(list(own_sliding.values()), level)
            x["diff"] = x["sliding_diff"] = None
            if ref is not None and v is not ref and i < len(ref["lengths"]):
                r = ref["lengths"][i]
                x["diff"] = statistics.paired_test(own, kept(r["loss_seeds"], r["losses"]), level)
                x["sliding_diff"] = statistics.paired_test(
                    own_sliding, kept(r["sliding_seeds"], r["sliding_losses"]), level)
    for family, members in families_of([v["variant"] for v in variants], settings).items():
        tests = [x[key] for v in variants if v["variant"] in members for x in v["lengths"]
                 for key in ("diff", "sliding_diff") if x.get(key)]
        for t in statistics.adjust(tests, settings["correction"]):
            t["family"] = family


def write_reports(workdir: str) -> list[str]:
    """results.md, results.csv, extrapolation.png, position_loss.png from `workdir/runs/*`; the summary lines."""
    results, unfinished = extrapolation.load_results(workdir)
    variants = extrapolation.aggregate(results)
    settings = sweep_settings(workdir)
    if settings["statistics"]:
        add_statistics(variants, settings["reference"], settings=settings)
    lines = summary_lines(variants)
    title = _title([r for r in results if not r["variant"].endswith(" zero-shot")] or results)
    _write_csv(variants, os.path.join(workdir, "results.csv"))
    _write_markdown(variants, results, unfinished, lines, title, os.path.join(workdir, "results.md"),
                    settings=settings)
    if effective_context.write_report(workdir, settings):
        lines = [*lines, f"effective context (passkey / MQAR by length and depth): {workdir}/context.md"]
    extrapolation.plot_extrapolation(variants, os.path.join(workdir, "extrapolation.png"),
                                     title=f"Loss vs eval length (dashed: sliding window of the training "
                                           f"length)\n{title}")
    if any(v.get("sizes") for v in variants):
        for name, group in size_plots(variants):
            extrapolation.plot_sizes(group, os.path.join(workdir, name),
                                     title=f"Accuracy per task size\n{_title([r for v in group for r in v['runs']])}")
        _write_sizes_csv(variants, os.path.join(workdir, "sizes.csv"))
    which = "longest eval length" if variants and variants[0]["has_accuracy"] else "all eval lengths pooled"
    extrapolation.plot_position_loss(variants, os.path.join(workdir, "position_loss.png"),
                                     title=f"Loss at each token position ({which})\n{title}")
    return lines


CSV_COLUMNS = ("variant", "multiplier", "length", "status", "seeds", "loss_mean", "loss_std", "losses",
               "exact_match_mean", "exact_match_std", "token_accuracy_mean", "token_accuracy_std",
               "predicted_tokens", "val_loss_mean", "val_loss_std", "n_params", "ms_per_step",
               "loss_ci95_low", "loss_ci95_high", "diff_vs_reference_mean", "diff_ci95_low", "diff_ci95_high",
               "diff_tie", "sliding_window", "sliding_stride", "sliding_loss_mean", "sliding_loss_std",
               "sliding_losses", "sliding_ci95_low", "sliding_ci95_high", "sliding_diff_mean", "sliding_diff_ci95_low",
               "sliding_diff_ci95_high", "sliding_diff_tie", "diff_p", "diff_p_holm", "diff_p_bh", "diff_significant",
               "sliding_diff_p", "sliding_diff_p_holm", "sliding_diff_p_bh", "sliding_diff_significant", "family")


def _stat_columns(x: dict, window: int) -> dict:
    ci, diff, sci, sdiff = (x.get(k) or {} for k in ("ci", "diff", "sliding_ci", "sliding_diff"))
    sliding = x.get("sliding_loss") or (None, None)
    return {"loss_ci95_low": ci.get("lo"), "loss_ci95_high": ci.get("hi"), "diff_vs_reference_mean": diff.get("mean"),
            "diff_ci95_low": diff.get("lo"), "diff_ci95_high": diff.get("hi"), "diff_tie": diff.get("tie"),
            "sliding_window": window if x.get("sliding_losses") else None, "sliding_stride": x.get("stride"),
            "sliding_loss_mean": sliding[0], "sliding_loss_std": sliding[1],
            "sliding_losses": ";".join(f"{y:.6f}" for y in x.get("sliding_losses", [])),
            "sliding_ci95_low": sci.get("lo"), "sliding_ci95_high": sci.get("hi"),
            "sliding_diff_mean": sdiff.get("mean"), "sliding_diff_ci95_low": sdiff.get("lo"),
            "sliding_diff_ci95_high": sdiff.get("hi"), "sliding_diff_tie": sdiff.get("tie"),
            **{f"{prefix}{k}": d.get(k) for prefix, d in (("diff_", diff), ("sliding_diff_", sdiff))
               for k in ("p", "p_holm", "p_bh", "significant")},
            "family": diff.get("family") or sdiff.get("family")}


def _ci_cell(stat: tuple | None, ci: dict | None) -> str:
    if stat is None:
        return "-"
    if ci is None:
        return _fmt(stat)
    return f"{ci['mean']:.3f} ± {ci['std']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}]"


def _p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def _diff_cell(diff: dict | None) -> str:
    """mean [interval] p (raw / Holm / BH); bold only when significant after the family's declared correction."""
    if diff is None:
        return "-"
    text = f"{diff['mean']:+.3f} [{diff['lo']:+.3f}, {diff['hi']:+.3f}]"
    if "p_holm" not in diff:  # outside every declared family: raw p only, no claim
        return f"{text} p={_p(diff['p'])} (no family)"
    text += f" p={_p(diff['p'])}/{_p(diff['p_holm'])}/{_p(diff['p_bh'])}"
    return f"**{text}**" if diff["significant"] else f"{text} tie"


def _write_csv(variants: list[dict], path: str) -> None:
    import csv
    import io

    rows = []
    for v in variants:
        for x in v["lengths"]:
            loss, val = x["loss"] or (None, None), v["val_loss"] or (None, None)
            em = x["exact_match"] if v["has_accuracy"] and x["exact_match"] else (None, None)
            acc = x["token_accuracy"] if v["has_accuracy"] and x["token_accuracy"] else (None, None)
            rows.append({"variant": v["variant"], "multiplier": x["multiplier"], "length": x["length"],
                         "status": x["na"] or "ok", "seeds": x["seeds"], "loss_mean": loss[0],
                         "loss_std": loss[1], "losses": ";".join(f"{y:.6f}" for y in x["losses"]),
                         "exact_match_mean": em[0], "exact_match_std": em[1],
                         "token_accuracy_mean": acc[0], "token_accuracy_std": acc[1],
                         "predicted_tokens": x["predicted_tokens"], "val_loss_mean": val[0],
                         "val_loss_std": val[1], "n_params": v["n_params"], "ms_per_step": v["ms_per_step"],
                         **_stat_columns(x, v["block_size"])})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    run_lib.atomic_write(path, text.getvalue())


def _write_sizes_csv(variants: list[dict], path: str) -> None:
    import csv

    rows = []
    for v in variants:
        for x in (v.get("sizes") or {}).get("per_size", []):
            em, acc = x["exact_match"] or (None, None), x["token_accuracy"] or (None, None)
            rows.append({"variant": v["variant"], "items": x["items"], "ood": x["ood"], "status": x["na"] or "ok",
                         "seeds": x["seeds"], "exact_match_mean": em[0], "exact_match_std": em[1],
                         "token_accuracy_mean": acc[0], "token_accuracy_std": acc[1]})
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=("variant", "items", "ood", "status", "seeds", "exact_match_mean",
                                               "exact_match_std", "token_accuracy_mean", "token_accuracy_std"))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _title(results: list[dict]) -> str:
    """What the runs trained on, for report titles: one dataset and step count, or (a sweep over several, e.g.
    the algorithmic tasks) how many datasets and the range of steps."""
    if not results:
        return "no finished runs"
    first = results[0]
    datas = list(dict.fromkeys(r["data"] for r in results))
    steps = sorted({r["steps"] for r in results})
    data = first["data"] if len(datas) == 1 else f"{len(datas)} datasets"
    trained = f"{steps[0]}" if len(steps) == 1 else f"{steps[0]}-{steps[-1]}"
    return (f"{data}, trained at T={first['block_size']} for {trained} steps "
            f"({first['model']['n_layer']}L/{first['model']['n_head']}H/{first['model']['n_embd']}D)")


def size_plots(variants: list[dict]) -> list[tuple[str, list[dict]]]:
    """(file name, variants) of the per-size plots: `sizes.png` for a sweep on one dataset, `sizes_<task>.png` per
    dataset for a sweep over several (one plot of every task's curves would mix tasks under one title)."""
    with_sizes = [v for v in variants if v.get("sizes")]
    datas = list(dict.fromkeys(v["runs"][0]["data"] for v in with_sizes))
    if len(datas) <= 1:
        return [("sizes.png", with_sizes)] if with_sizes else []
    return [(f"sizes_{d.rsplit('/', 1)[-1]}.png", [v for v in with_sizes if v["runs"][0]["data"] == d])
            for d in datas]


def size_baselines(with_sizes: list[dict], workdir: str) -> dict[str, dict]:
    """{dataset name: extrapolation.size_baselines} for each dataset of the per-size table, its data settings read
    from a run's config.json (the examples are a function of the task and the size only)."""
    from jaxformer import data as data_lib

    out = {}
    for v in with_sizes:
        run = v["runs"][0]
        path = os.path.join(workdir, "runs", run["point"], "config.json")
        if run["data"] in out or not os.path.exists(path):
            continue
        with open(path) as f:
            cfg = config_lib.from_json(f.read())
        records = run["sizes"]["records"]
        out[run["data"]] = extrapolation.size_baselines(
            data_lib.load_dataset(cfg.data), (records[0]["items"], records[-1]["items"]),
            train_max=run["sizes"]["train_max_items"], examples=run["sizes"]["examples"], split=run["split"])
    return out


def sizes_markdown(variants: list[dict], workdir: str | None = None) -> list[str]:
    """The protocol's table: exact match at the training sizes, the mean over the OOD sizes, and whether each model
    reached REACHED exact match in distribution first (the papers' precondition)."""
    with_sizes = [v for v in variants if v.get("sizes")]
    if not with_sizes:
        return []
    s0 = with_sizes[0]["sizes"]
    ood = s0.get("ood") or {}
    in_dist = s0.get("in_distribution") or {}
    out = ["", f"## Per task size (the literature's protocol: train on sizes 1..{s0['train_max_items']}, evaluate "
           "every size)", "",
           f"Exact match and token accuracy (mean ± spread over seeds) over the training sizes "
           f"{in_dist.get('sizes', ['-', '-'])[0]}..{in_dist.get('sizes', ['-', '-'])[1]} and averaged over the OOD "
           f"sizes {ood.get('sizes', ['-', '-'])[0]}..{ood.get('sizes', ['-', '-'])[1]} (every size, not only "
           f"multiples); `reached` = seeds at ≥ {100 * extrapolation.REACHED:.0f}% exact match in distribution "
           "(OOD numbers of a model that did not reach it say little).", "",
           "| variant | reached | exact match (train sizes) | exact match (OOD mean) | token accuracy (OOD mean) |",
           "|---|---|---|---|---|"]
    parts = (("in_distribution", "exact_match"), ("ood", "exact_match"), ("ood", "token_accuracy"))
    for v in with_sizes:
        s = v["sizes"]
        cells = [_fmt(s[part][key], percent=True) if s.get(part) else "-" for part, key in parts]
        out.append(f"| {v['variant']} | {s['reached']}/{s['seeds']} | " + " | ".join(cells) + " |")
    for data, baselines in (size_baselines(with_sizes, workdir) if workdir else {}).items():
        for name, label in (("majority", "majority answer token"), ("repeat", "repeat previous token")):
            b = baselines[name]
            cells = [f"{100 * b[part][key]:.1f}%" if b.get(part) else "-" for part, key in parts]
            out.append(f"| {label} ({data}; trivial baseline) | - | " + " | ".join(cells) + " |")
    out += ["", "Per size: `sizes.csv`. Trivial baselines on the same examples: the most frequent token at each "
            "answer position, and each answer token predicted as the one before it (teacher-forced)."]
    for name, group in size_plots(variants):
        out += ["", f"![accuracy per task size: {group[0]['runs'][0]['data']}]({name})" if name != "sizes.png" else
                "![accuracy per task size](sizes.png)"]
    return out


def _write_markdown(variants, results, unfinished, lines, title, path, *, settings=None) -> None:
    settings = settings or {"statistics": False, "reference": "rope"}
    out = [f"# Sweep results: {title}", ""]
    if variants:
        r = results[0]
        lengths = variants[0]["lengths"]
        tokens = next((x["predicted_tokens"] for v in variants for x in v["lengths"] if x["predicted_tokens"]),
                      None)
        wall = sum(r["seconds"][k] or 0 for r in results for k in ("train", "eval"))
        cpu = [r["cpu_seconds"][k] or 0 for r in results if "cpu_seconds" in r for k in ("train", "eval")]
        cpu_text = f", {sum(cpu) / 60:.1f} CPU-min" if len(cpu) == 2 * len(results) else ""
        runs = f"{len(results)} run{'s' * (len(results) != 1)} ({len(variants)} variants × seeds)"
        windows = ("about the same number of answer tokens (generated examples of length T, positions 0..T-1): "
                   f"{tokens} at {lengths[0]['multiplier']}×" if variants[0]["has_accuracy"] else
                   f"the same {tokens} tokens (non-overlapping windows of length T, positions 0..T-1)")
        out += [f"{runs}, {r['split']} split; each eval length predicts {windows}. "
                "Cells: mean loss (nats/token) over seeds ± sample standard deviation "
                "over seeds. `val loss` is the training run's own evaluation at the training length. Wall time of "
                f"the runs (training + evaluation): {wall / 60:.1f} min{cpu_text}.", ""]
        head = ["variant", "seeds", "params", "ms/step", f"val loss (T={r['block_size']})",
                *[f"{x['multiplier']}× ({x['length']})" for x in lengths]]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for v in variants:
            cells = [v["variant"], str(len(v["seeds"])), _params(v["n_params"]),
                     f"{v['ms_per_step']:.0f}" if v["ms_per_step"] else "-", _fmt(v["val_loss"])]
            cells += [_fmt(x["loss"]) if x["loss"] is not None else x["na"] for x in v["lengths"]]
            out.append("| " + " | ".join(cells) + " |")
        if any(x.get("sliding_losses") for v in variants for x in v["lengths"]):
            stride = next(x["stride"] for v in variants for x in v["lengths"] if x.get("stride"))
            out += ["", f"Sliding-window baseline: the same tokens, each predicted from at most the training length "
                    f"({r['block_size']} tokens) of context, the window advancing by {stride} (at 1× it is the "
                    "full-context loss). A full-context loss above its sliding-window loss means the variant does "
                    "worse with the longer context than without it.", "",
                    "| variant (sliding window) | " + " | ".join(f"{x['multiplier']}× ({x['length']})"
                                                             for x in lengths) + " |",
                    "|---|" + "---|" * len(lengths)]
            for v in variants:
                cells = [_fmt(x["sliding_loss"]) if x.get("sliding_loss") else "-" for x in v["lengths"]]
                out.append(f"| {v['variant']} (sliding {r['block_size']}) | " + " | ".join(cells) + " |")
        if settings["statistics"]:
            ref, level = settings["reference"], 95
            out += ["", f"Statistics over seeds: mean ± sample std [{level}% Student-t confidence interval of the "
                    "mean] (scipy.stats.t, n − 1 degrees of freedom).", "",
                    "| variant | " + " | ".join(f"{x['multiplier']}× ({x['length']})" for x in lengths) + " |",
                    "|---|" + "---|" * len(lengths)]
            for v in variants:
                cells = [_ci_cell(x["loss"], x.get("ci")) if x["loss"] is not None else x["na"]
                         for x in v["lengths"]]
                out.append(f"| {v['variant']} | " + " | ".join(cells) + " |")
            correction = {"holm": "Holm", "bh": "Benjamini–Hochberg"}[settings.get("correction", "holm")]
            families = families_of([v["variant"] for v in variants], settings)
            declared = "; ".join(f"`{k}`: {', '.join(m)}" for k, m in families.items())
            selection = settings.get("selection_seeds") or ()
            out += ["", f"Families of tests (declared in the sweep config before the runs; each adjusted on its "
                    f"own, full-context and sliding-window differences at every length together): {declared}. "
                    f"Seeds left out as hyperparameter-selection seeds: "
                    f"{', '.join(map(str, selection)) if selection else 'none'}."]
            for key, what in (("diff", "full-context loss"), ("sliding_diff", "sliding-window loss")):
                out += ["", f"Paired differences of the {what} against `{ref}`, seed by seed (variant − {ref}; "
                        f"negative = better than {ref}): mean [{level}% paired t interval] p = raw / Holm / "
                        f"Benjamini–Hochberg (paired t test, adjusted within the variant's family). **Bold**: "
                        f"significant at 5% after the {correction} correction; `tie`: not significant after it.", "",
                        "| variant | " + " | ".join(f"{x['multiplier']}× ({x['length']})" for x in lengths) + " |",
                        "|---|" + "---|" * len(lengths)]
                for v in variants:
                    if v["variant"] == ref:
                        continue
                    out.append(f"| {v['variant']} | " + " | ".join(_diff_cell(x.get(key)) for x in v["lengths"])
                               + " |")
        accuracy_tables = (("exact_match", "Exact match (every answer token of an example right)"),
                           ("token_accuracy", "Token accuracy (answer tokens predicted right)"))
        for key, caption in accuracy_tables if variants[0]["has_accuracy"] else ():
            out += ["", f"{caption}, mean ± spread over seeds:", "",
                    "| variant | " + " | ".join(f"{x['multiplier']}× ({x['length']})" for x in lengths) + " |",
                    "|---|" + "---|" * len(lengths)]
            for v in variants:
                cells = [_fmt(x[key], percent=True) if x["loss"] is not None else x["na"] for x in v["lengths"]]
                out.append(f"| {v['variant']} | " + " | ".join(cells) + " |")
        out += sizes_markdown(variants, os.path.dirname(os.path.abspath(path)))
        out += ["", "## Summary", "", *[f"- {line}" for line in lines], "",
                "![loss vs eval length](extrapolation.png)", "", "![loss vs position](position_loss.png)"]
    else:
        out += ["No run has been evaluated yet."]
    if unfinished:
        out += ["", f"Not finished yet: {', '.join(unfinished)}"]
    run_lib.atomic_write(path, "\n".join(out) + "\n")


# ------------------------------------------------------------------------------------------------------------ CLI

def sweep_main(argv: list[str]) -> int:
    from jaxformer.options import parse

    args = parse("sweep", argv)  # the options live in options.py, parsed there before JAX is imported
    config, overrides = args.config, args.overrides
    if config is None:
        raise ValueError("--config is required: a sweep config, e.g. sweeps.positional or configs/sweeps/positional.py")
    sweep_cfg, base_overrides = load_sweep(config, overrides, args.axis or [])
    name = os.path.basename(config)[:-3] if config.endswith(".py") else config.split(".")[-1]
    workdir = args.workdir or os.path.join("runs", "sweeps", name)
    try:
        run_sweep(sweep_cfg, workdir, base_overrides=base_overrides, dry_run=args.dry_run,
                  print_fn=functools.partial(print, flush=True))
    except SweepStopped as e:
        print(str(e))
        return 128 + signal.Signals[e.signal_name].value
    return 0


def report_main(argv: list[str]) -> int:
    from jaxformer.options import parse

    args = parse("report", argv)
    if not os.path.isdir(os.path.join(args.sweep_dir, "runs")):
        raise ValueError(f"{args.sweep_dir} has no runs/ directory; is it a sweep directory (`jaxformer sweep`)?")
    for line in write_reports(args.sweep_dir):
        print(line)
    return 0
