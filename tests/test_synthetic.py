"""Synthetic tasks: every answer is what the task says, weights sit on answers only, any length, seeded."""

import numpy as np
import pytest

from jaxformer import data as data_lib
from jaxformer.data import synthetic

TASKS = [name for name, t in synthetic.TASKS.items() if t.vocabulary is None]  # the others: test_algorithmic.py


def expected_answer(task: str, prompt: str) -> str:
    """Each task's answer, recomputed from the prompt text with plain string operations."""
    body, query = prompt.split("|")
    if task == "copy":
        return body
    if task == "reverse":
        return body[::-1]
    if task == "associative_recall":
        bindings = dict(zip(body[0::2], body[1::2], strict=True))  # later pairs overwrite earlier ones
        return bindings[query]
    if task == "induction":
        return body[body[:-1].rindex(query) + 1]
    if task == "count":
        return str(body.count(query))
    raise AssertionError(task)


def split_rows(ds, batch):
    """[(prompt, answer, padding)] of each row, located through the weights."""
    rows = []
    for inputs, targets, weights in zip(batch["inputs"], batch["targets"], batch["weights"], strict=True):
        answer = np.flatnonzero(weights)
        assert answer.size and np.all(np.diff(answer) == 1), "answer positions are one contiguous run"
        start, end = answer[0], answer[-1] + 1
        np.testing.assert_array_equal(inputs[1:], targets[:-1])  # targets are inputs shifted by one
        rows.append((ds.tokenizer.decode(inputs[: start + 1]), ds.tokenizer.decode(targets[start:end]),
                     ds.tokenizer.decode(targets[end:])))
    return rows


def make(task, **kw):
    return synthetic.SyntheticDataset(task, **kw)


@pytest.mark.parametrize("task", TASKS)
def test_answers_are_what_the_task_says_and_only_answers_are_weighted(task):
    ds = make(task, min_items=synthetic.TASKS[task].min_items)
    batch = ds.batch("train", 3, batch_size=64, block_size=24, seed=0)
    assert batch["inputs"].dtype == np.int32 and batch["targets"].dtype == np.int32
    assert batch["weights"].dtype == np.float32 and batch["inputs"].shape == (64, 24)
    assert set(np.unique(batch["weights"])) <= {0.0, 1.0}
    sizes = set()
    for prompt, answer, padding in split_rows(ds, batch):
        assert prompt.count("|") == 1 and "_" not in prompt
        assert answer == expected_answer(task, prompt)
        assert set(padding) <= {"_"}  # nothing after the answer but padding (never weighted)
        sizes.add(len(prompt.split("|")[0]))
    assert len(sizes) > 3, "sizes n vary when min_items < max_items"


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("length", [8, 32, 64, 256])
def test_windows_at_any_length_use_the_largest_size_that_fits(task, length):
    ds = make(task)
    w = ds.windows("val", length=length, max_windows=6)
    assert w["inputs"].shape == w["targets"].shape == w["weights"].shape == (6, length)
    n = synthetic.items_that_fit(synthetic.TASKS[task], length)
    assert synthetic.TASKS[task].length(n) <= length + 1 < synthetic.TASKS[task].length(n + 1)
    for prompt, answer, _ in split_rows(ds, w):
        assert answer == expected_answer(task, prompt)
        body = prompt.split("|")[0]
        assert len(body) == (2 * n if task == "associative_recall" else n)
    again = ds.windows("val", length=length, max_windows=6)
    for key in w:
        np.testing.assert_array_equal(w[key], again[key])  # a fixed set


def test_length_scaling_of_each_task():
    # copy/reverse: 2n+1 tokens, recall: 2n+3, induction: n+3, count: n+2+digits.
    fits = {t: [synthetic.items_that_fit(synthetic.TASKS[t], L) for L in (16, 32, 64, 128)] for t in TASKS}
    assert fits == {"copy": [8, 16, 32, 64], "reverse": [8, 16, 32, 64],
                    "associative_recall": [7, 15, 31, 63], "induction": [14, 30, 62, 126],
                    "count": [13, 29, 61, 124]}


