"""Character-level tokenizer: one id per character; the vocabulary is saved as the run directory's vocab.json.

Text datasets build it from the training split (every distinct character, sorted by code point, as
nanoGPT does); synthetic tasks from their fixed symbol set. A character outside the vocabulary (in a
`sample --prompt`, or in a validation split with characters the training split lacks) is an error that names
the characters: the model has no embedding for them, and mapping them silently to another id would change
the text it sees.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import numpy as np


class DataError(ValueError):
    """A one-line problem with the data or its configuration (the CLI prints it without a traceback)."""


class Tokenizer:
    """Maps each character of `vocab` to its index; `.encode(str) -> int32 ids`, `.decode(ids) -> str`."""

    def __init__(self, vocab: Sequence[str]):
        vocab = list(vocab)
        single = all(isinstance(c, str) and len(c) == 1 for c in vocab)
        if not vocab or not single or len(set(vocab)) != len(vocab):
            raise DataError(f"tokenizer vocab must be distinct single characters; got {vocab[:10]!r}...")
        self.vocab = vocab
        self._index = {c: i for i, c in enumerate(vocab)}
        # Code point -> id table: encoding a megabyte of text is one NumPy gather, not a Python loop.
        self._table = np.full(max(map(ord, vocab)) + 1, -1, np.int32)
        self._table[[ord(c) for c in vocab]] = np.arange(len(vocab), dtype=np.int32)

    @classmethod
    def from_text(cls, text: str) -> Tokenizer:
        if not text:
            raise DataError("cannot build a character vocabulary from empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), np.uint32).astype(np.int64)
        ids = np.where(codes < self._table.size, self._table[np.minimum(codes, self._table.size - 1)], -1)
        if (ids < 0).any():
            unknown = sorted({chr(c) for c in codes[ids < 0]})
            shown = ", ".join(repr(c) for c in unknown[:20]) + (", ..." if len(unknown) > 20 else "")
            raise DataError(f"{len(unknown)} character(s) not in the {self.vocab_size}-character vocabulary: "
                            f"{shown} (character-level: the training text's characters, or a task's symbols)")
        return ids.astype(np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        ids = np.asarray(ids).reshape(-1)
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.size:
            raise DataError(f"token id(s) {sorted(set(bad.tolist()))[:10]} out of range for a vocabulary of "
                            f"{self.vocab_size}")
        return "".join(self.vocab[i] for i in ids.tolist())

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"kind": "char", "vocab": self.vocab}, f, ensure_ascii=False)

    @classmethod
    def load(cls, path: str) -> Tokenizer:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            vocab = data["vocab"]
        except FileNotFoundError:
            msg = f"{path} does not exist (`jaxformer train` writes vocab.json into the run directory)"
            raise DataError(msg) from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path} is not a jaxformer vocab.json ({type(e).__name__}: {e})") from None
        return cls(vocab)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"


def load_tokenizer(path: str) -> Tokenizer:
    """The tokenizer saved in a run directory's `vocab.json`."""
    return Tokenizer.load(path)
