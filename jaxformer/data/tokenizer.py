"""Tokenizers behind one interface (`encode`, `decode`, `vocab_size`, `save`, `load`), saved in the run directory.

- `Tokenizer` (`data.tokenizer=char`): one id per character, saved as `vocab.json`;
- `SubwordTokenizer`: a Hugging Face `tokenizers` tokenizer saved as `tokenizer.json` -- a byte-level BPE trained
  on the training split (`data.tokenizer=bpe`, `data.vocab_size` ids; GPT-2's scheme, Radford et al. 2019), or an
  imported model's own (`data.tokenizer=pretrained`, written by `jaxformer import`).

`run_tokenizer(workdir)` loads whichever the run directory holds.

Character-level:

Text datasets build it from the training split (every distinct character, sorted by code point, as
nanoGPT does); synthetic tasks from their fixed symbol set. A character outside the vocabulary (in a
`sample --prompt`, or in a validation split with characters the training split lacks) is an error that names
the characters: the model has no embedding for them, and mapping them silently to another id would change
the text it sees.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence

import numpy as np

TOKENIZER_KINDS = ("char", "bpe", "pretrained")  # data.tokenizer
SUBWORD_FILE, CHAR_FILE = "tokenizer.json", "vocab.json"


class DataError(ValueError):
    """A one-line problem with the data or its configuration (the CLI prints it without a traceback)."""


def checked_ids(ids: Iterable[int], vocab_size: int) -> np.ndarray:
    """`ids` as a flat array, or a DataError naming the ids outside [0, vocab_size)."""
    ids = np.asarray(ids).reshape(-1)
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.size:
        raise DataError(f"token id(s) {sorted(set(bad.tolist()))[:10]} out of range for a vocabulary of {vocab_size}")
    return ids


class Tokenizer:
    """Maps each character of `vocab` to its index; `.encode(str) -> int32 ids`, `.decode(ids) -> str`."""

    filename = CHAR_FILE  # its file in a run directory

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
        ids = checked_ids(ids, self.vocab_size)
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

    def token_text(self, token_id: int) -> str:
        return self.vocab[int(token_id)]

    def fingerprint(self) -> str:
        """sha256 of what defines the ids (the vocabulary): the token cache's key (data/token_cache.py)."""
        return hashlib.sha256(json.dumps({"kind": "char", "vocab": self.vocab}).encode()).hexdigest()

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"


def load_tokenizer(path: str) -> Tokenizer:
    """The tokenizer saved in a run directory's `vocab.json`."""
    return Tokenizer.load(path)


