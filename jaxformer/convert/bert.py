"""The BERT family (Devlin et al. 2019): BERT / MiniLM / sentence-transformers `BertModel` and `BertForMaskedLM`,
RoBERTa (Liu et al. 2019) and DistilBERT (Sanh et al. 2019) -> jaxformer's encoder fields.

All three are jaxformer's model with `model.causal=False`, `model.norm_placement=post` (a LayerNorm after the
embeddings and after each residual sum, none at the end), learned absolute positions, biases everywhere and a 4x
GELU MLP; BERT and RoBERTa add token types (`model.type_vocab_size`), the `*Model` checkpoints a pooler
(`model.pooler`), the `*ForMaskedLM` ones the masked-LM head (`model.head_transform`: dense -> GELU -> LayerNorm ->
the tied word embeddings + a bias). torch Linear weights are [out, in]: transposed; q, k, v fill the fused qkv kernel.

RoBERTa numbers its positions from padding_idx + 1 (its `create_position_ids_from_input_ids`): the first
padding_idx + 1 rows of its table are never read for a real token, so the table is imported from row padding_idx + 1
on and position 0 of jaxformer's table is RoBERTa's padding_idx + 1 (identical for right-padded inputs, the form
`SubwordTokenizer.encode_pair` gives).
"""

from __future__ import annotations

import dataclasses

from jaxformer.convert.common import ConvertError, Entry, Family, transpose

ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


@dataclasses.dataclass(frozen=True)
class Kind:
    """One checkpoint layout: its tensor prefix, names and special tokens."""

    name: str
    prefix: str  # of the encoder's tensors in a *ForMaskedLM checkpoint ("bert.")
    special_tokens: tuple[str, ...]  # the tokenizer must have these (cls, sep, mask, pad)
    mask_token: str


BERT = Kind("bert", "bert.", ("[CLS]", "[SEP]", "[MASK]", "[PAD]"), "[MASK]")
ROBERTA = Kind("roberta", "roberta.", ("<s>", "</s>", "<mask>", "<pad>"), "<mask>")
DISTILBERT = Kind("distilbert", "distilbert.", ("[CLS]", "[SEP]", "[MASK]", "[PAD]"), "[MASK]")


def _dims(kind: Kind, hf: dict) -> dict:
    if kind is DISTILBERT:
        return dict(D=hf["dim"], H=hf["n_heads"], L=hf["n_layers"], F=hf["hidden_dim"], V=hf["vocab_size"],
                    P=hf.get("max_position_embeddings", 512), types=0, eps=1e-12, act=hf.get("activation", "gelu"))
    return dict(D=hf["hidden_size"], H=hf["num_attention_heads"], L=hf["num_hidden_layers"],
                F=hf["intermediate_size"], V=hf["vocab_size"], P=hf.get("max_position_embeddings", 512),
                types=hf.get("type_vocab_size", 2), eps=float(hf.get("layer_norm_eps", 1e-12)),
                act=hf.get("hidden_act", "gelu"))


def _position_offset(kind: Kind, hf: dict) -> int:
    return hf.get("pad_token_id", 1) + 1 if kind is ROBERTA else 0


def config_map(kind: Kind, mlm: bool, hf: dict) -> dict:
    d = _dims(kind, hf)
    if d["act"] not in ACTIVATIONS:
        raise ConvertError(f"config.json: activation {d['act']!r} is not supported; supported: "
                           f"{', '.join(ACTIVATIONS)}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ConvertError(f"config.json: position_embedding_type={hf['position_embedding_type']!r} is not "
                           "supported; only absolute (learned) positions")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise ConvertError("config.json: is_decoder / add_cross_attention are not supported (an encoder only)")
    if d["D"] % d["H"]:
        raise ConvertError(f"config.json: hidden size {d['D']} is not divisible by {d['H']} heads")
    positions = d["P"] - _position_offset(kind, hf)
    return {
        "model.n_layer": d["L"], "model.n_head": d["H"], "model.n_kv_head": d["H"], "model.n_embd": d["D"],
        "model.vocab_size": d["V"], "model.bias": True, "model.mlp": ACTIVATIONS[d["act"]],
        "model.mlp_hidden": d["F"], "model.norm": "layernorm", "model.norm_eps": d["eps"],
        "model.tie_embeddings": True, "model.head_dim": 0, "model.qkv_bias": False,
        "model.causal": False, "model.norm_placement": "post", "model.type_vocab_size": d["types"],
        "model.head_transform": mlm, "model.pooler": not mlm and kind is not DISTILBERT,
        "model.loss": "masked_lm", "model.mlm.random_vocab_size": d["V"],
        "model.position.name": "learned", "model.position.learned.max_len": positions,
        "data.block_size": positions,
    }


