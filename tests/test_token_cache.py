"""`data.name=text:PATH` (data/sources.py, data/token_cache.py): the split, the tokenizers, the cache and its
rebuilds, JSONL / Parquet, memory that does not grow with the corpus, and every bad input as one line."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxformer import data as data_lib
from jaxformer.data import sources, token_cache

SHAKESPEARE = os.path.join(os.environ.get("JAXFORMER_MANUAL_DIR", ""), "input.txt")


def config(tmp_path, name, **fields):
    cfg = data_lib.default_config()
    cfg.update({"name": name, "cache_dir": str(tmp_path / "cache"), **fields})
    return cfg


def random_text(seed: int, n_words: int) -> str:
    """Words, spaces, line breaks (single, double, after spaces) and non-ASCII characters."""
    rng = np.random.default_rng(seed)
    words = ["the", "king", "ROMEO:", "é", "thou", "中文", "art", "42", "!", "  ", "lord,", "it's"]
    seps = [" ", " ", " ", "\n", "\n\n", " \n", "\t"]
    return "".join(w + s for w, s in zip(rng.choice(words, n_words), rng.choice(seps, n_words), strict=True))


@pytest.fixture
def text_file(tmp_path):
    text = random_text(0, 6000)
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8")
    return str(path), text


def test_char_split_is_nanogpts_last_ten_percent_in_a_uint8_memory_map(tmp_path, text_file):
    path, text = text_file
    ds = data_lib.load_dataset(config(tmp_path, f"text:{path}"))
    n = int(len(text) * 0.9)
    assert ds.tokenizer.vocab == sorted(set(text))  # the whole corpus's characters, as prepare.py
    train, val = ds.split_tokens("train"), ds.split_tokens("val")
    assert isinstance(train, np.memmap) and train.dtype == np.uint8
    assert ds.tokenizer.decode(train) == text[:n] and ds.tokenizer.decode(val) == text[n:]
    batch = ds.batch("train", 7, batch_size=4, block_size=16, seed=3)
    assert batch["inputs"].dtype == np.int32
    for row_in, row_out in zip(batch["inputs"], batch["targets"], strict=True):
        start = text[:n].find(ds.tokenizer.decode(row_in) + ds.tokenizer.decode(row_out)[-1])
        assert start >= 0  # a real window of the train text, targets shifted by one


def test_bpe_is_trained_on_the_train_split_and_chunked_tokenizing_equals_the_whole_text(tmp_path, text_file,
                                                                                       monkeypatch):
    path, text = text_file
    monkeypatch.setattr(sources, "CHUNK_CHARS", 500)  # many chunk boundaries in a small text
    ds = data_lib.load_dataset(config(tmp_path, f"text:{path}", tokenizer="bpe", vocab_size=300))
    n = int(len(text) * 0.9)
    whole = data_lib.SubwordTokenizer.train_bpe(text[:n], 300)
    assert ds.tokenizer.fingerprint() == whole.fingerprint()
    assert ds.split_tokens("train").dtype == np.uint16
    np.testing.assert_array_equal(ds.split_tokens("train"), whole.encode(text[:n]))
    np.testing.assert_array_equal(ds.split_tokens("val"), whole.encode(text[n:]))


def test_chunks_cut_only_between_non_space_characters_and_keep_the_text():
    text = random_text(1, 3000)
    pieces = list(sources.chunks(iter([text[i:i + 97] for i in range(0, len(text), 97)]), size=200))
    assert "".join(pieces) == text and len(pieces) > 5
    for piece in pieces[:-1]:
        assert piece.endswith("\n") and not piece[-2].isspace()


def test_a_later_load_reuses_the_cache_and_a_changed_source_is_rebuilt_never_used(tmp_path, text_file, monkeypatch):
    path, text = text_file
    cfg = config(tmp_path, f"text:{path}")
    first = data_lib.load_dataset(cfg)
    batch = first.batch("train", 5, batch_size=3, block_size=12, seed=1)
    built = []
    original = token_cache._build
    monkeypatch.setattr(token_cache, "_build", lambda *a, **k: built.append(a[0]) or original(*a, **k))
    again = data_lib.load_dataset(cfg)
    assert built == [] and again.cache_dir == first.cache_dir  # reused
    for key in batch:  # batches are a pure function of (seed, split, step)
        np.testing.assert_array_equal(again.batch("train", 5, batch_size=3, block_size=12, seed=1)[key], batch[key])
    with open(path, "a", encoding="utf-8") as f:
        f.write("a new line at the end\n")
    changed = data_lib.load_dataset(cfg)
    assert built == [changed.cache_dir] and changed.cache_dir != first.cache_dir
    assert changed.tokenizer.decode(changed.split_tokens("val")).endswith("a new line at the end\n")
    # A damaged cache (same key, edited token file) is rebuilt, not read.
    with open(os.path.join(changed.cache_dir, "val.bin"), "r+b") as f:
        f.write(b"\x00\x00")
    repaired = data_lib.load_dataset(cfg)
    assert built == [changed.cache_dir] * 2
    assert repaired.tokenizer.decode(repaired.split_tokens("val")).endswith("a new line at the end\n")


def test_a_folder_a_glob_jsonl_and_parquet_are_one_corpus_of_documents(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "b").mkdir(parents=True)
    (folder / "a.txt").write_text("first file without a newline", encoding="utf-8")
    (folder / "b" / "c.txt").write_text("second file\n", encoding="utf-8")
    (folder / ".hidden").write_text("never read", encoding="utf-8")
    whole = "first file without a newline\nsecond file\n"
    for name in (f"text:{folder}", f"text:{folder}/**/*.txt"):
        ds = data_lib.load_dataset(config(tmp_path, name, val_fraction=0.25))
        n = int(len(whole) * 0.75)
        assert ds.tokenizer.decode(ds.split_tokens("train")) + ds.tokenizer.decode(ds.split_tokens("val")) == whole
        assert ds.tokenizer.decode(ds.split_tokens("val")) == whole[n:]
    records = [{"text": "one record", "id": 1}, {"text": "two\n", "id": 2}, {"text": "three", "id": 3}]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": [r["text"] for r in records], "id": [1, 2, 3]}), parquet)
    expected = "one record\ntwo\nthree"
    for name, field in ((f"text:{jsonl}", "text"), (f"text:{parquet}", "body")):
        ds = data_lib.load_dataset(config(tmp_path, name, text_field=field, val_fraction=0.3))
        assert ds.tokenizer.decode(np.concatenate([ds.split_tokens("train"), ds.split_tokens("val")])) == expected


@pytest.mark.parametrize("make, name, message", [
    (None, "text:{tmp}/nope.txt", r"^data.name='text:.*/nope.txt': .*/nope.txt does not exist; give a UTF-8"),
    (lambda tmp: (tmp / "empty").mkdir(), "text:{tmp}/empty", r"the folder .*/empty holds no files$"),
    (None, "text:{tmp}/*.md", r"the glob .*/\*\.md matches no file$"),
    (lambda tmp: (tmp / "e.txt").write_text(""), "text:{tmp}/e.txt", r"^data.name='text:.*/e.txt' holds no text"),
    (lambda tmp: (tmp / "b.bin").write_bytes(b"GIF89a\x00\x01"), "text:{tmp}/b.bin",
     r"^.*/b.bin is a binary file \(a NUL byte at offset 6\), not UTF-8 text$"),
    (lambda tmp: (tmp / "l.txt").write_bytes("héllo".encode("latin-1")), "text:{tmp}/l.txt",
     r"^.*/l.txt is not UTF-8 text \(byte 1\)$"),
    (lambda tmp: (tmp / "s.txt").write_text("a"), "text:{tmp}/s.txt",
     r"the train split is empty after the 90%/10% cut of 1 characters \(data.val_fraction=0.1\); give more text$"),
    (lambda tmp: (tmp / "r.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n'), "text:{tmp}/r.jsonl",
     r"^.*/r.jsonl:2 has no field 'text' \(data.text_field; it has: body\)$"),
    (lambda tmp: (tmp / "x.jsonl").write_text('{"text": "a"}\nnot json\n'), "text:{tmp}/x.jsonl",
     r"^.*/x.jsonl:2 is not JSON"),
])
def test_bad_text_sources_are_one_line_errors_naming_the_file(tmp_path, make, name, message):
    if make is not None:
        make(tmp_path)
    with pytest.raises(data_lib.DataError, match=message) as info:
        data_lib.load_dataset(config(tmp_path, name.format(tmp=tmp_path)))
    assert "\n" not in str(info.value)
    assert not os.path.exists(tmp_path / "cache" / "tokens")  # nothing tokenized


def test_parquet_without_the_column_names_it(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["a b c"]}), tmp_path / "p.parquet")
    with pytest.raises(data_lib.DataError, match=r"p.parquet has no column 'text' \(data.text_field; it has: body"):
        data_lib.load_dataset(config(tmp_path, f"text:{tmp_path}/p.parquet"))


def test_a_block_longer_than_the_val_text_is_refused_before_training(tmp_path, text_file):
    from jaxformer import config as config_lib
    from jaxformer import train as train_lib

    path, text = text_file
    cfg = config_lib.load("tiny", [f"--config.data.name=text:{path}", f"--config.data.cache_dir={tmp_path}/cache",
                                   "--config.data.block_size=4000"])
    dataset = data_lib.load_dataset(cfg.data)
    with pytest.raises(config_lib.ConfigError, match=r"^data.block_size=4000 needs 4001 tokens per row; the val split "
                                                      r"of 'text:.*' has \d+: choose data.block_size <= \d+$"):
        train_lib.check_config(cfg, dataset)


RSS_SCRIPT = textwrap.dedent("""
    import resource, sys
    from jaxformer import data
    cfg = data.default_config()
    cfg.name, cfg.cache_dir = "text:" + sys.argv[1], sys.argv[2]
    ds = data.load_dataset(cfg)
    ds.batch("train", 0, batch_size=8, block_size=64, seed=0)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, len(ds.split_tokens("train")))
