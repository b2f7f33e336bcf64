"""Generation speed: KV-cached vs uncached decoding, tokens/s for N new tokens (default 512).

    python benchmarks/sample.py [--config NAME] [--config.x=...] [--new-tokens 512] [--repeats 3]

Uncached decoding runs the full forward pass over a fixed window for every new token (one compiled shape, the
fair baseline); cached decoding runs one position per token against the KV cache. The model is freshly initialised
(speed does not depend on the weights). Prints a table of median seconds and tokens/s over `--repeats` runs after a
warm-up (which includes compilation).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from jaxformer import config as config_lib
from jaxformer import loader
from jaxformer import sample as sample_lib
from jaxformer.options import split_config_args


def main(argv=None) -> None:
    config, overrides, rest = split_config_args(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser()
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(rest)
    cfg = config_lib.load(config or "shakespeare_char_cpu",
                          ["--config.model.position.name=rope", *overrides])
    cfg = config_lib.resolve(cfg, vocab_size=65)
    model = loader.build_model(cfg)  # as a run's model is built: the machine's tuned forms injected
    prompt = np.arange(1, 9, dtype=np.int32)
    context = prompt.size + args.new_tokens
    print(f"config: {config or 'shakespeare_char_cpu'} ({cfg.model.n_layer} layers, {cfg.model.n_embd} wide), "
          f"position {cfg.model.position.name}, prompt {prompt.size} + {args.new_tokens} new tokens")
    print(f"{'mode':10s} {'median s':>10s} {'tokens/s':>10s}")
    rows = {}
    for mode, use_cache in (("cached", True), ("uncached", False)):
        generator = sample_lib.Generator(model)
        def run(generator=generator, use_cache=use_cache):
            return generator(prompt, max_new_tokens=args.new_tokens, temperature=1.0, top_k=20, seed=0,
                             max_context=context, use_cache=use_cache)

        run()  # compile
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        rows[mode] = statistics.median(times)
        print(f"{mode:10s} {rows[mode]:10.3f} {args.new_tokens / rows[mode]:10.1f}")
    print(f"speed-up of the KV cache: {rows['uncached'] / rows['cached']:.1f}x")


if __name__ == "__main__":
    main()
