"""`data.name=text:PATH`: your text, split by position and tokenized once into memory-mapped token files.

The split is nanoGPT's: the first `1 - data.val_fraction` of the corpus's characters are "train", the rest "val"
(default the last 10%), each tokenized on its own. The tokenizer (`data.tokenizer`):
- char: every distinct character of the whole corpus, sorted by code point (nanoGPT's `shakespeare_char/prepare.py`);
- bpe: a byte-level BPE of `data.vocab_size` ids trained on the train split (saved in the run as tokenizer.json);
- pretrained: the tokenizer given (an imported model's, from the run `--init-from` names).

The cache, under `data.cache_dir` (else $JAXFORMER_CACHE_DIR, else ~/.cache/jaxformer):

    text/<content hash>/scan.json              characters per corpus, its character vocabulary
    text/<content hash>/bpe-<V>-<fraction>.json  the BPE trained on its train split (trained once)
    tokens/<key>/{train,val}.bin, meta.json      token ids, dtype by vocabulary size (uint8 / uint16 / uint32)

`<key>` hashes the content hash (every file's bytes, `sources.content_hash`), the tokenizer's fingerprint and the
split, so later runs, sweeps, `eval` and `sample` on the same text and tokenizer reuse the files, and a changed
source gets a new key: it is tokenized again, never read from the old files. meta.json records the token counts and
the sha256 of each .bin, checked at every load; a cache that does not match (cut short, edited) is rebuilt.
Memory does not grow with the corpus: the text is streamed in chunks (`sources.chunks`), ids are appended to the
files, and training gathers its rows from the memory maps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys

import numpy as np

from jaxformer.data.sources import chunks, content_hash, documents, source_files
from jaxformer.data.text import TextDataset
from jaxformer.data.tokenizer import DataError, SubwordTokenizer, Tokenizer, text_tokenizer

log = logging.getLogger("jaxformer")
CACHE_ENV = "JAXFORMER_CACHE_DIR"
VERSION = 1  # of the files' layout: a new layout gets new keys


def cache_root(data_cfg) -> str:
    """`data.cache_dir`, else $JAXFORMER_CACHE_DIR, else ~/.cache/jaxformer."""
    root = data_cfg.get("cache_dir", "") or os.environ.get(CACHE_ENV, "") or "~/.cache/jaxformer"
    return os.path.abspath(os.path.expanduser(root))


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds ids 0 .. vocab_size - 1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise DataError(f"a vocabulary of {vocab_size} ids does not fit uint32")


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ scanning the text

def scan(files: list[str], *, name: str, text_field: str, directory: str) -> dict:
    """{"chars": characters in the corpus, "vocab": its distinct characters}: a pass that also checks every file
    (binary, not UTF-8, missing JSON field: one line naming it). Saved in `directory`, read back next time."""
    path = os.path.join(directory, "scan.json")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                found = json.load(f)
            if isinstance(found.get("chars"), int) and isinstance(found.get("vocab"), list):
                return found
        except (OSError, ValueError):
            pass  # damaged: scanned again below
    chars, codes = 0, np.zeros(0, np.uint32)
    for chunk in chunks(documents(files, text_field=text_field)):
        chars += len(chunk)
        codes = np.union1d(codes, np.unique(np.frombuffer(chunk.encode("utf-32-le"), np.uint32)))
    if chars == 0:
        raise DataError(f"data.name={name!r} holds no text ({len(files)} file(s), all empty)")
    found = {"chars": chars, "vocab": [chr(c) for c in codes.tolist()]}
    os.makedirs(directory, exist_ok=True)
    _write_atomic(path, json.dumps(found, ensure_ascii=False))
    return found


def split_chars(chars: int, val_fraction: float) -> int:
    """Characters in the train split: nanoGPT's `int(n * 0.9)` for the default val_fraction 0.1."""
    return int(chars * (1 - val_fraction))


def split_chunks(files: list[str], *, text_field: str, train_chars: int):
    """("train" | "val", text) pieces of the corpus in order, the chunk that straddles the cut split there."""
    position = 0
    for chunk in chunks(documents(files, text_field=text_field)):
        end = position + len(chunk)
        if end <= train_chars:
            yield "train", chunk
        elif position >= train_chars:
            yield "val", chunk
        else:
            yield "train", chunk[:train_chars - position]
            yield "val", chunk[train_chars - position:]
        position = end


# ------------------------------------------------------------------------------------------------ the tokenizer

def corpus_tokenizer(data_cfg, files: list[str], *, scanned: dict, directory: str, given=None):
    """The tokenizer of a text corpus: `given` (a run's own or an imported model's), else `data.tokenizer`'s."""
    kind = data_cfg.get("tokenizer", "char")
    if given is not None or kind not in ("char", "bpe"):
        return text_tokenizer(data_cfg, "", given)  # given, or the one-line error for pretrained / unknown
    if kind == "char":
        return Tokenizer(scanned["vocab"])
    fraction = data_cfg.get("val_fraction", 0.1)
    path = os.path.join(directory, f"bpe-{data_cfg.vocab_size}-{fraction!r}.json")
    if os.path.isfile(path):
        try:
            return SubwordTokenizer.load(path)
        except DataError:
            log.warning("%s is damaged; training the BPE again", path)
    train_chars = split_chars(scanned["chars"], fraction)
    pieces = (text for split, text in split_chunks(files, text_field=data_cfg.get("text_field", "text"),
                                                   train_chars=train_chars) if split == "train")
    log.info("training a %d-id byte-level BPE on the train split of %s", data_cfg.vocab_size, data_cfg.name)
    tokenizer = SubwordTokenizer.train_bpe_iterator(pieces, data_cfg.vocab_size)
    tokenizer.save(f"{path}.tmp{os.getpid()}")
    os.replace(f"{path}.tmp{os.getpid()}", path)
    return tokenizer


