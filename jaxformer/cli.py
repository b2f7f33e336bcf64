"""The `jaxformer` command: `jaxformer <subcommand> [--config FILE|NAME] [--config.a.b=value ...] [options]`.

Every subcommand that builds a run takes `--config` (a path, or a packaged name such as `tiny`) and any number of
`--config.section.field=value` overrides. Bad input exits with status 2 and one line naming what was wrong;
`--debug` shows the traceback too.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import tempfile

# Subcommands live next to what they run; each is `module:function(argv) -> int`, imported only when used.
SUBCOMMANDS = {
    "train": ("jaxformer.cli:train_main", "train a model from a config into a run directory"),
    "eval": ("jaxformer.cli:eval_main", "evaluate a run's checkpoint on a split"),
    "sample": ("jaxformer.cli:sample_main", "generate text from a run's checkpoint (KV cache)"),
    "config": ("jaxformer.cli:config_main", "print a resolved config (with overrides) as JSON"),
    "repro-check": ("jaxformer.cli:repro_check_main", "re-run a run's first N steps and compare the metrics"),
    "sweep": ("jaxformer.sweep:sweep_main", "run a variant sweep (e.g. every positional encoding x seeds)"),
    "report": ("jaxformer.sweep:report_main", "regenerate a sweep's tables and plots from its run directories"),
    "attention": ("jaxformer.analysis.report:attention_main",
                  "attention heatmaps, HTML viewer and per-head diagnostics for a run and a text"),
}

log = logging.getLogger("jaxformer")


def split_config_args(argv: list[str]) -> tuple[str | None, list[str], list[str]]:
    """(config, overrides, rest): `--config X` / `--config=X`, `--config.a.b=v` / `--config.a.b v`."""
    config, overrides, rest = None, [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            config, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg.startswith("--config."):
            if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                arg, i = f"{arg}={argv[i + 1]}", i + 1
            overrides.append(arg)
        else:
            rest.append(arg)
        i += 1
    return config, overrides, rest


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"jaxformer {prog}", description=description,
                                epilog="--debug shows tracebacks on errors")
    return p


def _config_help(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config file (.py) or packaged name (default, tiny, shakespeare_char, ...)")
    p.epilog = "Override any field with --config.section.field=value, e.g. --config.model.position.name=alibi"


def train_main(argv: list[str]) -> int:
    from jaxformer import config as config_lib
    from jaxformer import run as run_lib
    from jaxformer import train as train_lib

    config, overrides, rest = split_config_args(argv)
    p = _parser("train", "Train a model; with no arguments, configs/default.py into runs/<timestamp>.")
    _config_help(p)
    p.add_argument("--workdir", help="run directory (default: runs/<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --workdir from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete --workdir (a run directory) and start afresh")
    p.add_argument("--multihost", action="store_true",
                   help="one of several processes: jax.distributed.initialize() (= --config.mesh.multihost=true; "
                        "Slurm, Open MPI and TPU pod launches are detected without it); needs --workdir")
    args = p.parse_args(rest)
    if args.multihost and not args.workdir:
        raise ValueError("--multihost needs --workdir: every process must write the same run directory")
    workdir = args.workdir or run_lib.default_workdir()
    if args.resume and config is None and os.path.exists(os.path.join(workdir, "config.json")):
        cfg = run_lib.load_config(workdir)
        if overrides:
            cfg = _apply_overrides_to_saved(workdir, overrides)
    else:
        cfg = config_lib.load(config or "default", overrides)
    if args.multihost:
        cfg.mesh.multihost = True
    result = train_lib.train(cfg, workdir, resume=args.resume, overwrite=args.overwrite)
    print(json.dumps({k: v for k, v in result.items() if k not in ("params", "trainer")}, sort_keys=True))
    print(f"run directory: {workdir}")
    return exit_status(result)


def exit_status(result: dict) -> int:
    """0 for a run that ran its steps; 128 + the signal's number for one a signal stopped (a shell's convention: a
    script sees the interrupt, and `--resume` continues from the checkpoint saved); 1 for a non-finite stop."""
    if result.get("signal"):
        return 128 + signal.Signals[result["signal"]].value
    return 1 if result.get("stopped") else 0


def _apply_overrides_to_saved(workdir: str, overrides: list[str]):
    """Overrides on top of a run's saved config.json (e.g. `--resume --config.train.steps=4000` to extend)."""
    from jaxformer import config as config_lib

    saved = os.path.join(workdir, "config.json")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write("import json, ml_collections\n"
                f"def get_config():\n    return ml_collections.ConfigDict(json.load(open({saved!r})))\n")
    try:
        return config_lib.load(f.name, overrides, check_fields=False)
    finally:
        os.unlink(f.name)


