"""Running a sweep: each point's run directory state, the check that a directory holds this point's config,
and training + evaluating every unfinished point in turn (the sweep config and points: points.py)."""

from __future__ import annotations

import functools
import os
import signal
import time

import ml_collections

from jaxformer import config as config_lib
from jaxformer import effective_context, extrapolation
from jaxformer import run as run_lib
from jaxformer.sweeps.points import VARIANT_FIELD, Point, flatten_axes, init_overrides, load_sweep, make_points
from jaxformer.sweeps.reports import write_reports

# Fields that may differ between a run directory's saved config and the sweep's config for that point on resume:
# derived from the dataset, cosmetic, or where the data lives on this machine.
_RESUME_IGNORED = ("model.vocab_size", "train.progress", "data.manual_dir", "data.data_dir")


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
    run_lib.checked_changes(
        saved, cfg, common_only=True, name_more=True, exception=ValueError, may_change=lambda field: False,
        ignore=lambda field: field in _RESUME_IGNORED or run_lib.unused_field(field, cfg),
        error=lambda field, new, old, more: (
            f"sweep point {name}: {run_dir} was run with {field}={old!r}, the sweep now gives {new!r}{more}; "
            "use another --workdir or restore the sweep config"))


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
