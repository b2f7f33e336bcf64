"""The `jaxformer` command: `jaxformer <subcommand> [--config FILE|NAME] [--config.a.b=value ...] [options]`.

Every subcommand that builds a run takes `--config` (a path, or a packaged name such as `tiny`) and any number of
`--config.section.field=value` overrides. Bad input exits with status 2 and one line naming what was wrong;
`--debug` shows the traceback too.

The options of every subcommand live here, in `_<name>_arguments` (registered in ARGUMENTS), apart from the code
that runs it (SUBCOMMANDS, imported only when used): `main` parses the arguments first, so `--help` and a mistyped
option answer before JAX is imported. A new option is one line in its `_<name>_arguments`, with a help text (the
default is appended to it); a new subcommand is one SUBCOMMANDS and one ARGUMENTS entry, and its function starts
with `args = parse(name, argv)`.
"""

from __future__ import annotations

import argparse
import difflib
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
    "import": ("jaxformer.convert.hf:import_main",
               "convert a Hugging Face checkpoint (GPT-2, Llama family) into a run directory"),
    "runs": ("jaxformer.runlist:runs_main", "list run directories as a table (steps, best val loss, status, ...)"),
    "compare": ("jaxformer.runlist:compare_main", "plot several runs' loss curves in one PNG and print their table"),
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


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (unless the help already says it, or the option is a flag)."""

    def _get_help_string(self, action):
        text = action.help or ""
        no_default = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if action.option_strings and not no_default and "default" not in text:
            text += " (default: %(default)s)"
        return text


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error style: one line, exit status 2."""

    def error(self, message):
        hint = "--help lists the options"
        if message.startswith("unrecognized arguments:"):
            options = [o for action in self._actions for o in action.option_strings]
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=")[0], options, n=1)
                if word.startswith("--") and close:
                    hint = f"did you mean {close[0]}? {hint}"
                    break
        self.exit(2, f"{self.prog}: error: {message} ({hint})\n")


def _parser(prog: str, description: str) -> ArgumentParser:
    p = ArgumentParser(prog=f"jaxformer {prog}", description=description, formatter_class=HelpFormatter)
    p.add_argument("--debug", action="store_true", help="on an error, show the full traceback, not one line")
    return p


def _config_help(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="default",
                   help="config file (.py) or packaged name (default, tiny, shakespeare_char, ...)")
    p.epilog = "Override any field with --config.section.field=value, e.g. --config.model.position.name=alibi"


# The options of each subcommand, apart from the code that runs it: `main` parses the arguments (and answers
# --help) before that code, and JAX with it, is imported.

def _train_arguments(p: argparse.ArgumentParser) -> None:
    _config_help(p)
    p.add_argument("--workdir", help="run directory (default: runs/<config>-<position>-<YYYYmmdd-HHMMSS>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --workdir from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete --workdir (a run directory) and start afresh")
    p.add_argument("--multihost", action="store_true",
                   help="one of several processes: jax.distributed.initialize() (= --config.mesh.multihost=true; "
                        "Slurm, Open MPI and TPU pod launches are detected without it); needs --workdir")
    p.add_argument("--init-from", metavar="RUN",
                   help="start from RUN's parameters with a fresh optimizer (fine-tune); without --config, RUN's "
                        "config with the --config.a.b=v overrides, e.g. a longer data.block_size and a RoPE scaling")
    p.add_argument("--init-checkpoint", choices=("latest", "best"), default="latest",
                   help="which checkpoint of --init-from RUN")


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="run directory made by `jaxformer train`")
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                   help="which checkpoint: the last saved, or the best by validation loss")
    p.add_argument("--split", choices=("val", "train"), default="val", help="data split to evaluate on")
    p.add_argument("--batches", type=int, default=0,
                   help="evaluation batches (default: 0 = the run's train.eval_iters)")
    p.add_argument("--full", action="store_true",
                   help="every non-overlapping block of the split instead of train.eval_iters random batches")
    p.add_argument("--lengths", metavar="T,T,...",
                   help="evaluate at these sequence lengths (length extrapolation; positions 0..T-1): loss, token "
                        "accuracy and exact match per length")
    p.add_argument("--sizes", metavar="MIN:MAX",
                   help="synthetic tasks: evaluate every task size MIN..MAX (exact match and token accuracy per size, "
                        "means over the sizes beyond the training ones)")
    p.add_argument("--eval-tokens", type=int, default=16384, help="predicted tokens per --lengths length")
    p.add_argument("--size-examples", type=int, default=128, help="examples per --sizes size")
    p.add_argument("--random-positions", metavar="R", type=int, nargs="?", const=0, default=None,
                   help="with --sizes: each example at its own sorted random positions from [0, R) instead of 0..T-1, "
                        "as Ruoss et al. 2023's code evaluates (no R: the run's model.position.randomize_max_len)")
    p.epilog = ("Context extension, zero-shot: override the position-scaling fields of the run's variant, e.g. "
                "--config.model.position.rope.scaling=yarn --config.model.position.rope.factor=4 (anything that "
                "would change the parameters is refused).")


