"""Run directories: what a resume may change."""

import pytest

from jaxformer import config as config_lib
from jaxformer import run as run_lib


def _resolved(*overrides):
    return config_lib.resolve(config_lib.load("tiny", list(overrides)), vocab_size=11)


def test_resume_ignores_the_settings_of_positional_variants_the_run_does_not_use():
    saved = _resolved("--config.model.position.name=alibi", "--config.model.position.sinusoidal.scheme=matched")
    now = _resolved("--config.model.position.name=alibi", "--config.train.steps=40")
    assert saved.model.position.sinusoidal.scale != now.model.position.sinusoidal.scale  # a new default elsewhere
    assert run_lib.check_resume_config("w", saved, now) == ["train.steps", "optim.decay_steps"]
    # the run's own variant's settings still may not change
    with pytest.raises(run_lib.RunDirError, match="model.position.alibi|model.position.name"):
        run_lib.check_resume_config("w", saved, _resolved("--config.model.position.name=rope"))
    rope = _resolved("--config.model.position.name=rope")
    with pytest.raises(run_lib.RunDirError, match=r"model.position.rope.theta=500.0 differs from the run's 10000.0"):
        run_lib.check_resume_config("w", rope, _resolved("--config.model.position.name=rope",
                                                          "--config.model.position.rope.theta=500.0"))
