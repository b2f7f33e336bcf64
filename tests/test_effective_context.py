"""effective_context.py: free-running and sliding-window decoding, the scores and baselines, checked with stand-in
models whose predictions are known by construction (an oracle that reads the key, a token counter)."""

import os

import numpy as np
import pytest

from jaxformer import effective_context as ec
from jaxformer.data import SyntheticDataset


def test_free_running_feeds_each_prediction_back_and_keeps_given_tokens():
    # a stand-in model: the next token is the current one + 1
    argmax = lambda params, x: x + 1
    inputs = np.array([[5, 0, 0, 0, 0, 9]], np.int32)
    weights = np.array([[1, 1, 0, 1, 0, 0]], np.float32)  # position 2 is given (like an MQAR query)
    inputs[0, 3] = 20  # the given token at position 3
    predicted = ec.greedy_decode(argmax, None, inputs, weights)
    # t=0 predicts 6 (fed to position 1), t=1 predicts 7 (fed to 2), position 2 given: 7 stays, t=3 sees 20 -> 21
    np.testing.assert_array_equal(predicted, [[6, 7, -1, 21, -1, -1]])
    teacher = argmax(None, inputs)
    assert teacher[0, 1] == 1  # teacher-forced sees the true (zero) token at position 1, free-running saw 6


def test_sliding_window_sees_only_the_last_window_tokens():
    # a stand-in model that predicts, everywhere, the first token it is given: full context -> inputs[0];
    # a window of W at position t -> inputs[t + 1 - W]
    argmax = lambda params, x: np.repeat(x[:, :1], x.shape[1], axis=1)
    inputs = np.arange(10, 22, dtype=np.int32)[None]
    weights = np.zeros((1, 12), np.float32)
    weights[0, [2, 8, 11]] = 1
    full = ec.greedy_decode(argmax, None, inputs, weights)
    windowed = ec.greedy_decode(argmax, None, inputs, weights, window=4)
    assert full[0, 2] == full[0, 8] == full[0, 11] == 10
    assert windowed[0, 2] == 10 and windowed[0, 8] == inputs[0, 8 + 1 - 4] and windowed[0, 11] == inputs[0, 8]


def _oracle(ds):
    """A perfect passkey reader over whatever it sees: after `?`, the digits after the first `=` in its input."""
    vocab = ds.tokenizer.vocab
    eq, q = vocab.index("="), vocab.index("?")

    def argmax(params, x):
        out = np.zeros_like(x)
        for b, row in enumerate(np.asarray(x)):
            for t in range(row.size):
                asked = np.flatnonzero(row[:t + 1] == q)
                seen = np.flatnonzero(row[:t + 1] == eq)
                if asked.size and seen.size and seen[0] < asked[0]:
                    j = t - asked[0]
                    out[b, t] = row[seen[0] + 1 + j] if seen[0] + 1 + j < asked[0] else 0
        return out

    return argmax


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_a_model_that_reads_the_key_retrieves_it_and_its_sliding_window_fails_beyond_the_window(depth):
    ds = SyntheticDataset("passkey", num_symbols=8)
    window = 32
    [record] = ec.evaluate(_oracle(ds), None, ds, lengths=[128], depths=[depth], examples=8, window=window,
                           batch_tokens=4096)
    assert record["free_running"]["exact_match"] == 1.0 and record["teacher_forced"]["exact_match"] == 1.0
    key_beyond = record["beyond_fraction"] == 1.0
    assert key_beyond == (depth < 1.0)  # at depth 1 the key sits right before the question
    assert record["sliding_window"]["exact_match"] == (0.0 if key_beyond else 1.0)
    assert record["free_running"]["beyond"] == (1.0 if key_beyond else None)
    assert record["majority"]["exact_match"] < 0.5 and record["repeat"]["token_accuracy"] < 0.5


