"""The `jaxformer` command: `jaxformer <subcommand> [--config FILE|NAME] [--config.a.b=value ...] [options]`.

Every subcommand that builds a run takes `--config` (a path, or a packaged name such as `tiny`) and any number of
`--config.section.field=value` overrides. Bad input exits with status 2 and one line naming what was wrong;
`--debug` shows the traceback too.

The options of every subcommand live in `jaxformer/options.py` (`ARGUMENTS`, a bottom-layer module that the entry
functions below the CLI parse with too), apart from the code that runs it (SUBCOMMANDS, imported only when used):
`main` parses the arguments first, so `--help` and a mistyped option answer before JAX is imported. A new
subcommand is one SUBCOMMANDS entry here and one `options.ARGUMENTS` entry, and its function starts with
`args = options.parse(name, argv)`.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import signal
import sys
import tempfile

from jaxformer.options import ARGUMENTS, parse, parser, split_config_args  # noqa: F401 -- cli.* names kept

# Subcommands live next to what they run; each is `module:function(argv) -> int`, imported only when used.
SUBCOMMANDS = {
    "train": ("jaxformer.cli:train_main", "train a model from a config into a run directory"),
    "eval": ("jaxformer.cli:eval_main", "evaluate a run's checkpoint on a split"),
    "sample": ("jaxformer.cli:sample_main", "generate text from a run's checkpoint (KV cache)"),
    "fill-mask": ("jaxformer.cli:fill_mask_main", "an encoder's predictions for the [MASK]s of a text"),
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
WITHOUT_JAX = ("runs", "compare")  # read JSON files only: no JAX import, no machine settings


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
        if args.init_from:
            cfg = source_model_config(cfg, args.init_from, overrides, args.init_checkpoint, workdir)
    workdir = workdir or run_lib.default_workdir(args.config, cfg.model.position.name, overrides)
    if args.multihost:
        cfg.mesh.multihost = True
    from jaxformer.analysis import run_hooks

    result = train_lib.train(cfg, workdir, resume=args.resume, overwrite=args.overwrite,
                             hooks=run_hooks.for_run(cfg, workdir),
                             init_from=args.init_from, init_checkpoint=args.init_checkpoint)
    if sharding_is_main():
        print(run_summary(result, workdir, result["trainer"].cfg), flush=True)
    return exit_status(result)


def sharding_is_main() -> bool:
    from jaxformer import sharding as sharding_lib

    return sharding_lib.is_main_process()


def run_summary(result: dict, workdir: str, cfg) -> str:
    """What a finished (or stopped) `jaxformer train` prints: how it went, where its files are, what to run next."""
    import shlex

    from jaxformer import losses, runlist

    row = runlist.summarize(workdir)
    quoted = shlex.quote(workdir)
    speed = f" ({row['tokens_per_s']:,.0f} tokens/s)" if row["tokens_per_s"] else ""
    wall = f" in {runlist._duration(row['wall_s'])}" if row["wall_s"] is not None else ""
    if result.get("stopped"):
        lines = [f"stopped at step {result['step']} of {cfg.train.steps}{wall} (why: the line above)"]
    else:
        lines = [f"finished {result['step']}/{cfg.train.steps} steps{wall}{speed}"]
    if row["final_val"] is not None:
        what = losses.family(cfg.model).accuracy_label
        accuracy = f", val {what} {100 * row['exact_match']:.1f}%" if row["exact_match"] is not None else ""
        lines.append(f"  val loss {row['final_val']:.4f} (best {row['best_val']:.4f} at step {row['best_step']})"
                     f"{accuracy}")
    lines.append(f"run directory: {workdir}")
    files = [("plots/loss.png", "loss curves"),
             ("samples.txt", "the model's answers to validation prompts" if row["exact_match"] is not None
              else "text sampled at the end"),
             ("checkpoints/", "latest and best (by val loss) checkpoints"),
             ("metrics.jsonl", "every logged metric (TensorBoard: tensorboard --logdir runs)")]
    lines += [f"  {name:15s} {what}" for name, what in files if os.path.exists(os.path.join(workdir, name))]
    if result.get("stopped"):
        lines += ["next:", f"  jaxformer train --resume --workdir {quoted}    # continue from the last checkpoint"]
        return "\n".join(lines)
    if row["exact_match"] is not None:
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
    from jaxformer import summaries

    lines.append(f"  jaxformer runs {shlex.quote(summaries.run_parent(workdir))}    # every run there, as a table")
    return "\n".join(lines)


def init_config(source: str, overrides: list[str], which: str, workdir: str):
    """The config of a run initialised from `source` without --config: the source's own, with the overrides; the
    schedule's length follows the new train.steps unless optim.decay_steps is set too."""
    from jaxformer import prepare as prepare_lib

    prepare_lib.check_init_source(source, which, workdir)  # a run directory with that checkpoint, before anything
    cfg = _apply_overrides_to_saved(source, overrides)
    if not any(o.startswith("--config.optim.decay_steps") for o in overrides):
        cfg.optim.decay_steps = 0
    return cfg


