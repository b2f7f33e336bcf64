"""`jaxformer import` (jaxformer/convert/) against transformers, for every supported architecture.

Each case is a small random transformers model saved with save_pretrained. Imported, the jaxformer run must give
transformers' logits (<= 1e-4 relative), its attention weights (the ones `jaxformer attention` captures) and the
same 20 greedy tokens decoded with the KV cache. Two sources of the transformers side:
- goldens (tests/golden/hf/<name>/, written by tests/golden/make_hf_goldens.py): no torch needed; what CI runs;
- live (marked `hf`; needs `pip install -e ".[hf]"`): the model is built and saved here, its outputs computed now.
"""

import importlib.util
import json
import os
import shutil

import hf_reference
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer import sample as sample_lib
from jaxformer import train as train_lib
from jaxformer.analysis import capture
from jaxformer.convert import ConvertError, common
from jaxformer.convert import hf as hf_lib

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "hf")
NAMES = list(hf_reference.ARCHITECTURES)
HAS_HF = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def check_run_against(workdir, folder, want):
    """The imported run's logits, attention weights and greedy tokens against transformers' `want`."""
    tokens = hf_reference.prompt_ids(folder)
    model, step = capture.load_model(workdir)
    assert step == 0
    logits = np.asarray(model(jnp.asarray(tokens)))
    scale = np.abs(want["logits"]).max()
    np.testing.assert_allclose(logits, want["logits"], rtol=0, atol=1e-4 * scale)
    _, weights_LxHxTxT = capture.attention_weights(model, tokens[0])
    np.testing.assert_allclose(weights_LxHxTxT, want["attentions"][:, 0], atol=2e-5)
    cfg, graphdef, params, _ = train_lib.restore_params(workdir)
    from flax import nnx

    ids = sample_lib.generate(nnx.merge(graphdef, params), tokens[0], max_new_tokens=hf_reference.NEW_TOKENS,
                              temperature=0.0, top_k=None, seed=0, max_context=cfg.data.block_size)
    np.testing.assert_array_equal(np.asarray(ids)[tokens.shape[1]:], want["greedy"])


@pytest.mark.parametrize("name", NAMES)
def test_import_matches_transformers_goldens(name, tmp_path):
    folder = os.path.join(GOLDEN, name)
    want = dict(np.load(os.path.join(folder, "outputs.npz")))
    record = hf_lib.import_checkpoint(folder, str(tmp_path / "run"))
    assert record["architecture"] == json.load(open(os.path.join(folder, "config.json")))["architectures"][0]
    check_run_against(str(tmp_path / "run"), folder, want)


@pytest.mark.hf
@pytest.mark.skipif(not HAS_HF, reason="the live comparison needs the hf extra: pip install -e '.[hf]'")
@pytest.mark.parametrize("name", NAMES)
def test_import_matches_transformers_live(name, tmp_path):
    model = hf_reference.make_model(name, seed=3)  # another draw than the goldens'
    folder = str(tmp_path / "hf")
    hf_reference.save(model, folder)
    want = hf_reference.outputs(model, hf_reference.prompt_ids(folder))
    hf_lib.import_checkpoint(folder, str(tmp_path / "run"))
    check_run_against(str(tmp_path / "run"), folder, want)