def eval_main(argv: list[str]) -> int:
    import jax

    from jaxformer import config as config_lib
    from jaxformer import data as data_lib
    from jaxformer import train as train_lib

    p = _parser("eval", "Evaluate a run's checkpoint: loss (and exact-match accuracy on tasks).")
    p.add_argument("--workdir", required=True)
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest")
    p.add_argument("--split", choices=("val", "train"), default="val")
    p.add_argument("--batches", type=int, default=0, help="evaluation batches (default: train.eval_iters)")
    p.add_argument("--full", action="store_true",
                   help="every non-overlapping block of the split instead of train.eval_iters random batches")
    args = p.parse_args(argv)
    cfg, graphdef, params, step = train_lib.restore_params(args.workdir, which=args.checkpoint)
    if args.batches:
        cfg.train.eval_iters = args.batches
    dataset = data_lib.load_dataset(cfg.data)
    trainer = train_lib.Trainer(config_lib.resolve(cfg), dataset)
    params = jax.device_put(params, trainer.state_sharding["params"])
    del graphdef
    evaluate = trainer.evaluate_full if args.full else trainer.evaluate
    result = {"step": step, "split": args.split, "full": args.full, **evaluate(params, args.split)}
    print(json.dumps(result, sort_keys=True))
    return 0


def sample_main(argv: list[str]) -> int:
    from flax import nnx

    from jaxformer import data as data_lib
    from jaxformer import run as run_lib
    from jaxformer import sample as sample_lib
    from jaxformer import train as train_lib

    p = _parser("sample", "Generate text from a run's checkpoint with a KV cache.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-context", type=int, default=0,
                   help="positions kept in context (default: the training block size)")
    args = p.parse_args(argv)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens={args.max_new_tokens}; must be >= 1")
    if args.temperature < 0:
        raise ValueError(f"--temperature={args.temperature}; must be >= 0 (0 = greedy)")
    if args.top_k < 0:
        raise ValueError(f"--top-k={args.top_k}; must be >= 0 (0 = no top-k cut)")
    if args.max_context < 0:
        raise ValueError(f"--max-context={args.max_context}; must be >= 0 (0 = the training block size)")
    if not args.prompt:
        raise ValueError("--prompt=''; give at least one character (the default is a newline)")
    run_lib.load_config(args.workdir)  # a clear error when it is not a run directory
    tokenizer = data_lib.load_tokenizer(os.path.join(args.workdir, "vocab.json"))
    prompt_ids = tokenizer.encode(args.prompt)  # unknown characters: a one-line error naming them
    cfg, graphdef, params, _ = train_lib.restore_params(args.workdir, which=args.checkpoint)
    model = nnx.merge(graphdef, params)
    ids = sample_lib.generate(model, prompt_ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k or None, seed=args.seed,
                              max_context=args.max_context or cfg.data.block_size)
    sys.stdout.write(tokenizer.decode(ids) + "\n")
    return 0


def config_main(argv: list[str]) -> int:
    from jaxformer import config as config_lib

    config, overrides, rest = split_config_args(argv)
    p = _parser("config", "Print a config with overrides applied, as JSON (validated).")
    _config_help(p)
    p.parse_args(rest)
    cfg = config_lib.resolve(config_lib.load(config or "default", overrides))
    config_lib.validate(cfg)
    print(config_lib.to_json(cfg))
    return 0


