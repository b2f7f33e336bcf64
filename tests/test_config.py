"""Config loading and validation: every bad input is a one-line error naming the field, before anything compiles."""

import pytest

from jaxformer import config as config_lib
from jaxformer import positional

BAD = [
    # (overrides, text the one-line error must contain)
    (["--config.model.n_haed=3"], "model.n_haed"),
    (["--config.model.n_head=x"], "model.n_head"),
    (["--config.model.position.name=ropez"], "model.position.name='ropez'; choose one of"),
    (["--config.model.attention.implementation=flash"], "model.attention.implementation='flash'; choose one of"),
    (["--config.data.name=wikitext"], "data.name='wikitext'; choose one of"),
    (["--config.data.name=synthetic/sortin"], "data.name='synthetic/sortin'"),  # (sorting is a task now)
    (["--config.model.n_embd=33"], "model.n_embd=33 is not divisible by model.n_head=2"),
    (["--config.model.n_head=4", "--config.model.n_kv_head=3"], "not divisible by model.n_kv_head=3"),
    (["--config.model.position.name=learned", "--config.model.position.learned.max_len=16"],
     "data.block_size=32 is beyond the learned table"),
    (["--config.model.n_layer=0"], "model.n_layer=0"),
    (["--config.data.batch_size=-1"], "data.batch_size=-1"),
    (["--config.train.steps=0"], "train.steps=0"),
    (["--config.optim.lr=0"], "optim.lr=0"),
    (["--config.optim.min_lr=1"], "optim.min_lr=1"),
    (["--config.model.dtype=float8"], "model.dtype='float8'"),
    (["--config.train.nonfinite=ignore"], "train.nonfinite='ignore'"),
    (["--config.model.position.rope.scaling=magic"], "model.position.rope.scaling"),
    (["--config.model.norm=batchnorm"], "model.norm='batchnorm'; choose one of: layernorm, rmsnorm"),
    (["--config.model.mlp=relu"], "model.mlp='relu'; choose one of: gelu, gelu_tanh, swiglu"),
    (["--config.model.norm_eps=0"], "model.norm_eps=0"),
    (["--config.model.head_dim=-8"], "model.head_dim=-8"),
    (["--config.model.mlp_hidden=-1"], "model.mlp_hidden=-1"),
    (["--config.model.n_embd=33", "--config.model.head_dim=0"], "or set model.head_dim"),
    (["--config.model.position.rope.scaling=llama3", "--config.model.position.rope.low_freq_factor=5.0"],
     "model.position.rope.low_freq_factor=5.0"),
    (["--config.data.tokenizer=wordpiece"], "data.tokenizer='wordpiece'; choose one of: char, bpe, pretrained"),
    (["--config.data.tokenizer=bpe"], "synthetic tasks have their own symbols"),
    (["--config.data.name=tiny_shakespeare", "--config.data.tokenizer=bpe", "--config.data.vocab_size=100"],
     "data.vocab_size=100; a byte-level BPE needs at least 257"),
    # Fuzz cases that used to pass validation and fail late (issue 25).
    (["--config.optim.lr=inf"], "optim.lr=inf; must be a finite number"),
    (["--config.optim.lr=1e400"], "optim.lr=inf; must be a finite number"),
    (["--config.optim.weight_decay=inf"], "optim.weight_decay=inf; must be a finite number"),
    (["--config.optim.grad_clip=nan"], "optim.grad_clip=nan; must be a finite number"),
    (["--config.train.seed=-1"], "train.seed=-1; must be an integer in [0, 2147483647]"),
    (["--config.train.steps=2147483648"], "train.steps=2147483648; the step counter is int32"),
    (["--config.train.max_skipped_steps=-1"], "train.max_skipped_steps=-1"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_config_is_one_line_error_naming_the_field(overrides, message):
    with pytest.raises(config_lib.ConfigError) as info:
        cfg = config_lib.load("tiny", overrides)
        config_lib.validate(config_lib.resolve(cfg), n_devices=1)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_batch_not_divisible_by_data_parallel_devices():
    cfg = config_lib.resolve(config_lib.load("tiny", ["--config.data.batch_size=6"]))
    with pytest.raises(config_lib.ConfigError, match="data.batch_size=6 is not divisible by the 4"):
        config_lib.validate(cfg, n_devices=4)
    config_lib.validate(cfg, n_devices=2)


def test_eval_lengths_beyond_learned_table():
    cfg = config_lib.resolve(config_lib.load("tiny", ["--config.model.position.name=learned"]))
    config_lib.validate(cfg, eval_lengths=[32])
    with pytest.raises(config_lib.ConfigError, match="eval length 64 is beyond the learned table"):
        config_lib.validate(cfg, eval_lengths=[32, 64])


def test_overrides_are_typed_and_applied():
    cfg = config_lib.load("tiny", ["--config.optim.lr=0.01", "--config.model.position.name=alibi",
                                   "--config.model.bias=true"])
    assert cfg.optim.lr == 0.01 and cfg.model.position.name == "alibi" and cfg.model.bias is True
    config_lib.validate(config_lib.resolve(cfg), n_devices=1)


def test_every_packaged_config_validates():
    import json
    import os

    from jaxformer import convert
    from jaxformer import run as run_lib
    from jaxformer.convert import hf

    golden = os.path.join(os.path.dirname(__file__), "golden", "hf", "gpt2")
    hf_config = json.load(open(os.path.join(golden, "config.json")))
    imported = hf.run_config(hf_config, convert.family_for(hf_config, golden)[1], param_dtype="float32")
    for name in [n for n in config_lib.list_configs() if "." not in n]:  # sweeps.* are sweep configs
        cfg = config_lib.load(name)
        if cfg.data.block_size == 0:  # a fine-tuning config (finetune_text): valid on the model it starts from
            with pytest.raises(config_lib.ConfigError, match=r"^data.block_size=0 takes the context of the --init"):
                config_lib.validate(config_lib.resolve(cfg))
            cfg = run_lib.with_source_model(cfg, imported)
        config_lib.validate(config_lib.resolve(cfg))


def test_unknown_config_file():
    with pytest.raises(config_lib.ConfigError, match="choose one of"):
        config_lib.load("nonexistent_config")


def test_resolve_fills_each_zero_from_where_it_comes_and_keeps_set_values():
    cfg = config_lib.load("tiny", ["--config.data.block_size=24", "--config.train.steps=70",
                                   "--config.model.n_head=4", "--config.model.n_kv_head=0",
                                   "--config.optim.decay_steps=0", "--config.model.position.learned.max_len=0",
                                   "--config.model.position.rope.original_max_len=0", "--config.model.vocab_size=0"])
    r = config_lib.resolve(cfg, vocab_size=17)
    assert (r.model.n_kv_head, r.optim.decay_steps, r.model.vocab_size) == (4, 70, 17)
    assert r.model.position.learned.max_len == 24 and r.model.position.rope.original_max_len == 24
    assert cfg.model.position.learned.max_len == 0  # the input is not modified
    kept = config_lib.resolve(config_lib.load("tiny", [
        "--config.model.n_head=4", "--config.model.n_kv_head=2", "--config.optim.decay_steps=50",
        "--config.model.position.learned.max_len=40", "--config.model.position.rope.original_max_len=16"]),
        vocab_size=17)
    assert (kept.model.n_kv_head, kept.optim.decay_steps) == (2, 50)
    assert kept.model.position.learned.max_len == 40 and kept.model.position.rope.original_max_len == 16


BAD_FILES = [  # (config file text, what the one-line error must say)
    ("def get_config(:\n    pass\n", "syntax error at line 1"),
    ("x = 1\n", "defines no get_config()"),
    ("def get_config():\n    return {'model': {}}\n", "get_config() returned a dict; it must return an"),
    ("from jaxformer.configs import default\n\ndef get_config():\n    c = default.get_config()\n"
     "    c.model.n_layers = 4\n    return c\n", "unknown config field 'model.n_layers' set in"),
    ("from jaxformer.configs import default\n\ndef get_config():\n    c = default.get_config()\n"
     "    c.model.n_layer = 'four'\n    return c\n", "TypeError: Could not override field 'n_layer'"),
    ("def get_config():\n    raise RuntimeError('no GPU here')\n", "get_config() failed: RuntimeError: no GPU here"),
]


@pytest.mark.parametrize("text,message", BAD_FILES)
def test_mistakes_inside_a_config_file_are_one_line_errors_naming_the_file(text, message, tmp_path):
    path = tmp_path / "my_config.py"
    path.write_text(text)
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.load(str(path))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(path) in str(info.value) or "model.n_layers" in str(info.value)


def test_a_wrong_override_type_says_what_type_the_field_holds():
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.load("tiny", ["--config.model.n_layer=two"])
    assert "--config.model.n_layer=two" in str(info.value) and "expected int, like the current value 1" in str(
        info.value)


@pytest.mark.parametrize("typo,suggested", [
    ("model.position.non", "model.position.name"),
    ("model.positon.name", "model.position.name"),
    ("model.n_layers", "model.n_layer"),
    ("train.step", "train.steps"),
])
def test_typo_suggestions_are_settable_fields_only(typo, suggested):
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.load("default", [f"--config.{typo}=1"])
    hint = str(info.value).split("did you mean: ", 1)[1]
    names = hint.split(", ")
    assert suggested in names
    cfg = config_lib.load("default")
    for name in names:  # every suggestion holds a value (none is a section such as model.position.none)
        node = cfg
        for part in name.split("."):
            node = node[part]
        assert not isinstance(node, type(cfg)), name


def test_a_derived_field_is_reported_after_the_field_it_follows():
    assert config_lib.cause_first(["optim.decay_steps", "train.steps"]) == ["train.steps", "optim.decay_steps"]
    assert config_lib.cause_first(["optim.decay_steps", "optim.lr"]) == ["optim.decay_steps", "optim.lr"]  # set itself
    assert config_lib.cause_first(["model.position.learned.max_len", "data.block_size", "model.n_kv_head"]) == [
        "data.block_size", "model.n_kv_head", "model.position.learned.max_len"]
    # every derived field is one resolve() fills, from the field named
    cfg = config_lib.load("default")
    with cfg.unlocked():
        for derived in config_lib.DERIVED_FROM:
            section, _, leaf = derived.rpartition(".")
            node = cfg
            for part in section.split("."):
                node = node[part]
            node[leaf] = 0
    resolved = config_lib.flat_fields(config_lib.resolve(cfg))
    block = resolved["data.block_size"]
    rules = {"model.position.t5.max_distance": positional.t5_max_distance(block),  # each a function of the source
             "model.position.xpos.scale_base": block / 2, "model.position.fire.init_L": float(block)}
    for derived, source in config_lib.DERIVED_FROM.items():
        assert resolved[derived] == rules.get(derived, resolved[source]), derived


def test_fair_positional_defaults_follow_the_block_size():
    for block in (32, 64, 512):
        r = config_lib.resolve(config_lib.load("tiny", [f"--config.data.block_size={block}"]), vocab_size=11)
        pe = r.model.position
        assert pe.t5.max_distance == max(block // 2, 17) and pe.xpos.scale_base == block / 2
        assert pe.fire.init_L == block and pe.sinusoidal.scheme == "sqrt_d" and pe.sinusoidal.scale == 1.0
    matched = config_lib.resolve(config_lib.load("tiny", ["--config.model.position.sinusoidal.scheme=matched"]))
    assert matched.model.position.sinusoidal.scale == pytest.approx(0.02 * 2 ** 0.5, rel=1e-12)
    kept = config_lib.resolve(config_lib.load("tiny", [
        "--config.model.position.t5.max_distance=128", "--config.model.position.xpos.scale_base=512.0",
        "--config.model.position.fire.init_L=512.0", "--config.model.position.sinusoidal.scale=1.0"]))
    pe = kept.model.position
    assert (pe.t5.max_distance, pe.xpos.scale_base, pe.fire.init_L, pe.sinusoidal.scale) == (128, 512, 512, 1.0)


def test_runs_written_before_the_fair_defaults_load_with_their_old_values():
    saved = config_lib.load("tiny").to_dict()
    saved["model"]["position"]["sinusoidal"] = {}  # config.json of a run before sinusoidal.scale existed
    saved["model"]["position"]["t5"]["max_distance"] = 128  # the old defaults were written out in full
    saved["data"].pop("bos")
    cfg = config_lib.resolve(config_lib.from_json(config_lib.json.dumps(saved)))
    assert cfg.model.position.sinusoidal.scale == 1.0 and cfg.model.position.t5.max_distance == 128
    assert cfg.model.position.sinusoidal.scheme == "matched"  # no sqrt(D) on the embeddings, as they were trained
    assert cfg.data.bos is False


def test_bos_without_room_in_the_vocabulary_is_a_one_line_error():
    cfg = config_lib.resolve(config_lib.load("tiny", ["--config.data.bos=True", "--config.model.vocab_size=20"]))
    config_lib.check_vocab(cfg, 20)  # 19 tokens + BOS fit
    with pytest.raises(config_lib.ConfigError, match=r"model.vocab_size=20 has no room for data.bos=True's token: "
                       r"the data has 20 tokens and BOS takes id 20; set model.vocab_size >= 21 or 0"):
        config_lib.check_vocab(cfg, 21)


def test_a_saved_config_gets_the_legacy_value_of_a_field_it_lacks_and_keeps_the_fields_it_has(monkeypatch):
    monkeypatch.setitem(config_lib.LEGACY_DEFAULTS, "model.position.t5.max_distance", 128)
    monkeypatch.setitem(config_lib.LEGACY_DEFAULTS, "data.new_section.flag", False)
    saved = config_lib.load("tiny").to_dict()
    saved["model"]["position"]["t5"].pop("max_distance")
    cfg = config_lib.from_json(config_lib.json.dumps(saved))
    assert cfg.model.position.t5.max_distance == 128
    assert cfg.data.new_section.flag is False
    set_cfg = config_lib.load("tiny", ["--config.model.position.t5.max_distance=7"])
    kept = config_lib.from_json(config_lib.to_json(set_cfg))
    assert kept.model.position.t5.max_distance == 7


def test_runs_written_before_randomized_positions_and_the_yarn_ramp_field_load_as_they_were_trained():
    """A config.json without `randomize_max_len` trains on 0..T-1; one without `yarn_ramp` keeps the paper's ramp
    (the only one before the field), while new configs get the authors' code ramp."""
    saved = config_lib.load("tiny").to_dict()
    saved["model"]["position"].pop("randomize_max_len")
    saved["model"]["position"]["rope"].pop("yarn_ramp")
    cfg = config_lib.from_json(config_lib.json.dumps(saved))
    assert cfg.model.position.randomize_max_len == 0 and cfg.model.position.rope.yarn_ramp == "paper"
    config_lib.validate(config_lib.resolve(cfg, vocab_size=30))
    assert config_lib.load("tiny").model.position.rope.yarn_ramp == "code"
    bad = config_lib.load("tiny", ["--config.model.position.rope.yarn_ramp=turns"])
    with pytest.raises(config_lib.ConfigError, match="rope.yarn_ramp='turns'; choose one of: code, paper"):
        config_lib.validate(config_lib.resolve(bad, vocab_size=30))


def test_randomized_runs_written_before_randomize_per_keep_one_draw_per_batch():
    """A config.json without `randomize_per` drew one set of positions per micro-batch (the authors' code); new
    configs draw a set per sequence (the paper); anything else is a one-line error naming the field."""
    saved = config_lib.load("tiny", ["--config.model.position.randomize_max_len=64"]).to_dict()
    saved["model"]["position"].pop("randomize_per")
    assert config_lib.from_json(config_lib.json.dumps(saved)).model.position.randomize_per == "batch"
    assert config_lib.load("tiny").model.position.randomize_per == "sequence"
    bad = config_lib.load("tiny", ["--config.model.position.randomize_per=token"])
    with pytest.raises(config_lib.ConfigError, match="model.position.randomize_per='token'; choose sequence"):
        config_lib.validate(config_lib.resolve(bad, vocab_size=30))