def test_scores_and_majority_by_hand():
    correct = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]], bool)
    weights = np.array([[1, 1, 0], [1, 1, 0], [1, 1, 1]], np.float32)
    distance = np.array([[5, 40, -1], [5, 40, -1], [50, 5, 5]])
    s = ec.scores(correct, weights, distance, 32)
    # exact: rows 0 and 2; tokens: 6 of 7 weighted... row 0: 2/2, row 1: 1/2, row 2: 3/3 -> 6/7
    assert s["exact_match"] == pytest.approx(2 / 3) and s["token_accuracy"] == pytest.approx(6 / 7)
    assert s["beyond"] == pytest.approx(2 / 3) and s["within"] == pytest.approx(4 / 4)  # beyond: (0,1) (1,1) (2,0)
    targets = np.array([[3, 4, 0], [3, 5, 0], [2, 4, 7]])
    np.testing.assert_array_equal(ec.majority_correct(targets, weights), [[1, 1, 0], [1, 0, 0], [0, 1, 1]])


def test_bad_depths_are_one_line_errors():
    with pytest.raises(ValueError, match=r"eval_depths=\(0.5, 1.2\): 1.2 is outside \[0, 1\]"):
        ec.check_depths((0.5, 1.2))


def _fake_run(sweep_dir, variant, seed, index, exact):
    """A finished run's context.json (two lengths x two depths; free-running exact match `exact[length]`, the
    sliding window always 0.25) and the extrapolation.json fields the report reads."""
    import json
    import os

    run = os.path.join(sweep_dir, "runs", f"variant={variant},seed={seed}")
    os.makedirs(run)
    score = lambda e: {"exact_match": e, "token_accuracy": e, "within": e, "beyond": e}
    records = [{"length": T, "depth": d, "examples": 8, "beyond_fraction": 1.0 - d, "na": None,
                "free_running": score(exact[T]), "teacher_forced": score(exact[T]),
                "sliding_window": score(0.25), "majority": score(0.0), "repeat": score(0.0)}
               for T in (16, 32) for d in (0.0, 1.0)]
    with open(os.path.join(run, ec.RESULT_FILE), "w") as f:
        json.dump({"block_size": 16, "seed": seed, "data": "synthetic/passkey", "records": records}, f)
    with open(os.path.join(run, "extrapolation.json"), "w") as f:
        json.dump({"index": index, "variant": variant, "seed": seed}, f)


def test_context_report_cells_and_tests_by_hand(tmp_path):
    from scipy import stats

    rope = {0: {16: 1.0, 32: 0.30}, 1: {16: 1.0, 32: 0.40}, 2: {16: 1.0, 32: 0.20}}
    alibi = {0: {16: 0.9, 32: 0.90}, 1: {16: 1.0, 32: 0.80}, 2: {16: 0.8, 32: 0.95}}
    for i, (variant, table) in enumerate((("rope", rope), ("alibi", alibi))):
        for seed, exact in table.items():
            _fake_run(str(tmp_path), variant, seed, 3 * i + seed, exact)
    settings = {"statistics": True, "reference": "rope", "families": {"pe": ("alibi",)}, "correction": "holm",
                "selection_seeds": ()}
    text = "\n".join(ec.report_lines(str(tmp_path), settings))
    # rope at 32: 30, 40, 20 % -> mean 30.0, sample std 10.0, in each depth column and over the depths
    assert "| rope | 3 | 30.0 ± 10.0 | 30.0 ± 10.0 | 30.0 ± 10.0 |" in text
    assert "| rope (sliding 16) | 3 | 25.0 ± 0.0 |" in text
    # family pe: alibi - rope at 16 and 32, alibi - its window at 32 (3 tests, Holm); rope is in no family
    p_ref32 = stats.ttest_rel([0.90, 0.80, 0.95], [0.30, 0.40, 0.20]).pvalue
    p_win = stats.ttest_rel([0.90, 0.80, 0.95], [0.25] * 3).pvalue
    p_ref16 = stats.ttest_rel([0.9, 1.0, 0.8], [1.0, 1.0, 1.0]).pvalue
    ps = np.array([p_ref32, p_win, p_ref16])
    rank = int(np.argsort(ps).tolist().index(0))  # where p_ref32 sorts among the family's three p-values
    holm_sorted = np.minimum(1, np.maximum.accumulate(np.array([3, 2, 1]) * np.sort(ps)))
    row = next(line for line in text.splitlines() if line.startswith("| alibi | rope | pe/context |"))
    assert f"p={p_ref32:.3g}/{holm_sorted[rank]:.3g}/" in row.split(" | ")[4]
    assert row.split(" | ")[4].rstrip(" |").endswith(" tie" if holm_sorted[rank] > 0.05 else "**")
    assert "(no family)" in next(line for line in text.splitlines() if line.startswith("| rope | sliding window"))
    assert "| majority | - | 0.0 ± 0.0 |" in text


