"""Context extension of a trained RoPE model (Chen et al. 2023; bloc97 2023; Peng et al. 2023): issue 24, 5a.

RoPE models trained at block 64 on tiny_shakespeare (`sweeps.context_extension_base`, 3 seeds, run first into
<workdir>/base) are evaluated at 64/128/256/512 with no scaling, position interpolation (linear), NTK-aware and YaRN,
each with factor s = 4 (256 / 64): zero-shot (the trained parameters under the scaling: the "<variant> zero-shot"
rows) and after a short fine-tune at block 256 (100 steps, 5% of the 2000 of the base runs; fresh AdamW, lr 3e-4).
The `none` zero-shot rows are the trained model itself. One command, about 50 minutes on a quiet 2-core CPU
(sizing: experiments/context_extension/README.md):

    jaxformer sweep --config sweeps.context_extension --config.data.manual_dir=/path/to/tinyshakespeare

Peng et al. 2023 report, after fine-tuning, YaRN <= NTK <= PI in perplexity at the extended lengths, and PI needing
the fine-tune (zero-shot PI degrades at the original length too); the report's tables compare with that.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = "shakespeare_char_cpu"
    c.overrides = (  # the base runs' model and data (so --init-from accepts them); the fine-tune's schedule
        "--config.model.position.name=rope",
        "--config.data.block_size=256",  # the fine-tune's context: 4x the training one
        "--config.model.position.rope.factor=4.0",
        "--config.model.position.rope.original_max_len=0",  # 0 = the base run's block size (64), YaRN's L
        "--config.train.steps=100",  # 5% of the base runs' 2000
        "--config.optim.lr=3e-4",
        "--config.optim.min_lr=3e-5",
        "--config.optim.warmup_steps=10",
        "--config.train.eval_every=100",
        "--config.train.eval_iters=10",
        "--config.train.checkpoint_every=100",
        "--config.train.log_every=10",
        "--config.train.sample_chars=0",
    )
    c.axes = ml_collections.ConfigDict()
    c.axes.model = {"position": {"rope": {"scaling": ("none", "linear", "ntk", "yarn")}}}
    c.axes.train = {"seed": (0, 1, 2)}
    c.init = ml_collections.ConfigDict()
    c.init.sweep = "sweeps.context_extension_base"  # trained first into <workdir>/base
    c.init.match = ("train.seed",)  # each point starts from the base run of its seed
    c.init.checkpoint = "latest"
    c.init.overrides = ()  # extra --config.a.b=v for the base runs (a smoke run shortens them here)
    c.eval_lengths = (1,)  # unused: eval_at gives the lengths
    c.eval_at = (64, 128, 256, 512)  # tokens: the training length, then 2x, 4x, 8x it
    c.eval_tokens = 16384
    c.eval_batch_tokens = 8192
    c.eval_split = "val"
    c.statistics = True  # 3 seeds: t intervals, and paired (by seed: every point of a seed starts from one model)
    c.reference = "yarn"  # differences against YaRN after its fine-tune, the method Peng et al. put first
    return c
