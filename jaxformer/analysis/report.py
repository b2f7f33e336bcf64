"""`jaxformer attention`: a run's attention on a text, written as pictures, an interactive page, arrays and
diagnostics.

    jaxformer attention --workdir RUN --text "ROMEO: " [--out DIR] [--checkpoint latest|best] [--layers 0,1]
                        [--heads 0-3] [--induction-period N] [--seed 0]

DIR (default RUN/attention) receives:
    grid.png              layers x heads heatmaps, token labels where they fit
    heads/L{l}H{h}.png    one large heatmap per selected head
    attention.html        the self-contained interactive viewer (viewer.py)
    weights.npz           weights [L, H, T, T], token_ids, tokens, layers, heads, info (capture.save_npz)
    bertviz.npz           per-layer [1, H, T, T] arrays + tokens, BertViz's head_view input (load_bertviz)
    diagnostics.csv/.png  per layer and head: entropy, mean distance, sink, previous-token (on the text) and
                          induction (on repeated random tokens); definitions in diagnostics.py
    diagnostics_history.png  when the run logged them (train.attention_diagnostics_every), their evolution
"""

from __future__ import annotations

import argparse
import logging
import os
import re

import numpy as np

from jaxformer.analysis import capture, diagnostics, heatmaps, viewer

log = logging.getLogger("jaxformer")


def diagnostics_table(model, cap: capture.Capture, *, period: int, vocab_size: int, seed: int = 0) -> dict:
    """`{metric: [L, H]}` for the captured layers and heads: text metrics on the capture, induction on
    `repeated_random_tokens(batch=4, period=period)`."""
    text = diagnostics.text_diagnostics(cap.weights_LxHxTxT)
    table = {name: np.asarray(v, np.float32) for name, v in text.items()}
    repeated_BxT = diagnostics.repeated_random_tokens(batch=4, period=period, vocab_size=vocab_size,
                                                      seed=seed)
    _, w_LxBxHxTxT = capture.attention_weights_batch(model, repeated_BxT)
    w_LxBxHxTxT = w_LxBxHxTxT[cap.layers][:, :, cap.heads]
    induction_LxBxH = np.asarray(diagnostics.induction_score(w_LxBxHxTxT, period=period), np.float32)
    table["induction"] = induction_LxBxH.mean(axis=1)
    return table


def write_report(cap: capture.Capture, out_dir: str, *, table: dict | None = None,
                 metrics: list[dict] | None = None) -> list[str]:
    """Writes every output file of `jaxformer attention` for a capture; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    info = cap.info
    step = f"step {info['step']}" if "step" in info else None
    title = " · ".join(str(x) for x in (info.get("position"), step, f"{len(cap.tokens)} tokens") if x)
    paths = []

    def path(name):
        paths.append(os.path.join(out_dir, name))
        return paths[-1]

    heatmaps.grid(cap.weights_LxHxTxT, cap.tokens, path("grid.png"), layers=cap.layers, heads=cap.heads,
                  title=title)
    # An earlier capture into the same directory may have written other heads: its per-head PNGs would sit
    # beside this capture's and look like part of it. Only this tool's own L<l>H<h>.png files are removed.
    keep = {f"L{layer}H{head}.png" for layer in cap.layers for head in cap.heads}
    heads_dir = os.path.join(out_dir, "heads")
    for name in os.listdir(heads_dir) if os.path.isdir(heads_dir) else []:
        if re.fullmatch(r"L\d+H\d+\.png", name) and name not in keep:
            os.remove(os.path.join(heads_dir, name))
    for a, layer in enumerate(cap.layers):
        for b, head in enumerate(cap.heads):
            heatmaps.head(cap.weights_LxHxTxT[a, b], cap.tokens, path(f"heads/L{layer}H{head}.png"),
                          title=f"layer {layer}, head {head} · {title}")
    viewer.write(cap, path("attention.html"), table)
    capture.save_npz(cap, path("weights.npz"))
    capture.save_bertviz(cap, path("bertviz.npz"))
    if table is not None:
        diagnostics.write_csv(path("diagnostics.csv"), table, layers=cap.layers, heads=cap.heads)
        heatmaps.diagnostics_table(table, path("diagnostics.png"), layers=cap.layers, heads=cap.heads,
                                   title=title)
    series = diagnostics.history(metrics or [])
    if series:
        heatmaps.diagnostics_history(series, path("diagnostics_history.png"),
                                     title="attention diagnostics during training")
    return paths


def _parser() -> argparse.ArgumentParser:
    from jaxformer.options import parser  # the options live in options.py, parsed there before JAX is imported

    return parser("attention")


def attention_main(argv: list[str]) -> int:
    from jaxformer import run as run_lib

    args = _parser().parse_args(argv)
    if args.text_file is not None:
        if not os.path.isfile(args.text_file):
            raise FileNotFoundError(f"--text-file={args.text_file}: no such file; give the path of a text file, or "
                                    "the text itself with --text '...'")
        with open(args.text_file, encoding="utf-8") as f:
            text = f.read()
    else:
        text = args.text
    cfg, tokenizer, token_ids, layers, heads = capture.prepare_text(args.workdir, text, layers=args.layers,
                                                                    heads=args.heads)
    token_ids, types = capture.encoder_input(cfg, tokenizer, text, args.text_pair)  # [CLS] A [SEP] B [SEP]
    capture.check_length(cfg, int(token_ids.size))
    if token_ids.size > cfg.data.block_size:
        log.warning("the text has %d tokens, longer than the %d the run was trained on", token_ids.size,
                    cfg.data.block_size)
    period = args.induction_period or diagnostics.induction_period(cfg.data.block_size)
    if period < 2:
        raise ValueError(f"--induction-period={period}; must be >= 2")
    capture.check_length(cfg, 2 * period, what=f"--induction-period={period} (a sequence of 2 x {period})")
    model, step = capture.load_model(args.workdir, which=args.checkpoint, step=args.step)
    cap = capture.capture_ids(model, token_ids, capture.token_labels(tokenizer, token_ids), layers=layers,
                              heads=heads, info=capture.run_info(args.workdir, cfg, which=args.checkpoint,
                                                                 step=step), token_types=types)
    table = diagnostics_table(model, cap, period=period, vocab_size=cfg.model.vocab_size, seed=args.seed)
    out_dir = args.out or os.path.join(args.workdir, "attention")
    paths = write_report(cap, out_dir, table=table, metrics=run_lib.read_metrics(args.workdir))
    print(f"{len(cap.layers)} layer(s) x {len(cap.heads)} head(s), {len(cap.tokens)} tokens, step {step}: "
          f"wrote {len(paths)} files to {out_dir}")
    print(f"open {os.path.join(out_dir, 'attention.html')}")
    return 0
