"""Encoders in the same model (issue 36): bidirectional attention, post-LayerNorm, token types, padding masks, the
masked-LM objective, the positional encodings' encoder forms, and a tiny BERT trained, resumed and filled from
the CLI. The layouts against an independent implementation (transformers' BERT) are in tests/test_convert_bert.py.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import config as config_lib
from jaxformer import losses
from jaxformer import train as train_lib
from jaxformer.model import GPT

ENCODINGS = ("learned", "sinusoidal", "rope", "alibi", "t5", "kerple", "fire")


def _encoder_cfg(position="learned", **fields):
    cfg = config_lib.load("tiny")
    m = cfg.model
    m.causal, m.norm_placement, m.head_transform, m.loss, m.bias = False, "post", True, "masked_lm", True
    m.type_vocab_size, m.pooler = 2, True
    m.position.name = position
    m.position.t5.bidirectional = True
    for k, v in fields.items():
        m[k] = v
    cfg = config_lib.resolve(cfg, vocab_size=20)
    config_lib.validate(cfg)
    return cfg


def _random_params(model, seed=1):
    """Parameters well away from the init (std 0.02 gives near-uniform attention, which would hide masking bugs)."""
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    leaves = [x + 0.3 * jax.random.normal(k, x.shape, x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
              for x, k in zip(leaves, keys, strict=True)]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))


@pytest.mark.parametrize("position", ENCODINGS)
def test_encoder_sees_later_tokens_and_decoder_does_not(position):
    """Changing the last token changes the first position's logits in an encoder, never in a decoder."""
    tokens = np.random.default_rng(0).integers(0, 20, (2, 12)).astype(np.int32)
    changed = tokens.copy()
    changed[:, -1] = (changed[:, -1] + 1) % 20
    for causal in (False, True):
        cfg = _encoder_cfg(position)
        cfg.model.causal, cfg.model.loss = causal, "masked_lm" if not causal else "causal_lm"
        model = _random_params(GPT(cfg.model, rngs=nnx.Rngs(params=0)))
        a, b = model(jnp.asarray(tokens))[:, 0], model(jnp.asarray(changed))[:, 0]
        diff = float(jnp.max(jnp.abs(a - b)))
        assert (diff > 1e-4) if not causal else (diff == 0.0), (position, causal, diff)


@pytest.mark.parametrize("position,field,message", [
    ("none", None, "NoPE's only position signal is the causal mask"),
    ("xpos", None, "xPos's decay becomes a growth"),
    ("t5", False, "model.position.t5.bidirectional=True"),
])
def test_encodings_without_a_bidirectional_form_are_refused_in_one_line(position, field, message):
    cfg = config_lib.load("bert_tiny")
    cfg.model.position.name = position
    if field is not None:
        cfg.model.position.t5.bidirectional = field
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(config_lib.resolve(cfg, vocab_size=65))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert f"model.position.name={position!r} with model.causal=False" in str(e.value)


@pytest.mark.parametrize("fields,message", [
    (dict(causal=True), "model.loss=masked_lm needs model.causal=False"),
    (dict(loss="causal_lm"), "model.loss=causal_lm needs model.causal=True"),
    (dict(norm_placement="middle"), "model.norm_placement='middle'; choose one of: pre, post"),
    (dict(loss="span"), "model.loss='span'; choose one of: causal_lm, masked_lm"),
])
def test_bad_encoder_fields_are_one_line_errors(fields, message):
    cfg = config_lib.load("bert_tiny")
    for k, v in fields.items():
        cfg.model[k] = v
    with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_lib.validate(config_lib.resolve(cfg, vocab_size=65))


def test_padding_is_invisible_to_the_real_tokens():
    """A right-padded batch (mask False on the pads) gives the unpadded sequence's hidden states at its tokens."""
    cfg = _encoder_cfg("learned")
    model = _random_params(GPT(cfg.model, rngs=nnx.Rngs(params=0)))
    rng = np.random.default_rng(1)
    real = rng.integers(0, 20, (1, 7)).astype(np.int32)
    padded = np.concatenate([real, rng.integers(0, 20, (1, 5)).astype(np.int32)], axis=1)
    types = np.asarray([[0, 0, 0, 1, 1, 1, 1]], np.int32)
    types_padded = np.concatenate([types, np.zeros((1, 5), np.int32)], axis=1)
    mask = np.arange(12)[None] < 7
    h, pooled = model.encode(jnp.asarray(real), token_types_BxT=jnp.asarray(types))
    hp, pooled_p = model.encode(jnp.asarray(padded), token_types_BxT=jnp.asarray(types_padded),
                                mask_BxT=jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(hp[:, :, :7]), np.asarray(h), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(pooled_p), np.asarray(pooled), rtol=2e-5, atol=2e-5)
    # and the pads do matter when unmasked (the check above can fail)
    hu, _ = model.encode(jnp.asarray(padded), token_types_BxT=jnp.asarray(types_padded))
    assert float(jnp.max(jnp.abs(hu[-1, :, :7] - h[-1]))) > 1e-3
    # token types change the output
    h0, _ = model.encode(jnp.asarray(real))
    assert float(jnp.max(jnp.abs(h0[-1] - h[-1]))) > 1e-3


