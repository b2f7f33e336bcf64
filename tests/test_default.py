"""The embedded default (configs/default.py) does what the README promises: learns its task to >= 99% exact match."""

import time

import pytest

from jaxformer import config as config_lib
from jaxformer import train as train_lib


@pytest.mark.slow
def test_default_config_reaches_99_percent_exact_match(tmp_path):
    cfg = config_lib.load("default")
    cfg.train.progress = False
    start = time.perf_counter()
    result = train_lib.train(cfg, str(tmp_path / "default"))
    elapsed = time.perf_counter() - start
    assert result["step"] == cfg.train.steps
    assert result["val_accuracy"] >= 0.99, result
    print(f"default config: {elapsed:.0f} s, val accuracy {result['val_accuracy']:.3f}")
