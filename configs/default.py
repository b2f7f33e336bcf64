"""The embedded default: a 2-layer model learns to copy `s1 .. sn |` -> `s1 .. sn` for every n = 1..16 (no
download), to 100% exact match in under a minute on a 2-core CPU. A model trained on one length only learns to
repeat the token n + 1 back; over a range of lengths it must find where the copy starts, which is what a positional
encoding is for (`configs/copy_task.py` compares them).

Every experiment config imports this one and changes a few fields; every field here is overridable from the command
line with `--config.section.field=value`.
"""

import ml_collections

from jaxformer import positional
from jaxformer.data import default_config as default_data_config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    c.model.n_layer = 2  # transformer blocks
    c.model.n_head = 4  # query heads
    c.model.n_kv_head = 0  # key/value heads for grouped-query attention; 0 = n_head (plain multi-head)
    c.model.n_embd = 64  # model width D; head width d = n_embd // n_head
    c.model.vocab_size = 0  # 0 = take it from the dataset's tokenizer
    c.model.bias = False  # biases in Linear and LayerNorm layers (nanoGPT: True for GPT-2 parity)
    c.model.dropout = 0.0  # dropout rate on embeddings, attention output and MLP output
    c.model.dtype = "float32"  # compute dtype: float32 or bfloat16 (params stay in param_dtype)
    c.model.param_dtype = "float32"  # master parameter dtype
    c.model.embed_multiplier = 1.0  # token embeddings x this on input; 0 = sqrt(n_embd) (Vaswani et al. 2017)
    c.model.gelu_approximate = False  # tanh-approximate GELU instead of the exact erf form (nanoGPT: exact)
    c.model.norm = "layernorm"  # layernorm | rmsnorm (Llama family: no centring, no bias)
    c.model.norm_eps = 1e-5  # epsilon added to the variance in every norm (Llama: 1e-5 or 1e-6)
    c.model.mlp = "gelu"  # gelu (exact; tanh form if gelu_approximate) | gelu_tanh (GPT-2's gelu_new) | swiglu
    c.model.mlp_hidden = 0  # MLP hidden width; 0 = 4 * n_embd
    c.model.tie_embeddings = True  # output head = token table transposed (GPT-2); False = its own [D, V] (Llama)
    c.model.head_dim = 0  # head width d; 0 = n_embd // n_head (set it where d * n_head != n_embd)
    c.model.qkv_bias = False  # biases on the q, k, v projections only, even with bias=False (Qwen2)
    c.model.remat = False  # rematerialise each block in the backward pass (saves activation memory)
    # Encoders (BERT, Devlin et al. 2019) are fields of the same model: configs/bert_tiny.py sets them.
    c.model.causal = True  # causal mask (decoder); False = bidirectional attention (encoder)
    c.model.norm_placement = "pre"  # pre: x + F(N(x)), final norm (GPT-2) | post: N(x + F(x)), embedding norm (BERT)
    c.model.type_vocab_size = 0  # token-type (segment A/B) embeddings; 0 = none (BERT: 2)
    c.model.head_transform = False  # BERT's MLM head: dense -> activation -> norm before the tied decoder, + bias
    c.model.pooler = False  # BERT's pooler: tanh(dense) of the first ([CLS]) token, from model.encode
    c.model.loss = "causal_lm"  # the model's loss (jaxformer/losses.py): causal_lm | masked_lm (needs causal=False)
    c.model.mlm = ml_collections.ConfigDict()  # masked LM (Devlin et al. 2019 §3.1)
    c.model.mlm.rate = 0.15  # share of positions selected for prediction
    c.model.mlm.p_mask = 0.8  # of those, replaced by the mask token ...
    c.model.mlm.p_random = 0.1  # ... or by a random token (the rest are kept)
    c.model.mlm.mask_token_id = -1  # -1 = a new id after the data's vocabulary (the last of model.vocab_size)
    c.model.mlm.random_vocab_size = 0  # random replacements drawn from [0, this); 0 = the data's vocabulary
    c.model.attention = ml_collections.ConfigDict()
    c.model.attention.implementation = "reference"  # reference | chunked | fused (same function, see attention.py)
    c.model.attention.block_size = 512  # key block of the chunked implementation
    # .name picks the variant; .<variant>.<field> its settings, each variant's defaults as it registers them: a
    # field at 0 that depends on the training length is derived from data.block_size by config.resolve (the table
    # in docs/positional.md lists every field and rule).
    c.model.position = positional.default_config()
    c.model.position.name = "rope"

    c.data = default_data_config()  # .name: tiny_shakespeare | synthetic/<task> | tfds:<name>
    c.data.synthetic.min_items = 1  # the demo copies 1..16 symbols (16 = as many as fit data.block_size 32)

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 3e-3  # peak learning rate after warm-up
    c.optim.min_lr = 3e-4  # learning rate at the end of the cosine decay
    c.optim.warmup_steps = 50  # linear warm-up from 0 to lr
    c.optim.decay_steps = 0  # cosine decay length in steps; 0 = train.steps
    c.optim.beta1 = 0.9
    c.optim.beta2 = 0.99
    c.optim.weight_decay = 0.1  # decoupled (AdamW), applied to matrices only
    c.optim.grad_clip = 1.0  # global-norm clipping; 0 = off
    c.optim.accum_steps = 1  # gradient accumulation: micro-batches of data.batch_size per optimizer step

    c.train = ml_collections.ConfigDict()
    c.train.steps = 3000  # optimizer steps
    c.train.seed = 0  # seeds parameters, data order and dropout
    c.train.log_every = 25  # steps between metrics.jsonl lines
    c.train.eval_every = 250  # steps between evaluations (and the final step)
    c.train.eval_iters = 8  # fixed batches per evaluation
    c.train.checkpoint_every = 500  # steps between checkpoints (and the final step); 0 = only the final step
    c.train.keep_checkpoints = 2  # keep-last-k for periodic checkpoints (the best-by-val one is kept apart)
    c.train.nonfinite = "stop"  # on a NaN/Inf loss or gradient: stop (keep last good checkpoint) | skip the update
    c.train.max_skipped_steps = 10  # nonfinite=skip: end the run (exit 1) after this many non-finite steps in a row; 0 = never
    c.train.attention_diagnostics_every = 0  # log per-head attention diagnostics every N steps; 0 = off
    c.train.sample_chars = 200  # characters sampled into samples.txt at the end; 0 = none
    c.train.progress = True  # tqdm progress bar (off automatically when not a TTY)

    c.mesh = ml_collections.ConfigDict()  # device mesh data x fsdp x tensor (see jaxformer/sharding.py)
    c.mesh.data = -1  # data-parallel axis size: splits the batch; -1 = the devices left over (at most one -1)
    c.mesh.fsdp = 1  # also splits the batch, and each parameter/optimizer-state array on its largest dimension
    c.mesh.tensor = 1  # Megatron tensor parallelism: splits the matrices (not the batch)
    c.mesh.multihost = False  # call jax.distributed.initialize() (--multihost; multi-process launches are detected)
    return c
