"""What `jaxformer eval` and `import` print by default (jaxformer/summaries.py): every number shown, each explained."""

import re

from jaxformer import summaries

LENGTHS = {"step": 30, "split": "val", "overrides": {"model.position.rope.factor": 2.0},
           "lengths": [{"length": 32, "windows": 1024, "predicted_tokens": 16384, "loss": 2.85481,
                        "token_accuracy": 0.0660, "exact_match": 0.25},
                       {"length": 128, "na": "n/a (the learned table has 64 positions)"}]}


def test_eval_lengths_table_shows_every_number_and_the_reason_for_na():
    text = summaries.eval_text(LENGTHS, workdir="runs/x", checkpoint="best")
    lines = text.splitlines()
    assert lines[0] == "eval of runs/x: the best checkpoint (step 30), val split, with model.position.rope.factor=2.0"
    row = next(line for line in lines if line.strip().startswith("32 "))
    assert row.split() == ["32", "1024", "16384", "2.8548", "6.6%", "25.0%"]
    assert re.search(r"^\s+128\s+-\s+-\s+n/a \(the learned table has 64 positions\)$", text, re.M)
    for name in ("loss", "token accuracy", "exact match"):  # each column explained once
        assert sum(line.strip().startswith(name + " ") for line in lines[lines.index("what the numbers are:"):]) == 1
    assert "n/a: the length cannot be evaluated" in text and "null" not in text and "{" not in text


def test_eval_plain_and_sizes_summaries():
    plain = summaries.eval_text({"step": 5, "split": "train", "overrides": {}, "full": True, "loss": 1.0},
                                workdir="r", checkpoint="latest")
    assert "every non-overlapping block of the split (--full)" in plain
    assert "loss         1.0000 (perplexity 2.72)" in plain and "exact match" not in plain  # text: no accuracy
    records = [{"items": n, "length": 2 * n, "examples": 8, "ood": n > 2, "na": None, "loss": 0.5,
                "token_accuracy": 0.5, "exact_match": 0.25 * (n <= 2)} for n in (1, 2, 3)]
    sizes = {"train_max_items": 2, "records": records, "in_distribution": {"exact_match": 0.25, "token_accuracy": 0.5,
                                                                          "sizes": [1, 2]}, "ood": None}
    text = summaries.eval_text({"step": 1, "split": "val", "overrides": {}, "sizes": sizes}, workdir="r",
                               checkpoint="latest")
    assert "the largest size trained on: 2" in text
    assert [line.split()[:4] for line in text.splitlines() if re.match(r"\s+\d ", line)] == [
        ["1", "2", "8", "no"], ["2", "4", "8", "no"], ["3", "6", "8", "yes"]]
    assert "mean over the sizes trained on (1..2): exact match 25.0%, token accuracy 50.0%" in text
    assert "mean over the sizes beyond training: none evaluated" in text


def test_run_parent_names_the_folder_that_holds_the_run():
    assert summaries.run_parent("/some/dir/x9/") == "/some/dir"
    assert summaries.run_parent("x9") == "." and summaries.run_parent("runs/a") == "runs"
