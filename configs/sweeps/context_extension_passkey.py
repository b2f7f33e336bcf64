"""Context extension measured by passkey retrieval (issue 33, 2b), as Chen et al. 2023 and Peng et al. 2023 report
it: RoPE models trained at L = 32 on synthetic/passkey (the rope runs of configs/sweeps/context_passkey.py, 3 seeds,
trained first into <workdir>/base), extended to 128 (factor s = 4) by

    none      plain fine-tuning at 128 with unchanged RoPE (Chen et al.'s "direct fine-tuning" baseline)
    linear    position interpolation (Chen et al. 2023)
    ntk       NTK-aware scaling (bloc97 2023)
    yarn      YaRN (Peng et al. 2023) with its ramp bounds scaled to L = 32: alpha = 32/4096, beta = 32 * 32/4096
              (positional.yarn_bounds_scaled; the paper's 1 and 32 keep no dimension at L = 32)
    yarn_paper_bounds  YaRN with the paper's alpha = 1, beta = 32 (the degenerate form, for comparison)

each zero-shot (the base model under the scaling: the "<variant> zero-shot" rows) and after the same fine-tune
(100 steps at 128, fresh AdamW, 3e-4 -> 3e-5, 10 warm-up steps). Evaluated at 32, 64, 128 and 256 with keys at
depths 0..1 (context.md): at 128, a key at depth 0 is 100+ tokens back, out of the base model's sliding window.

    jaxformer sweep --config configs/sweeps/context_extension_passkey.py \
        --workdir experiments/effective_context/extension
"""

import ml_collections

from jaxformer import positional

ALPHA, BETA = positional.yarn_bounds_scaled(32)


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = "default"
    c.overrides = (  # the base runs' model and data (so --init-from accepts them); the fine-tune's schedule
        "--config.data.name=synthetic/passkey",
        "--config.data.synthetic.key_digits=5",
        "--config.data.synthetic.num_symbols=16",
        "--config.data.synthetic.min_items=1",
        "--config.data.synthetic.max_items=0",
        "--config.data.block_size=128",  # the fine-tune's context: 4x the training one
        "--config.data.batch_size=32",
        "--config.model.n_embd=64",
        "--config.model.position.name=rope",
        "--config.model.position.rope.original_max_len=0",  # 0 = the base run's block size (32), YaRN's L
        "--config.train.steps=100",
        "--config.optim.lr=3e-4",
        "--config.optim.min_lr=3e-5",
        "--config.optim.warmup_steps=10",
        "--config.train.eval_every=100",
        "--config.train.checkpoint_every=100",
        "--config.train.log_every=50",
        "--config.train.sample_chars=0",
    )
    scaled = (f"--config.model.position.rope.yarn_alpha={ALPHA}", f"--config.model.position.rope.yarn_beta={BETA}")
    c.variants = ml_collections.ConfigDict({
        "none": ("--config.model.position.rope.scaling=none",),
        "linear": ("--config.model.position.rope.scaling=linear", "--config.model.position.rope.factor=4.0"),
        "ntk": ("--config.model.position.rope.scaling=ntk", "--config.model.position.rope.factor=4.0"),
        "yarn": ("--config.model.position.rope.scaling=yarn", "--config.model.position.rope.factor=4.0", *scaled),
        "yarn_paper_bounds": ("--config.model.position.rope.scaling=yarn",
                              "--config.model.position.rope.factor=4.0"),
    })
    c.axes = ml_collections.ConfigDict()
    c.axes.train = {"seed": (0, 1, 2)}
    c.init = ml_collections.ConfigDict()
    c.init.sweep = "configs/sweeps/context_passkey.py"
    c.init.match = ("train.seed",)
    c.init.checkpoint = "latest"
    c.init.overrides = ("--config.variants={'rope': ('--config.model.position.name=rope',)}",
                        "--config.statistics=False", "--config.families={}")
    c.eval_lengths = (1,)  # unused: eval_at gives the lengths
    c.eval_at = (32, 64, 128, 256)
    c.eval_tokens = 640
    c.eval_batch_tokens = 16384
    c.eval_split = "val"
    c.eval_depths = (0.0, 0.25, 0.5, 0.75, 1.0)
    c.eval_depth_examples = 32
    c.statistics = True
    c.reference = "yarn"
    c.correction = "holm"
    c.families = {"methods": ("none", "linear", "ntk", "yarn_paper_bounds"),
                  "zero_shot": ("none zero-shot", "linear zero-shot", "ntk zero-shot", "yarn zero-shot",
                                "yarn_paper_bounds zero-shot")}
    return c
