"""nanoGPT's `config/finetune_shakespeare.py`: fine-tune an imported model on your own text, with its own tokenizer
and context.

    jaxformer import --hf gpt2 --workdir runs/gpt2
    jaxformer train --config finetune_text --init-from runs/gpt2 --config.data.name=text:input.txt

With `--init-from`, the model is the source run's (every `model` field but dropout, remat and the attention
implementation, which this config sets); `data.block_size = 0` takes its context (GPT-2: 1024) and
`data.tokenizer = "pretrained"` its tokenizer.json. The recipe is nanoGPT's: 20 steps of 32 accumulated rows at a
constant learning rate of 3e-5, evaluated every 5 steps on 40 batches, keeping the best checkpoint by val loss.
"""

from jaxformer.configs import default


def get_config():
    c = default.get_config()
    c.model.dropout = 0.0  # nanoGPT's finetune_shakespeare: no dropout

    c.data.name = "text:input.txt"  # your text: a file, a folder of them or a glob (data/token_cache.py)
    c.data.tokenizer = "pretrained"  # the --init-from run's tokenizer.json
    c.data.block_size = 0  # 0 = the --init-from run's context (its data.block_size)
    c.data.batch_size = 1  # nanoGPT: batch_size = 1 ...
    c.optim.accum_steps = 32  # ... x gradient_accumulation_steps = 32 rows per step

    c.optim.lr = 3e-5  # nanoGPT: learning_rate = 3e-5, decay_lr = False: constant
    c.optim.min_lr = 3e-5
    c.optim.warmup_steps = 0
    c.optim.beta2 = 0.95  # nanoGPT's default
    c.optim.weight_decay = 0.1

    c.train.steps = 20  # nanoGPT: max_iters = 20
    c.train.eval_every = 5  # eval_interval = 5
    c.train.eval_iters = 40
    c.train.log_every = 1
    c.train.checkpoint_every = 0  # the final step (and the best by val loss, kept apart)
    return c
