"""Synthetic tasks generated in code (no download): the embedded default, and clean PE experiments.

An example is a prompt followed by its answer, e.g. copy `abca|` -> `abca`. One example per row,
left-aligned and padded with `_`; `inputs`/`targets` are the row and the row shifted by one, and `weights`
is 1 exactly where the target is an answer token. An example is exact-match correct when every answer token
is the argmax prediction (teacher forcing: the answer's earlier tokens are given). All tasks share one
vocabulary of single characters, so the character tokenizer (and `jaxformer sample --prompt "abca|"`) works
on them too:

    `_` pad (id 0)   `|` separator (id 1)   `0`..`9` digits (ids 2-11)   `a`, `b`, ... (`num_symbols`)

Each task has a size n (items in the prompt); how an example grows with n:

    copy                s_1..s_n | s_1..s_n           2n+1 tokens, n answer tokens
    reverse             s_1..s_n | s_n..s_1           2n+1 tokens, n answer tokens
    associative_recall  k_1 v_1 .. k_n v_n | q v      2n+3 tokens, 1 answer token: the value bound to key q
                                                      (keys may repeat: the last binding counts)
    induction           s_1..s_n | q s_{j+1}          n+3 tokens, 1 answer token: the symbol after the last
                                                      s_j = q in s_1..s_{n-1} (Olsson et al., 2022)
    count               s_1..s_n | q c                n+2+digits(c) tokens: c = occurrences of q in s, in
                                                      decimal (at most digits(n) answer tokens)

Symbols are i.i.d. uniform at every length, so a longer example differs from a shorter one only in n.
Training rows (`batch`, `eval_batches`) draw n uniformly from [min_items, max_items]; max_items = 0 means the
largest n that fits a row (`block_size + 1` tokens), min_items = 0 means max_items: by default every example
has the largest size that fits. `windows(length=L)` generates every example at the largest n that fits L + 1
tokens, so evaluating at 2x, 4x, 8x the training block size tests 2x, 4x, 8x longer prompts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import string
from collections.abc import Callable

import numpy as np

from jaxformer.data.dataset import (
    EVAL_STREAM,
    TRAIN_STREAM,
    WINDOW_STREAM,
    Dataset,
    check_sizes,
    check_windows,
    rng,
)
from jaxformer.data.tokenizer import DataError, Tokenizer

PAD, SEP, DIGIT0, SYMBOL0 = 0, 1, 2, 12
SYMBOLS = string.ascii_lowercase + string.ascii_uppercase
GENERATOR_VERSION = 1  # part of data_hash: bump when a task's examples change for the same seed
WINDOW_SEED = 0  # windows() are the same examples for every run, so runs are compared on the same prompts


def vocabulary(num_symbols: int) -> list:
    return ["_", "|", *string.digits, *SYMBOLS[:num_symbols]]


# A task: (generator, n, k) -> (prompt ids, answer ids), with symbols SYMBOL0 .. SYMBOL0 + k - 1.


def _copy(g: np.random.Generator, n: int, k: int):
    s = SYMBOL0 + g.integers(0, k, n)
    return [*s, SEP], list(s)


def _reverse(g: np.random.Generator, n: int, k: int):
    s = SYMBOL0 + g.integers(0, k, n)
    return [*s, SEP], list(s[::-1])


def _associative_recall(g: np.random.Generator, n: int, k: int):
    keys, values = SYMBOL0 + g.integers(0, k, (2, n))
    q = keys[g.integers(0, n)]
    last = np.flatnonzero(keys == q)[-1]
    return [*np.stack([keys, values], 1).reshape(-1), SEP, q], [values[last]]


def _induction(g: np.random.Generator, n: int, k: int):
    s = SYMBOL0 + g.integers(0, k, n)
    q = s[g.integers(0, n - 1)]  # a symbol that has a successor
    last = np.flatnonzero(s[:-1] == q)[-1]
    return [*s, SEP, q], [s[last + 1]]


def _count(g: np.random.Generator, n: int, k: int):
    s = SYMBOL0 + g.integers(0, k, n)
    q = SYMBOL0 + g.integers(0, k)
    return [*s, SEP, q], [DIGIT0 + int(d) for d in str(int((s == q).sum()))]


# A task's solver: prompt ids (symbols already checked) -> answer ids, for a prompt a user typed
# (`jaxformer sample --prompt "abca|"`); ValueError when the prompt is not of the task's form.


def _split(prompt, tail: int):
    """(s_1..s_n, the `tail` tokens after the separator) of `s_1..s_n | tail`."""
    prompt = list(prompt)
    head, sep, rest = prompt[:len(prompt) - tail - 1], prompt[len(prompt) - tail - 1:][:1], prompt[len(prompt) - tail:]
    if not head or sep != [SEP] or SEP in head or SEP in rest:
        raise ValueError("form")
    return head, rest


def _solve_copy(prompt):
    return _split(prompt, 0)[0]


def _solve_reverse(prompt):
    return _split(prompt, 0)[0][::-1]


def _solve_associative_recall(prompt):
    pairs, (q,) = _split(prompt, 1)
    keys, values = pairs[0::2], pairs[1::2]
    if len(keys) != len(values) or q not in keys:
        raise ValueError("form")
    return [values[len(keys) - 1 - keys[::-1].index(q)]]


def _solve_induction(prompt):
    s, (q,) = _split(prompt, 1)
    if q not in s[:-1]:
        raise ValueError("form")
    return [s[len(s) - 2 - s[-2::-1].index(q) + 1]]


def _solve_count(prompt):
    s, (q,) = _split(prompt, 1)
    return [DIGIT0 + int(d) for d in str(s.count(q))]


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    make: Callable  # (generator, n, num_symbols) -> (prompt ids, answer ids)
    length: Callable  # n -> the most tokens (prompt + answer) an example of size n has
    min_items: int
    solve: Callable | None = None  # prompt ids -> answer ids (ValueError if not of the task's form)
    form: str = ""  # a prompt of the task's form, for error messages
    vocabulary: Callable | None = None  # num_symbols -> its tokens, when not the shared `vocabulary` (extends it)
    settings: tuple = ()  # ((field, default), ...): data.synthetic fields `make` and `length` take as keywords
    check: Callable | None = None  # (settings, num_symbols) -> a one-line error, or None when they are valid
    # `make` takes depth= in [0, 1] (where the information sits; None = drawn) and returns (prompt, answer, mask,
    # sources): mask 0 marks answer tokens that are given (not predicted), sources the distance back from each
    # answer token to the token it copies (-1: given). See data/retrieval.py.
    placed: bool = False


TASKS = {t.name: t for t in (
    Task("copy", _copy, lambda n: 2 * n + 1, 1, _solve_copy, "symbols then '|', e.g. 'abca|'"),
    Task("reverse", _reverse, lambda n: 2 * n + 1, 1, _solve_reverse, "symbols then '|', e.g. 'abca|'"),
    Task("associative_recall", _associative_recall, lambda n: 2 * n + 3, 1, _solve_associative_recall,
         "key-value pairs, '|', then a key that occurs, e.g. 'abcd|c'"),
    Task("induction", _induction, lambda n: n + 3, 2, _solve_induction,
         "symbols, '|', then a symbol that occurs before the last one, e.g. 'abcab|b'"),
    Task("count", _count, lambda n: n + 2 + len(str(n)), 1, _solve_count,
         "symbols, '|', then the symbol to count, e.g. 'abca|a'"),
)}


def items_that_fit(task: Task, length: int, settings: dict | None = None) -> int:
    """The largest n whose examples fit a row of `length` inputs (length + 1 tokens); 0 if none does."""
    size = lambda n: task.length(n, **(settings or {}))
    lo, hi = 0, length + 1  # length(n) > n for every task, so n <= length
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if size(mid) <= length + 1 else (lo, mid - 1)
    return lo


class SyntheticDataset(Dataset):
    """One task of TASKS and its settings (data.synthetic: num_symbols, min/max_items, eval_examples)."""

    has_accuracy = True

    def __init__(self, task: str, *, num_symbols: int = 16, min_items: int = 0, max_items: int = 0,
                 eval_examples: int = 256, settings: dict | None = None):
        if task not in TASKS:
            raise DataError(f"synthetic task {task!r}; choose one of: {', '.join(TASKS)}")
        if not 2 <= num_symbols <= len(SYMBOLS):
            raise DataError(f"data.synthetic.num_symbols={num_symbols}; must be in [2, {len(SYMBOLS)}]")
        minimum = TASKS[task].min_items
        for field, value in (("min_items", min_items), ("max_items", max_items)):
            if value and value < minimum:
                raise DataError(f"data.synthetic.{field}={value}; synthetic/{task} examples have at least "
                                f"{minimum} items (0 = automatic)")
        if min_items and max_items and max_items < min_items:
            raise DataError(f"data.synthetic.max_items={max_items} is below "
                            f"data.synthetic.min_items={min_items}")
        if eval_examples < 1:
            raise DataError(f"data.synthetic.eval_examples={eval_examples}; must be >= 1")
        self.settings = {f: (settings or {}).get(f, default) for f, default in TASKS[task].settings}
        problem = TASKS[task].check and TASKS[task].check(self.settings, num_symbols)
        if problem:
            raise DataError(problem)
        self.task = TASKS[task]
        self.name = f"synthetic/{task}"
        self.num_symbols = num_symbols
        self.min_items = min_items
        self.max_items = max_items
        self.eval_examples = eval_examples
        self.tokenizer = Tokenizer((self.task.vocabulary or vocabulary)(num_symbols))
        spec = {"task": task, "num_symbols": num_symbols, "min_items": self.min_items, "max_items": max_items,
                "vocab": self.tokenizer.vocab, "generator": GENERATOR_VERSION, **self.settings}
        self.data_hash = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def length(self, n: int) -> int:
        """Tokens (prompt + answer) of an example of size n under this dataset's settings."""
        return self.task.length(n, **self.settings)

    def items_that_fit(self, length: int) -> int:
        return items_that_fit(self.task, length, self.settings)

    def example(self, g: np.random.Generator, n: int) -> tuple:
        """(prompt ids, answer ids) of one example of size n."""
        return self.placed_example(g, n)[:2]

    def placed_example(self, g: np.random.Generator, n: int, depth: float | None = None) -> tuple:
        """(prompt, answer, mask, sources) of one example of size n (`Task.placed`; the other tasks: every answer
        token predicted, sources -1); `depth` None = drawn as in training."""
        if self.task.placed:
            prompt, answer, mask, sources = self.task.make(g, n, self.num_symbols, depth=depth, **self.settings)
        else:
            prompt, answer = self.task.make(g, n, self.num_symbols, **self.settings)
            mask, sources = [1] * len(answer), [-1] * len(answer)
        return (np.asarray(prompt, np.int32), np.asarray(answer, np.int32), np.asarray(mask, np.float32),
                np.asarray(sources, np.int32))

    def answer(self, prompt_ids) -> np.ndarray:
        """The right answer to a prompt of the task (e.g. one a user typed); a one-line DataError naming the task's
        form when the prompt is not of it."""
        prompt = [int(t) for t in prompt_ids]
        symbols = range(SYMBOL0, SYMBOL0 + self.num_symbols)
        try:
            if self.task.solve is None or any(t != SEP and t not in symbols for t in prompt):
                raise ValueError("form")
            return np.asarray(self.task.solve(prompt), np.int32)
        except ValueError:
            raise DataError(f"prompt {self.tokenizer.decode(prompt)!r} is not a {self.name} prompt: "
                            f"{self.task.form or 'see jaxformer/data/synthetic.py'} (symbols "
                            f"{SYMBOLS[0]}..{SYMBOLS[self.num_symbols - 1]})") from None

    def random_example(self, seed: int, *, block_size: int) -> tuple:
        """(prompt ids, answer ids) of one example drawn as training draws them (n in the training range)."""
        g = np.random.default_rng(seed)
        low, high = self._size_range(block_size)
        return self.example(g, int(g.integers(low, high + 1)))

    def _size_range(self, block_size: int) -> tuple:
        fit = self.items_that_fit(block_size)
        high = self.max_items or fit
        low = self.min_items or high
        if high > fit or low > high or low < self.task.min_items:
            raise DataError(f"data.block_size={block_size} holds {self.name} examples of at most {fit} "
                            f"items; data.synthetic.min_items={self.min_items}, "
                            f"max_items={self.max_items} (0 = as many as fit)")
        return low, high

    def _rows(self, g: np.random.Generator, sizes, length: int, depth: float | None = None,
              distances: bool = False) -> dict:
        """Rows of examples of the given sizes; with `distances`, also `distance` `[N, T]`: at each predicted
        position, how far back (in tokens, from the token predicted) the token it copies sits (-1: none)."""
        seq = np.full((len(sizes), length + 1), PAD, np.int32)
        weights = np.zeros((len(sizes), length), np.float32)
        distance = np.full((len(sizes), length), -1, np.int32)
        for b, n in enumerate(sizes):
            prompt, answer, mask, sources = self.placed_example(g, int(n), depth)
            p, a = prompt.size, answer.size
            seq[b, :p] = prompt
            seq[b, p:p + a] = answer
            weights[b, p - 1:p - 1 + a] = mask  # position t predicts token t + 1
            distance[b, p - 1:p - 1 + a] = sources
        rows = {"inputs": seq[:, :-1], "targets": seq[:, 1:], "weights": weights}
        return {**rows, "distance": distance} if distances else rows

    def _random_rows(self, g: np.random.Generator, batch_size: int, block_size: int) -> dict:
        check_sizes(batch_size=batch_size, block_size=block_size)
        low, high = self._size_range(block_size)
        return self._rows(g, g.integers(low, high + 1, batch_size), block_size)

    def batch(self, split: str, step: int, *, batch_size: int, block_size: int, seed: int) -> dict:
        return self._random_rows(rng(seed, split, TRAIN_STREAM, step), batch_size, block_size)

    def eval_batches(self, split: str, *, batch_size: int, block_size: int, num_batches: int,
                     seed: int) -> list:
        return [self._random_rows(rng(seed, split, EVAL_STREAM, i), batch_size, block_size)
                for i in range(num_batches)]

    def windows(self, split: str, *, length: int, max_windows: int | None = None) -> dict:
        """`max_windows` (default: data.synthetic.eval_examples) examples at the largest size fitting
        `length`; the same examples at every call (a fixed seed per split and length)."""
        check_windows(length=length, max_windows=max_windows)
        count = self.eval_examples if max_windows is None else max_windows
        g = rng(WINDOW_SEED, split, WINDOW_STREAM, length)
        n = self.items_that_fit(length)
        if n < self.task.min_items or self.length(n) > length + 1:
            raise DataError(f"length={length} is too short for a {self.name} example "
                            f"(at least {self.length(self.task.min_items) - 1})")
        return self._rows(g, [n] * count, length)

    def sized(self, split: str, *, items: int, count: int, length: int) -> dict:
        """`count` examples of exactly `items` items in rows of `length` tokens (the same at every call): the
        literature's per-length evaluation. Rows are padded after the answer, which a causal model cannot see."""
        check_windows(length=length, max_windows=count)
        if items < self.task.min_items or self.length(items) > length + 1:
            raise DataError(f"{self.name} examples of {items} items need {self.length(items) - 1} tokens "
                            f"and at least {self.task.min_items} items; got a row of {length}")
        return self._rows(rng(WINDOW_SEED, split, WINDOW_STREAM, 1_000_000 + items), [items] * count, length)

    def probe(self, split: str, *, length: int, depth: float, count: int) -> dict:
        """`count` examples that fill a row of `length` inputs (the largest size that fits) with the information
        at `depth` in [0, 1] (a `Task.placed` task: the key's depth in the filler, the fraction of MQAR pairs
        before it), rows plus `distance` (see `_rows`); the same examples at every call. The literature's
        per-(length, depth) evaluation (Mohtashami & Jaggi 2023)."""
        check_windows(length=length, max_windows=count)
        if not self.task.placed:
            raise DataError(f"{self.name} has no depth to place; per-depth evaluation needs one of: "
                            f"{', '.join(t.name for t in TASKS.values() if t.placed)}")
        if not 0.0 <= depth <= 1.0:
            raise DataError(f"depth={depth!r}; a depth is a fraction of the context, in [0, 1]")
        n = self.items_that_fit(length)
        if self.length(n) > length + 1:
            raise DataError(f"length={length} is too short for a {self.name} example: the key and the query alone "
                            f"take {self.length(0) - 1} tokens")
        index = 2_000_000_000 + int(round(depth * 1000)) * 1_000_000 + length  # apart from windows() and sized()
        return self._rows(rng(WINDOW_SEED, split, WINDOW_STREAM, index), [n] * count, length, depth, distances=True)


def trivial_correct(rows: dict) -> dict[str, np.ndarray]:
    """Correctness `[N, T]` of two trivial predictors on rows of examples (the baselines every accuracy table shows):
    `majority`, the most frequent target among the rows at each predicted position (it knows the answer
    distribution), and `repeat`, each token predicted as the one before it (teacher-forced repeat-previous-token)."""
    weights, targets, inputs = np.asarray(rows["weights"]) > 0, np.asarray(rows["targets"]), np.asarray(rows["inputs"])
    majority = np.zeros(targets.shape, bool)
    for t in np.flatnonzero(weights.any(0)):
        values, counts = np.unique(targets[weights[:, t], t], return_counts=True)
        majority[:, t] = targets[:, t] == values[np.argmax(counts)]
    return {"majority": majority, "repeat": inputs == targets}


def load_synthetic(data_cfg) -> SyntheticDataset:
    task = data_cfg.name[len("synthetic/"):]
    s = data_cfg.synthetic
    settings = {f: s[f] for f, _ in TASKS[task].settings if f in s} if task in TASKS else {}
    return SyntheticDataset(task, num_symbols=s.num_symbols, min_items=s.min_items, max_items=s.max_items,
                            eval_examples=s.eval_examples, settings=settings)