@pytest.mark.slow
def test_a_passkey_sweep_writes_context_records_and_the_report(tmp_path):
    """A tiny real sweep (5 steps): every (length, depth) record is there, at 1x the sliding window is the full
    context (the same predictions), and context.md is written beside results.md."""
    import json
    import os

    from jaxformer import sweep

    sweep_cfg, base = sweep.load_sweep("sweeps.tiny", [
        "--config.data.name=synthetic/passkey", "--config.data.block_size=16", "--config.train.steps=5",
        "--config.eval_lengths=(1, 2)", "--config.eval_tokens=64", "--config.axes.model.position.name=('rope',)"])
    with sweep_cfg.unlocked():
        sweep_cfg.eval_depths, sweep_cfg.eval_depth_examples = (0.0, 1.0), 4
    workdir = str(tmp_path / "s")
    sweep.run_sweep(sweep_cfg, workdir, base_overrides=base, print_fn=lambda *a: None)
    [run] = os.listdir(os.path.join(workdir, "runs"))
    with open(os.path.join(workdir, "runs", run, ec.RESULT_FILE)) as f:
        records = json.load(f)["records"]
    assert [(r["length"], r["depth"]) for r in records] == [(16, 0.0), (16, 1.0), (32, 0.0), (32, 1.0)]
    for r in records[:2]:
        assert r["sliding_window"] == r["free_running"] and r["beyond_fraction"] == 0.0
    assert records[2]["beyond_fraction"] == 1.0 and records[3]["beyond_fraction"] == 0.0
    with open(os.path.join(workdir, "context.md")) as f:
        assert "## Exact match (%) at length 32 (2× L" in f.read()


EXTENSION = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                         "effective_context", "extension")


@pytest.mark.skipif(not os.path.exists(os.path.join(EXTENSION, "comparisons.md")),
                    reason="the extension experiment's comparisons are not committed")
def test_extension_comparisons_regenerate_and_are_scipys_paired_t():
    import importlib.util
    import json

    from scipy import stats

    spec = importlib.util.spec_from_file_location("ext_comparisons", os.path.join(os.path.dirname(EXTENSION),
                                                                                  "comparisons.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.render(EXTENSION)
    with open(os.path.join(EXTENSION, "comparisons.md")) as f:
        assert f.read() == text
    # PI fine-tuned at 128 against the base window, recomputed from the run files
    def exact(path, key, method):
        with open(path) as f:
            records = [r for r in json.load(f)[key] if r["length"] == 128]
        return np.mean([r[method]["exact_match"] for r in records])

    seeds = [s for s in (0, 1, 2) if os.path.exists(os.path.join(EXTENSION, "runs", f"variant=linear,seed={s}"))]
    if len(seeds) < 2:
        pytest.skip("fewer than 2 seeds finished")
    pi = [exact(os.path.join(EXTENSION, "runs", f"variant=linear,seed={s}", ec.RESULT_FILE), "records",
                "free_running") for s in seeds]
    window = [exact(os.path.join(EXTENSION, "base", "runs", f"variant=rope,seed={s}", ec.RESULT_FILE), "records",
                    "sliding_window") for s in seeds]
    row = next(line for line in text.splitlines() if line.startswith("| PI, fine-tuned | ") and "p=" in line)
    cell = row.split(" | ")[3]  # the columns: model, 32, 64, 128, 256
    mean = 100 * (np.mean(pi) - np.mean(window))
    assert cell.startswith(f"{mean:+.1f} [") and f"p={stats.ttest_rel(pi, window).pvalue:.2g} " in cell
