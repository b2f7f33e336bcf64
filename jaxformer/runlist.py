"""`jaxformer runs` and `jaxformer compare`: run directories as a table, and their loss curves in one plot.

Reads only the small JSON files of a run directory (run.py describes them), never a checkpoint, so listing a folder
of runs takes no JAX and no time. A run's status:

    finished   every step of train.steps done
    diverged   stopped on a non-finite loss or gradient (train.nonfinite=stop)
    running    not finished and written to within the last RUNNING_WITHIN_S seconds
    stopped    not finished and quiet (Ctrl-C, SIGTERM, a crash or a kill; `train --resume` continues it)
    imported   a model converted by `jaxformer import` (not trained here)
    broken     not readable as a run: run files but no config.json, or a file that does not parse (the reason)

Folders that are not runs are passed over quietly and counted: hidden ones (.git), virtual environments, empty
ones, and those whose config.json is not a jaxformer config (a Hugging Face model folder).
"""

from __future__ import annotations

import json
import os
import statistics
import time

# A run that wrote metrics this recently is taken to be still running (a training step logs every few seconds).
RUNNING_WITHIN_S = 120
# Files only a run directory has: a folder holding one of them but no config.json is a half-written run.
RUN_FILES = ("metrics.jsonl", "manifest.json", "timing.jsonl", "vocab.json", "tokenizer.json", "checkpoints")


def _jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def config_name(argv: list) -> str:
    """The `--config` a run was made with, from its manifest's argv ("default" for a `jaxformer train` without one;
    "-" when unknown: a `--resume` without --config rewrites the manifest, and a run made from Python)."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return "default" if len(argv) > 1 and argv[1] == "train" and "--resume" not in argv else "-"


def summarize(workdir: str) -> dict:
    """What `runs` shows of one run directory; `status` is "broken" (with `problem`) when it cannot be read."""
    row = {"path": workdir, "config": "-", "data": "-", "position": "-", "done": 0, "steps": 0, "best_val": None,
           "best_step": None, "final_val": None, "exact_match": None, "wall_s": None, "tokens_per_s": None,
           "status": "broken", "problem": None, "note": None}
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            cfg = json.load(f)
        metrics = _jsonl(os.path.join(workdir, "metrics.jsonl"))
        timing = _jsonl(os.path.join(workdir, "timing.jsonl"))
        manifest_path = os.path.join(workdir, "manifest.json")
        manifest = json.load(open(manifest_path)) if os.path.exists(manifest_path) else {}
        row.update(data=cfg["data"]["name"], position=cfg["model"]["position"]["name"], steps=cfg["train"]["steps"])
        nonfinite_mode = cfg["train"].get("nonfinite", "stop")
    except FileNotFoundError:
        row["problem"] = "no config.json"
        return row
    except (ValueError, KeyError, TypeError) as e:  # a half-written or hand-edited file
        row["problem"] = f"unreadable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:80]
        return row
    row["config"] = config_name(manifest.get("argv", []))
    if "source" in manifest:  # `jaxformer import`: a converted model; its data.name is only what eval would read
        row.update(config="import", data="-", status="imported", steps=0,
                   note=manifest["source"].get("architecture"))
        return row
    row["done"] = max((m["step"] for m in metrics), default=0)
    evals = [m for m in metrics if "val_loss" in m]
    if evals:
        best = min(evals, key=lambda m: m["val_loss"])
        row.update(best_val=best["val_loss"], best_step=best["step"], final_val=evals[-1]["val_loss"],
                   exact_match=evals[-1].get("val_accuracy"))  # metrics.jsonl's val_accuracy is the exact match
    # Each timing line covers the steps since the one before (evaluations included), so they add up to the
    # training wall time; the median tokens/s leaves out the compile and the evaluations.
    previous, wall = 0, 0.0
    for t in timing:
        wall += t["ms_per_step"] * (t["step"] - previous) / 1000
        previous = t["step"]
    if timing:
        row["wall_s"] = wall
        row["tokens_per_s"] = statistics.median(t["tokens_per_s"] for t in timing)
    diverged = nonfinite_mode == "stop" and any(m.get("nonfinite_steps") for m in metrics)
    latest = max((os.path.getmtime(os.path.join(workdir, name)) for name in ("metrics.jsonl", "timing.jsonl",
                                                                              "config.json")
                  if os.path.exists(os.path.join(workdir, name))), default=0)
    if diverged:
        row["status"] = "diverged"
    elif row["done"] >= row["steps"]:
        row["status"] = "finished"
    elif time.time() - latest < RUNNING_WITHIN_S:
        row["status"] = "running"
    else:
        row["status"] = "stopped"
    return row


def not_a_run(path: str) -> bool:
    """A folder `runs` passes over quietly: hidden, a virtual environment or cache, or with a config.json that is
    not a jaxformer run's (no model/train/data sections: e.g. a Hugging Face model folder)."""
    name = os.path.basename(os.path.normpath(path))
    if name.startswith(".") or name in ("__pycache__", "node_modules", "site-packages") or \
            os.path.exists(os.path.join(path, "pyvenv.cfg")):
        return True
    try:
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return False  # no config.json, or a half-written one: summarize() says what is wrong
    return not (isinstance(cfg, dict) and {"model", "train", "data"} <= set(cfg))