def _sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="run directory made by `jaxformer train`")
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                   help="which checkpoint: the last saved, or the best by validation loss")
    p.add_argument("--prompt", help="text to continue (default: for a synthetic task, a random example's prompt "
                   "drawn from the task (--seed picks it), answered and checked; for text, a newline)")
    p.add_argument("--max-new-tokens", type=int,
                   help="tokens to generate after the prompt (default: 500 for text; for a synthetic task the "
                        "answer's length, so generation stops at the end of the answer)")
    p.add_argument("--temperature", type=float,
                   help="softmax temperature; 0 = greedy (default: 0.8 for text, 0 for a synthetic task)")
    p.add_argument("--top-k", type=int, default=200, help="sample among the k most likely tokens; 0 = all")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (and of a task's random prompt)")
    p.add_argument("--max-context", type=int, default=0,
                   help="positions kept in context (default: 0 = the training block size)")


def _config_arguments(p: argparse.ArgumentParser) -> None:
    _config_help(p)


def _repro_check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workdir", help="run directory made by `jaxformer train`")
    p.add_argument("--steps", type=int, required=True, help="re-run and compare the first N steps")


def _sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="sweep config: a .py file or packaged name (sweeps.positional); required")
    p.add_argument("--workdir", help="sweep directory (default: runs/sweeps/<config name>)")
    p.add_argument("--dry-run", action="store_true", help="list the points and their state; run nothing")
    p.epilog = ("--config.<field>=v changes a sweep-config field (axes.*, eval_*, base, overrides) or, for any "
                "other field, the base config of every point (e.g. --config.train.steps=200).")


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep_dir", help="a sweep directory (holding runs/<point>/)")


def _attention_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="run directory made by `jaxformer train`")
    text = p.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="the text to look at (tokenized with the run's tokenizer)")
    text.add_argument("--text-file", help="read the text from this file")
    p.add_argument("--out", help="output directory (default: WORKDIR/attention)")
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                   help="which checkpoint: the last saved, or the best by validation loss")
    p.add_argument("--step", type=int, help="a specific checkpoint step (default: the latest / best one)")
    p.add_argument("--layers", default="all", help="layers to keep, e.g. 0,2-3")
    p.add_argument("--heads", default="all", help="heads to keep, e.g. 0,2-3")
    p.add_argument("--induction-period", type=int, default=0,
                   help="block length n of the repeated random sequence (2n tokens) for the induction score "
                        "(default: 0 = min(block_size // 2, 128))")
    p.add_argument("--seed", type=int, default=0, help="seed of the repeated random sequence")


def _import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hf", required=True, help="a folder with config.json + *.safetensors + tokenizer.json, "
                   "or a hub id such as gpt2 or HuggingFaceTB/SmolLM-135M (fetched when online)")
    p.add_argument("--workdir", required=True, help="the run directory to create (must not exist or be empty)")
    p.add_argument("--param-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="dtype the parameters are kept and computed in")
    p.epilog = ("--config.<field>=v changes a field of the imported run's config (e.g. --config.data.block_size=512, "
                "--config.data.name=tfds:<name>).")


def _runs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", default="runs",
                   help="a folder of run directories (searched 4 levels deep: sweeps too), or one run")


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories made by `jaxformer train`")
    p.add_argument("--out", default="compare.png", help="the PNG to write (replaced if it exists)")