""")


def test_peak_memory_does_not_grow_with_the_corpus(tmp_path):
    """Tokenizing a 48 MB text takes about the peak memory of a 4 MB one (benchmarks/text_data.py: 200 MB)."""
    unit = random_text(2, 50_000).encode("utf-8")
    peaks = {}
    for megabytes in (4, 48):
        path = tmp_path / f"t{megabytes}.txt"
        with open(path, "wb") as f:
            for _ in range(megabytes * 2**20 // len(unit)):
                f.write(unit)
        out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(path), str(tmp_path / f"c{megabytes}")],
                             capture_output=True, text=True, check=True, env=os.environ).stdout.split()
        peaks[megabytes] = int(out[0])
        assert int(out[1]) > 0.7 * megabytes * 2**20  # 90% of the characters (a few take 2-3 bytes): all tokenized
    # 44 MB more text (176 MB as UTF-32) leaves the peak within 24 MB (chunk buffers, allocator noise).
    assert peaks[48] - peaks[4] < 24 * 2**20, peaks


def test_a_text_run_resumes_bitwise_from_its_cached_tokens(tiny_cfg, tmp_path, text_file, monkeypatch):
    """A BPE text run stopped at step 6 and resumed logs the metrics of the uninterrupted run, bit for bit; the
    resumed run reads the run's tokenizer.json and the same token files (nothing tokenized or trained again)."""
    from jaxformer import train as train_lib

    path, _ = text_file
    tiny_cfg.data.update({"name": f"text:{path}", "tokenizer": "bpe", "vocab_size": 300,
                          "cache_dir": str(tmp_path / "cache")})
    tiny_cfg.train.update({"steps": 12, "log_every": 2, "eval_every": 4, "checkpoint_every": 6, "sample_chars": 0})
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    train_lib.train(tiny_cfg, full)
    train_lib.train(tiny_cfg, part, stop_after=6)
    monkeypatch.setattr(token_cache, "_build", lambda *a, **k: pytest.fail("tokenized again"))
    monkeypatch.setattr(data_lib.SubwordTokenizer, "train_bpe_iterator", lambda *a: pytest.fail("BPE trained again"))
    train_lib.train(tiny_cfg, part, resume=True)
    with open(os.path.join(full, "metrics.jsonl"), "rb") as f, open(os.path.join(part, "metrics.jsonl"), "rb") as g:
        assert f.read() == g.read()
    assert os.path.exists(os.path.join(part, "tokenizer.json"))
