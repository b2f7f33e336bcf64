"""prepare.py: one resolved, validated run per (config, workdir, intent); the model + loss pair's family; the
evaluator without an optimizer; the one override writer, BOS rule and hook list."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from jaxformer import config as config_lib
from jaxformer import data as data_lib
from jaxformer import losses
from jaxformer import prepare as prepare_lib
from jaxformer import run as run_lib
from jaxformer import sample as sample_lib
from jaxformer import train as train_lib
from jaxformer.analysis import diagnostics, end_of_run, run_hooks


def test_a_new_run_is_resolved_and_validated_once_and_frozen(tiny_cfg, tmp_path, monkeypatch):
    calls = []
    validate = config_lib.validate
    monkeypatch.setattr(config_lib, "validate", lambda *a, **k: (calls.append(1), validate(*a, **k))[1])
    run = prepare_lib.prepare(tiny_cfg, str(tmp_path / "run"), "new")
    assert len(calls) == 1
    assert run.cfg.model.vocab_size == run.dataset.vocab_size > 0  # derived from the data
    assert run.cfg.optim.decay_steps > 0 and run.objective is losses.CAUSAL_LM
    assert not os.path.exists(tmp_path / "run")  # nothing written by preparing
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.cfg = tiny_cfg
    with pytest.raises(ValueError, match="intent='train'; choose one of: new, resume, init_from, evaluate"):
        prepare_lib.prepare(tiny_cfg, str(tmp_path / "run"), "train")


def test_train_validates_a_fresh_run_once(tiny_cfg, tmp_path, monkeypatch):
    """Before prepare.py, check_config and Trainer.__init__ both validated a fresh run."""
    tiny_cfg.train.steps, tiny_cfg.train.sample_chars = 2, 0
    calls = []
    validate = config_lib.validate
    monkeypatch.setattr(config_lib, "validate", lambda *a, **k: (calls.append(1), validate(*a, **k))[1])
    train_lib.train(tiny_cfg, str(tmp_path / "run"))
    assert len(calls) == 1


def test_evaluator_builds_no_optimizer_and_evaluates_as_the_trainer(tiny_cfg, tmp_path):
    run = prepare_lib.prepare(tiny_cfg, str(tmp_path / "run"), "new")
    evaluator = train_lib.Evaluator.for_run(run)
    assert not hasattr(evaluator, "optimizer") and not hasattr(evaluator, "train_step")
    trainer = train_lib.Trainer.for_run(run)
    # Random (not initial) parameters: the same numbers through both evaluation paths, same CPU, same run.
    leaves, tree = jax.tree.flatten(trainer._params0)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    params = jax.tree.unflatten(tree, [0.1 * jax.random.normal(k, x.shape, x.dtype)
                                       for k, x in zip(keys, leaves, strict=True)])
    assert evaluator.evaluate(params, "val") == trainer.evaluate(params, "val")
    assert trainer.state_sharding["params"] == evaluator.params_sharding


def test_evaluate_intent_reads_the_run_and_refuses_a_model_change(tiny_cfg, tmp_path):
    tiny_cfg.train.steps, tiny_cfg.train.sample_chars = 2, 0
    workdir = str(tmp_path / "run")
    train_lib.train(tiny_cfg, workdir)
    saved = run_lib.load_config(workdir)
    run = prepare_lib.prepare(prepare_lib.apply_overrides(saved, ["--config.train.eval_iters=3"]), workdir,
                              "evaluate")
    assert run.changed == ("train.eval_iters",) and run.saved.train.eval_iters != 3
    with pytest.raises(run_lib.RunDirError, match="model.n_embd"):
        prepare_lib.prepare(prepare_lib.apply_overrides(saved, ["--config.model.n_embd=64"]), workdir, "evaluate")


def test_the_pair_family_says_what_the_callers_used_to_branch_on():
    causal = config_lib.load("tiny")
    encoder = config_lib.load("tiny")
    encoder.model.loss, encoder.model.causal = "masked_lm", False
    assert losses.family(causal.model).accuracy == "exact_match" and losses.family(causal.model).generates
    fam = losses.family(encoder.model)
    assert (fam.accuracy, fam.accuracy_label, fam.token_accuracy, fam.generates) == (
        "masked_accuracy", "masked-token accuracy", True, False)
    assert losses.family(causal.model).accuracy_label == "exact match"
    for mask_id, appended in ((-1, 1), (5, 0)):
        encoder.model.mlm.mask_token_id = mask_id
        assert config_lib.appended_ids(encoder) == fam.appended_ids(encoder.model) == appended
    assert config_lib.appended_ids(causal) == 0
    resolved = config_lib.resolve(encoder, vocab_size=30)
    assert losses.for_model(resolved.model).family is fam
    encoder.model.loss = "span"
    with pytest.raises(ValueError, match="model.loss='span'; choose one of: causal_lm, masked_lm"):
        losses.family(encoder.model)


def test_apply_overrides_on_a_config_and_on_a_saved_file(tiny_cfg, tmp_path):
    path = tmp_path / "config.json"
    saved = json.loads(config_lib.to_json(tiny_cfg))
    saved["model"]["position"]["rope"]["yarn_ramp"] = "paper"
    del saved["model"]["position"]["randomize_per"]  # written before the field existed: its legacy value comes back
    path.write_text(json.dumps(saved))
    from_file = prepare_lib.apply_overrides(str(path), ["--config.train.steps=7"])
    assert from_file.train.steps == 7 and from_file.model.position.randomize_per == "batch"
    assert from_file.model.position.rope.yarn_ramp == "paper"  # the file's own value kept
    from_object = prepare_lib.apply_overrides(tiny_cfg, ["--config.model.n_head=4"])
    assert tiny_cfg.model.n_head == 2  # the config given is not changed
    assert from_object.to_dict() == {**tiny_cfg.to_dict(), "model": {**tiny_cfg.model.to_dict(), "n_head": 4}}
    with pytest.raises(config_lib.ConfigError, match="unknown config field 'model.n_heads'"):
        prepare_lib.apply_overrides(tiny_cfg, ["--config.model.n_heads=4"])


def test_bos_prefix_is_the_data_bos_id(tiny_cfg):
    tokenizer = data_lib.load_dataset(tiny_cfg.data).tokenizer
    assert sample_lib.bos_prefix(tiny_cfg, tokenizer).size == 0
    tiny_cfg.data.bos = True
    dataset = data_lib.load_dataset(tiny_cfg.data)
    np.testing.assert_array_equal(sample_lib.bos_prefix(tiny_cfg, dataset.tokenizer), [dataset.bos_id])


def test_every_caller_gets_one_hook_list(tiny_cfg, tmp_path):
    tiny_cfg.train.attention_diagnostics_every = 5
    got = run_hooks.for_run(tiny_cfg, str(tmp_path))
    want = diagnostics.training_hooks(tiny_cfg) + end_of_run.hooks(str(tmp_path))
    assert [(h.every, h.at_end) for h in got] == [(h.every, h.at_end) for h in want] == [
        (5, False), (0, True), (0, True)]


def test_sample_asks_the_pair_whether_the_model_continues_a_text(tiny_cfg, tmp_path, capsys):
    from jaxformer import cli

    tiny_cfg.model.loss, tiny_cfg.model.causal = "masked_lm", False
    workdir = str(tmp_path / "encoder")
    os.makedirs(workdir)
    run_lib.save_config(workdir, config_lib.resolve(tiny_cfg, vocab_size=12))
    assert cli.main(["sample", "--workdir", workdir]) == 2
    err = capsys.readouterr().err
    assert "is an encoder (model.loss=masked_lm)" in err and "jaxformer fill-mask" in err