# name -> (adds the options, description); the commands that take --config / --config.a.b=v overrides are marked.
ARGUMENTS = {
    "train": (_train_arguments, "Train a model; with no arguments, configs/default.py (a copy task, about a "
              "minute on a CPU) into runs/default-rope-<YYYYmmdd-HHMMSS>."),
    "eval": (_eval_arguments, "Evaluate a run's checkpoint: loss (and exact-match accuracy on tasks)."),
    "sample": (_sample_arguments, "Generate text from a run's checkpoint with a KV cache."),
    "config": (_config_arguments, "Print a config with overrides applied, as JSON (validated)."),
    "repro-check": (_repro_check_arguments,
                    "Re-run the first N steps of a run and compare with its recorded metrics."),
    "sweep": (_sweep_arguments, "Run a sweep config: every point a run directory under --workdir, each evaluated "
              "at multiples of the training length; reports in --workdir."),
    "report": (_report_arguments, "Rewrite a sweep's reports from its run directories alone."),
    "attention": (_attention_arguments,
                  "Capture a run's attention on a text: grid.png, one PNG per head, attention.html (interactive, "
                  "self-contained), weights.npz, bertviz.npz, diagnostics.csv/.png."),
    "import": (_import_arguments, "Convert a Hugging Face checkpoint (GPT-2, Llama, Mistral, Qwen2, SmolLM) into a "
               "run directory that eval, sample and attention read."),
    "runs": (_runs_arguments, "List run directories as a table: name, config, data, position encoding, steps "
             "done/total, best val loss, accuracy, wall time, tokens/s and status (finished, stopped, diverged, "
             "running; broken for a folder that is not a readable run)."),
    "compare": (_compare_arguments, "Plot the loss curves of several runs in one PNG (and their exact-match "
                "accuracy, for tasks), and print their table."),
}
TAKES_CONFIG = ("train", "config", "sweep", "import", "eval")
WITHOUT_JAX = ("runs", "compare")  # read JSON files only: no JAX import, no machine settings


def parser(name: str) -> ArgumentParser:
    """The argument parser of subcommand `name` (imports nothing beyond argparse)."""
    add_arguments, description = ARGUMENTS[name]
    p = _parser(name, description)
    add_arguments(p)
    return p


def parse(name: str, argv: list[str]) -> argparse.Namespace:
    """`name`'s arguments; for a command that takes a config, `.config` and `.overrides` (the --config.a.b=v)."""
    if name in TAKES_CONFIG:
        config, overrides, rest = split_config_args(argv)
        args = parser(name).parse_args(rest + ([f"--config={config}"] if config is not None else []))
        args.overrides = overrides
        args.config_given = config is not None
        return args
    return parser(name).parse_args(argv)


def train_main(argv: list[str]) -> int:
    from jaxformer import config as config_lib
    from jaxformer import run as run_lib
    from jaxformer import train as train_lib

    args = parse("train", argv)
    overrides = args.overrides
    if args.multihost and not args.workdir:
        raise ValueError("--multihost needs --workdir: every process must write the same run directory")
    if args.resume and not args.workdir:
        raise ValueError("--resume needs --workdir: the run directory to continue (`jaxformer runs` lists them)")
    workdir = args.workdir
    if args.resume and not args.config_given and workdir and os.path.exists(os.path.join(workdir, "config.json")):
        cfg = run_lib.load_config(workdir)
        if overrides:
            cfg = _apply_overrides_to_saved(workdir, overrides)
    elif args.init_from and not args.config_given:
        cfg = init_config(args.init_from, overrides, args.init_checkpoint, workdir)
    else:
        cfg = config_lib.load(args.config, overrides)
    workdir = workdir or run_lib.default_workdir(args.config, cfg.model.position.name)
    if args.multihost:
        cfg.mesh.multihost = True
    from jaxformer.analysis import diagnostics

    result = train_lib.train(cfg, workdir, resume=args.resume, overwrite=args.overwrite,
                             hooks=diagnostics.training_hooks(cfg), init_from=args.init_from,
                             init_checkpoint=args.init_checkpoint)
    if sharding_is_main():
        print(run_summary(result, workdir, result["trainer"].cfg), flush=True)
    return exit_status(result)


