"""Shared fixtures. Tests use configs/tiny.py (the same code path as real runs, shrunk to seconds)."""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE_DIR = os.environ.get("JAXFORMER_MANUAL_DIR") or os.path.join(REPO, "..", "shared", "data",
                                                                         "tinyshakespeare")


@pytest.fixture
def tiny_cfg():
    from jaxformer import config as config_lib

    cfg = config_lib.load("tiny")
    cfg.train.progress = False
    return cfg


@pytest.fixture(scope="session")
def shakespeare_dir():
    if not os.path.exists(os.path.join(SHAKESPEARE_DIR, "input.txt")):
        message = f"tiny-shakespeare text not found at {SHAKESPEARE_DIR}/input.txt (set JAXFORMER_MANUAL_DIR)"
        if os.environ.get("CI"):  # CI has the file (../shared/data): its absence there is a failure, not a skip
            pytest.fail(message)
        pytest.skip(message)
    return os.path.abspath(SHAKESPEARE_DIR)


@pytest.fixture(scope="session")
def tfds_data_dir(tmp_path_factory):
    """One prepared TFDS directory for the whole session, outside the repository."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))
