"""Data layer: tokenizer, text batches, tiny_shakespeare through TFDS without TensorFlow, and its errors.

The tiny-shakespeare tests read the real file through the same TFDS path users take (manual dir ->
array_record in a temporary data dir); nothing is written into the repository.
"""

import hashlib
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxformer import data as data_lib
from jaxformer.data import text as text_lib
from jaxformer.data import tiny_shakespeare
from jaxformer.data.tiny_shakespeare import builder as builder_lib

SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def config(**fields):
    cfg = data_lib.default_config()
    cfg.update(fields)
    return cfg


@pytest.fixture
def no_manual_dir_env(monkeypatch):
    monkeypatch.delenv(text_lib.MANUAL_DIR_ENV, raising=False)


@pytest.fixture(scope="session")
def shakespeare(shakespeare_dir, tfds_data_dir):
    """(the dataset with nanoGPT's validation text, the raw input.txt text), prepared once per session."""
    cfg = config(name="tiny_shakespeare", manual_dir=shakespeare_dir, data_dir=tfds_data_dir,
                 val_split="validation+test")
    with open(os.path.join(shakespeare_dir, "input.txt"), "rb") as f:
        return data_lib.load_dataset(cfg), f.read().decode("utf-8")


# ------------------------------------------------------------------------------------------------ tokenizer


def test_tokenizer_round_trip_on_random_text_and_vocab_json(tmp_path):
    rng = np.random.default_rng(0)
    alphabet = list("abc XYZ\n\t.,!") + ["é", "λ", "中", "😀"]
    text = "".join(rng.choice(alphabet, 2000))
    tok = data_lib.Tokenizer.from_text(text)
    assert tok.vocab == sorted(set(text)) and tok.vocab_size == len(set(text))
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.shape == (2000,) and tok.decode(ids) == text
    tok.save(str(tmp_path / "vocab.json"))
    loaded = data_lib.load_tokenizer(str(tmp_path / "vocab.json"))
    assert loaded.vocab == tok.vocab and loaded.decode(loaded.encode(text[:50])) == text[:50]


def test_unknown_characters_are_named():
    tok = data_lib.Tokenizer.from_text("hello world")
    match = r"2 character\(s\) not in the 8-character vocabulary: 'Z', 'é'"
    with pytest.raises(data_lib.DataError, match=match):
        tok.encode("hello Zé")
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([0, 99])


def test_missing_or_broken_vocab_json_names_the_file(tmp_path):
    with pytest.raises(data_lib.DataError, match=f"{tmp_path}/vocab.json does not exist"):
        data_lib.load_tokenizer(str(tmp_path / "vocab.json"))
    (tmp_path / "vocab.json").write_text("{")
    with pytest.raises(data_lib.DataError, match="is not a jaxformer vocab.json"):
        data_lib.load_tokenizer(str(tmp_path / "vocab.json"))


# ------------------------------------------------------------------------------------------- text batches


@pytest.fixture(scope="module")
def small_text():
    rng = np.random.default_rng(1)
    return data_lib.TextDataset("small", "".join(rng.choice(list("abcdefgh \n"), 5000)),
                                "".join(rng.choice(list("abcdefgh \n"), 1000)), data_hash="x")


def test_text_batches_are_shifted_windows_and_a_pure_function_of_seed_split_step(small_text):
    kw = dict(batch_size=8, block_size=16, seed=0)
    a = small_text.batch("train", 5, **kw)
    assert a["inputs"].shape == (8, 16) and a["inputs"].dtype == np.int32 and a["weights"].dtype == np.float32
    np.testing.assert_array_equal(a["inputs"][:, 1:], a["targets"][:, :-1])
    assert np.all(a["weights"] == 1.0)
    tokens = small_text.split_tokens("train")
    for row_in, row_tg in zip(a["inputs"], a["targets"], strict=True):  # each row is a window of the split
        starts = [i for i in range(tokens.size - 16) if np.array_equal(tokens[i:i + 16], row_in)]
        assert any(np.array_equal(tokens[i + 1:i + 17], row_tg) for i in starts)
    val_text = small_text.tokenizer.decode(small_text.split_tokens("val"))
    restarted = data_lib.TextDataset("small", small_text.tokenizer.decode(tokens), val_text, data_hash="x")
    np.testing.assert_array_equal(restarted.batch("train", 5, **kw)["inputs"], a["inputs"])
    assert not np.array_equal(small_text.batch("train", 6, **kw)["inputs"], a["inputs"])
    evals = small_text.eval_batches("val", num_batches=2, **kw)
    again = small_text.eval_batches("val", num_batches=2, **kw)
    np.testing.assert_array_equal(evals[1]["inputs"], again[1]["inputs"])
    assert not np.array_equal(evals[0]["inputs"], small_text.batch("val", 0, **kw)["inputs"])


