"""Peak memory and time of `data.name=text:PATH` on a generated corpus of >= 200 MB (issue 37).

Each measurement runs in a fresh process (its peak RSS, `ru_maxrss`, is its own): the imports alone (the floor),
the first load (scan, tokenize into the token cache), a second load (the cache reused: hash + checks), and a
training batch gathered from the memory map. The same text is made from a seeded mix of words and line breaks.

    python benchmarks/text_data.py                      # 200 MB, characters
    python benchmarks/text_data.py --megabytes 400 --tokenizer bpe --vocab-size 1024
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    t0 = time.perf_counter()
    from jaxformer import data
    imported = time.perf_counter() - t0
    mode, path, cache, tokenizer, vocab = sys.argv[1:6]
    out = {"import_s": imported}
    if mode != "import":
        cfg = data.default_config()
        cfg.name, cfg.cache_dir, cfg.tokenizer, cfg.vocab_size = "text:" + path, cache, tokenizer, int(vocab)
        t0 = time.perf_counter()
        ds = data.load_dataset(cfg)
        out["load_s"] = time.perf_counter() - t0
        out["tokens"] = int(len(ds.split_tokens("train")) + len(ds.split_tokens("val")))
        out["dtype"] = str(ds.split_tokens("train").dtype)
        ds.batch("train", 0, batch_size=64, block_size=256, seed=0)
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out))
""")


def make_corpus(path: str, megabytes: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    words = np.array(["the", "king", "ROMEO:", "thou", "art", "lord,", "it's", "wherefore", "light", "é", "中文",
                      "42", "!", "and", "sweet", "night"])
    seps = np.array([" ", " ", " ", " ", "\n", "\n\n", ", "])
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < megabytes * 2**20:
            n = 200_000
            block = "".join(np.char.add(rng.choice(words, n), rng.choice(seps, n)).tolist())
            f.write(block)
            written += len(block.encode("utf-8"))
    return os.path.getsize(path)


def child(mode: str, path: str, cache: str, tokenizer: str, vocab_size: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                       os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, mode, path, cache, tokenizer, str(vocab_size)],
                         capture_output=True, text=True, check=True, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t0
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--megabytes", type=int, default=200)
    p.add_argument("--tokenizer", default="char", choices=["char", "bpe"])
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--json", default="", help="also write the results here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="jaxformer-text-bench-") as tmp:
        path = os.path.join(tmp, "corpus.txt")
        size = make_corpus(path, args.megabytes)
        cache = os.path.join(tmp, "cache")
        rows = [("imports only", child("import", path, cache, args.tokenizer, args.vocab_size)),
                ("first load (tokenize)", child("load", path, cache, args.tokenizer, args.vocab_size)),
                ("second load (cached)", child("load", path, cache, args.tokenizer, args.vocab_size))]
    print(f"corpus: {size / 2**20:.0f} MB of UTF-8 text, data.tokenizer={args.tokenizer}"
          + (f", data.vocab_size={args.vocab_size}" if args.tokenizer == "bpe" else ""))
    print(f"{'':24s} {'peak RSS MB':>12s} {'load s':>8s} {'tokens':>12s} {'dtype':>7s}")
    for name, r in rows:
        load = f"{r['load_s']:.1f}" if "load_s" in r else "-"
        print(f"{name:24s} {r['peak_rss'] / 2**20:12.0f} {load:>8s} {r.get('tokens', 0):12,d} "
              f"{r.get('dtype', '-'):>7s}")
    growth = rows[1][1]["peak_rss"] - rows[0][1]["peak_rss"]
    print(f"peak RSS above the imports while tokenizing: {growth / 2**20:.0f} MB for a {size / 2**20:.0f} MB corpus")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"megabytes": size / 2**20, "tokenizer": args.tokenizer, "rows": dict(rows)}, f, indent=2)


if __name__ == "__main__":
    main()
