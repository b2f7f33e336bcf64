"""The options of every `jaxformer` subcommand, and the parsing of `--config` / `--config.a.b=value` arguments.

A bottom-layer module (argparse only, no JAX, nothing from jaxformer): `cli.main` parses a command's arguments
here first, so `--help` and a mistyped option answer before JAX is imported, and the entry functions that live
below the CLI (`sweep.sweep_main`, `analysis.report.attention_main`, `convert.hf.import_main`, `runlist.runs_main`,
...) parse theirs here too, without importing `cli`. A new option is one line in its `_<name>_arguments`, with a
help text (the default is appended to it); a new subcommand is one `ARGUMENTS` entry here and one
`cli.SUBCOMMANDS` entry, and its function starts with `args = options.parse(name, argv)`.
"""

from __future__ import annotations

import argparse
import difflib


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
    """argparse with the project's error style: one line, exit status 2.

    `config_fields`: for a command that takes --config, a function giving the config fields whose last part is a
    name (`steps` -> ["train.steps"]), so that `--steps 200` is answered with `--config.train.steps=200`."""

    config_fields = None

    def error(self, message):
        hint = "--help lists the options"
        if message.startswith("unrecognized arguments:"):
            options = [o for action in self._actions for o in action.option_strings if o not in ("-h", "--help")]
            words = message.split(":", 1)[1].split()
            for i, word in enumerate(words):
                if not word.startswith("--"):
                    continue
                name, _, value = word[2:].partition("=")
                if not value and i + 1 < len(words) and not words[i + 1].startswith("-"):
                    value = words[i + 1]
                fields = self.config_fields(name.replace("-", "_")) if self.config_fields else []
                if fields:
                    named = " or ".join(f"--config.{f}={value or 'VALUE'}" for f in fields[:3])
                    hint = f"did you mean {named}? a config field is set as --config.section.field=value; {hint}"
                    break
                close = difflib.get_close_matches(word.split("=")[0], options, n=1)
                if close:
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
                        "config with the --config.a.b=v overrides, e.g. a longer data.block_size and a RoPE scaling; "
                        "with --config FILE, FILE's recipe on RUN's model (e.g. --config finetune_text)")
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
    p.add_argument("--json", action="store_true",
                   help="print the result as one JSON line (for scripts) instead of the readable summary")
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
    p.add_argument("--axis", action="append", metavar="FIELD=V1,V2,...",
                   help="vary FIELD over these values (a comma list; repeat for more axes; sets or adds the axis), "
                        "e.g. --axis model.position.name=rope,alibi,none --axis train.seed=0,1,2")
    p.epilog = ("--config.<field>=v changes a sweep-config field (axes.*, eval_*, base, overrides) or, for any "
                "other field, the base config of every point (e.g. --config.train.steps=200). An axis takes a "
                "plain comma list: --config.axes.model.position.name=rope,alibi,none (the tuple form "
                "\"('rope','alibi')\" works too).")


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep_dir", help="a sweep directory (holding runs/<point>/)")


def _attention_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="run directory made by `jaxformer train`")
    text = p.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="the text to look at (tokenized with the run's tokenizer)")
    text.add_argument("--text-file", help="read the text from this file")
    p.add_argument("--text-pair", help="an encoder's sentence B ([CLS] text [SEP] pair [SEP]; BERT-family runs)")
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
    p.add_argument("--json", action="store_true",
                   help="print the manifest's source record as one JSON line instead of the summary")
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


def _fill_mask_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="an encoder's run directory (model.loss=masked_lm, or imported)")
    p.add_argument("--text", required=True, help="text with one or more [MASK]s where tokens are to be predicted")
    p.add_argument("--text-pair", help="a second segment (sentence B) for a model with token types (BERT)")
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                   help="which checkpoint: the last saved, or the best by validation loss")
    p.add_argument("--top-k", type=int, default=5, help="predictions shown per masked position")
    p.add_argument("--mask-token", default="[MASK]", help="the placeholder written in --text (RoBERTa: <mask>)")


# name -> (adds the options, description); the commands that take --config / --config.a.b=v overrides are marked.
ARGUMENTS = {
    "train": (_train_arguments, "Train a model; with no arguments, configs/default.py (a copy task, about a "
              "minute on a CPU) into runs/default-rope-<YYYYmmdd-HHMMSS>."),
    "eval": (_eval_arguments, "Evaluate a run's checkpoint: loss (and exact match on tasks), as a readable "
             "summary with every number explained (--json: one JSON line)."),
    "sample": (_sample_arguments, "Generate text from a run's checkpoint with a KV cache."),
    "fill-mask": (_fill_mask_arguments, "Predict the masked tokens of a text with an encoder (masked LM)."),
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
             "done/total, final and best val loss, final exact match, wall time, tokens/s and status (finished, "
             "stopped, diverged, running, imported; broken for a run folder that is not readable). Folders that "
             "are not runs (hidden, virtual environments, empty, another config.json) are passed over and counted."),
    "compare": (_compare_arguments, "Plot the loss curves of several runs in one PNG (and their exact match, for "
                "tasks), labelled by name and the config fields that tell them apart, and print their table."),
}
TAKES_CONFIG = ("train", "config", "sweep", "import", "eval")


def parser(name: str) -> ArgumentParser:
    """The argument parser of subcommand `name` (imports nothing beyond argparse)."""
    add_arguments, description = ARGUMENTS[name]
    p = _parser(name, description)
    add_arguments(p)
    return p


def parse(name: str, argv: list[str], *, config_fields=None) -> argparse.Namespace:
    """`name`'s arguments; for a command that takes a config, `.config` and `.overrides` (the --config.a.b=v).
    `config_fields`: see `ArgumentParser` (the caller above the config layer gives it; options imports nothing)."""
    if name in TAKES_CONFIG:
        config, overrides, rest = split_config_args(argv)
        p = parser(name)
        p.config_fields = config_fields
        args = p.parse_args(rest + ([f"--config={config}"] if config is not None else []))
        args.overrides = overrides
        args.config_given = config is not None
        return args
    return parser(name).parse_args(argv)