def test_text_windows_do_not_overlap_and_predict_the_same_tokens_at_every_length(small_text):
    tokens = small_text.split_tokens("val")
    for length in (25, 50, 100):
        w = small_text.windows("val", length=length, max_windows=500 // length)
        np.testing.assert_array_equal(w["inputs"].reshape(-1), tokens[:500])
        np.testing.assert_array_equal(w["targets"].reshape(-1), tokens[1:501])
        assert w["weights"].sum() == 500
    assert small_text.windows("val", length=100)["inputs"].shape == (9, 100)  # all of them: (1000 - 1) // 100
    with pytest.raises(data_lib.DataError, match="max_windows=10: .* room for 1..9 windows of 100"):
        small_text.windows("val", length=100, max_windows=10)


def test_text_errors(small_text):
    with pytest.raises(data_lib.DataError, match="val split: 1 character"):
        data_lib.TextDataset("t", "abc", "abd", data_hash="x")
    with pytest.raises(data_lib.DataError, match="data.block_size=1000 needs more than 1000 tokens"):
        small_text.batch("val", 0, batch_size=2, block_size=1000, seed=0)


# ------------------------------------------------------------------------------------------------------ BOS


def test_bos_rows_start_with_bos_keep_every_target_and_leave_bos_unscored(small_text):
    bos = data_lib.BOSDataset(small_text)
    V = small_text.vocab_size
    assert bos.vocab_size == V + 1 and bos.bos_id == V and bos.tokenizer is small_text.tokenizer
    kw = dict(batch_size=8, block_size=16, seed=0)
    a, inner = bos.batch("train", 5, **kw), small_text.batch("train", 5, **{**kw, "block_size": 15})
    assert a["inputs"].shape == a["targets"].shape == a["weights"].shape == (8, 16)
    assert np.all(a["inputs"][:, 0] == V) and not np.any(a["inputs"][:, 1:] == V) and not np.any(a["targets"] == V)
    np.testing.assert_array_equal(a["inputs"][:, 1:], inner["inputs"])  # the rest is the 15-token row
    np.testing.assert_array_equal(a["targets"][:, 1:], inner["targets"])
    np.testing.assert_array_equal(a["targets"][:, 0], inner["inputs"][:, 0])  # still a shifted window
    np.testing.assert_array_equal(a["inputs"][:, 2:], a["targets"][:, 1:-1])
    assert np.all(a["weights"][:, 0] == 0) and np.all(a["weights"][:, 1:] == 1)
    assert a["inputs"].dtype == np.int32 and a["weights"].dtype == np.float32
    w = bos.windows("val", length=10, max_windows=3)
    np.testing.assert_array_equal(w["inputs"][:, 1:].reshape(-1), small_text.split_tokens("val")[:27])
    assert bos.eval_batches("val", num_batches=2, **kw)[1]["inputs"][0, 0] == V


@pytest.mark.parametrize("task", ["copy", "associative_recall", "count"])
def test_bos_on_a_synthetic_task_keeps_every_answer(task):
    inner = data_lib.load_dataset(config(name=f"synthetic/{task}"))
    bos = data_lib.load_dataset(config(name=f"synthetic/{task}", bos=True))
    assert isinstance(bos, data_lib.BOSDataset) and bos.vocab_size == inner.vocab_size + 1
    for rows, plain in ((bos.batch("train", 3, batch_size=16, block_size=32, seed=1),
                         inner.batch("train", 3, batch_size=16, block_size=31, seed=1)),
                        (bos.windows("val", length=64, max_windows=8), inner.windows("val", length=63, max_windows=8))):
        assert np.all(rows["inputs"][:, 0] == bos.bos_id) and rows["weights"][:, 0].sum() == 0
        np.testing.assert_array_equal(rows["weights"][:, 1:], plain["weights"])  # same answers, one column later
        np.testing.assert_array_equal(rows["targets"][:, 1:], plain["targets"])
        assert rows["weights"].sum() == plain["weights"].sum() > 0


def test_bos_needs_rows_of_two_tokens(small_text):
    with pytest.raises(data_lib.DataError, match="data.bos=True needs rows of at least 2 tokens"):
        data_lib.BOSDataset(small_text).windows("val", length=1)


# ------------------------------------------------------------------------------------------ dispatch/config


def test_default_config_and_dataset_names():
    cfg = data_lib.default_config()
    assert {"name", "block_size", "batch_size", "val_split", "manual_dir", "data_dir"} <= set(cfg)
    assert {"num_symbols", "min_items", "max_items", "eval_examples"} <= set(cfg.synthetic)
    assert cfg.name in data_lib.list_datasets()
    names = data_lib.list_datasets()
    tasks = ("copy", "reverse", "associative_recall", "induction", "count")
    assert names[:6] == ["tiny_shakespeare", *(f"synthetic/{t}" for t in tasks)]  # then data/algorithmic.py's
    match = r"^data.name='wikitext'; choose one of: tiny_shakespeare, synthetic/copy, .*, tfds:<name>, text:PATH$"
    with pytest.raises(ValueError, match=match):
        data_lib.load_dataset(config(name="wikitext"))


def test_importing_the_data_layer_imports_neither_tfds_nor_the_model():
    mods = "('tensorflow', 'tensorflow_datasets', 'jax', 'flax')"
    code = f"import sys, jaxformer.data; print(sorted(m for m in {mods} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed")