def test_half_to_interleaved_rope_permutation_is_the_same_function():
    """Rotate-half RoPE on x equals rotate-pairs RoPE on x permuted, for q·k: written out in NumPy from both
    definitions (Hugging Face's rotate_half; Su et al.'s pairs)."""
    d, T = 8, 5
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(T, d)), rng.normal(size=(T, d))
    freq = 10000.0 ** (-np.arange(d // 2) * 2 / d)
    angle = np.arange(T)[:, None] * freq[None]

    def half(x):
        cos, sin = np.concatenate([np.cos(angle)] * 2, -1), np.concatenate([np.sin(angle)] * 2, -1)
        rot = np.concatenate([-x[:, d // 2:], x[:, : d // 2]], -1)
        return x * cos + rot * sin

    def pairs(x):
        out = x.copy()
        out[:, 0::2] = x[:, 0::2] * np.cos(angle) - x[:, 1::2] * np.sin(angle)
        out[:, 1::2] = x[:, 0::2] * np.sin(angle) + x[:, 1::2] * np.cos(angle)
        return out

    order = common.half_to_interleaved(d)
    np.testing.assert_allclose(pairs(q[:, order]) @ pairs(k[:, order]).T, half(q) @ half(k).T, atol=1e-12)
    assert not np.allclose(pairs(q) @ pairs(k).T, half(q) @ half(k).T)  # without the permutation: not the same


def test_imported_run_works_with_the_cli(tmp_path, shakespeare_dir, tfds_data_dir, monkeypatch, capsys):
    """`jaxformer import`, then eval (tiny_shakespeare through the model's tokenizer), sample and attention."""
    from jaxformer import cli

    monkeypatch.setenv("JAXFORMER_MANUAL_DIR", shakespeare_dir)
    monkeypatch.setenv("TFDS_DATA_DIR", tfds_data_dir)
    run = str(tmp_path / "gpt2")
    folder = os.path.join(GOLDEN, "gpt2")
    assert cli.main(["import", "--hf", folder, "--workdir", run, "--config.data.block_size=32"]) == 0
    assert sorted(os.listdir(run)) == ["checkpoints", "config.json", "manifest.json", "tokenizer.json"]
    manifest = json.load(open(os.path.join(run, "manifest.json")))
    assert manifest["source"]["family"] == "gpt2" and "model.safetensors" in manifest["source"]["files"]
    summary = capsys.readouterr().out  # a summary and the next commands, not a JSON blob
    assert summary.startswith(f"imported {manifest['source']['architecture']} (gpt2 family) from {folder}")
    assert f"run directory: {run}" in summary and "{" not in summary
    for command in ("sample", "eval", "attention"):
        assert f"  jaxformer {command} --workdir {run}" in summary, summary
    again = str(tmp_path / "gpt2-json")
    assert cli.main(["import", "--hf", folder, "--workdir", again, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["family"] == "gpt2"
    assert cli.main(["eval", "--workdir", run, "--batches", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # (TFDS may print first)
    assert np.isfinite(result["loss"]) and result["loss"] > 0
    assert cli.main(["sample", "--workdir", run, "--prompt", "ROMEO:", "--max-new-tokens", "5",
                     "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")
    out = str(tmp_path / "att")
    assert cli.main(["attention", "--workdir", run, "--text", hf_reference.PROMPT, "--out", out]) == 0
    want = np.load(os.path.join(folder, "outputs.npz"))["attentions"][:, 0]
    got = np.load(os.path.join(out, "weights.npz"))
    weights = got["weights"] if "weights" in got.files else got[got.files[0]]
    np.testing.assert_allclose(np.asarray(weights).reshape(want.shape), want, atol=2e-5)


def test_load_run_gives_an_imported_run_with_its_subword_tokenizer(tmp_path):
    """Issue 39.8: loader.load_run (what sample and the analysis tools load) on an imported run, which has
    tokenizer.json and no vocab.json: the model gives transformers' logits for the prompt its tokenizer encodes."""
    from jaxformer import loader

    folder = os.path.join(GOLDEN, "gpt2")
    hf_lib.import_checkpoint(folder, str(tmp_path / "run"))
    cfg, model, tokenizer, step = loader.load_run(str(tmp_path / "run"))
    assert step == 0 and not os.path.exists(tmp_path / "run" / "vocab.json")
    tokens = np.asarray(tokenizer.encode(hf_reference.PROMPT))[None]
    np.testing.assert_array_equal(tokens, hf_reference.prompt_ids(folder))
    want = np.load(os.path.join(folder, "outputs.npz"))["logits"]
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(tokens))), want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_bfloat16_params(tmp_path):
    folder = os.path.join(GOLDEN, "llama")
    hf_lib.import_checkpoint(folder, str(tmp_path / "run"), param_dtype="bfloat16")
    cfg, _, params, _ = train_lib.restore_params(str(tmp_path / "run"))
    assert cfg.model.param_dtype == "bfloat16"
    assert {str(x.dtype) for x in __import__("jax").tree.leaves(params)} == {"bfloat16"}
    want = np.load(os.path.join(folder, "outputs.npz"))["logits"]
    model, _ = capture.load_model(str(tmp_path / "run"))
    logits = np.asarray(model(jnp.asarray(hf_reference.prompt_ids(folder))))
    assert np.abs(logits - want).max() < 0.05 * np.abs(want).max()  # bf16: close, not equal


def test_save_frees_each_array_and_what_it_wrote_restores_exactly(tmp_path, monkeypatch):
    """The import's save writes the arrays in several batches (a 64 KiB bound here), deletes each one once written,
    and the checkpoint restores bit for bit through the normal path (`checkpoint.Checkpoints`, as saved)."""
    import jax

    from jaxformer import checkpoint as checkpoint_lib

    monkeypatch.setattr(hf_lib, "BATCH_BYTES", 2**16)
    rng = np.random.default_rng(0)
    want = {"embed": {"embedding": rng.standard_normal((300, 64), np.float32)},
            "blocks": {str(i): {"kernel": rng.standard_normal((64, 96), np.float32),
                                "scale": rng.standard_normal((64,), np.float32)} for i in range(3)},
            "bf16": rng.standard_normal((40, 8)).astype(jnp.bfloat16)}
    params = jax.tree.map(lambda x: jax.device_put(x.copy()), want)
    hf_lib.save_checkpoint(str(tmp_path), params)
    assert all(x.is_deleted() for x in jax.tree.leaves(params))
    ckpts = checkpoint_lib.Checkpoints(str(tmp_path), keep=1)
    try:
        step, got = ckpts.restore(None)
    finally:
        ckpts.close()
    assert step == 0
    flat_want, flat_got = jax.tree_util.tree_leaves_with_path(want), jax.tree_util.tree_leaves_with_path(got["params"])
    assert [p for p, _ in flat_got] == [p for p, _ in flat_want]
    for (path, w), (_, g) in zip(flat_want, flat_got, strict=True):
        assert g.dtype == w.dtype, path
        np.testing.assert_array_equal(np.asarray(g), w, err_msg=jax.tree_util.keystr(path))


# ----------------------------------------------------------------------------------------------- bad input

def _copy(tmp_path, name="llama"):
    folder = tmp_path / "src"
    shutil.copytree(os.path.join(GOLDEN, name), folder)
    return folder


def _refused(tmp_path, source, match):
    workdir = tmp_path / "run"
    with pytest.raises(ConvertError, match=match):
        hf_lib.import_checkpoint(str(source), str(workdir))
    assert not workdir.exists()
    assert not [p for p in os.listdir(tmp_path) if ".importing-" in p]  # nothing half-written


def test_unsupported_architecture_names_it_and_the_supported(tmp_path):
    folder = _copy(tmp_path)
    cfg = json.load(open(folder / "config.json"))
    cfg["architectures"], cfg["model_type"] = ["FalconForCausalLM"], "falcon"
    (folder / "config.json").write_text(json.dumps(cfg))
    _refused(tmp_path, folder, "architecture FalconForCausalLM is not supported; supported: GPT2LMHeadModel, "
                               "LlamaForCausalLM")


def test_folder_without_config_or_weights(tmp_path):
    folder = _copy(tmp_path)
    os.remove(folder / "model.safetensors")
    _refused(tmp_path, folder, "has no \\*.safetensors weights")
    os.remove(folder / "config.json")
    _refused(tmp_path, folder, "has no config.json")
    _refused(tmp_path, tmp_path / "nope" / ".." / "x y", "neither a folder nor a Hugging Face hub id")


def _rewrite_weights(folder, edit):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


def test_missing_or_mismatched_tensor_names_it_and_its_shape(tmp_path):
    folder = _copy(tmp_path)
    _rewrite_weights(folder, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    _refused(tmp_path, folder, r"tensor model.layers.1.mlp.up_proj.weight \(shape \[72, 32\]\) is missing")
    folder = _copy(tmp_path / "b")
    _rewrite_weights(folder, lambda t: t.update({"model.norm.weight": np.ones(31, np.float32)}))
    _refused(tmp_path / "b", folder, r"tensor model.norm.weight has shape \[31\], expected \[32\]")


def test_unreadable_tokenizer(tmp_path):
    folder = _copy(tmp_path)
    (folder / "tokenizer.json").write_text("{broken")
    _refused(tmp_path, folder, "tokenizer.json is not a readable tokenizer.json")
    os.remove(folder / "tokenizer.json")
    _refused(tmp_path, folder, "has no tokenizer.json")


def test_hub_id_offline_is_one_line_within_seconds(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("jaxformer.data.text.reachable", lambda url, timeout=3.0: False)
    start = time.perf_counter()
    _refused(tmp_path, "some-owner/some-model", "is unreachable \\(offline\\?\\)")
    assert time.perf_counter() - start < 10


def test_existing_workdir_is_refused_and_kept(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "keep.txt").write_text("mine")
    with pytest.raises(ConvertError, match="exists and is not an empty directory"):
        hf_lib.import_checkpoint(os.path.join(GOLDEN, "gpt2"), str(workdir))
    assert (workdir / "keep.txt").read_text() == "mine"
