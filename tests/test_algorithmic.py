"""The literature's algorithmic tasks: every answer checked against the task's definition applied to the decoded
prompt text (an independent reading, not the generator's own arithmetic), sizes and lengths, the registry and the
per-size rows of the evaluation protocol."""

import numpy as np
import pytest

from jaxformer import data as data_lib
from jaxformer.data import algorithmic, synthetic
from jaxformer.data.tokenizer import DataError

NAMES = [t.name for t in algorithmic.TASKS]


def _le(bits: str) -> int:
    return int(bits[::-1], 2) if bits else 0


def expected_answer(task: str, prompt: str) -> str:
    """The answer from the definition, computed from the prompt's characters."""
    body = prompt[:-1]  # the separator (| or =) ends every prompt
    if task == "reverse_string":
        return body[::-1]
    if task == "duplicate_string":
        return body + body
    if task == "parity_check":
        return str(body.count("1") % 2)
    if task == "binary_addition":
        x, y = body.split("+")
        width = max(len(x), len(y)) + 1
        return format(_le(x) + _le(y), f"0{width}b")[::-1]
    if task in ("bucket_sort", "sorting"):
        return "".join(sorted(body))
    if task == "missing_duplicate_string":
        n = len(body) // 2
        i = body.index("?")
        return body[i + n] if i < n else body[i - n]
    if task == "modular_arithmetic":
        total, term = 0, None  # left to right with * binding tighter, written out rather than eval'd
        sign, product = 1, int(body[0])
        for op, digit in zip(body[1::2], body[2::2], strict=True):
            if op == "*":
                product *= int(digit)
            else:
                total += sign * product
                sign, product = (1 if op == "+" else -1), int(digit)
        del term
        return str((total + sign * product) % 5)
    if task == "addition":
        x, y = body.split("+")
        return str(int(x) + int(y)).zfill(len(x) + 1)
    if task == "summation":
        return str(sum(int(d) for d in body.split("+")) % 10)
    raise AssertionError(task)


@pytest.mark.parametrize("task", NAMES)
@pytest.mark.parametrize("n", [1, 2, 3, 7, 20])
def test_answers_follow_the_task_definition(task, n):
    dataset = synthetic.SyntheticDataset(task, num_symbols=8)
    if n < dataset.task.min_items:
        with pytest.raises(DataError, match="need"):
            dataset.sized("val", items=n, count=4, length=80)
        return
    rows = dataset.sized("val", items=n, count=64, length=dataset.task.length(n) - 1)
    seq = np.concatenate([rows["inputs"], rows["targets"][:, -1:]], axis=1)
    answers = set()
    for b in range(64):
        answer_at = np.flatnonzero(rows["weights"][b]) + 1  # targets are the row shifted by one
        prompt = dataset.tokenizer.decode(seq[b, :answer_at[0]])
        answer = dataset.tokenizer.decode(seq[b, answer_at])
        assert answer == expected_answer(task, prompt), (prompt, answer)
        assert np.all(seq[b, answer_at[-1] + 1:] == synthetic.PAD)
        assert len(prompt) + len(answer) <= dataset.task.length(n)
        answers.add(answer)
    if n >= 3:
        assert len(answers) > 1  # random examples, not one repeated


def test_sizes_are_counted_as_the_papers_do():
    g = np.random.default_rng(0)
    items = {"reverse_string": 9, "duplicate_string": 9, "parity_check": 9, "bucket_sort": 9, "sorting": 9,
             "missing_duplicate_string": 18, "modular_arithmetic": 17, "addition": 19, "summation": 17,
             "binary_addition": 10}  # prompt characters before the separator at n = 9
    for task in NAMES:
        prompt, _ = synthetic.TASKS[task].make(g, 9, 8)
        assert len(prompt) - 1 == items[task], task


def test_registered_beside_the_existing_tasks_which_keep_their_vocabulary():
    assert set(NAMES) <= set(synthetic.TASKS)
    assert {f"synthetic/{name}" for name in NAMES} <= set(data_lib.list_datasets())
    copy = synthetic.SyntheticDataset("copy", num_symbols=16)
    assert copy.tokenizer.vocab == synthetic.vocabulary(16)  # the old tasks: unchanged ids
    new = synthetic.SyntheticDataset("addition", num_symbols=16)
    assert new.tokenizer.vocab[:len(copy.tokenizer.vocab)] == copy.tokenizer.vocab
    assert new.tokenizer.vocab[len(copy.tokenizer.vocab):] == list("+-*=?")
    batch = copy.batch("train", 0, batch_size=4, block_size=32, seed=0)  # the old tasks still batch
    assert batch["inputs"].shape == (4, 32) and batch["weights"].sum() > 0


def test_training_rows_draw_sizes_one_to_n_and_eval_rows_one_size():
    dataset = synthetic.SyntheticDataset("parity_check", min_items=1, max_items=12)
    batch = dataset.batch("train", 0, batch_size=256, block_size=16, seed=0)
    sizes = (batch["inputs"] != synthetic.PAD).sum(1) - 2  # n bits, the separator and the answer bit
    assert sizes.min() == 1 and sizes.max() == 12
    rows = dataset.sized("val", items=30, count=8, length=40)
    np.testing.assert_array_equal((rows["inputs"] != synthetic.PAD).sum(1), 32)
    again = dataset.sized("val", items=30, count=8, length=40)
    np.testing.assert_array_equal(rows["inputs"], again["inputs"])  # the same examples at every call


def test_bad_task_name_and_sizes_are_one_line_errors():
    with pytest.raises(DataError, match="synthetic task 'parity'; choose one of: .*parity_check"):
        synthetic.SyntheticDataset("parity")
    with pytest.raises(DataError, match="max_items=3 is below data.synthetic.min_items=5"):
        synthetic.SyntheticDataset("sorting", min_items=5, max_items=3)
    with pytest.raises(DataError, match="min_items=1; synthetic/binary_addition examples have at least 2"):
        synthetic.SyntheticDataset("binary_addition", min_items=1)
    with pytest.raises(DataError, match="need 40 tokens"):
        synthetic.SyntheticDataset("sorting").sized("val", items=20, count=1, length=30)
