"""jaxformer.analysis: diagnostics on hand-built matrices, capture through the reference path for every
positional encoding and attention implementation, the pictures and files of `jaxformer attention`, and
diagnostics in training.

The browser test of attention.html is tests/test_viewer.py.
"""

import csv
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import config as config_lib
from jaxformer import positional
from jaxformer.analysis import capture, diagnostics, heatmaps, viewer

T = 8


# -------------------------------------------------------------------------------------- hand-built matrices

def uniform(T):
    return np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]


def identity(T):
    return np.eye(T)


def previous_token(T):
    w = np.eye(T, k=-1)
    w[0, 0] = 1.0  # row 0 can only attend to itself
    return w


def first_token(T):
    w = np.zeros((T, T))
    w[:, 0] = 1.0
    return w


def perfect_induction(n):
    """On [block, block]: tokens of the second copy attend to the token after their first occurrence; the
    first copy attends to itself."""
    w = np.eye(2 * n)
    for i in range(n, 2 * n):
        w[i] = 0.0
        w[i, i - n + 1] = 1.0
    return w


def metrics(w, period=None):
    out = {name: float(v) for name, v in diagnostics.text_diagnostics(w).items()}
    if period is not None:
        out["induction"] = float(diagnostics.induction_score(w, period=period))
    return out


