"""jaxformer.api.Run: train from a dict, load, sample (KV cache), score against a float64 reference, attention
inline, eval with overrides; bad input as one line."""

import html
import json
import os

import numpy as np
import pytest

from jaxformer import config as config_lib
from jaxformer.api import AttentionView, Run, load_config, with_overrides


def random_text(seed: int, n: int) -> str:
    rng = np.random.default_rng(seed)
    return "".join(rng.choice(list("abcdefgh \n"), n))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    path = tmp / "input.txt"
    path.write_text(random_text(0, 20_000), encoding="utf-8")
    config = {"model": {"n_layer": 1, "n_head": 2, "n_embd": 32},
              "data": {"name": f"text:{path}", "block_size": 32, "batch_size": 8, "cache_dir": str(tmp / "cache")},
              "train": {"steps": 12, "eval_every": 6, "eval_iters": 2, "log_every": 3, "checkpoint_every": 6,
                        "sample_chars": 0, "progress": False},
              "optim": {"warmup_steps": 100}}  # shortened to the run, as in the CLI
    return Run.train(config, str(tmp / "run")), str(path)


def test_train_from_a_dict_gives_the_run_back(trained):
    run, path = trained
    saved = json.load(open(os.path.join(run.workdir, "config.json")))
    assert saved["data"]["name"] == f"text:{path}" and saved["model"]["n_embd"] == 32
    assert saved["optim"]["warmup_steps"] == 12 and saved["optim"]["lr"] == config_lib.load("default").optim.lr
    assert run.step == 12 and max(m["step"] for m in run.metrics) == 12
    assert run.tokenizer.vocab == sorted(set(open(path).read()))
    again = Run.load(run.workdir, checkpoint="best")
    assert again.config.to_dict() == run.config.to_dict() and again.step in (6, 12)


def test_score_is_the_float64_cross_entropy_of_the_models_logits(trained):
    run, _ = trained
    text = "abc defg\nhab"
    scores = run.score(text)
    ids = run.tokenizer.encode(text)
    logits = np.asarray(run.model(ids[None, :-1]), np.float64)[0]  # [T-1, V]
    m = logits.max(-1, keepdims=True)
    log_probs = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    expected = -log_probs[np.arange(len(ids) - 1), ids[1:]]
    np.testing.assert_allclose(scores.losses, expected, rtol=1e-5, atol=1e-5)
    assert scores.tokens == list(text) and scores.loss == pytest.approx(expected.mean(), abs=1e-5)


def test_sample_continues_the_prompt_greedily_as_the_full_forward_would(trained):
    run, _ = trained
    out = run.sample("abc", max_new_tokens=6, temperature=0.0)
    assert out.startswith("abc") and len(out) == 9
    ids = list(run.tokenizer.encode("abc"))
    for _ in range(6):  # greedy, uncached: argmax of the last position's logits
        ids.append(int(np.argmax(np.asarray(run.model(np.asarray(ids, np.int32)[None]))[0, -1])))
    assert out == run.tokenizer.decode(ids)


def test_attention_shows_the_viewer_inline_and_holds_normalized_weights(trained):
    run, _ = trained
    view = run.attention("abc defg", heads=[1])
    assert isinstance(view, AttentionView)
    w = view.capture.weights_LxHxTxT
    assert w.shape == (1, 1, 8, 8) and view.capture.heads == [1]
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(w[0, 0], k=1) == 0)  # causal
    shown = view._repr_html_()
    assert shown.startswith('<iframe srcdoc="') and html.escape(view.html(), quote=True) in shown


def test_eval_matches_the_training_eval_and_takes_length_overrides(trained):
    run, _ = trained
    recorded = [m["val_loss"] for m in run.metrics if m["step"] == 12 and "val_loss" in m][0]
    assert run.eval()["loss"] == pytest.approx(recorded, rel=1e-5)
    result = run.eval(lengths=[32, 64], eval_tokens=512, overrides={"model.position.rope.scaling": "ntk",
                                                                    "model.position.rope.factor": 2.0})
    assert [x["length"] for x in result["lengths"]] == [32, 64]
    assert result["overrides"] == {"model.position.rope.scaling": "ntk", "model.position.rope.factor": 2.0}
    with pytest.raises(ValueError, match=r"^eval override: model.n_layer=2 differs from 1 in "):
        run.eval(overrides={"model.n_layer": 2})


def test_bad_overrides_and_directories_are_one_line_errors(tmp_path):
    cfg = load_config("tiny")
    with pytest.raises(config_lib.ConfigError, match=r"^unknown config field 'train.stepz'$"):
        with_overrides(cfg, {"train.stepz": 3})
    with pytest.raises(config_lib.ConfigError, match=r"^train.steps='many': "):
        with_overrides(cfg, {"train.steps": "many"})
    assert load_config({"train": {"steps": 7}}).train.steps == 7
    with pytest.raises(ValueError, match=r"has no config.json"):
        Run.load(str(tmp_path))