def source_model_config(cfg, source: str, overrides: list[str], which: str, workdir: str):
    """`--config FILE --init-from RUN`: the file's recipe on RUN's model (`run.with_source_model`), then the
    overrides again (so that `--config.model.x=v` applies to RUN's model)."""
    from jaxformer import prepare as prepare_lib
    from jaxformer import run as run_lib

    source_cfg = prepare_lib.check_init_source(source, which, workdir)
    cfg = run_lib.with_source_model(cfg, source_cfg)
    log.info("--init-from %s: its model (%s, %d layers, width %d) and context %d", source,
             cfg.model.position.name, cfg.model.n_layer, cfg.model.n_embd, cfg.data.block_size)
    return prepare_lib.apply_overrides(cfg, overrides)


def exit_status(result: dict) -> int:
    """0 for a run that ran its steps; 128 + the signal's number for one a signal stopped (a shell's convention: a
    script sees the interrupt, and `--resume` continues from the checkpoint saved); 1 for a non-finite stop."""
    if result.get("signal"):
        return 128 + signal.Signals[result["signal"]].value
    return 1 if result.get("stopped") else 0


def _apply_overrides_to_saved(workdir: str, overrides: list[str]):
    """Overrides on top of a run's saved config.json (e.g. `--resume --config.train.steps=4000` to extend)."""
    from jaxformer import prepare as prepare_lib

    return prepare_lib.apply_overrides(os.path.join(workdir, "config.json"), overrides)


def eval_main(argv: list[str]) -> int:
    import jax

    from jaxformer import config as config_lib
    from jaxformer import extrapolation, loader, positional
    from jaxformer import prepare as prepare_lib
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
    if args.batches:
        cfg.train.eval_iters = args.batches
    run = prepare_lib.prepare(cfg, args.workdir, "evaluate")  # resolved and validated once; no optimizer is built
    dataset = run.dataset
    if sizes and getattr(dataset, "task", None) is None:
        raise ValueError(f"--sizes: data.name={cfg.data.name!r} is not a synthetic task; use --lengths")
    _, _, params, step = loader.restore_params(args.workdir, which=args.checkpoint)
    trainer = train_lib.Evaluator.for_run(run)  # the model of the overridden config
    params = jax.device_put(params, trainer.params_sharding)
    changed = run.changed
    result = {"step": step, "split": args.split, "overrides": {k: config_lib.flat_fields(trainer.cfg)[k]
                                                                for k in changed if k != "model.vocab_size"}}
    if not lengths and not sizes:
        evaluate = trainer.evaluate_full if args.full else trainer.evaluate
        result.update({"full": args.full, **evaluate(params, args.split)})
        if "accuracy" in result:  # one name per metric: a task's exact match, or a masked LM's masked-token accuracy
            result[run.family.accuracy] = result.pop("accuracy")
    params = jax.device_get(params)
    if lengths:
        block = trainer.cfg.data.block_size
        limit = positional.max_length(trainer.cfg.model.position)  # a learned table: longer lengths are n/a
        name = trainer.cfg.model.position.name
        asked = [{"multiplier": T / block, "length": T,
                  "na": f"n/a (the {name} table has {limit} positions)" if limit is not None and T > limit else None}
                 for T in lengths]
        records = extrapolation.evaluate_lengths(trainer.graphdef, params, dataset, asked,
                                                 eval_tokens=args.eval_tokens, batch_tokens=8192, split=args.split)
        result["lengths"] = [{k: v for k, v in x.items()
                              if k not in ("position_loss", "multiplier") and not (k == "na" and v is None)}
                             for x in records]
    if sizes:
        train_max = extrapolation.train_max_items(dataset, trainer.cfg.data.block_size)
        records = extrapolation.evaluate_sizes(trainer.graphdef, params, dataset, sizes, train_max=train_max,
                                               examples=args.size_examples, batch_tokens=8192, split=args.split,
                                               max_length=positional.max_length(trainer.cfg.model.position),
                                               random_positions=random_positions, seed=trainer.cfg.train.seed)
        result["sizes"] = {"train_max_items": train_max, "records": records, **extrapolation.size_summary(records),
                           **({"random_positions": random_positions} if random_positions else {})}
    result = _finite_or_null(result)
    if args.json:
        print(json.dumps(result, sort_keys=True, allow_nan=False))
    else:
        from jaxformer import summaries

        print(summaries.eval_text(result, workdir=args.workdir, checkpoint=args.checkpoint))
    return 0