def test_rows_of_hand_built_matrices_are_distributions():
    for w in (uniform(T), identity(T), previous_token(T), first_token(T), perfect_induction(T // 2)):
        np.testing.assert_allclose(w.sum(-1), 1.0)
        assert np.all(np.triu(w, 1) == 0)


def test_uniform_attention():
    rows = np.arange(1, T)  # query positions 1..T-1
    expected = {"entropy": np.mean(np.log(rows + 1)), "mean_distance": np.mean(rows / 2),
                "sink": np.mean(1 / (rows + 1)), "previous_token": np.mean(1 / (rows + 1)),
                "induction": np.mean(1 / (np.arange(T // 2, T) + 1))}
    assert metrics(uniform(T), period=T // 2) == pytest.approx(expected, rel=1e-6)


def test_identity_attention():
    assert metrics(identity(T), period=T // 2) == pytest.approx(
        {"entropy": 0, "mean_distance": 0, "sink": 0, "previous_token": 0, "induction": 0}, abs=1e-7)


def test_previous_token_attention():
    assert metrics(previous_token(T), period=T // 2) == pytest.approx(
        {"entropy": 0, "mean_distance": 1, "sink": 1 / (T - 1), "previous_token": 1, "induction": 0},
        abs=1e-7)


def test_first_token_sink():
    assert metrics(first_token(T)) == pytest.approx(
        {"entropy": 0, "mean_distance": T / 2, "sink": 1, "previous_token": 1 / (T - 1)}, abs=1e-6)


def test_perfect_induction_pattern():
    n = 5
    m = metrics(perfect_induction(n), period=n)
    assert m["induction"] == pytest.approx(1.0)
    assert m["entropy"] == pytest.approx(0.0, abs=1e-7)
    # Second copy: distance n - 1 for n of the 2n - 1 averaged rows; first copy: 0.
    assert m["mean_distance"] == pytest.approx(n * (n - 1) / (2 * n - 1))
    # A previous-token or uniform head is not an induction head.
    assert metrics(previous_token(2 * n), period=n)["induction"] == pytest.approx(0.0)


def reference_metrics(w, period):
    """Float64 loops, written from the definitions in diagnostics.py."""
    T = w.shape[0]
    rows = range(1, T)
    ent = np.mean([-sum(w[i, j] * math.log(w[i, j]) for j in range(T) if w[i, j] > 0) for i in rows])
    dist = np.mean([sum(w[i, j] * abs(i - j) for j in range(T)) for i in rows])
    return {"entropy": ent, "mean_distance": dist, "sink": np.mean([w[i, 0] for i in rows]),
            "previous_token": np.mean([w[i, i - 1] for i in rows]),
            "induction": np.mean([w[i, i - period + 1] for i in range(period, 2 * period)])}


def random_causal(rng, shape, T):
    logits = rng.normal(size=(*shape, T, T)) * 2
    logits = np.where(np.tril(np.ones((T, T), bool)), logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    return w / w.sum(-1, keepdims=True)


def test_metrics_match_float64_loops_with_batch_axes():
    w = random_causal(np.random.default_rng(0), (2, 3, 4), T)  # [L, B, H, T, T]
    got = {name: np.asarray(v) for name, v in diagnostics.text_diagnostics(w).items()}
    got["induction"] = np.asarray(diagnostics.induction_score(w, period=T // 2))
    for name, value in got.items():
        assert value.shape == (2, 3, 4), name
    for idx in np.ndindex(2, 3, 4):
        expected = reference_metrics(w[idx], T // 2)
        assert {k: float(v[idx]) for k, v in got.items()} == pytest.approx(expected, rel=1e-5, abs=1e-6), idx


def test_metrics_are_jittable():
    w = jnp.asarray(uniform(T), jnp.float32)
    jitted = jax.jit(lambda w: {**diagnostics.text_diagnostics(w),
                                "induction": diagnostics.induction_score(w, period=T // 2)})
    assert {k: float(v) for k, v in jitted(w).items()} == pytest.approx(metrics(uniform(T), T // 2), rel=1e-6)


def test_bad_shapes_are_one_line_errors():
    with pytest.raises(ValueError, match="expected"):
        diagnostics.entropy(np.ones((3, 4)))
    with pytest.raises(ValueError, match="T = 2 \\* period"):
        diagnostics.induction_score(uniform(T), period=3)


def test_repeated_random_tokens():
    tokens = diagnostics.repeated_random_tokens(batch=3, period=6, vocab_size=20, seed=1)
    assert tokens.shape == (3, 12) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens[:, :6], tokens[:, 6:])
    assert all(len(set(row[:6].tolist())) == 6 for row in tokens)  # distinct when the vocab allows
    again = diagnostics.repeated_random_tokens(batch=3, period=6, vocab_size=20, seed=1)
    np.testing.assert_array_equal(tokens, again)
    small = diagnostics.repeated_random_tokens(batch=2, period=6, vocab_size=3)
    assert small.max() < 3


def test_flatten_and_csv(tmp_path):
    table = {name: np.arange(6, dtype=np.float32).reshape(2, 3) + k
             for k, name in enumerate(diagnostics.METRICS)}
    flat = diagnostics.flatten(table, layers=[0, 2], heads=[1, 3, 5])
    assert flat["attn/L2H3/entropy"] == 4.0 and flat["attn/L0H5/induction"] == 6.0
    assert len(flat) == 2 * 3 * len(diagnostics.METRICS)
    path = str(tmp_path / "d.csv")
    diagnostics.write_csv(path, table, layers=[0, 2], heads=[1, 3, 5])
    rows = diagnostics.read_csv(path)
    assert [(r["layer"], r["head"]) for r in rows] == [(0, 1), (0, 3), (0, 5), (2, 1), (2, 3), (2, 5)]
    assert rows[4]["mean_distance"] == 5.0
    series = diagnostics.history([{"step": 10, **flat}, {"step": 20, "loss": 1.0}, {"step": 30, **flat}])
    assert series["attn/L2H3/entropy"] == [(10, 4.0), (30, 4.0)]


# ------------------------------------------------------------------------------------- capture (no run dir)

def test_parse_indices():
    assert capture.parse_indices(None, 4, flag="--heads") == [0, 1, 2, 3]
    assert capture.parse_indices("all", 3, flag="--heads") == [0, 1, 2]
    assert capture.parse_indices("2, 0-1,2", 4, flag="--heads") == [2, 0, 1]
    with pytest.raises(ValueError, match="--layers='5': index 5 is out of range; the run has 2"):
        capture.parse_indices("5", 2, flag="--layers")
    with pytest.raises(ValueError, match="expected indices"):
        capture.parse_indices("a", 2, flag="--layers")


def make_cfg(position="rope", implementation="reference", n_kv_head=0, n_layer=2):
    cfg = config_lib.load("tiny")
    cfg.model.n_layer, cfg.model.n_head, cfg.model.n_kv_head = n_layer, 4, n_kv_head
    cfg.model.position.name = position
    cfg.model.attention.implementation = implementation
    cfg.model.attention.block_size = 4  # several key blocks at T = 12: the chunked path really chunks
    return config_lib.resolve(cfg, vocab_size=11)


def random_params(cfg, seed=0):
    """Params with noise everywhere (zero-initialised biases and tables would hide position bugs)."""
    from jaxformer.model import GPT

    _, state = nnx.split(GPT(cfg.model, rngs=nnx.Rngs(params=seed)))
    leaves, treedef = jax.tree.flatten(nnx.to_pure_dict(state))
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    noisy = [x + 0.3 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(treedef, noisy)


def forward_with_weights(model, tokens_BxT, w_LxBxHxTxT):
    """The model's forward pass with each layer's attention replaced by the captured weights: out = W @ V."""
    from jaxformer import attention

    T = tokens_BxT.shape[1]
    positions = jnp.arange(T, dtype=jnp.int32)
    x = model.wte(tokens_BxT) * model.embed_multiplier  # sinusoidal's sqrt_d scheme scales the token embeddings
    embedding = model.position.embed(positions)
    if embedding is not None:
        x = x + embedding[None]
    for layer, block in enumerate(model.blocks):
        params = jax.tree.map(lambda v: v[...], block.attn.params,
                              is_leaf=lambda v: isinstance(v, nnx.Variable))
        _, _, v_BxTxKxd = attention.qkv_projection(params, block.ln1(x), n_head=model.n_head,
                                                   n_kv_head=model.n_kv_head)
        # Query head h reads kv head h // G.
        v_BxTxHxd = jnp.repeat(v_BxTxKxd, model.n_head // model.n_kv_head, axis=2)
        out_BxTxHxd = jnp.einsum("bhts,bshd->bthd", w_LxBxHxTxT[layer], v_BxTxHxd)
        x = x + attention.output_projection(params, out_BxTxHxd)
        x = x + block.mlp(block.ln2(x))
    return model.wte.attend(model.ln_f(x)).astype(jnp.float32)


@pytest.mark.parametrize("position", positional.list_positional_encodings())
def test_captured_weights_reproduce_the_model_for_every_position(position):
    """Weights captured through the reference path (params of a chunked-attention config) are causal
    distributions, and putting them back (out = W @ V in every layer) gives the model's logits."""
    cfg = make_cfg(position, implementation="chunked", n_layer=1)  # layers are stacked in the tests below
    reference = capture.reference_model(cfg.model, random_params(cfg))
    assert reference.blocks[0].attn.implementation == "reference"
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 11, (2, 10)), jnp.int32)
    logits, w_LxBxHxTxT = capture.attention_weights_batch(reference, tokens)
    assert w_LxBxHxTxT.shape == (1, 2, 4, 10, 10)
    np.testing.assert_allclose(w_LxBxHxTxT.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(w_LxBxHxTxT, 1) == 0)
    rebuilt = np.asarray(forward_with_weights(reference, tokens, jnp.asarray(w_LxBxHxTxT)))
    np.testing.assert_allclose(rebuilt, logits, atol=2e-4, rtol=1e-4)


SLOW = pytest.mark.slow


FAST = {("rope", "chunked"), ("alibi", "chunked"), ("alibi", "fused")}


@pytest.mark.parametrize("position,implementation", [
    (p, i) if (p, i) in FAST else pytest.param(p, i, marks=SLOW)
    for i in ("chunked", "fused") for p in positional.list_positional_encodings()])
def test_capture_of_a_chunked_or_fused_model_matches_its_output(position, implementation):
    """A chunked or fused model (neither forms the matrices) gives the logits its captured weights give."""
    from jaxformer.model import GPT

    cfg = make_cfg(position, implementation=implementation)
    params = random_params(cfg)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: GPT(cfg.model, rngs=nnx.Rngs(params=0))))
    model = nnx.merge(graphdef, params)
    assert model.blocks[0].attn.implementation == implementation
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 11, (1, 12)), jnp.int32)
    _, w_LxBxHxTxT = capture.attention_weights_batch(capture.reference_model(cfg.model, params), tokens)
    rebuilt = np.asarray(forward_with_weights(model, tokens, jnp.asarray(w_LxBxHxTxT)))
    np.testing.assert_allclose(rebuilt, np.asarray(model(tokens)), atol=2e-4, rtol=1e-4)


def test_capture_grouped_query_attention_and_selection():
    cfg = make_cfg("alibi", implementation="chunked", n_kv_head=2)
    params = random_params(cfg, seed=3)
    model = capture.reference_model(cfg.model, params)
    tokens = np.arange(10) % 11
    logits, w_LxHxTxT = capture.attention_weights(model, tokens)
    rebuilt = forward_with_weights(model, jnp.asarray(tokens)[None], jnp.asarray(w_LxHxTxT)[:, None])
    np.testing.assert_allclose(np.asarray(rebuilt)[0], logits, atol=2e-4, rtol=1e-4)
    cap = capture.capture_ids(model, tokens, list("abcdefghij"), layers=[1], heads=[3, 0])
    assert cap.weights_LxHxTxT.shape == (1, 2, 10, 10)
    np.testing.assert_array_equal(cap.weights_LxHxTxT[0, 0], w_LxHxTxT[1, 3])
    np.testing.assert_array_equal(cap.weights_LxHxTxT[0, 1], w_LxHxTxT[1, 0])


def test_npz_and_bertviz_files(tmp_path):
    w = random_causal(np.random.default_rng(0), (2, 3), 5).astype(np.float32)
    cap = capture.Capture(w, np.arange(5, dtype=np.int32), list("ab <\n"), [0, 2], [1, 2, 3], {"step": 7})
    capture.save_npz(cap, str(tmp_path / "w.npz"))
    back = capture.load_npz(str(tmp_path / "w.npz"))
    np.testing.assert_array_equal(back.weights_LxHxTxT, w)
    assert back.tokens == cap.tokens and back.layers == [0, 2] and back.heads == [1, 2, 3]
    assert back.info == {"step": 7}
    capture.save_bertviz(cap, str(tmp_path / "b.npz"))
    attention, tokens = capture.load_bertviz(str(tmp_path / "b.npz"))
    # BertViz's head_view(attention, tokens): a list of per-layer [batch=1, heads, T, T] tensors and T tokens.
    assert tokens == cap.tokens and len(attention) == 2
    assert all(a.shape == (1, 3, 5, 5) and a.dtype == np.float32 for a in attention)
    np.testing.assert_array_equal(np.stack([a[0] for a in attention]), w)  # head_view's format_attention


# ---------------------------------------------------------------------------------------- pictures and page

def synthetic_capture(L=2, H=3, T=12, seed=0):
    w = random_causal(np.random.default_rng(seed), (L, H), T).astype(np.float32)
    tokens = list("ROMEO: </script> soft"[:T])
    return capture.Capture(w, np.arange(T, dtype=np.int32), tokens, list(range(L)), list(range(H)),
                           {"position": "rope", "step": 3, "checkpoint": "latest"})


def test_labels_fit():
    assert heatmaps.fits_labels(20, 3.0) and not heatmaps.fits_labels(200, 3.0)
    assert [heatmaps.display_token(t) for t in (" ", "\n", "a")] == ["␣", "⏎", "a"]


def test_heatmaps_write_pngs(tmp_path):
    cap = synthetic_capture()
    table = {name: np.asarray(v) for name, v in diagnostics.text_diagnostics(cap.weights_LxHxTxT).items()}
    heatmaps.grid(cap.weights_LxHxTxT, cap.tokens, str(tmp_path / "grid.png"), layers=cap.layers,
                  heads=cap.heads)
    heatmaps.head(cap.weights_LxHxTxT[1, 2], cap.tokens, str(tmp_path / "h" / "L1H2.png"))
    heatmaps.diagnostics_table(table, str(tmp_path / "d.png"), layers=cap.layers, heads=cap.heads)
    series = {"attn/L0H0/entropy": [(1, 0.5), (2, 0.4)], "attn/L0H1/sink": [(1, 0.1), (2, 0.3)]}
    heatmaps.diagnostics_history(series, str(tmp_path / "hist.png"))
    for name in ("grid.png", "h/L1H2.png", "d.png", "hist.png"):
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name


def test_viewer_page_is_self_contained(tmp_path):
    cap = synthetic_capture()
    page = viewer.render(cap, {"entropy": np.zeros((2, 3))})
    assert page.count("</script>") == 2  # the token "</script>" is escaped inside the data block
    for needle in ("http://", "https://", "src=", "@import", "//cdn"):
        assert needle not in page, needle
    start = page.index('type="application/json">') + len('type="application/json">')
    data = json.loads(page[start:page.index("</script>", start)])
    assert data["tokens"] == cap.tokens and data["layers"] == [0, 1] and data["heads"] == [0, 1, 2]
    w = viewer.decode_weights(data["weights"], cap.weights_LxHxTxT.shape)
    np.testing.assert_allclose(w, cap.weights_LxHxTxT, atol=1 / 65535)


# ----------------------------------------------------------------- a trained run: training hook and command

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """10 steps of the tiny config with the chunked attention, diagnostics logged every 5 steps."""
    from jaxformer import train as train_lib

    cfg = config_lib.load("tiny")
    cfg.model.n_head = 2
    cfg.model.attention.implementation = "chunked"
    cfg.model.attention.block_size = 8
    cfg.train.update(steps=10, log_every=5, eval_every=10, checkpoint_every=10, attention_diagnostics_every=5,
                     sample_chars=0, progress=False)
    workdir = str(tmp_path_factory.mktemp("runs") / "tiny")
    train_lib.train(cfg, workdir, hooks=diagnostics.training_hooks(cfg))
    return workdir


def test_training_logs_attention_diagnostics(run_dir):
    from jaxformer import run as run_lib

    records = [m for m in run_lib.read_metrics(run_dir) if any(k.startswith("attn/") for k in m)]
    assert [m["step"] for m in records] == [5, 10]
    expected = {f"attn/L0H{h}/{name}" for h in range(2) for name in diagnostics.METRICS}
    for record in records:
        assert expected <= set(record), sorted(expected - set(record))
        assert all(math.isfinite(record[k]) for k in expected)
        assert all(0 <= record[f"attn/L0H{h}/{name}"] <= 1 for h in range(2)
                   for name in ("sink", "previous_token", "induction"))
        assert 0 <= record["attn/L0H0/entropy"] <= math.log(32)


def test_attention_command_writes_every_file(run_dir, tmp_path):
    from jaxformer.analysis import report

    out = str(tmp_path / "out")
    text = "abcdab|c"
    assert report.attention_main(["--workdir", run_dir, "--text", text, "--out", out]) == 0
    names = {os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs}
    assert names == {"grid.png", "heads/L0H0.png", "heads/L0H1.png", "attention.html", "weights.npz",
                     "bertviz.npz", "diagnostics.csv", "diagnostics.png", "diagnostics_history.png"}
    cap = capture.load_npz(os.path.join(out, "weights.npz"))
    assert cap.weights_LxHxTxT.shape == (1, 2, 8, 8) and "".join(cap.tokens) == text
    assert cap.info["step"] == 10 and cap.info["implementation"] == "chunked"
    np.testing.assert_allclose(cap.weights_LxHxTxT.sum(-1), 1.0, atol=1e-5)
    # The same weights as capturing from Python.
    again = capture.capture_text(run_dir, text, which="latest")
    np.testing.assert_array_equal(again.weights_LxHxTxT, cap.weights_LxHxTxT)
    attention, tokens = capture.load_bertviz(os.path.join(out, "bertviz.npz"))
    assert tokens == list(text) and [a.shape for a in attention] == [(1, 2, 8, 8)]
    with open(os.path.join(out, "diagnostics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [(r["layer"], r["head"]) for r in rows] == [("0", "0"), ("0", "1")]
    assert set(rows[0]) == {"layer", "head", *diagnostics.METRICS}
    with open(os.path.join(out, "attention.html"), encoding="utf-8") as f:
        assert '"tokens": ["a", "b", "c", "d", "a", "b", "|", "c"]' in f.read()


@pytest.mark.slow
def test_attention_command_selection_and_best_checkpoint(run_dir, tmp_path):
    from jaxformer.analysis import report

    out = str(tmp_path / "sel")
    # A first capture of every head into the same directory: its other heads' PNGs must not stay behind.
    assert report.attention_main(["--workdir", run_dir, "--text", "abab", "--out", out]) == 0
    assert sorted(os.listdir(os.path.join(out, "heads"))) == ["L0H0.png", "L0H1.png"]
    assert report.attention_main(["--workdir", run_dir, "--text", "abab", "--out", out, "--heads", "1",
                                  "--checkpoint", "best", "--induction-period", "4"]) == 0
    cap = capture.load_npz(os.path.join(out, "weights.npz"))
    assert cap.heads == [1] and cap.layers == [0] and cap.weights_LxHxTxT.shape == (1, 1, 4, 4)
    assert os.listdir(os.path.join(out, "heads")) == ["L0H1.png"]


@pytest.mark.parametrize("args,message", [
    (["--text", "abc$"], "not in the"),  # the tokenizer's one-line error names the unknown character
    (["--text", "abc", "--layers", "3"], "--layers='3': index 3 is out of range; the run has 1"),
    (["--text", "abc", "--heads", "x"], "--heads='x'; expected indices"),
    (["--text", "a"], "give at least 2"),
])
def test_attention_command_errors_are_one_line(run_dir, args, message):
    from jaxformer.analysis import report

    with pytest.raises(ValueError) as e:
        report.attention_main(["--workdir", run_dir, *args])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_attention_is_a_cli_subcommand(tmp_path, capsys):
    """`jaxformer attention` is registered; a bad run directory exits 2 with one line."""
    from jaxformer import cli

    assert cli.SUBCOMMANDS["attention"][0] == "jaxformer.analysis.report:attention_main"
    assert cli.main(["attention", "--workdir", str(tmp_path / "nothing"), "--text", "ab"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxformer attention: error:") and "config.json" in err[0]