def _np_layernorm(x, scale, bias, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def test_post_norm_block_matches_a_float64_reference():
    """One post-LN block, N(x + Attn(x)) then N(x + MLP(x)), and the embedding norm, against NumPy float64
    written from Vaswani et al. 2017 / Devlin et al. 2019 (learned positions, token types, no causal mask)."""
    cfg = _encoder_cfg("learned", n_layer=1, head_transform=False, pooler=False, type_vocab_size=2)
    model = _random_params(GPT(cfg.model, rngs=nnx.Rngs(params=0)), seed=3)
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    eps = cfg.model.norm_eps
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 20, (1, 9)).astype(np.int32)
    types = rng.integers(0, 2, (1, 9)).astype(np.int32)
    x = p["wte"]["embedding"][tokens[0]] + p["position"]["params"]["table"][:9] + p["wtt"]["embedding"][types[0]]
    x = _np_layernorm(x, p["ln_embed"]["scale"], p["ln_embed"]["bias"], eps)
    b = p["blocks"][0]
    qkv = x @ b["attn"]["params"]["qkv"]["kernel"] + b["attn"]["params"]["qkv"]["bias"]
    H, D = cfg.model.n_head, cfg.model.n_embd
    d = D // H
    q, k, v = (qkv[:, i * D:(i + 1) * D].reshape(9, H, d) for i in range(3))
    logits = np.einsum("thd,shd->hts", q, k) / np.sqrt(d)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("hts,shd->thd", w, v).reshape(9, D)
    a = o @ b["attn"]["params"]["out"]["kernel"] + b["attn"]["params"]["out"]["bias"]
    x = _np_layernorm(x + a, b["ln1"]["scale"], b["ln1"]["bias"], eps)
    from scipy.special import erf
    h = x @ b["mlp"]["fc"]["kernel"] + b["mlp"]["fc"]["bias"]
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    x = _np_layernorm(x + h @ b["mlp"]["proj"]["kernel"] + b["mlp"]["proj"]["bias"], b["ln2"]["scale"],
                      b["ln2"]["bias"], eps)
    hidden, _ = model.encode(jnp.asarray(tokens), token_types_BxT=jnp.asarray(types))
    np.testing.assert_allclose(np.asarray(hidden[-1, 0], np.float64), x, rtol=1e-4, atol=1e-4)
    logits_ref = x @ p["wte"]["embedding"].T  # tied decoder, no transform
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(tokens), token_types_BxT=jnp.asarray(types))[0]),
                               logits_ref, rtol=1e-4, atol=1e-4)


def test_mask_tokens_follows_bert_rates():
    """15% selected; of those 80% [MASK], 10% random, 10% kept (binomial 5-sigma bounds on 400k positions)."""
    V, mask_id = 50, 50
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, V, (400, 1000)), jnp.int32)
    inputs, selected = losses.mask_tokens(jax.random.PRNGKey(0), tokens, mask_token_id=mask_id,
                                          random_vocab_size=V)
    inputs, selected, tokens = (np.asarray(x) for x in (inputs, selected, tokens))
    n = tokens.size
    assert abs(selected.mean() - 0.15) < 5 * np.sqrt(0.15 * 0.85 / n)
    assert (inputs[~selected] == tokens[~selected]).all()  # unselected positions are never touched
    s = selected.sum()
    masked = (inputs[selected] == mask_id).mean()
    changed = ((inputs[selected] != mask_id) & (inputs[selected] != tokens[selected])).mean()
    assert abs(masked - 0.8) < 5 * np.sqrt(0.8 * 0.2 / s)
    expected_changed = 0.1 * (1 - 1 / V)  # a random token may draw the original
    assert abs(changed - expected_changed) < 5 * np.sqrt(0.1 * 0.9 / s)
    assert inputs.max() <= mask_id and inputs[inputs != mask_id].max() < V


def test_masked_lm_loss_counts_the_selected_positions_only():
    cfg = _encoder_cfg("rope")
    objective = losses.for_model(cfg.model)
    assert objective.name == "masked_lm" and not objective.causal
    model = _random_params(GPT(cfg.model, rngs=nnx.Rngs(params=0)))
    graphdef, params = nnx.split(model)
    params = nnx.to_pure_dict(params)
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 20, (4, 16)), jnp.int32)
    batch = objective.prepare({"inputs": tokens, "targets": jnp.roll(tokens, -1, 1),
                               "weights": jnp.ones((4, 16), jnp.float32)}, jax.random.PRNGKey(5))
    np.testing.assert_array_equal(np.asarray(batch["targets"]), np.asarray(tokens))
    sel = np.asarray(batch["weights"]) > 0
    assert 0 < sel.sum() < sel.size
    per_token, _ = train_lib.token_losses(params, graphdef, batch["inputs"], batch["targets"])
    expected = float(np.asarray(per_token)[sel].mean())
    assert float(train_lib.loss_fn(params, graphdef, batch)) == pytest.approx(expected, rel=1e-6)
    # A different target at an unselected position leaves the loss as it was.
    other = dict(batch, targets=jnp.where(jnp.asarray(sel), batch["targets"], (batch["targets"] + 1) % 20))
    assert float(train_lib.loss_fn(params, graphdef, other)) == float(train_lib.loss_fn(params, graphdef, batch))