def sharding_is_main() -> bool:
    from jaxformer import sharding as sharding_lib

    return sharding_lib.is_main_process()


def run_summary(result: dict, workdir: str, cfg) -> str:
    """What a finished (or stopped) `jaxformer train` prints: how it went, where its files are, what to run next."""
    import shlex

    from jaxformer import runlist

    row = runlist.summarize(workdir)
    quoted = shlex.quote(workdir)
    speed = f" ({row['tokens_per_s']:,.0f} tokens/s)" if row["tokens_per_s"] else ""
    wall = f" in {runlist._duration(row['wall_s'])}" if row["wall_s"] is not None else ""
    if result.get("stopped"):
        lines = [f"stopped at step {result['step']} of {cfg.train.steps}{wall}: {result['stopped']}"]
    else:
        lines = [f"finished {result['step']}/{cfg.train.steps} steps{wall}{speed}"]
    if row["final_val"] is not None:
        accuracy = f", val exact match {100 * row['accuracy']:.1f}%" if row["accuracy"] is not None else ""
        lines.append(f"  val loss {row['final_val']:.4f} (best {row['best_val']:.4f} at step {row['best_step']})"
                     f"{accuracy}")
    lines.append(f"run directory: {workdir}")
    files = [("plots/loss.png", "loss curves"),
             ("samples.txt", "the model's answers to validation prompts" if row["accuracy"] is not None
              else "text sampled at the end"),
             ("checkpoints/", "latest and best (by val loss) checkpoints"),
             ("metrics.jsonl", "every logged metric (TensorBoard: tensorboard --logdir runs)")]
    lines += [f"  {name:15s} {what}" for name, what in files if os.path.exists(os.path.join(workdir, name))]
    if result.get("stopped"):
        lines += ["next:", f"  jaxformer train --resume --workdir {quoted}    # continue from the last checkpoint"]
        return "\n".join(lines)
    if row["accuracy"] is not None:
        text = "abcd|abcd"  # every synthetic task's vocabulary holds these characters
        sample_note = "# a random task example, answered by the model"
    else:
        samples = os.path.join(workdir, "samples.txt")
        lines_of_text = [line for line in open(samples).read().splitlines() if line.strip()] \
            if os.path.exists(samples) else []
        text = lines_of_text[0][: min(cfg.data.block_size, 64)] if lines_of_text else ""  # one line of its own text
        sample_note = "# --prompt TEXT to continue your own text"
    lines += ["next:", f"  jaxformer sample --workdir {quoted}    {sample_note}",
              f"  jaxformer eval --workdir {quoted} --checkpoint best --full"]
    if text:
        lines.append(f"  jaxformer attention --workdir {quoted} --text {shlex.quote(text)}")
    lines.append(f"  jaxformer runs {shlex.quote(os.path.dirname(workdir) or '.')}    # every run there, as a table")
    return "\n".join(lines)


def init_config(source: str, overrides: list[str], which: str, workdir: str):
    """The config of a run initialised from `source` without --config: the source's own, with the overrides; the
    schedule's length follows the new train.steps unless optim.decay_steps is set too."""
    from jaxformer import train as train_lib

    train_lib.check_init_source(source, which, workdir)  # a run directory with that checkpoint, before anything
    cfg = _apply_overrides_to_saved(source, overrides)
    if not any(o.startswith("--config.optim.decay_steps") for o in overrides):
        cfg.optim.decay_steps = 0
    return cfg


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
        # Through config.from_json: a config.json written before a field existed gets its LEGACY_DEFAULTS value.
        f.write("from jaxformer import config\n"
                f"def get_config():\n    return config.from_json(open({saved!r}).read())\n")
    try:
        return config_lib.load(f.name, overrides, check_fields=False)
    finally:
        os.unlink(f.name)