def test_tfds_name_without_tensorflow_names_the_extra():
    with pytest.raises(data_lib.DataError, match=r"data.name='tfds:lm1b' .* pip install 'jaxformer\[tf\]'"):
        data_lib.load_dataset(config(name="tfds:lm1b"))
    assert "tensorflow" not in sys.modules


# ----------------------------------------------------------------------------------------- tiny_shakespeare


def test_tiny_shakespeare_through_tfds_without_tensorflow(shakespeare, tfds_data_dir, shakespeare_dir):
    ds, raw = shakespeare
    splits = text_lib.tiny_shakespeare_splits(config(data_dir=tfds_data_dir, manual_dir=shakespeare_dir))
    sizes = {k: len(v) for k, v in splits.items()}
    assert sizes == {"train": 1_003_854, "validation": 55_770, "test": 55_770}
    assert "tensorflow" not in sys.modules
    prepared = os.path.join(tfds_data_dir, tiny_shakespeare.NAME, "1.0.0")
    assert any(f.endswith(".array_record-00000-of-00001") for f in os.listdir(prepared))
    assert ds.vocab_size == 65 and ds.data_hash == SHA256 == hashlib.sha256(raw.encode()).hexdigest()
    with open(os.path.join(os.path.dirname(builder_lib.__file__), "checksums.tsv")) as f:
        assert f"{builder_lib.URL}\t1115394\t{SHA256}\tinput.txt" in f.read()


def test_first_prepare_logs_no_tfds_warning_or_progress_bars(tmp_path, shakespeare_dir, caplog, capfd):
    with caplog.at_level(logging.INFO):
        splits = text_lib.tiny_shakespeare_splits(config(data_dir=str(tmp_path), manual_dir=shakespeare_dir))
    assert len(splits["train"]) == 1_003_854
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []  # TFDS warns "Variant folder ... has no dataset_info.json" unless silenced
    err = capfd.readouterr().err
    assert "it/s" not in err and "\r" not in err  # no tqdm redraws