# --------------------------------------------------------------------------------------------- the token files

def _valid(directory: str, expected: dict) -> dict | None:
    """The cache's meta.json when it matches `expected` and its .bin files their recorded size and sha256."""
    try:
        with open(os.path.join(directory, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if any(meta.get(k) != v for k, v in expected.items()):
        return None
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in ("train", "val"):
        path = os.path.join(directory, f"{split}.bin")
        if (not os.path.isfile(path) or os.path.getsize(path) != meta["tokens"][split] * itemsize
                or _file_sha256(path) != meta["sha256"][split]):
            return None
    return meta


def _build(directory: str, expected: dict, files, *, tokenizer, text_field: str, train_chars: int,
           chars: int, name: str) -> None:
    """Tokenizes the corpus into a fresh folder and renames it to `directory` (a kill leaves no half cache)."""
    from tqdm import tqdm

    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(directory)}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    dtype = np.dtype(expected["dtype"])
    counts, hashes = {"train": 0, "val": 0}, {"train": hashlib.sha256(), "val": hashlib.sha256()}
    log.info("tokenizing %s (%s characters) into %s", name, f"{chars:,}", directory)
    try:
        outputs = {s: open(os.path.join(tmp, f"{s}.bin"), "wb") for s in ("train", "val")}
        with tqdm(total=chars, unit="char", unit_scale=True, desc=f"tokenizing {name}", file=sys.stderr,
                  disable=None, leave=False) as bar:
            for split, text in split_chunks(files, text_field=text_field, train_chars=train_chars):
                data = np.asarray(tokenizer.encode(text)).astype(dtype).tobytes()
                outputs[split].write(data)
                hashes[split].update(data)
                counts[split] += len(data) // dtype.itemsize
                bar.update(len(text))
        for f in outputs.values():
            f.close()
        meta = {**expected, "tokens": counts, "sha256": {s: h.hexdigest() for s, h in hashes.items()},
                "characters": {"train": train_chars, "val": chars - train_chars}}
        _write_atomic(os.path.join(tmp, "meta.json"), json.dumps(meta, indent=2, sort_keys=True))
        if os.path.isdir(directory):  # a stale cache: set aside, then removed
            stale = os.path.join(parent, f".{os.path.basename(directory)}.stale{os.getpid()}")
            os.rename(directory, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, directory)
        except OSError:  # another process finished the same cache first: theirs is used
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_text_files(data_cfg, tokenizer=None) -> TextDataset:
    """The TextDataset of `data.name=text:PATH` over memory-mapped token files (built on first use)."""
    name = data_cfg.name
    fraction = data_cfg.get("val_fraction", 0.1)
    if not isinstance(fraction, float) or not 0 < fraction < 1:
        raise DataError(f"data.val_fraction={fraction!r}; must be a number in (0, 1), e.g. 0.1 (the last 10%)")
    text_field = data_cfg.get("text_field", "text")
    files = source_files(name)
    digest = content_hash(files, text_field=text_field)
    root = cache_root(data_cfg)
    text_dir = os.path.join(root, "text", digest[:32])
    scanned = scan(files, name=name, text_field=text_field, directory=text_dir)
    train_chars = split_chars(scanned["chars"], fraction)
    for split, count in (("train", train_chars), ("val", scanned["chars"] - train_chars)):
        if count == 0:
            raise DataError(f"data.name={name!r}: the {split} split is empty after the {1 - fraction:.0%}/"
                            f"{fraction:.0%} cut of {scanned['chars']} characters (data.val_fraction={fraction}); "
                            "give more text")
    tokenizer = corpus_tokenizer(data_cfg, files, scanned=scanned, directory=text_dir, given=tokenizer)
    expected = {"version": VERSION, "content_hash": digest, "tokenizer": tokenizer.fingerprint(),
                "val_fraction": fraction, "dtype": token_dtype(tokenizer.vocab_size).name}
    key = hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()[:32]
    directory = os.path.join(root, "tokens", key)
    meta = _valid(directory, expected)
    if meta is None:
        if os.path.isdir(directory):
            log.warning("the token cache %s does not match its source; rebuilding it", directory)
        _build(directory, expected, files, tokenizer=tokenizer, text_field=text_field, train_chars=train_chars,
               chars=scanned["chars"], name=name)
        meta = _valid(directory, expected)
        if meta is None:
            raise DataError(f"the token cache {directory} could not be written and read back; check the disk "
                            f"or set data.cache_dir (or ${CACHE_ENV})")
    tokens = {split: np.memmap(os.path.join(directory, f"{split}.bin"), dtype=meta["dtype"], mode="r")
              for split in ("train", "val")}
    dataset = TextDataset.from_tokens(name, tokens, data_hash=digest, tokenizer=tokenizer)
    dataset.cache_dir = directory
    return dataset