def eval_main(argv: list[str]) -> int:
    import jax

    from jaxformer import config as config_lib
    from jaxformer import data as data_lib
    from jaxformer import extrapolation, loader, positional
    from jaxformer import run as run_lib
    from jaxformer import train as train_lib

    args = parse("eval", argv)
    if args.config_given:
        raise ValueError("eval takes the run's own config (--workdir); override fields with --config.a.b=v")
    lengths = _int_list("--lengths", args.lengths) if args.lengths else []
    sizes = _size_range(args.sizes) if args.sizes else None
    for flag, value in (("--eval-tokens", args.eval_tokens), ("--size-examples", args.size_examples)):
        if value < 1:
            raise ValueError(f"{flag}={value}; must be >= 1")
    if args.random_positions is not None and not sizes:
        raise ValueError("--random-positions applies to the per-size evaluation; give --sizes MIN:MAX too")
    saved = run_lib.load_config(args.workdir)  # a clear error when it is not a run directory
    random_positions = args.random_positions or (saved.model.position.get("randomize_max_len", 0)
                                                 if args.random_positions is not None else 0)
    if args.random_positions is not None and random_positions < 1:
        raise ValueError(f"--random-positions: {args.workdir} was trained on positions 0..T-1 "
                         "(model.position.randomize_max_len=0); give the range, e.g. --random-positions 256")
    cfg = _apply_overrides_to_saved(args.workdir, args.overrides) if args.overrides else saved
    changed = run_lib.check_init_config(args.workdir, config_lib.resolve(saved), config_lib.resolve(cfg),
                                        what="eval override")
    config_lib.validate(config_lib.resolve(cfg), eval_lengths=lengths)  # e.g. a length beyond a learned table
    _, _, params, step = loader.restore_params(args.workdir, which=args.checkpoint)
    if args.batches:
        cfg.train.eval_iters = args.batches
    dataset = data_lib.load_dataset(cfg.data, tokenizer=data_lib.cached_tokenizer(cfg.data, args.workdir))
    if sizes and getattr(dataset, "task", None) is None:
        raise ValueError(f"--sizes: data.name={cfg.data.name!r} is not a synthetic task; use --lengths")
    trainer = train_lib.Trainer(config_lib.resolve(cfg), dataset)  # the model of the overridden config
    params = jax.device_put(params, trainer.state_sharding["params"])
    result = {"step": step, "split": args.split, "overrides": {k: config_lib.flat_fields(trainer.cfg)[k]
                                                                for k in changed if k != "model.vocab_size"}}
    if not lengths and not sizes:
        evaluate = trainer.evaluate_full if args.full else trainer.evaluate
        result.update({"full": args.full, **evaluate(params, args.split)})
    params = jax.device_get(params)
    if lengths:
        block = trainer.cfg.data.block_size
        records = extrapolation.evaluate_lengths(
            trainer.graphdef, params, dataset, [{"multiplier": T / block, "length": T, "na": None} for T in lengths],
            eval_tokens=args.eval_tokens, batch_tokens=8192, split=args.split)
        result["lengths"] = [{k: v for k, v in x.items() if k not in ("position_loss", "multiplier")}
                             for x in records]
    if sizes:
        train_max = extrapolation.train_max_items(dataset, trainer.cfg.data.block_size)
        records = extrapolation.evaluate_sizes(trainer.graphdef, params, dataset, sizes, train_max=train_max,
                                               examples=args.size_examples, batch_tokens=8192, split=args.split,
                                               max_length=positional.max_length(trainer.cfg.model.position),
                                               random_positions=random_positions, seed=trainer.cfg.train.seed)
        result["sizes"] = {"train_max_items": train_max, "records": records, **extrapolation.size_summary(records),
                           **({"random_positions": random_positions} if random_positions else {})}
    print(json.dumps(result, sort_keys=True))
    return 0


