"""Small random transformers models, one per importable architecture, and their outputs: the independent
implementation the importer is checked against (used live by tests/test_convert.py when the `hf` extra is
installed, and by tests/golden/make_hf_goldens.py to write the goldens CI compares with without torch).

Parameters are redrawn with a larger spread than transformers' init (std 0.02 gives near-uniform attention and
logits, which would hide a wrong layout) and norm scales near 1; torch is seeded, so the models are reproducible.
"""

from __future__ import annotations

import os

import numpy as np

VOCAB, TOKENIZER_VOCAB, NEW_TOKENS = 320, 300, 20

ARCHITECTURES = {  # name -> (transformers config class, its arguments)
    "gpt2": ("GPT2Config", dict(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                activation_function="gelu_new", layer_norm_epsilon=1e-5)),
    "llama": ("LlamaConfig", dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                  rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=500.0)),
    "llama3_head_dim": ("LlamaConfig", dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=128, rms_norm_eps=1e-5,
        tie_word_embeddings=True, rope_theta=500.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16})),
    "mistral": ("MistralConfig", dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      sliding_window=None, tie_word_embeddings=False, rope_theta=1000.0)),
    "qwen2": ("Qwen2Config", dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                  tie_word_embeddings=True, rope_theta=10000.0, use_sliding_window=False)),
}


def tokenizer_text() -> str:
    rng = np.random.default_rng(0)
    words = ["the", "king", "queen", "of", "and", "to", "ROMEO", "JULIET", ":", ",", ".", "\n", " ", "love", "é"]
    return "".join(rng.choice(words, 4000))


def make_model(name: str, seed: int = 0):
    import torch
    import transformers

    cls_name, kwargs = ARCHITECTURES[name]
    # No end-of-sequence token: greedy generation runs all 20 steps instead of padding after an EOS.
    config = getattr(transformers, cls_name)(**kwargs, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                                             attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in pname or "ln_" in pname) and pname.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    return model.float().eval()


def save(model, folder: str) -> None:
    """save_pretrained (config.json + model.safetensors) and a byte-level BPE tokenizer.json."""
    from jaxformer.data import SubwordTokenizer

    model.save_pretrained(folder, safe_serialization=True)
    SubwordTokenizer.train_bpe(tokenizer_text(), TOKENIZER_VOCAB).save(os.path.join(folder, "tokenizer.json"))


PROMPT = "ROMEO: the king of love, and the queen é JULIET."


def prompt_ids(folder: str) -> np.ndarray:
    """The prompt as the saved tokenizer encodes it, [1, T]."""
    from jaxformer.data import run_tokenizer

    return run_tokenizer(folder).encode(PROMPT)[None]


def outputs(model, tokens_1xT: np.ndarray) -> dict:
    """float32 logits [1, T, V], attention weights [L, 1, H, T, T] and 20 greedy tokens (KV cache)."""
    import torch

    ids = torch.as_tensor(tokens_1xT, dtype=torch.long)
    with torch.no_grad():
        out = model(ids, output_attentions=True, use_cache=False)
        generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                   do_sample=False, use_cache=True, pad_token_id=0)
    return {"logits": out.logits.float().numpy(),
            "attentions": np.stack([a.float().numpy() for a in out.attentions]),
            "greedy": generated[0, tokens_1xT.shape[1]:].numpy().astype(np.int32)}