def test_default_windows_count_and_same_answer_tokens_per_length():
    ds = make("copy", eval_examples=5)
    assert ds.windows("val", length=16)["inputs"].shape == (5, 16)
    # copy at length L predicts L/2 answer tokens per row: W = tokens / (L/2) rows keeps the total fixed.
    totals = {L: ds.windows("val", length=L, max_windows=512 // L)["weights"].sum() for L in (16, 32, 64)}
    assert set(totals.values()) == {256.0}


@pytest.mark.parametrize("task", TASKS)
def test_batches_are_a_pure_function_of_seed_split_step(task):
    kw = dict(batch_size=8, block_size=20)
    a = make(task).batch("train", 7, seed=3, **kw)
    b = make(task).batch("train", 7, seed=3, **kw)  # a fresh dataset object: a restarted run
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    for other in (make(task).batch("train", 8, seed=3, **kw), make(task).batch("train", 7, seed=4, **kw),
                  make(task).batch("val", 7, seed=3, **kw)):
        assert not np.array_equal(a["inputs"], other["inputs"])


def test_eval_batches_are_fixed_and_distinct_from_training_batches():
    ds = make("reverse")
    kw = dict(batch_size=4, block_size=16, seed=0)
    first = ds.eval_batches("val", num_batches=3, **kw)
    assert len(first) == 3
    for x, y in zip(first, make("reverse").eval_batches("val", num_batches=3, **kw), strict=True):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
    assert not np.array_equal(first[0]["inputs"], ds.batch("val", 0, **kw)["inputs"])


def test_default_sizes_are_the_largest_that_fit_and_min_max_items_bound_them():
    ds = make("copy")
    rows = split_rows(ds, ds.batch("train", 0, batch_size=16, block_size=20, seed=0))
    assert {len(p) - 1 for p, _, _ in rows} == {10}
    ds = make("copy", min_items=2, max_items=4)
    rows = split_rows(ds, ds.batch("train", 0, batch_size=64, block_size=20, seed=0))
    assert {len(p) - 1 for p, _, _ in rows} == {2, 3, 4}


@pytest.mark.parametrize("kw, match", [
    (dict(max_items=11), r"data.block_size=20 holds synthetic/copy examples of at most 10 items"),
    (dict(min_items=1, task="induction"), r"data.synthetic.min_items=1; synthetic/induction .* at least 2"),
    (dict(min_items=5, max_items=3), r"data.synthetic.max_items=3 is below data.synthetic.min_items=5"),
    (dict(num_symbols=60), r"data.synthetic.num_symbols=60"),
])
def test_bad_settings_are_one_line_errors(kw, match):
    task = kw.pop("task", "copy")
    with pytest.raises(data_lib.DataError, match=match) as e:
        make(task, **kw).batch("train", 0, batch_size=2, block_size=20, seed=0)
    assert "\n" not in str(e.value)


def test_bad_split_step_and_seed():
    ds = make("copy")
    with pytest.raises(ValueError, match="split='test'; choose one of: train, val"):
        ds.batch("test", 0, batch_size=2, block_size=8, seed=0)
    with pytest.raises(ValueError, match="seed=-1"):
        ds.batch("train", 0, batch_size=2, block_size=8, seed=-1)
    with pytest.raises(ValueError, match="too short"):
        make("induction").windows("val", length=2)


def test_vocabulary_hash_and_load_through_config():
    cfg = data_lib.default_config()
    cfg.name = "synthetic/count"
    ds = data_lib.load_dataset(cfg)
    assert ds.has_accuracy and ds.split_tokens("train") is None
    assert ds.tokenizer.vocab[:12] == list("_|0123456789") and ds.vocab_size == 12 + cfg.synthetic.num_symbols
    assert ds.tokenizer.decode(ds.tokenizer.encode("abca|")) == "abca|"
    hashes = {make(t).data_hash for t in TASKS} | {make("copy", num_symbols=8).data_hash}
    assert len(hashes) == len(TASKS) + 1 and make("copy").data_hash == make("copy").data_hash


@pytest.mark.parametrize("task", TASKS)
def test_answer_solves_any_prompt_of_the_task_as_the_strings_say(task):
    """`answer` (what `jaxformer sample --prompt` checks against) agrees with the string-level answer on random
    examples, and with the generator's own answer."""
    ds = make(task)
    g = np.random.default_rng(7)
    for _ in range(200):
        n = int(g.integers(synthetic.TASKS[task].min_items, 20))
        prompt, answer = ds.example(g, n)
        solved = ds.answer(prompt)
        np.testing.assert_array_equal(solved, answer)
        assert ds.tokenizer.decode(solved) == expected_answer(task, ds.tokenizer.decode(prompt))


@pytest.mark.parametrize("task,prompt", [
    ("copy", "ab"), ("copy", "|"), ("copy", "ab|c"), ("copy", "a|b|"), ("copy", "a1|"), ("copy", "a_|"),
    ("reverse", "abc"), ("associative_recall", "abc|a"), ("associative_recall", "abcd|e"),
    ("induction", "abcd|d"), ("count", "abc|"), ("count", "abc|ab"),
])
def test_answer_refuses_a_prompt_not_of_the_task_in_one_line(task, prompt):
    ds = make(task)
    ids = ds.tokenizer.encode(prompt)
    with pytest.raises(data_lib.DataError, match=f"is not a synthetic/{task} prompt"):
        ds.answer(ids)


def test_random_example_is_drawn_from_the_training_range_and_seeded():
    ds = make("copy", min_items=3, max_items=9)
    sizes = {len(ds.random_example(seed, block_size=32)[1]) for seed in range(200)}
    assert sizes == set(range(3, 10))
    a, b = ds.random_example(5, block_size=32), ds.random_example(5, block_size=32)
    np.testing.assert_array_equal(a[0], b[0])


def test_trivial_baselines_by_hand():
    rows = {"inputs": np.array([[5, 1, 7, 7], [6, 1, 8, 9], [5, 1, 7, 3]]),
            "targets": np.array([[1, 7, 7, 2], [1, 8, 9, 2], [1, 7, 3, 2]]),
            "weights": np.array([[0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0]], np.float32)}
    correct = synthetic.trivial_correct(rows)
    # position 1: targets 7, 8, 7 -> majority 7; position 2: 7, 9, 3 -> a tie, np.unique's first (3)
    np.testing.assert_array_equal(correct["majority"][:, 1:3], [[True, False], [False, False], [True, True]])
    # repeat: the input at the same position (the token before the target): 7 == 7 only in row 0, position 2
    np.testing.assert_array_equal(correct["repeat"][:, 1:3], [[False, True], [False, False], [False, False]])


def test_size_baselines_are_the_means_over_sizes_of_the_trivial_predictors():
    from jaxformer import extrapolation

    ds = data_lib.SyntheticDataset("copy", num_symbols=4)
    b = extrapolation.size_baselines(ds, (2, 5), train_max=3, examples=16)
    per_size = []
    for n in range(2, 6):
        rows = ds.sized("val", items=n, count=16, length=2 * n)
        w = rows["weights"] > 0
        # repeat-previous on a copy: answer token t (t > 0) is right when s_t == s_{t-1}; the first sees `|`
        repeat = np.array([[rows["targets"][r, c] == rows["inputs"][r, c] for c in np.flatnonzero(w[r])]
                           for r in range(16)])
        assert not repeat[:, 0].any()
        per_size.append(repeat.mean())
    assert b["repeat"]["ood"]["token_accuracy"] == pytest.approx(np.mean(per_size[2:]), abs=1e-12)
    assert b["repeat"]["in_distribution"]["token_accuracy"] == pytest.approx(np.mean(per_size[:2]), abs=1e-12)
    assert b["majority"]["ood"]["sizes"] == [4, 5]