def param_map(kind: Kind, mlm: bool, hf: dict) -> list[Entry]:
    d = _dims(kind, hf)
    D, V, F = d["D"], d["V"], d["F"]
    offset = _position_offset(kind, hf)
    e = "embeddings."
    entries = [Entry(e + "word_embeddings.weight", (V, D), "wte/embedding"),
               Entry(e + "position_embeddings.weight", (d["P"], D), "position/params/table",
                     lambda x: x[offset:].copy()),
               Entry(e + "LayerNorm.weight", (D,), "ln_embed/scale"),
               Entry(e + "LayerNorm.bias", (D,), "ln_embed/bias")]
    if d["types"]:
        entries.append(Entry(e + "token_type_embeddings.weight", (d["types"], D), "wtt/embedding"))
    for i in range(d["L"]):
        b = f"blocks/{i}/"
        qkv = b + "attn/params/qkv/"
        if kind is DISTILBERT:
            p = f"transformer.layer.{i}."
            names = dict(q=p + "attention.q_lin", k=p + "attention.k_lin", v=p + "attention.v_lin",
                         o=p + "attention.out_lin", ln1=p + "sa_layer_norm", fc=p + "ffn.lin1", proj=p + "ffn.lin2",
                         ln2=p + "output_layer_norm")
        else:
            p = f"encoder.layer.{i}."
            names = dict(q=p + "attention.self.query", k=p + "attention.self.key", v=p + "attention.self.value",
                         o=p + "attention.output.dense", ln1=p + "attention.output.LayerNorm",
                         fc=p + "intermediate.dense", proj=p + "output.dense", ln2=p + "output.LayerNorm")
        for j, name in enumerate("qkv"):
            cols = (j * D, (j + 1) * D)
            entries += [Entry(names[name] + ".weight", (D, D), qkv + "kernel", transpose, cols),
                        Entry(names[name] + ".bias", (D,), qkv + "bias", columns=cols)]
        entries += [
            Entry(names["o"] + ".weight", (D, D), b + "attn/params/out/kernel", transpose),
            Entry(names["o"] + ".bias", (D,), b + "attn/params/out/bias"),
            Entry(names["ln1"] + ".weight", (D,), b + "ln1/scale"), Entry(names["ln1"] + ".bias", (D,), b + "ln1/bias"),
            Entry(names["fc"] + ".weight", (F, D), b + "mlp/fc/kernel", transpose),
            Entry(names["fc"] + ".bias", (F,), b + "mlp/fc/bias"),
            Entry(names["proj"] + ".weight", (D, F), b + "mlp/proj/kernel", transpose),
            Entry(names["proj"] + ".bias", (D,), b + "mlp/proj/bias"),
            Entry(names["ln2"] + ".weight", (D,), b + "ln2/scale"), Entry(names["ln2"] + ".bias", (D,), b + "ln2/bias"),
        ]
    if mlm:
        head = {BERT: ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
                       "cls.predictions.bias"),
                ROBERTA: ("lm_head.dense", "lm_head.layer_norm", "lm_head.bias"),
                DISTILBERT: ("vocab_transform", "vocab_layer_norm", "vocab_projector.bias")}[kind]
        entries += [Entry(head[0] + ".weight", (D, D), "head_dense/kernel", transpose),
                    Entry(head[0] + ".bias", (D,), "head_dense/bias"),
                    Entry(head[1] + ".weight", (D,), "head_norm/scale"),
                    Entry(head[1] + ".bias", (D,), "head_norm/bias"),
                    Entry(head[2], (V,), "head_bias")]
    elif kind is not DISTILBERT:
        entries += [Entry("pooler.dense.weight", (D, D), "pooler/kernel", transpose),
                    Entry("pooler.dense.bias", (D,), "pooler/bias")]
    return entries


def ignored(kind: Kind, mlm: bool, name: str, hf: dict) -> bool:
    """Buffers (position ids), the decoder tied to the word embeddings (and its bias, a copy of the head's), and in
    a masked-LM checkpoint the parts of pre-training it does not use (pooler, next-sentence head)."""
    if name.endswith(("position_ids", "token_type_ids")):
        return True
    if name in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias", "lm_head.decoder.weight",
                "lm_head.decoder.bias", "vocab_projector.weight"):
        return True
    return mlm and name.startswith(("pooler.", "cls.seq_relationship."))


def family(kind: Kind, mlm: bool) -> Family:
    name = f"{kind.name}{'_mlm' if mlm else ''}"
    bound = lambda f: (lambda *a: f(kind, mlm, *a))
    return Family(name, bound(config_map), bound(param_map), bound(ignored), strip_prefixes=(kind.prefix,),
                  special_tokens=kind.special_tokens, mask_token=kind.mask_token)


FAMILIES = {
    "BertModel": family(BERT, False), "BertForMaskedLM": family(BERT, True),
    "RobertaModel": family(ROBERTA, False), "RobertaForMaskedLM": family(ROBERTA, True),
    "DistilBertModel": family(DISTILBERT, False), "DistilBertForMaskedLM": family(DISTILBERT, True),
}
BY_MODEL_TYPE = {"bert": "BertModel", "roberta": "RobertaModel", "distilbert": "DistilBertModel"}