def _finite_or_null(result: dict) -> dict:
    """`result` with every non-finite number as null (JSON has no NaN), after one line naming those fields."""
    bad = []

    def clean(x, path):
        if isinstance(x, dict):
            return {k: clean(v, f"{path}.{k}" if path else k) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v, f"{path}[{i}]") for i, v in enumerate(x)]
        if isinstance(x, float) and not math.isfinite(x):
            bad.append(f"{path}={x}")
            return None
        return x

    out = clean(result, "")
    if bad:
        log.warning("non-finite values printed as null: %s%s (the checkpoint's parameters give a diverged loss)",
                    ", ".join(bad[:3]), f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    return out


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


def fill_mask_main(argv: list[str]) -> int:
    """`jaxformer fill-mask --workdir DIR --text "ROMEO: I lo[MASK]e thee"`: the top-k tokens at each [MASK]."""
    import numpy as np

    from jaxformer import data as data_lib
    from jaxformer import loader
    from jaxformer import run as run_lib
    from jaxformer import sample as sample_lib
    from jaxformer.analysis import capture

    args = parse("fill-mask", argv)
    if args.top_k < 1:
        raise ValueError(f"--top-k={args.top_k}; must be >= 1")
    cfg = run_lib.load_config(args.workdir)
    if cfg.model.causal:
        raise ValueError(f"{args.workdir} is a causal decoder (model.causal=True); fill-mask needs an encoder "
                         "(model.causal=False); use `jaxformer sample` to continue a text")
    source = run_lib.read_json(os.path.join(args.workdir, "manifest.json")).get("source", {})
    if source.get("architecture") in ("BertModel", "RobertaModel", "DistilBertModel"):
        raise ValueError(f"{args.workdir} was imported from {source['architecture']}, which has no masked-LM head; "
                         "import a *ForMaskedLM checkpoint to fill masks")
    from jaxformer import losses

    mask_id = losses.mask_token_id(cfg.model)
    if args.mask_token not in args.text:
        raise ValueError(f"--text has no {args.mask_token}; put {args.mask_token} where a token should be predicted")
    tokenizer = data_lib.run_tokenizer(args.workdir)
    if isinstance(tokenizer, data_lib.SubwordTokenizer) and tokenizer.token_id(args.mask_token) is not None:
        ids, types = tokenizer.encode_pair(args.text, args.text_pair)  # its special tokens, [MASK] among them
    else:
        if args.text_pair is not None:
            raise ValueError("--text-pair needs a tokenizer with special tokens and a model with token types "
                             "(an imported BERT); this run's tokenizer has none")
        pieces = [tokenizer.encode(piece) for piece in args.text.split(args.mask_token)]
        ids = np.concatenate([np.append(p, mask_id) for p in pieces[:-1]] + [pieces[-1]]).astype(np.int32)
        types = None
    if args.text_pair is not None and not cfg.model.type_vocab_size:
        raise ValueError("--text-pair: this model has no token types (model.type_vocab_size=0); give --text only")
    capture.check_length(cfg, int(ids.size), what="--text")
    _, model, _, step = loader.load_run(args.workdir, which=args.checkpoint)
    results = sample_lib.fill_mask(model, ids, mask_token_id=mask_id, token_types_T=types, top_k=args.top_k)
    label = tokenizer.token_text
    for position, best in results:
        print(f"position {position}: " + "  ".join(f"{label(i)!r} {p:.3f}" for i, p in best))
    return 0


def sample_main(argv: list[str]) -> int:
    import numpy as np
    from flax import nnx

    from jaxformer import data as data_lib
    from jaxformer import loader, losses
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
    if not losses.family(saved.model).generates:  # the pair says whether its model continues a text
        raise ValueError(f"{args.workdir} is an encoder (model.loss={saved.model.loss}): it does not continue a "
                         f"text; use `jaxformer fill-mask --workdir {args.workdir} --text '... [MASK] ...'`")
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
    prefix = sample_lib.bos_prefix(cfg, tokenizer)
    ids = sample_lib.generate(model, np.concatenate([prefix, np.asarray(prompt_ids, np.int32)]),
                              max_new_tokens=max_new_tokens, temperature=temperature, top_k=args.top_k or None,
                              seed=args.seed, max_context=args.max_context or cfg.data.block_size,
                              vocab_size=tokenizer.vocab_size)
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
    from jaxformer import prepare as prepare_lib

    args = parse("config", argv)
    cfg = prepare_lib.resolved_config(config_lib.load(args.config, args.overrides))
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
        gap = _largest_relative_difference(recorded, rerun)
        if gap is not None:
            print(f"largest relative difference of a recorded number: {gap:.1e}"
                  + (" (float32 rounding: what another CPU kind or library version gives)" if gap < 1e-4 else ""))
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


def _largest_relative_difference(recorded: list[dict], rerun: list[dict]) -> float | None:
    """max |a - b| / max(|a|, |b|) over the numbers two runs logged under the same step and key; None if none."""
    gaps = []
    for a, b in zip(recorded, rerun, strict=False):
        for key, x in a.items():
            y = b.get(key)
            if isinstance(x, float) and isinstance(y, float) and x != y and max(abs(x), abs(y)) > 0:
                gaps.append(abs(x - y) / max(abs(x), abs(y)))
    return max(gaps) if gaps else None


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
    debug = parse(name, rest, config_fields=_config_fields_named).debug
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


def _config_fields_named(name: str) -> list[str]:
    """The fields of configs/default.py whose last part is `name` (`steps` -> ["train.steps"]); for the answer to
    a mistyped `--steps 200`. Only on that error path: it imports the config layer (and JAX with it)."""
    from jaxformer import config as config_lib

    try:
        fields = config_lib.flat_fields(config_lib.load("default"))
    except Exception:  # a hint must never hide the error it adds to
        return []
    return sorted(f for f in fields if f.split(".")[-1] == name)


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