def test_a_corrupted_prepared_cache_names_the_folder_to_delete(tmp_path, shakespeare_dir):
    cfg = config(data_dir=str(tmp_path), manual_dir=shakespeare_dir)
    text_lib.tiny_shakespeare_splits(cfg)
    version = next(p for p in tmp_path.rglob("*-train.array_record-*")).parent
    train_file = next(version.glob("*-train.array_record-*"))
    data = bytearray(train_file.read_bytes())
    data[len(data) // 3:len(data) // 3 + 64] = bytes(64)  # a damaged stretch of the records
    train_file.write_bytes(bytes(data))
    with pytest.raises(data_lib.DataError, match=f"the prepared TFDS data in {version} cannot be read .*delete that "
                                                 "folder"):
        text_lib.tiny_shakespeare_splits(cfg)


def test_validation_plus_test_is_nanogpts_last_ten_percent(shakespeare):
    ds, raw = shakespeare
    n = len(raw)
    assert ds.tokenizer.decode(ds.split_tokens("val")) == raw[int(n * 0.9):]
    assert ds.tokenizer.decode(ds.split_tokens("train")) == raw[:int(n * 0.9)]
    assert ds.tokenizer.vocab == sorted(set(raw))  # nanoGPT's 65 characters


def test_tiny_shakespeare_batches_survive_a_restart(shakespeare, shakespeare_dir, tfds_data_dir):
    ds, _ = shakespeare
    again = data_lib.load_dataset(config(name="tiny_shakespeare", manual_dir=shakespeare_dir,
                                         data_dir=tfds_data_dir, val_split="validation+test"))
    kw = dict(batch_size=4, block_size=64, seed=1)
    for step in (0, 123):
        a, b = ds.batch("train", step, **kw), again.batch("train", step, **kw)
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert ds.split_tokens("val").size == 111_540


def _closed_port_url() -> str:
    with socket.socket() as s:  # a port nothing listens on: connecting is refused at once, no real network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/input.txt"


def test_offline_without_manual_dir_fails_fast_with_how_to(tmp_path, monkeypatch, no_manual_dir_env):
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(builder_lib, "URL", _closed_port_url())
    start = time.monotonic()
    with pytest.raises(data_lib.DataError) as e:
        data_lib.load_dataset(config(name="tiny_shakespeare", data_dir=str(tmp_path)))
    assert time.monotonic() - start < 10
    msg = str(e.value)
    assert "cannot be reached" in msg and "--config.data.manual_dir=DIR" in msg
    assert "JAXFORMER_MANUAL_DIR" in msg
    assert "\n" not in msg


def test_probe_follows_the_proxy_the_environment_names(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert text_lib._probe_address(builder_lib.URL) == ("proxy.example", 3128)
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    assert text_lib._probe_address(builder_lib.URL) == ("raw.githubusercontent.com", 443)


def test_manual_dir_without_input_txt(tmp_path, monkeypatch, no_manual_dir_env):
    with pytest.raises(data_lib.DataError, match=f"^data.manual_dir={tmp_path} has no input.txt; download "):
        data_lib.load_dataset(config(name="tiny_shakespeare", manual_dir=str(tmp_path),
                                     data_dir=str(tmp_path / "d")))
    monkeypatch.setenv("JAXFORMER_MANUAL_DIR", str(tmp_path))
    with pytest.raises(data_lib.DataError, match=f"^JAXFORMER_MANUAL_DIR={tmp_path} has no input.txt"):
        data_lib.load_dataset(config(name="tiny_shakespeare", data_dir=str(tmp_path / "d")))


@pytest.mark.parametrize("content, match", [
    (b"", "input.txt is empty"),
    (b"caf\xe9\n", r"input.txt is not UTF-8 text \(byte 3\)"),
    (None, r"input.txt is not the tiny-shakespeare text: 1115394 bytes, sha256 [0-9a-f]{64}; "
           rf"expected 1115394 bytes, sha256 {SHA256}"),
])
def test_bad_manual_file(content, match, tmp_path, request, no_manual_dir_env):
    if content is None:  # a corrupted copy of the real file: one character changed, same size
        with open(os.path.join(request.getfixturevalue("shakespeare_dir"), "input.txt"), "rb") as f:
            raw = bytearray(f.read())
        raw[1000] = ord("#") if raw[1000] != ord("#") else ord("%")
        content = bytes(raw)
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "input.txt").write_bytes(content)
    with pytest.raises(data_lib.DataError, match=match) as e:
        data_lib.load_dataset(config(name="tiny_shakespeare", manual_dir=str(manual),
                                     data_dir=str(tmp_path / "d")))
    assert "\n" not in str(e.value)


def test_bad_val_split():
    with pytest.raises(data_lib.DataError, match="data.val_split='val'; choose one of: validation, "):
        data_lib.load_dataset(config(name="tiny_shakespeare", val_split="val"))


# ---------------------------------------------------------------------------------------- subword tokenizers

def _random_text(seed=0, n_words=3000):
    rng = np.random.default_rng(seed)
    syllables = ["ro", "me", "o", "ju", "li", "et", "the", "and", " ", "\n", "é", "ß", ",", "!"]
    return "".join(rng.choice(syllables, n_words))


def test_bpe_trains_to_the_vocab_size_round_trips_and_is_deterministic(tmp_path):
    text = _random_text()
    tok = data_lib.SubwordTokenizer.train_bpe(text, 300)
    assert tok.vocab_size == 300
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < 300
    assert ids.size < len(text.encode("utf-8")) / 1.5  # merges compress the bytes
    assert tok.decode(ids) == text
    unseen = "zebra QUIZ 🦓"  # byte-level: text never seen in training still encodes and decodes exactly
    assert tok.decode(tok.encode(unseen)) == unseen
    again = data_lib.SubwordTokenizer.train_bpe(text, 300)
    np.testing.assert_array_equal(again.encode(text), ids)
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = data_lib.run_tokenizer(str(tmp_path))
    assert isinstance(loaded, data_lib.SubwordTokenizer)
    np.testing.assert_array_equal(loaded.encode(text), ids)
    assert "".join(loaded.token_text(i) for i in ids[:50]) == tok.decode(ids[:50])


def test_bpe_bad_input_is_one_line(tmp_path):
    with pytest.raises(data_lib.DataError, match="data.vocab_size=100; a byte-level BPE needs at least 257"):
        data_lib.SubwordTokenizer.train_bpe("abc", 100)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(data_lib.DataError, match="tokenizer.json is not a readable tokenizer.json"):
        data_lib.run_tokenizer(str(tmp_path))
    with pytest.raises(data_lib.DataError, match="has no vocab.json or tokenizer.json"):
        data_lib.run_tokenizer(str(tmp_path / "empty"))


def test_text_dataset_with_bpe_and_a_given_tokenizer():
    from jaxformer.data.text import TextDataset
    from jaxformer.data.tokenizer import text_tokenizer

    train, val = _random_text(1), _random_text(2, 500)
    cfg = data_lib.default_config()
    cfg.tokenizer, cfg.vocab_size = "bpe", 280
    tok = text_tokenizer(cfg, train)
    ds = TextDataset("t", train, val, data_hash="x", tokenizer=tok)
    assert ds.vocab_size == 280
    assert tok.decode(ds.split_tokens("val")) == val
    cfg.tokenizer = "pretrained"
    with pytest.raises(data_lib.DataError, match="data.tokenizer='pretrained' reads the run directory"):
        text_tokenizer(cfg, train)
    cfg.tokenizer, cfg.name = "bpe", "synthetic/copy"
    with pytest.raises(data_lib.DataError, match="synthetic tasks have their own symbols"):
        data_lib.load_dataset(cfg)


def test_the_synthetic_tokenizer_rule_is_one_function_asked_by_config_and_data():
    """data.tokenizer_problem is the rule; config.validate and load_dataset refuse with its exact line."""
    from jaxformer import config as config_lib

    assert data_lib.tokenizer_problem("synthetic/copy", "char") is None
    assert data_lib.tokenizer_problem("tiny_shakespeare", "bpe") is None
    line = data_lib.tokenizer_problem("synthetic/copy", "bpe")
    assert line == "data.tokenizer='bpe': synthetic tasks have their own symbols; use data.tokenizer=char"
    cfg = config_lib.load("tiny", ["--config.data.name=synthetic/copy", "--config.data.tokenizer=bpe"])
    with pytest.raises(config_lib.ConfigError) as from_config:
        config_lib.validate(config_lib.resolve(cfg, vocab_size=300))
    with pytest.raises(data_lib.DataError) as from_data:
        data_lib.load_dataset(cfg.data)
    assert str(from_config.value) == str(from_data.value) == line