class SubwordTokenizer:
    """A `tokenizers.Tokenizer` (byte-level BPE, SentencePiece-style BPE, ...) read from or written to tokenizer.json.

    Encoding adds no special tokens (the text is the model's input as is, as in nanoGPT's `prepare.py`).
    """

    filename = SUBWORD_FILE

    def __init__(self, tokenizer, *, vocab_size: int | None = None):
        # A saved tokenizer.json may pad or truncate every encoding (sentence-transformers' pad to 128): the model
        # gets the text's own tokens, and a text too long for its positions is refused, never cut.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size or tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def train_bpe(cls, text: str, vocab_size: int) -> SubwordTokenizer:
        """A byte-level BPE of `vocab_size` ids (256 bytes + merges) learnt from `text`; deterministic."""
        if vocab_size >= 257 and not text:
            raise DataError("cannot train a BPE tokenizer on empty text")
        return cls.train_bpe_iterator([text], vocab_size)

    @classmethod
    def train_bpe_iterator(cls, pieces: Iterable[str], vocab_size: int) -> SubwordTokenizer:
        """`train_bpe` on a text given as consecutive pieces (a corpus streamed from disk)."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise DataError(f"data.vocab_size={vocab_size}; a byte-level BPE needs at least 257 (256 bytes + merges)")
        tokenizer = HFTokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        # One chunk per line keeps the trainer's word counts exact and its memory small.
        lines = (line for piece in pieces for line in piece.splitlines(keepends=True))
        tokenizer.train_from_iterator(lines, trainer=trainer)
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tokenizer.encode(text, add_special_tokens=False).ids, np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        ids = checked_ids(ids, self.vocab_size)
        return self._tokenizer.decode(ids.tolist(), skip_special_tokens=False)

    def encode_pair(self, text: str, pair: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, token types) with the tokenizer's own special tokens, as its post-processor places them: BERT's
        [CLS] A [SEP] B [SEP] with types 0..0 1..1, RoBERTa's <s> A </s></s> B </s>. A model's input form."""
        encoding = self._tokenizer.encode(text, pair, add_special_tokens=True)
        return np.asarray(encoding.ids, np.int32), np.asarray(encoding.type_ids, np.int32)

    def token_id(self, token: str) -> int | None:
        """The id of a (special) token such as "[MASK]", None when the vocabulary has no such token."""
        return self._tokenizer.token_to_id(token)

    def token_text(self, token_id: int) -> str:
        """One token's label: its text where it decodes alone, else its vocabulary string (a partial UTF-8 byte)."""
        text = self._tokenizer.decode([int(token_id)], skip_special_tokens=False)
        return text if "\ufffd" not in text else (self._tokenizer.id_to_token(int(token_id)) or text)

    def fingerprint(self) -> str:
        """sha256 of the serialized tokenizer (vocabulary, merges, normalizer, pre-tokenizer)."""
        return hashlib.sha256(self._tokenizer.to_str().encode()).hexdigest()

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._tokenizer.save(path)

    @classmethod
    def load(cls, path: str) -> SubwordTokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        if not os.path.exists(path):
            raise DataError(f"{path} does not exist (a subword run keeps its tokenizer.json in the run directory)")
        try:
            return cls(HFTokenizer.from_file(path))
        except Exception as e:  # tokenizers raises its own Exception type for a malformed file
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"{path} is not a readable tokenizer.json ({first})") from None

    def __repr__(self) -> str:
        return f"SubwordTokenizer(vocab_size={self.vocab_size})"


def run_tokenizer(workdir: str) -> Tokenizer | SubwordTokenizer:
    """The tokenizer a run directory holds: tokenizer.json (subword) or vocab.json (characters)."""
    subword = os.path.join(workdir, SUBWORD_FILE)
    if os.path.exists(subword):
        return SubwordTokenizer.load(subword)
    char = os.path.join(workdir, CHAR_FILE)
    if not os.path.exists(char):
        raise DataError(f"--workdir={workdir} has no vocab.json or tokenizer.json; is it a run directory made by "
                        "`jaxformer train` or `jaxformer import`?")
    return Tokenizer.load(char)


def text_tokenizer(data_cfg, train_text: str, given=None):
    """The tokenizer of a text dataset: `given` (a run directory's), else what `data.tokenizer` says."""
    if given is not None:
        return given
    kind = data_cfg.get("tokenizer", "char")
    if kind == "char":
        return Tokenizer.from_text(train_text)
    if kind == "bpe":
        return SubwordTokenizer.train_bpe(train_text, data_cfg.vocab_size)
    if kind == "pretrained":
        raise DataError("data.tokenizer='pretrained' reads the run directory's tokenizer.json (made by "
                        "`jaxformer import`); use it on an imported run, or choose char or bpe")
    raise DataError(f"data.tokenizer={kind!r}; choose one of: {', '.join(TOKENIZER_KINDS)}")


def cached_tokenizer(data_cfg, workdir: str):
    """A run's saved subword tokenizer (the BPE it trained, or an imported model's), else None (characters are
    rebuilt from the text, identically)."""
    if data_cfg.get("tokenizer", "char") == "char":
        return None
    return SubwordTokenizer.load(os.path.join(workdir, SUBWORD_FILE))