def find_runs(root: str, *, depth: int = 4, skipped: list | None = None) -> list[str]:
    """Run directories at or under `root` (a run, a folder of runs, a sweep with runs/<point>/), sorted; a folder
    that looks like a half-written run (some run files, no config.json) is listed too, as broken. Folders that are
    not runs (`not_a_run`, or empty, or holding no run below) are left out; those named by the first two rules
    are appended to `skipped` when given."""
    if os.path.exists(os.path.join(root, "config.json")) and not not_a_run(root):
        return [root]
    found = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if not os.path.isdir(path):
            continue
        if not_a_run(path) or not os.listdir(path):
            if skipped is not None:
                skipped.append(path)
            continue
        if os.path.exists(os.path.join(path, "config.json")):
            found.append(path)
            continue
        below = find_runs(path, depth=depth - 1, skipped=skipped) if depth > 1 else []
        if below:
            found += below
        elif any(os.path.exists(os.path.join(path, f)) for f in RUN_FILES):
            found.append(path)  # half-written: summarize() says why it is broken
    return found


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


COLUMNS = ("run", "config", "data", "position", "steps", "final val loss", "best val loss", "final exact match",
           "wall", "tok/s", "status")


def table(rows: list[dict], root: str) -> str:
    """A plain-text table, one line per run (its path relative to `root`): the last evaluation's val loss and exact
    match beside the best val loss (with its step), each column saying which it is."""
    def cells(r):
        name = os.path.relpath(r["path"], root)
        name = r["path"] if name == "." or name.startswith("..") else name
        final = f"{r['final_val']:.4f}" if r["final_val"] is not None else "-"
        best = f"{r['best_val']:.4f} @{r['best_step']}" if r["best_val"] is not None else "-"
        exact = f"{100 * r['exact_match']:.1f}%" if r["exact_match"] is not None else "-"
        tokens = f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] is not None else "-"
        why = r["problem"] or r["note"]
        status = f"{r['status']} ({why})" if why else r["status"]
        steps = f"{r['done']}/{r['steps']}" if r["status"] not in ("broken", "imported") else "-"
        return (name, r["config"], r["data"], r["position"], steps, final, best, exact, _duration(r["wall_s"]),
                tokens, status)

    lines = [COLUMNS, *(cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    fmt = lambda line: "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
    return "\n".join([fmt(lines[0]), fmt(tuple("-" * w for w in widths)), *(fmt(line) for line in lines[1:])])


def runs_main(argv: list[str]) -> int:
    from jaxformer.options import parse

    args = parse("runs", argv)
    if args.dir == "runs" and not os.path.exists(args.dir):  # the default, before the first `jaxformer train`
        print("no runs yet: runs/ does not exist here (`jaxformer train` makes runs/<config>-<position>-<time>)")
        return 0
    if not os.path.isdir(args.dir):
        raise FileNotFoundError(f"{args.dir} is not a directory; give a folder of runs (default: runs/)")
    skipped = []
    paths = find_runs(args.dir, skipped=skipped)
    passed = (f" ({len(skipped)} folder{'s' * (len(skipped) != 1)} that are not runs passed over: hidden, virtual "
              "environments, empty, or not a jaxformer config.json)") if skipped else ""
    if not paths:
        print(f"no runs in {args.dir} (a run directory holds config.json; `jaxformer train` makes one){passed}")
        return 0
    rows = [summarize(p) for p in paths]
    print(table(rows, args.dir))
    if passed:
        print(passed.strip()[1:-1])
    return 0


# Config fields that differ between runs without making them different experiments (where things are, display).
_NOT_DISTINGUISHING = ("data.manual_dir", "data.data_dir", "train.progress", "train.sample_chars", "model.vocab_size")


def distinguishing_fields(configs: list[dict]) -> list[dict]:
    """For each run's config.json, the fields whose values differ between the runs (those of the variant each run
    uses only: `model.position.<other variant>.*` builds nothing), as {short name: value}."""
    from jaxformer import config as config_lib  # here, not at the top: `runs` lists without importing JAX

    flats = [config_lib.flatten(c) for c in configs]

    def read(flat: dict, key: str) -> bool:
        parts = key.split(".")
        other_variant = len(parts) > 3 and parts[2] != flat.get("model.position.name")
        return not (key.startswith("model.position.") and other_variant)

    keys = sorted({k for f in flats for k in f} - set(_NOT_DISTINGUISHING))
    differ = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats if read(f, k)}) > 1]
    short = lambda k: "position" if k == "model.position.name" else ".".join(k.split(".")[-2:])  # noqa: E731
    return [{short(k): f.get(k) for k in differ if read(f, k) and k in f} for f in flats]