def _int_list(flag: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(f"{flag}={text!r}; give positive integers separated by commas, e.g. 128,256,512")
    return values


def _size_range(text: str) -> tuple[int, int]:
    from jaxformer import extrapolation

    try:
        lo, hi = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--sizes={text!r}; give MIN:MAX task sizes, e.g. 1:60") from None
    try:
        return extrapolation.check_sizes((lo, hi))
    except ValueError:
        raise ValueError(f"--sizes={text!r}; give MIN:MAX task sizes with 1 <= MIN <= MAX") from None


def sample_main(argv: list[str]) -> int:
    import numpy as np
    from flax import nnx

    from jaxformer import data as data_lib
    from jaxformer import loader
    from jaxformer import run as run_lib
    from jaxformer import sample as sample_lib

    args = parse("sample", argv)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens={args.max_new_tokens}; must be >= 1")
    if args.temperature is not None and args.temperature < 0:
        raise ValueError(f"--temperature={args.temperature}; must be >= 0 (0 = greedy)")
    if args.top_k < 0:
        raise ValueError(f"--top-k={args.top_k}; must be >= 0 (0 = no top-k cut)")
    if args.max_context < 0:
        raise ValueError(f"--max-context={args.max_context}; must be >= 0 (0 = the training block size)")
    if args.prompt == "":
        raise ValueError("--prompt=''; give at least one character, or leave --prompt out")
    saved = run_lib.load_config(args.workdir)  # a clear error when it is not a run directory
    tokenizer = data_lib.run_tokenizer(args.workdir)  # vocab.json (characters) or tokenizer.json (subwords)
    task = data_lib.load_dataset(saved.data) if saved.data.name.startswith("synthetic/") else None
    if task is not None:
        # A task's answer has a known length: generate exactly that, and say whether it is right.
        if args.prompt is None:
            prompt_ids, expected = task.random_example(args.seed, block_size=saved.data.block_size)
        else:
            prompt_ids = tokenizer.encode(args.prompt)  # unknown characters: a one-line error naming them
            expected = task.answer(prompt_ids)
        max_new_tokens = args.max_new_tokens or expected.size
        temperature = 0.0 if args.temperature is None else args.temperature
    else:
        if args.prompt is not None:
            prompt_ids = tokenizer.encode(args.prompt)  # unknown characters: a one-line error naming them
        else:  # a newline where the vocabulary has one (subword vocabularies always do), else its first token
            try:
                prompt_ids = tokenizer.encode("\n")
            except ValueError:
                prompt_ids = tokenizer.encode(tokenizer.token_text(0))
        max_new_tokens = args.max_new_tokens or 500
        temperature = 0.8 if args.temperature is None else args.temperature
    cfg, graphdef, params, _ = loader.restore_params(args.workdir, which=args.checkpoint)
    model = nnx.merge(graphdef, params)
    # Trained with data.bos: the model saw every row start with BOS, so the prompt does too (it is not printed).
    prefix = np.asarray([tokenizer.vocab_size] if cfg.data.get("bos", False) else [], np.int32)
    ids = sample_lib.generate(model, np.concatenate([prefix, np.asarray(prompt_ids, np.int32)]),
                              max_new_tokens=max_new_tokens, temperature=temperature, top_k=args.top_k or None,
                              seed=args.seed, max_context=args.max_context or cfg.data.block_size)
    ids = np.asarray(ids)[prefix.size:]
    if task is None:
        sys.stdout.write(tokenizer.decode(ids) + "\n")
        return 0
    got = ids[len(prompt_ids):]
    n_right = int(sum(a == b for a, b in zip(got, expected, strict=False)))
    verdict = ("right" if got.size == expected.size and n_right == expected.size
               else f"WRONG ({n_right} of {expected.size} answer tokens right)")
    how = "greedy" if temperature == 0 else f"temperature {temperature}"
    print(f"prompt:   {tokenizer.decode(prompt_ids)}\n"
          f"model:    {tokenizer.decode(got)}    ({how})\n"
          f"expected: {tokenizer.decode(expected)}    {verdict}")
    return 0


def config_main(argv: list[str]) -> int:
    from jaxformer import config as config_lib

    args = parse("config", argv)
    cfg = config_lib.resolve(config_lib.load(args.config, args.overrides))
    config_lib.validate(cfg)
    print(config_lib.to_json(cfg))
    return 0


def repro_check_main(argv: list[str]) -> int:
    from jaxformer import run as run_lib
    from jaxformer import train as train_lib
    from jaxformer.analysis import diagnostics

    args = parse("repro-check", argv)
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
        train_lib.train(cfg, os.path.join(tmp, "run"), stop_after=args.steps, hooks=diagnostics.training_hooks(cfg))
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


class TqdmLogHandler(logging.StreamHandler):
    """Log lines go above a progress bar (tqdm.write), never onto the bar's line."""

    def emit(self, record):
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging's contract: a handler reports its own failures and does not raise
            self.handleError(record)


def print_help() -> None:
    print("usage: jaxformer <subcommand> [options]   (no subcommand: `jaxformer train`, the default demo)\n\n"
          "subcommands:")
    for name, (_, help_text) in SUBCOMMANDS.items():
        print(f"  {name:12s} {help_text}")
    print("\noptions of every subcommand:\n"
          "  -h, --help   its options, each with its default\n"
          "  --debug      on an error, show the full traceback, not one line\n\n"
          "`jaxformer <subcommand> --help` for its options; `jaxformer train` alone runs configs/default.py.")


def main(argv: list[str] | None = None) -> int:
    own_process = argv is None  # the `jaxformer` command itself, not a caller in Python (tests)
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print_help()
        return 0
    if argv and argv[0] == "--version":
        from jaxformer import __version__

        print(f"jaxformer {__version__}")
        return 0
    if not argv or argv[0].startswith("-"):
        argv = ["train", *argv]
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"jaxformer: unknown subcommand {name!r}; choose one of: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    # Arguments first (--help and a mistyped option answer here, in a fraction of a second): nothing below this
    # line has imported JAX yet.
    debug = parse(name, rest).debug
    interrupt = _Interrupt.install()
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[TqdmLogHandler(sys.stderr)])
    for noisy in ("absl", "jax._src", "orbax", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not debug:
        # orbax logs through absl, from its own threads, a traceback per failed write (dozens of lines for one
        # full disk) and warnings on every damaged checkpoint; checkpoint.py says each of those in one line.
        # (absl names its own module as the caller of some of them, hence both paths.)
        quiet = (f"{os.sep}orbax{os.sep}", f"{os.sep}absl{os.sep}logging{os.sep}")
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda record: record.name != "absl" or not any(q in record.pathname for q in quiet))
        # After a failed read, tensorstore's callbacks into the asyncio loop orbax has already closed report this
        # error as "unraisable", a traceback per array, and orbax's other per-array read coroutines, abandoned once
        # the restore gave up, report their own read errors the same way ("Exception ignored in: <coroutine ...>");
        # the failed read itself is said in one line (checkpoint.py), so neither is printed.
        default_hook = sys.unraisablehook
        orbax_dir = f"{os.sep}orbax{os.sep}"

        def from_orbax(info) -> bool:
            code = getattr(info.object, "cr_code", None)
            if code is not None and orbax_dir in code.co_filename:
                return True
            tb = info.exc_traceback
            while tb is not None:
                if orbax_dir in tb.tb_frame.f_code.co_filename:
                    return True
                tb = tb.tb_next
            return False

        def unraisable(info):
            closed = isinstance(info.exc_value, RuntimeError) and str(info.exc_value) == "Event loop is closed"
            if not (closed or from_orbax(info)):
                default_hook(info)

        sys.unraisablehook = unraisable
    module_name, function_name = SUBCOMMANDS[name][0].split(":")
    try:
        if name not in WITHOUT_JAX:
            from jaxformer import platform

            # Machine settings (allocator, XLA flags, JAXFORMER_CPU_DEVICES) before JAX starts its backend; a bad
            # environment value is a one-line error like any other bad input.
            platform.configure()
        function = getattr(importlib.import_module(module_name), function_name)
        status = function(rest)
    except BaseException as e:
        if interrupt.received is None or isinstance(e, SystemExit):
            return _error_status(name, e, debug)
        # Interrupted itself, or what it became on its way out (inside a C extension's import: an ImportError).
        return _interrupted(name, interrupt.received, own_process)
    if interrupt.received is not None and status == 0:  # a signal whose exception Python swallowed
        return _interrupted(name, interrupt.received, own_process)
    return status


def _interrupted(name: str, received: str, own_process: bool) -> int:
    """One line and the shell's status, 128 + the signal's number. The command, run as its own process, ends here at
    once: a signal during start-up can land while JAX initialises its backend, and finalising the interpreter then
    crashed (SIGSEGV) or printed the backend's slow-start warning on a loaded machine (the training loop handles its
    own signals before this: checkpoint, lock released). A caller in Python gets the status back."""
    print(f"jaxformer {name}: interrupted by {received}", file=sys.stderr)
    status = 128 + signal.Signals[received].value
    if own_process:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
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
