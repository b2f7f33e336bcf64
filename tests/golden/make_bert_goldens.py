"""Writes tests/golden/hf/<name>/ for the BERT family: a small random transformers encoder saved with
save_pretrained (config.json, model.safetensors), a tokenizer.json with the family's special tokens (WordPiece with
[CLS]/[SEP]/[MASK]/[PAD]; byte-level BPE with <s>/</s>/<mask>/<pad> for RoBERTa), and outputs.npz: the inputs (a
sentence pair and a shorter right-padded single sentence, with token types and the attention mask) and transformers'
hidden states of every layer, attention weights, MLM logits (the *ForMaskedLM models) or pooler output (BertModel).

tests/test_convert_bert.py imports each folder with `jaxformer import` and compares, without torch. Run (in a venv with
torch, transformers, tokenizers and numpy; nothing of jaxformer is imported): python tests/golden/make_bert_goldens.py
"""

import os
import shutil

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB, TOKENIZER_VOCAB = 320, 300
SMALL = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64, hidden_act="gelu", layer_norm_eps=1e-12)
MODELS = {  # name -> (transformers class, config class, its arguments, tokenizer kind)
    "bert_mlm": ("BertForMaskedLM", "BertConfig", dict(SMALL, type_vocab_size=2), "wordpiece"),
    "bert_model": ("BertModel", "BertConfig", dict(SMALL, type_vocab_size=2), "wordpiece"),
    "roberta_mlm": ("RobertaForMaskedLM", "RobertaConfig",
                    dict(SMALL, type_vocab_size=1, max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                         eos_token_id=2), "bytelevel"),
    "distilbert_mlm": ("DistilBertForMaskedLM", "DistilBertConfig",
                       dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                            max_position_embeddings=64, activation="gelu", pad_token_id=0), "wordpiece"),
}
TEXT_A, TEXT_B, TEXT_SHORT = "the king of love , and the queen", "ROMEO : JULIET .", "the queen ."


def corpus() -> list[str]:
    rng = np.random.default_rng(0)
    words = ["the", "king", "queen", "of", "and", "to", "ROMEO", "JULIET", ":", ",", ".", "love", "thee"]
    return [" ".join(rng.choice(words, 12)) for _ in range(400)]


def make_tokenizer(kind: str):
    from tokenizers import ByteLevelBPETokenizer, processors
    from tokenizers.implementations import BertWordPieceTokenizer

    if kind == "wordpiece":
        tok = BertWordPieceTokenizer(lowercase=False)
        tok.train_from_iterator(corpus(), vocab_size=TOKENIZER_VOCAB,
                                special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        # Set after training: the constructor's post-processor holds the ids of an empty vocabulary.
        tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                       ("[CLS]", tok.token_to_id("[CLS]")))
        return tok
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(corpus(), vocab_size=TOKENIZER_VOCAB,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")))
    return tok


def inputs(tok, pad_id: int) -> dict:
    pair, short = tok.encode(TEXT_A, TEXT_B), tok.encode(TEXT_SHORT)
    T = len(pair.ids)
    n = len(short.ids)
    ids = np.full((2, T), pad_id, np.int64)
    types = np.zeros((2, T), np.int64)
    mask = np.zeros((2, T), np.int64)
    ids[0], types[0], mask[0] = pair.ids, pair.type_ids, 1
    ids[1, :n], types[1, :n], mask[1, :n] = short.ids, short.type_ids, 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def make_model(cls_name: str, config_name: str, kwargs: dict, seed: int = 0):
    import torch
    import transformers

    config = getattr(transformers, config_name)(**kwargs, attn_implementation="eager")
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(config)
    with torch.no_grad():  # a larger spread than the init, so a wrong layout cannot hide in near-uniform outputs
        for pname, p in model.named_parameters():
            if p.ndim == 1 and ("LayerNorm" in pname or "layer_norm" in pname) and pname.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    return model.float().eval()


def outputs(model, batch: dict, *, distil: bool) -> dict:
    import torch

    feed = {k: torch.from_numpy(v) for k, v in batch.items() if not (distil and k == "token_type_ids")}
    with torch.no_grad():
        out = model(**feed, output_hidden_states=True, output_attentions=True)
    result = {"hidden_states": np.stack([h.numpy() for h in out.hidden_states]),
              "attentions": np.stack([a.numpy() for a in out.attentions])}
    if hasattr(out, "logits") and out.logits is not None:
        result["logits"] = out.logits.numpy()
    if getattr(out, "pooler_output", None) is not None:
        result["pooler_output"] = out.pooler_output.numpy()
    return result


if __name__ == "__main__":
    import torch
    import transformers

    for name, (cls_name, config_name, kwargs, tok_kind) in MODELS.items():
        folder = os.path.join(HERE, "hf", name)
        shutil.rmtree(folder, ignore_errors=True)
        model = make_model(cls_name, config_name, kwargs)
        model.save_pretrained(folder, safe_serialization=True)
        tok = make_tokenizer(tok_kind)
        tok.save(os.path.join(folder, "tokenizer.json"))
        batch = inputs(tok, kwargs.get("pad_token_id", 0))
        out = outputs(model, batch, distil=name.startswith("distilbert"))
        np.savez_compressed(os.path.join(folder, "outputs.npz"), **batch, **out,
                            versions=np.asarray([torch.__version__, transformers.__version__]))
        print(name, {k: v.shape for k, v in out.items()})