def legend_labels(paths: list[str]) -> dict[str, str]:
    """path -> its label in `compare`'s legend: the run's name (its folder; the part below the runs' common folder)
    and, where the names alone do not say it, the config fields that tell the runs apart (at most 3)."""
    root = os.path.commonpath([os.path.abspath(p) for p in paths]) if len(paths) > 1 else None
    names = [os.path.relpath(os.path.abspath(p), root) if root else p for p in paths]
    configs = []
    for p in paths:
        with open(os.path.join(p, "config.json")) as f:
            configs.append(json.load(f))
    out = {}
    for path, name, fields in zip(paths, names, distinguishing_fields(configs), strict=True):
        shown = [f"{k}={v}" for k, v in fields.items() if str(v) not in name][:3]
        out[path] = f"{name} ({', '.join(shown)})" if shown else name
    return out


def compare_main(argv: list[str]) -> int:
    from jaxformer import plots
    from jaxformer.options import parse

    args = parse("compare", argv)
    for path in args.runs:
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"{path} is not a run directory (no config.json); give directories made by "
                             "`jaxformer train` (`jaxformer runs` lists them)")
    rows = [summarize(p) for p in args.runs]
    broken = [r for r in rows if r["status"] == "broken"]
    if broken:
        raise ValueError(f"{broken[0]['path']}: {broken[0]['problem']}")
    root = os.path.commonpath([os.path.abspath(p) for p in args.runs]) if len(args.runs) > 1 else "."
    print(table(rows, root if len(args.runs) > 1 else "."))
    labels = legend_labels(args.runs)
    curves = {labels[p]: _jsonl(os.path.join(p, "metrics.jsonl")) for p in args.runs}
    plots.compare_curves(curves, args.out)
    print(f"wrote {args.out}")
    return 0
