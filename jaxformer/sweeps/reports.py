"""A sweep's reports from its run directories alone: results.md / results.csv (and sizes.csv), the summary lines,
the t intervals and paired differences over seeds, and the plots (aggregation: aggregate.py; figures: plots.py)."""

from __future__ import annotations

import os

from jaxformer import config as config_lib
from jaxformer import effective_context, extrapolation, statistics
from jaxformer import run as run_lib
from jaxformer.sweeps import aggregate, plots

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
    results, unfinished = aggregate.load_results(workdir)
    variants = aggregate.aggregate(results)
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
    plots.plot_extrapolation(variants, os.path.join(workdir, "extrapolation.png"),
                                     title=f"Loss vs eval length (dashed: sliding window of the training "
                                           f"length)\n{title}")
    if any(v.get("sizes") for v in variants):
        for name, group in size_plots(variants):
            plots.plot_sizes(group, os.path.join(workdir, name),
                                     title=f"Accuracy per task size\n{_title([r for v in group for r in v['runs']])}")
        _write_sizes_csv(variants, os.path.join(workdir, "sizes.csv"))
    which = "longest eval length" if variants and variants[0]["has_accuracy"] else "all eval lengths pooled"
    plots.plot_position_loss(variants, os.path.join(workdir, "position_loss.png"),
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
    import io

    rows = []
    for v in variants:
        for x in (v.get("sizes") or {}).get("per_size", []):
            em, acc = x["exact_match"] or (None, None), x["token_accuracy"] or (None, None)
            rows.append({"variant": v["variant"], "items": x["items"], "ood": x["ood"], "status": x["na"] or "ok",
                         "seeds": x["seeds"], "exact_match_mean": em[0], "exact_match_std": em[1],
                         "token_accuracy_mean": acc[0], "token_accuracy_std": acc[1]})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=("variant", "items", "ood", "status", "seeds", "exact_match_mean",
                                              "exact_match_std", "token_accuracy_mean", "token_accuracy_std"))
    writer.writeheader()
    writer.writerows(rows)
    run_lib.atomic_write(path, text.getvalue())


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
           f"multiples); `reached` = seeds at ≥ {100 * aggregate.REACHED:.0f}% exact match in distribution "
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

def report_main(argv: list[str]) -> int:
    from jaxformer.options import parse

    args = parse("report", argv)
    if not os.path.isdir(os.path.join(args.sweep_dir, "runs")):
        raise ValueError(f"{args.sweep_dir} has no runs/ directory; is it a sweep directory (`jaxformer sweep`)?")
    for line in write_reports(args.sweep_dir):
        print(line)
    return 0
