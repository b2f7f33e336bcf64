"""What the training loop sees of a dataset: NumPy batches that are pure functions of (seed, split, step).

A batch is `{"inputs": int32 [B,T], "targets": int32 [B,T], "weights": float32 [B,T]}`: the model reads
`inputs`, the loss is the `weights`-weighted cross-entropy against `targets`. There is no iterator and no
hidden state: the batch of step `s` is drawn from a NumPy generator seeded with `(seed, split, stream, s)`,
so a run resumed at step `s` sees exactly the batches an uninterrupted run would have seen, and two runs with
the same seed see the same data.
"""

from __future__ import annotations

import numpy as np

from jaxformer.data.tokenizer import DataError, Tokenizer

SPLITS = ("train", "val")
_SPLIT_CODE = {"train": 0, "val": 1}
# One random stream per purpose, so eval batch i is never training batch i.
TRAIN_STREAM, EVAL_STREAM, WINDOW_STREAM = 0, 1, 2


def check_split(split: str) -> None:
    if split not in _SPLIT_CODE:
        raise DataError(f"split={split!r}; choose one of: {', '.join(SPLITS)}")


def rng(seed: int, split: str, stream: int, index: int) -> np.random.Generator:
    """The generator of one batch: a pure function of its arguments (NumPy's SeedSequence hashes them)."""
    check_split(split)
    for name, value in (("seed", seed), ("step", index)):
        if int(value) != value or value < 0:
            raise DataError(f"{name}={value!r}; must be a non-negative integer")
    return np.random.default_rng([int(seed), _SPLIT_CODE[split], stream, int(index)])


def check_sizes(*, batch_size: int, block_size: int) -> None:
    if batch_size < 1:
        raise DataError(f"data.batch_size={batch_size}; must be >= 1")
    if block_size < 1:
        raise DataError(f"data.block_size={block_size}; must be >= 1")


def check_windows(*, length: int, max_windows: int | None) -> None:
    if length < 1:
        raise DataError(f"length={length}; must be >= 1")
    if max_windows is not None and max_windows < 1:
        raise DataError(f"max_windows={max_windows}; must be >= 1")


class Dataset:
    """Base class of the text datasets and the synthetic tasks (the module docstring has the batch format).

    Attributes: `name` (the `data.name` it was loaded by), `tokenizer`, `vocab_size`, `has_accuracy` (True
    when examples have a prompt and an answer, so exact-match accuracy is defined), `data_hash` (sha256 of the
    source text, or of the task specification; it goes into the run manifest).
    """

    name: str
    tokenizer: Tokenizer
    has_accuracy: bool = False
    data_hash: str

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def batch(self, split: str, step: int, *, batch_size: int, block_size: int, seed: int) -> dict:
        """The batch of training step `step`: a pure function of (seed, split, step)."""
        raise NotImplementedError

    def eval_batches(self, split: str, *, batch_size: int, block_size: int, num_batches: int,
                     seed: int) -> list:
        """A fixed list of batches for periodic evaluation: the same at every call with the same arguments."""
        raise NotImplementedError

    def windows(self, split: str, *, length: int, max_windows: int | None = None) -> dict:
        """A batch of `length`-token rows for length-extrapolation evaluation (same keys as `batch`)."""
        raise NotImplementedError

    def split_tokens(self, split: str) -> np.ndarray | None:
        """The whole split as token ids (text datasets); None for synthetic tasks."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


def prepend_bos(batch: dict, bos_id: int) -> dict:
    """Rows of T - 1 tokens -> rows of T that start with a beginning-of-sequence token, not scored.

    inputs [x_0 .. x_{T-2}] -> [BOS, x_0 .. x_{T-2}]; targets [x_1 .. x_{T-1}] -> [x_0, x_1 .. x_{T-1}];
    weights -> [0, w ...]: the prediction made at the BOS position (the first token, from no context) is left out
    of the loss, every other position keeps its target and weight. NoPE needs a fixed first token to recover
    absolute positions (Kazemnejad et al. 2023, Thm. 1); any variant may use it.
    """
    inputs, targets, weights = (np.asarray(batch[k]) for k in ("inputs", "targets", "weights"))
    bos_Bx1 = np.full((inputs.shape[0], 1), bos_id, inputs.dtype)
    return {"inputs": np.concatenate([bos_Bx1, inputs], axis=1),
            "targets": np.concatenate([inputs[:, :1], targets], axis=1).astype(targets.dtype),
            "weights": np.concatenate([np.zeros((weights.shape[0], 1), weights.dtype), weights], axis=1)}


class BOSDataset(Dataset):
    """Any dataset with a BOS token (id = the tokenizer's vocabulary size) prepended to every row (`data.bos`).

    Built at the batch level, so text and every synthetic task get it alike: each call asks the wrapped dataset
    for rows one token shorter and prepends BOS (`prepend_bos`), so a row still holds `block_size` tokens and a
    synthetic example is sized to fit the shorter row. The model's vocabulary is one larger than the tokenizer's.
    """

    def __init__(self, inner: Dataset):
        self.inner = inner
        self.name, self.tokenizer, self.has_accuracy = inner.name, inner.tokenizer, inner.has_accuracy
        self.bos_id = inner.tokenizer.vocab_size
        self.data_hash = inner.data_hash

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size + 1

    @staticmethod
    def _shorter(length: int) -> int:
        if length < 2:
            raise DataError(f"data.bos=True needs rows of at least 2 tokens (BOS + one); got {length}")
        return length - 1

    def batch(self, split: str, step: int, *, batch_size: int, block_size: int, seed: int) -> dict:
        return prepend_bos(self.inner.batch(split, step, batch_size=batch_size, block_size=self._shorter(block_size),
                                            seed=seed), self.bos_id)

    def eval_batches(self, split: str, *, batch_size: int, block_size: int, num_batches: int, seed: int) -> list:
        batches = self.inner.eval_batches(split, batch_size=batch_size, block_size=self._shorter(block_size),
                                          num_batches=num_batches, seed=seed)
        return [prepend_bos(b, self.bos_id) for b in batches]

    def windows(self, split: str, *, length: int, max_windows: int | None = None) -> dict:
        return prepend_bos(self.inner.windows(split, length=self._shorter(length), max_windows=max_windows),
                           self.bos_id)

    def split_tokens(self, split: str):
        return self.inner.split_tokens(split)

    # The per-size protocol of the synthetic tasks (extrapolation.evaluate_sizes): the wrapped task's, BOS first.
    @property
    def task(self):
        return getattr(self.inner, "task", None)

    @property
    def max_items(self) -> int:
        return getattr(self.inner, "max_items", 0)

    def sized(self, split: str, *, items: int, count: int, length: int) -> dict:
        return prepend_bos(self.inner.sized(split, items=items, count=count, length=self._shorter(length)),
                           self.bos_id)

    def __getattr__(self, name: str):  # the wrapped dataset's own API (a task's answer(), random_example(), ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
