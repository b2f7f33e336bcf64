"""What `jaxformer eval` and `jaxformer import` print: a readable summary with every field explained (`--json`
gives the same result as one JSON line). Plain dicts in, text out; nothing from jaxformer is imported.

One name per metric, everywhere a person reads one (train logs, `runs`, `eval`, reports, plots):
    loss            mean cross-entropy over the predicted tokens (nats/token)
    exact match     the share of examples whose every answer token is right (synthetic tasks)
    token accuracy  the share of answer tokens predicted right (synthetic tasks)
"""

from __future__ import annotations

import math
import os

METRICS = {
    "loss": "mean cross-entropy over the predicted tokens (nats/token; perplexity = e^loss)",
    "token accuracy": "the share of answer tokens predicted right",
    "exact match": "the share of examples whose every answer token is right",
    "masked-token accuracy": "the share of masked positions whose token the model predicts (masked LM)",
}


def table(header: tuple[str, ...], rows: list[tuple[str, ...]], *, right: tuple[int, ...] = ()) -> list[str]:
    """Aligned plain-text columns (the columns in `right` right-aligned), a rule under the header."""
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def fmt(line):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip()

    return [fmt(header), fmt(tuple("-" * w for w in widths)), *(fmt(line) for line in rows)]


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _loss(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _legend(names) -> list[str]:
    return [f"  {name:15s} {METRICS[name]}" for name in names]


def eval_text(result: dict, *, workdir: str, checkpoint: str) -> str:
    """The summary of `eval_main`'s result (keys: step, split, overrides, and loss / lengths / sizes)."""
    overrides = ", ".join(f"{k}={v}" for k, v in sorted(result.get("overrides", {}).items()))
    lines = [f"eval of {workdir}: the {checkpoint} checkpoint (step {result['step']}), {result['split']} split"
             + (f", with {overrides}" if overrides else "")]
    shown = ["loss"]
    if "loss" in result:
        how = ("every non-overlapping block of the split (--full)" if result.get("full")
               else "the run's fixed evaluation batches (train.eval_iters; --full for the whole split)")
        lines += [f"  over {how}:",
                  f"  loss         {_loss(result['loss'])}" + ("" if result["loss"] is None else
                                                          f" (perplexity {math.exp(min(result['loss'], 700)):.2f})")]
        if result.get("exact_match") is not None:
            lines.append(f"  exact match  {_pct(result['exact_match'])}")
            shown.append("exact match")
        if result.get("masked_accuracy") is not None:
            lines.append(f"  masked-token accuracy  {_pct(result['masked_accuracy'])}")
            shown.append("masked-token accuracy")
    if result.get("lengths"):
        accuracy = any(x.get("exact_match") is not None for x in result["lengths"])
        header = ("length", "windows", "predicted tokens", "loss") + (("token accuracy", "exact match")
                                                                       if accuracy else ())
        rows = []
        for x in result["lengths"]:
            if x.get("na"):
                rows.append((str(x["length"]), "-", "-", x["na"]) + (("", "") if accuracy else ()))
                continue
            rows.append((str(x["length"]), str(x.get("windows", "-")), str(x.get("predicted_tokens", "-")),
                         _loss(x["loss"])) + ((_pct(x.get("token_accuracy")), _pct(x.get("exact_match")))
                                              if accuracy else ()))
        lines += ["", "per sequence length (positions 0..T-1; windows: sequences of that length evaluated):",
                  *("  " + line for line in table(header, rows, right=(0, 1, 2)))]
        shown += ["token accuracy", "exact match"] if accuracy else []
    if result.get("sizes"):
        lines += ["", *_sizes_lines(result["sizes"])]
        shown += ["token accuracy", "exact match"]
    if any(x.get("na") for x in result.get("lengths", ())):
        lines.append("  n/a: the length cannot be evaluated for the reason given (the other lengths are)")
    lines += ["", "what the numbers are:", *_legend(dict.fromkeys(shown))]
    return "\n".join(lines)


def _sizes_lines(sizes: dict) -> list[str]:
    where = (f"each example at sorted random positions from [0, {sizes['random_positions']})"
             if sizes.get("random_positions") else "positions 0..T-1")
    train_max = sizes.get("train_max_items")
    header = ("items", "length", "examples", "beyond training", "loss", "token accuracy", "exact match")
    rows = [(str(r["items"]), str(r.get("length", "-")), str(r.get("examples", "-")), "yes" if r["ood"] else "no",
             *((r["na"], "", "") if r.get("na") else (_loss(r["loss"]), _pct(r["token_accuracy"]),
                                                       _pct(r["exact_match"]))))
            for r in sizes["records"]]
    lines = [f"per task size ({where}; the largest size trained on: {train_max if train_max else 'unknown'}):",
             *("  " + line for line in table(header, rows, right=(0, 1, 2)))]
    for part, what in (("in_distribution", "sizes trained on"), ("ood", "sizes beyond training")):
        summary = sizes.get(part)
        if summary:
            lo, hi = summary["sizes"]
            lines.append(f"  mean over the {what} ({lo}..{hi}): exact match {_pct(summary['exact_match'])}, "
                         f"token accuracy {_pct(summary['token_accuracy'])}")
        else:
            lines.append(f"  mean over the {what}: none evaluated")
    return lines


def import_text(record: dict, workdir: str, model: dict) -> str:
    """The summary of `jaxformer import`: what was converted, where, and the next commands. `model`: the run's
    config.json `model` section; `record`: the manifest's `source` record."""
    import shlex

    quoted = shlex.quote(workdir)
    size = sum(record.get("files", {}).values())
    position = model.get("position", {}).get("name", "?")
    lines = [f"imported {record['architecture']} ({record['family']} family) from {record['hf']}",
             f"  model: {model.get('n_layer')} layers, {model.get('n_head')} heads, width {model.get('n_embd')}, "
             f"vocabulary {model.get('vocab_size')}, {position} positions, parameters in {record['param_dtype']} "
             f"({size / 2**20:,.1f} MiB of files read)",
             f"run directory: {workdir}",
             "  config.json     the model as a jaxformer config (data.* says what eval reads)",
             "  checkpoints/    the parameters, as step 0",
             "  tokenizer.json  the model's own tokenizer",
             "  manifest.json   versions, this machine, and the source files with their sizes",
             "next:",
             f"  jaxformer sample --workdir {quoted} --prompt 'Once upon a time'",
             f"  jaxformer eval --workdir {quoted} --batches 4    # loss on data.name (see config.json)",
             f"  jaxformer attention --workdir {quoted} --text 'The cat sat on the mat because it was tired'"]
    return "\n".join(lines)


def run_parent(workdir: str) -> str:
    """The folder that holds a run (for `jaxformer runs`): '.' for a bare name, never the run itself."""
    return os.path.dirname(os.path.normpath(workdir)) or "."