def test_resolve_gives_mask_a_new_id_after_the_data():
    cfg = config_lib.resolve(config_lib.load("bert_tiny"), vocab_size=65)
    assert cfg.model.vocab_size == 66 and config_lib.data_vocab_size(cfg) == 65
    objective = losses.for_model(cfg.model)
    inputs, _ = losses.mask_tokens(jax.random.PRNGKey(0), jnp.zeros((50, 50), jnp.int32), mask_token_id=65,
                                   random_vocab_size=65)
    batch = objective.prepare({"inputs": jnp.zeros((50, 50), jnp.int32)}, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(batch["inputs"]), np.asarray(inputs))  # [MASK] = 65, random < 65
    gpt = config_lib.resolve(config_lib.load("tiny"), vocab_size=65)
    assert gpt.model.vocab_size == 65 and gpt.model.loss == "causal_lm"


def _bert_cfg(shakespeare_dir, tfds_data_dir, steps):
    cfg = config_lib.load("bert_tiny")
    cfg.data.manual_dir, cfg.data.data_dir = shakespeare_dir, tfds_data_dir
    cfg.model.n_layer, cfg.model.n_embd, cfg.data.block_size, cfg.data.batch_size = 1, 32, 32, 8
    cfg.train.steps, cfg.train.log_every, cfg.train.eval_every, cfg.train.eval_iters = steps, 5, 10, 2
    cfg.train.checkpoint_every, cfg.optim.warmup_steps, cfg.train.progress = 10, 5, False
    return cfg


def test_bert_tiny_trains_resumes_bitwise_and_fills_masks(shakespeare_dir, tfds_data_dir, tmp_path, capsys):
    from jaxformer import cli
    from jaxformer import run as run_lib

    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    result = train_lib.train(_bert_cfg(shakespeare_dir, tfds_data_dir, 20), full)
    metrics = run_lib.read_metrics(full)
    evals = [m for m in metrics if "val_loss" in m]
    assert evals and all(0.0 <= m["val_accuracy"] <= 1.0 for m in evals)
    train_losses = [m["loss"] for m in metrics if "loss" in m]
    assert train_losses[-1] < train_losses[0]
    assert result["val_loss"] == evals[-1]["val_loss"]

    cfg = _bert_cfg(shakespeare_dir, tfds_data_dir, 20)
    cfg.train.checkpoint_every = 7
    train_lib.train(cfg, part, stop_after=7)
    train_lib.train(_bert_cfg(shakespeare_dir, tfds_data_dir, 20), part, resume=True)
    with open(os.path.join(full, "metrics.jsonl")) as f, open(os.path.join(part, "metrics.jsonl")) as g:
        assert f.read() == g.read()

    capsys.readouterr()
    assert cli.main(["fill-mask", "--workdir", full, "--text", "ROMEO: I lo[MASK]e", "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("position 11:") and lines[0].count("0.") >= 3
    assert cli.main(["eval", "--workdir", full, "--json"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert 0 <= record["masked_accuracy"] <= 1 and record["loss"] > 0 and "exact_match" not in record
    assert cli.main(["eval", "--workdir", full]) == 0
    out = capsys.readouterr().out
    assert "masked-token accuracy" in out and "exact match" not in out


def test_fill_mask_refuses_text_without_mask_and_decoders(tmp_path, tiny_cfg, capsys):
    from jaxformer import cli

    tiny_cfg.train.steps, tiny_cfg.train.sample_chars = 2, 0
    tiny_cfg.optim.warmup_steps = 1
    train_lib.train(tiny_cfg, str(tmp_path / "gpt"))
    assert cli.main(["fill-mask", "--workdir", str(tmp_path / "gpt"), "--text", "ab[MASK]"]) == 2
    assert "fill-mask needs an encoder" in capsys.readouterr().err


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_query_key_vectors_give_the_captured_weights(position):
    """The neuron view's q and k (capture.query_key_vectors): softmax(q·kᵀ/√d) is the model's attention weight, for
    a rotation (RoPE) and an embedding (learned) encoding, in an encoder with token types."""
    from jaxformer.analysis import capture

    cfg = _encoder_cfg(position)
    model = _random_params(GPT(cfg.model, rngs=nnx.Rngs(params=0)))
    ids = np.random.default_rng(4).integers(0, 20, 11).astype(np.int32)
    types = (np.arange(11) >= 6).astype(np.int32)
    cap = capture.capture_ids(model, ids, [str(i) for i in ids], token_types=types)
    q, k = cap.qk[..., 0, :].astype(np.float64), cap.qk[..., 1, :].astype(np.float64)
    logits = np.einsum("lhtd,lhsd->lhts", q, k) / np.sqrt(q.shape[-1])
    w = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(w / w.sum(-1, keepdims=True), cap.weights_LxHxTxT, atol=2e-5)
