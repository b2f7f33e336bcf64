"""Fuzzing with hypothesis: random valid configs train and sample; random invalid overrides are config errors."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxformer import attention, positional
from jaxformer import config as config_lib
from jaxformer import sample as sample_lib
from jaxformer import train as train_lib
from jaxformer.data import SyntheticDataset, list_datasets

FIELDS = config_lib._field_names(config_lib.load("tiny"))


def _fits(name: str, block: int) -> bool:
    """Whether the task's smallest example (default settings) fits a row of `block` tokens (passkey, MQAR need more)."""
    dataset = SyntheticDataset(name[len("synthetic/"):])
    return dataset.length(dataset.task.min_items) - 1 <= block


@st.composite
def valid_overrides(draw):
    n_head = draw(st.sampled_from([1, 2, 4]))
    head_dim = draw(st.sampled_from([4, 8]))
    n_kv_head = draw(st.sampled_from([k for k in (1, 2, 4) if n_head % k == 0]))
    block = draw(st.sampled_from([8, 16, 24]))
    dataset = draw(st.sampled_from([d for d in list_datasets() if d.startswith("synthetic/") and _fits(d, block)]))
    return [
        f"--config.model.n_layer={draw(st.integers(1, 2))}",
        f"--config.model.n_head={n_head}",
        f"--config.model.n_kv_head={n_kv_head}",
        f"--config.model.n_embd={n_head * head_dim}",
        f"--config.model.bias={draw(st.booleans())}",
        f"--config.model.position.name={draw(st.sampled_from(positional.list_positional_encodings()))}",
        f"--config.model.attention.implementation={draw(st.sampled_from(sorted(attention.IMPLEMENTATIONS)))}",
        f"--config.data.name={dataset}",
        f"--config.data.block_size={block}",
        f"--config.data.batch_size={draw(st.sampled_from([2, 4]))}",
        f"--config.optim.accum_steps={draw(st.sampled_from([1, 2]))}",
        f"--config.train.seed={draw(st.integers(0, 2**16))}",
        "--config.train.steps=2", "--config.optim.warmup_steps=1", "--config.train.log_every=1",
        "--config.train.eval_every=2", "--config.train.eval_iters=1", "--config.train.sample_chars=0",
        "--config.train.progress=false",
    ]


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=valid_overrides())
def test_random_valid_configs_train_two_steps_and_sample(overrides, tmp_path_factory):
    cfg = config_lib.load("tiny", overrides)
    workdir = str(tmp_path_factory.mktemp("fuzz"))
    result = train_lib.train(cfg, workdir, overwrite=True)
    assert result["step"] == 2 and np.isfinite(result["loss"])
    from flax import nnx

    model = nnx.merge(result["trainer"].graphdef, result["params"])
    ids = sample_lib.generate(model, np.array([1, 2], np.int32), max_new_tokens=3, temperature=1.0, seed=0,
                              max_context=cfg.data.block_size)
    assert ids.shape == (5,)


bad_value = st.one_of(st.text(max_size=6), st.integers(-5, 0), st.floats(allow_nan=True), st.just("[1, 2"))


@st.composite
def invalid_overrides(draw):
    kind = draw(st.sampled_from(["typo", "value"]))
    if kind == "typo":
        field = draw(st.sampled_from(FIELDS))
        mangled = field + draw(st.sampled_from(["x", "_", "s"]))
        return [f"--config.{mangled}=1"]
    field = draw(st.sampled_from([
        "model.n_layer", "model.n_head", "model.n_embd", "model.position.name", "model.attention.implementation",
        "data.name", "data.block_size", "data.batch_size", "train.steps", "optim.lr", "optim.min_lr",
        "model.dtype", "train.nonfinite", "model.position.rope.scaling", "model.position.rope.fraction"]))
    return [f"--config.{field}={draw(bad_value)}"]


def _invalid(cfg) -> bool:
    """True when validation must reject it (the override may also hit a value that happens to be fine)."""
    try:
        config_lib.validate(config_lib.resolve(cfg), n_devices=1)
    except config_lib.ConfigError:
        return True
    return False


@settings(max_examples=60, deadline=None)
@given(overrides=invalid_overrides())
def test_random_invalid_overrides_are_config_errors(overrides):
    """Either a one-line ConfigError, or (rarely) a value that happens to be valid; never another exception."""
    try:
        cfg = config_lib.load("tiny", overrides)
    except config_lib.ConfigError as e:
        assert "\n" not in str(e) and str(e)
        return
    _invalid(cfg)  # a ConfigError is caught there; any other exception fails the test


def test_cli_config_error_has_no_traceback_but_debug_shows_it(tmp_path):
    args = [sys.executable, "-m", "jaxformer.cli", "train", "--config", "tiny", "--config.model.n_head=3",
            "--workdir", str(tmp_path / "w")]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "model.n_embd=32" in out.stderr
    out = subprocess.run([*args, "--debug"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "Traceback" in out.stderr