def repro_check_main(argv: list[str]) -> int:
    from jaxformer import run as run_lib
    from jaxformer import train as train_lib

    p = _parser("repro-check", "Re-run the first N steps of a run and compare with its recorded metrics.")
    p.add_argument("workdir")
    p.add_argument("--steps", type=int, required=True)
    args = p.parse_args(argv)
    metrics = run_lib.read_metrics(args.workdir)
    recorded = [m for m in metrics if m["step"] <= args.steps]
    if not recorded:
        raise ValueError(f"{args.workdir}/metrics.jsonl has no records up to step {args.steps}")
    cfg = run_lib.load_config(args.workdir)
    last = max(m["step"] for m in metrics)
    if args.steps > last:
        raise ValueError(f"--steps={args.steps}; {args.workdir} has recorded only {last} steps (its metrics.jsonl): "
                         f"choose --steps <= {last}")
    cfg.train.progress = False
    cfg.train.sample_chars = 0
    with tempfile.TemporaryDirectory() as tmp:
        # Same config (so the same schedule); stop after N steps.
        train_lib.train(cfg, os.path.join(tmp, "run"), stop_after=args.steps)
        rerun = [m for m in run_lib.read_metrics(os.path.join(tmp, "run")) if m["step"] <= args.steps]
        now = run_lib.read_json(os.path.join(tmp, "run", "manifest.json"))
    mismatches = [(a, b) for a, b in zip(recorded, rerun, strict=False) if a != b]
    if len(rerun) != len(recorded):
        mismatches.append((f"{len(recorded)} records", f"{len(rerun)} records"))
    if mismatches:
        a, b = mismatches[0]
        print(f"MISMATCH: {len(mismatches)} of {len(recorded)} records differ; first: recorded {a} vs re-run {b}")
        recorded_manifest = os.path.join(args.workdir, "manifest.json")
        if os.path.exists(recorded_manifest):
            differences = run_lib.environment_differences(run_lib.read_json(recorded_manifest), now)
            print("what differs from the recorded run's manifest:" if differences else
                  "the recorded run's manifest shows no difference in versions, devices, flags, kernels, data "
                  "or code revision")
            for line in differences:
                print(f"  {line}")
        return 1
    print(f"OK: the first {args.steps} steps reproduce all {len(recorded)} recorded metrics records bit for bit")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        if not argv:
            argv = ["train"]
        else:
            print("usage: jaxformer <subcommand> [options]\n\nsubcommands:")
            for name, (_, help_text) in SUBCOMMANDS.items():
                print(f"  {name:12s} {help_text}")
            print("\n`jaxformer <subcommand> --help` for its options; `jaxformer train` alone runs configs/default.py.")
            return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"jaxformer: unknown subcommand {name!r}; choose one of: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    debug = "--debug" in rest
    interrupt = _Interrupt.install()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("absl", "jax._src", "orbax", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not debug:
        # orbax logs through absl, from its own threads, a traceback per failed write (dozens of lines for one
        # full disk) and warnings on every damaged checkpoint; checkpoint.py says each of those in one line.
        # (absl names its own module as the caller of some of them, hence both paths.)
        quiet = (f"{os.sep}orbax{os.sep}", f"{os.sep}absl{os.sep}logging{os.sep}")
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda record: record.name != "absl" or not any(q in record.pathname for q in quiet))
    module_name, function_name = SUBCOMMANDS[name][0].split(":")
    try:
        from jaxformer import platform

        # Machine settings (allocator, XLA flags, JAXFORMER_CPU_DEVICES) before JAX starts its backend; a bad
        # environment value is a one-line error like any other bad input.
        platform.configure()
        function = getattr(importlib.import_module(module_name), function_name)
        status = function([a for a in rest if a != "--debug"])
    except BaseException as e:
        if interrupt.received is None or isinstance(e, SystemExit):
            return _error_status(name, e, debug)
        # Interrupted itself, or what it became on its way out (inside a C extension's import: an ImportError).
        print(f"jaxformer {name}: interrupted by {interrupt.received}", file=sys.stderr)
        return 128 + signal.Signals[interrupt.received].value
    if interrupt.received is not None and status == 0:  # a signal whose exception Python swallowed
        print(f"jaxformer {name}: interrupted by {interrupt.received}", file=sys.stderr)
        return 128 + signal.Signals[interrupt.received].value
    return status


def _error_status(name: str, e: BaseException, debug: bool) -> int:
    """One line and the exit status for an error that says itself; anything else (a bug) goes on, traceback and
    all, as does everything under --debug."""
    if debug:
        raise e
    if isinstance(e, (ValueError, FileNotFoundError, KeyError)):  # bad input
        print(f"jaxformer {name}: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    if not isinstance(e, Exception) or not hasattr(type(e), "exit_code"):
        raise e
    # Errors that say themselves in one line and set their own status (e.g. a checkpoint that could not be
    # written: checkpoint.CheckpointError, status 1).
    print(f"jaxformer {name}: error: {str(e).splitlines()[0]}", file=sys.stderr)
    if getattr(type(e), "exit_now", False):
        # A failed asynchronous checkpoint write leaves orbax threads waiting (minutes) for a signal that the
        # failed write never sends; the run's own state is already closed and unlocked (train.py's finally), so
        # the process ends here rather than waiting for them.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(type(e).exit_code)
    return type(e).exit_code


class Interrupted(BaseException):
    """SIGINT/SIGTERM outside the training loop (which handles them itself: checkpoint, then exit 130/143).

    A BaseException, like KeyboardInterrupt, so no `except Exception` on the way (a checkpoint fallback, a
    data loader) takes it for an error and carries on."""

    def __init__(self, signal: signal.Signals):
        super().__init__(signal.name)
        self.signal = signal


class _Interrupt:
    """The entry point's handler: raises Interrupted, and remembers the signal, because Python only prints an
    exception raised while it runs a garbage-collection callback ("Exception ignored in ...") and goes on.
    train.py's loop reads `received` when it takes the signals over."""

    def __init__(self):
        self.received = None

    @classmethod
    def install(cls) -> _Interrupt:
        handler = cls()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, handler)
        default_hook = sys.unraisablehook

        def unraisable(info):  # the swallowed Interrupted is recorded in `received`: no traceback for it
            if not isinstance(info.exc_value, Interrupted):
                default_hook(info)

        sys.unraisablehook = unraisable
        return handler

    def __call__(self, signum, frame):
        self.received = signal.Signals(signum).name
        self._raise(frame)

    def _raise(self, frame, *_):
        if _importing(frame):
            # Raised inside a module being imported, the exception can be printed by a C extension's init (numpy,
            # jaxlib: a traceback) and come out as an ImportError: raise it when the import is done.
            signal.signal(signal.SIGALRM, lambda signum, frame: self._raise(frame))
            signal.setitimer(signal.ITIMER_REAL, 0.02)
            return
        raise Interrupted(signal.Signals[self.received])


def _importing(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


if __name__ == "__main__":
    sys.exit(main())
