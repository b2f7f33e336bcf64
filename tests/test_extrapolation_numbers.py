"""The length-extrapolation numbers themselves: per-length loss, token accuracy, exact match, per-position loss,
the padded batching, and the means / spreads / pooled position curve of the report, each against values written
out here from known per-token losses (a stub model), in float64."""

import math

import numpy as np
import pytest

from jaxformer import extrapolation as X
from jaxformer.sweeps import aggregate as A
from jaxformer.sweeps import plots


def stub_losses(params, inputs_BxT, targets_BxT):
    """A 'model' whose per-token loss and correctness are known functions of the tokens and the position."""
    inputs_BxT, targets_BxT = np.asarray(inputs_BxT), np.asarray(targets_BxT)
    T = inputs_BxT.shape[1]
    losses = (inputs_BxT % 5) * 0.3 + 0.01 * np.arange(T)[None] + params["offset"]
    correct = targets_BxT % 3 != 0
    return losses.astype(np.float32), correct


class StubTask:
    """A synthetic-task-like dataset: no split text, examples with answer weights on a suffix of varying length."""

    has_accuracy = True

    def split_tokens(self, split):
        return None

    def windows(self, split, *, length, max_windows):
        rng = np.random.default_rng(length)
        inputs = rng.integers(0, 50, (max_windows, length))
        targets = rng.integers(0, 50, (max_windows, length))
        weights = np.zeros((max_windows, length))
        for n in range(max_windows):
            weights[n, length - 1 - n % 3:] = 1.0  # 1 to 3 answer tokens
        weights[1] = 0.0  # an example with no answer: counted nowhere
        return {"inputs": inputs, "targets": targets, "weights": weights}


def test_window_losses_pads_the_last_batch_and_drops_the_padding():
    rng = np.random.default_rng(0)
    inputs, targets = rng.integers(0, 50, (7, 4)), rng.integers(0, 50, (7, 4))
    seen = []

    def fn(params, i, t):
        seen.append(i.shape)
        return stub_losses(params, i, t)

    losses, correct = X.window_losses(fn, {"offset": 0.5}, inputs, targets, batch_tokens=12)
    assert seen == [(3, 4)] * 3  # 7 windows in batches of 3: one shape, so one compilation
    want = (inputs % 5) * 0.3 + 0.01 * np.arange(4)[None] + 0.5
    np.testing.assert_allclose(losses, want, rtol=1e-6)
    np.testing.assert_array_equal(correct, targets % 3 != 0)


def test_evaluate_lengths_numbers_equal_the_definitions(monkeypatch):
    monkeypatch.setattr(X, "compile_losses", lambda graphdef: stub_losses)
    task = StubTask()
    lengths = [{"multiplier": 1, "length": 6, "na": None}, {"multiplier": 2, "length": 12, "na": None},
               {"multiplier": 4, "length": 24, "na": "n/a (learned table has 12 positions)"}]
    out = X.evaluate_lengths(None, {"offset": 0.25}, task, lengths, eval_tokens=20, batch_tokens=30)
    assert out[2]["na"] == "n/a (learned table has 12 positions)" and "loss" not in out[2]
    for record in out[:2]:
        T = record["length"]
        # window_counts: enough examples that their answer tokens add up to eval_tokens (probe of 8 examples).
        probe = task.windows("val", length=T, max_windows=8)["weights"]
        n = math.ceil(20 / (probe.sum() / 8))
        w = task.windows("val", length=T, max_windows=n)
        losses = np.zeros((n, T))
        for a in range(n):
            for t in range(T):
                losses[a, t] = (w["inputs"][a, t] % 5) * 0.3 + 0.01 * t + 0.25
        correct = w["targets"] % 3 != 0
        weights = w["weights"]
        total = sum(weights[a, t] for a in range(n) for t in range(T))
        loss = sum(losses[a, t] * weights[a, t] for a in range(n) for t in range(T)) / total
        accuracy = sum(correct[a, t] * weights[a, t] for a in range(n) for t in range(T)) / total
        answered = [a for a in range(n) if weights[a].sum() > 0]
        exact = sum(all(correct[a, t] for t in range(T) if weights[a, t] > 0) for a in answered) / len(answered)
        assert record["windows"] == n and record["predicted_tokens"] == int(total)
        assert record["loss"] == pytest.approx(loss, rel=1e-6)
        assert record["token_accuracy"] == pytest.approx(accuracy, rel=1e-12)
        assert record["exact_match"] == pytest.approx(exact, rel=1e-12)
        assert 0 < record["exact_match"] < 1  # the stub makes some answers right and some wrong
        for t in range(T):
            column = weights[:, t].sum()
            if column == 0:
                assert record["position_loss"][t] is None
            else:
                want = sum(losses[a, t] * weights[a, t] for a in range(n)) / column
                assert record["position_loss"][t] == pytest.approx(want, abs=1e-5)  # rounded to 5 decimals
        assert record["position_loss"][0] is None and record["position_loss"][-1] is not None


def _result(variant, seed, losses, curves, windows, na=None):
    lengths = []
    for i, (loss, curve, n) in enumerate(zip(losses, curves, windows, strict=True)):
        lengths.append({"multiplier": 2 ** i, "length": len(curve), "na": na if i == 1 else None, "loss": loss,
                        "exact_match": None, "token_accuracy": None, "predicted_tokens": 100, "windows": n,
                        "position_loss": curve})
    return {"variant": variant, "seed": seed, "lengths": lengths, "val_loss": 1.0 + seed, "n_params": 10,
            "ms_per_step": 5.0 + seed, "block_size": 2, "stopped": None, "has_accuracy": False}


def test_aggregate_means_spreads_and_the_pooled_position_curve():
    a0 = _result("a", 0, [2.0, 3.0], [[1.0, 2.0], [1.5, 2.5, 3.5, 4.5]], [10, 5])
    a1 = _result("a", 1, [2.5, 4.0], [[2.0, None], [0.5, 1.5, 2.5, 6.5]], [10, 5])
    a2 = _result("a", 2, [3.0, 5.0], [[3.0, 4.0], [1.0, 1.0, 1.0, 1.0]], [10, 5])
    b0 = _result("b", 0, [1.0, 9.0], [[1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], [10, 5], na="n/a (diverged)")
    agg = {v["variant"]: v for v in A.aggregate([a0, a1, a2, b0])}
    a, b = agg["a"], agg["b"]
    assert a["seeds"] == [0, 1, 2]
    mean, std = a["lengths"][1]["loss"]
    assert mean == pytest.approx(4.0) and std == pytest.approx(1.0)  # 3, 4, 5: sample std (ddof=1) is 1
    assert a["lengths"][0]["loss"] == (pytest.approx(2.5), pytest.approx(0.5))
    assert a["val_loss"] == (pytest.approx(2.0), pytest.approx(1.0)) and a["ms_per_step"] == 6.0
    assert b["lengths"][1]["na"] == "n/a (diverged)" and b["lengths"][1]["loss"] is None
    assert b["lengths"][0]["loss"] == (1.0, 0.0)
    # Pooled over lengths and seeds, each curve weighted by its windows; a missing value counts nowhere.
    curve = a["position_loss"]
    sums, counts = np.zeros(4), np.zeros(4)
    for r in (a0, a1, a2):
        for x in r["lengths"]:
            for t, v in enumerate(x["position_loss"]):
                if v is not None:
                    sums[t] += v * x["windows"]
                    counts[t] += x["windows"]
    np.testing.assert_allclose(curve, sums / counts, rtol=1e-12)
    assert curve[1] == pytest.approx((2.0 * 10 + 4.0 * 10 + 2.5 * 5 + 1.5 * 5 + 1.0 * 5) / 35)
    # Synthetic tasks are not pooled: the longest length that ran, averaged over seeds.
    unpooled = A.position_curve([a0, a1, a2], pool=False)
    np.testing.assert_allclose(unpooled, np.mean([[1.5, 2.5, 3.5, 4.5], [0.5, 1.5, 2.5, 6.5], [1, 1, 1, 1]], 0))


def cutoff_losses(cutoff):
    """A stub model right exactly at the positions before `cutoff` (loss 0.1 there, 2.0 after)."""

    def fn(params, inputs_BxT, targets_BxT):
        T = np.asarray(inputs_BxT).shape[1]
        correct = np.broadcast_to(np.arange(T)[None] < cutoff, np.shape(inputs_BxT))
        return np.where(correct, 0.1, 2.0).astype(np.float32), correct

    return fn


@pytest.mark.parametrize("task", ["parity_check", "reverse_string", "addition"])
def test_per_size_protocol_numbers(task):
    """Every size n in [1, 14], answers at known positions: exact match, token accuracy and loss per size equal the
    values written from the task's layout; the OOD means average exactly the sizes past the training ones."""
    from jaxformer.data import synthetic

    dataset = synthetic.SyntheticDataset(task)
    prompt_len = {"parity_check": lambda n: n + 1, "reverse_string": lambda n: n + 1,
                  "addition": lambda n: 2 * n + 2}[task]
    answer_len = {"parity_check": lambda n: 1, "reverse_string": lambda n: n, "addition": lambda n: n + 1}[task]
    cutoff = 12
    records = X.evaluate_sizes(None, {}, dataset, (1, 14), train_max=6, examples=5, batch_tokens=64,
                               losses_fn=cutoff_losses(cutoff))
    assert [r["items"] for r in records] == list(range(1, 15))
    for r in records:
        n = r["items"]
        answer_at = np.arange(prompt_len(n) - 1, prompt_len(n) - 1 + answer_len(n))  # inputs index t predicts t+1
        right = answer_at < cutoff
        assert r["ood"] == (n > 6) and r["examples"] == 5
        assert r["exact_match"] == float(right.all())
        assert r["token_accuracy"] == pytest.approx(right.mean(), abs=1e-12)
        assert r["loss"] == pytest.approx(np.where(right, 0.1, 2.0).mean(), rel=1e-6)
    summary = X.size_summary(records)
    assert summary["ood"]["sizes"] == [7, 14] and summary["in_distribution"]["sizes"] == [1, 6]
    assert summary["ood"]["exact_match"] == pytest.approx(np.mean([r["exact_match"] for r in records[6:]]))
    assert summary["in_distribution"]["token_accuracy"] == pytest.approx(
        np.mean([r["token_accuracy"] for r in records[:6]]))


def test_per_size_sizes_past_a_table_are_na_and_bad_ranges_are_errors():
    from jaxformer.data import synthetic

    dataset = synthetic.SyntheticDataset("sorting")
    records = X.evaluate_sizes(None, {}, dataset, (1, 10), train_max=4, examples=2, batch_tokens=64,
                               losses_fn=cutoff_losses(100), max_length=12)
    assert [r["na"] is None for r in records] == [2 * n <= 12 for n in range(1, 11)]  # 2n+1 tokens: 2n inputs
    assert records[-1]["na"] == "n/a (20 tokens exceed the 12-position table)"
    for bad in ((5, 3), (0, 4), (3,)):
        with pytest.raises(ValueError, match="give \\(min, max\\) task sizes with 1 <= min <= max"):
            X.check_sizes(bad)


def test_random_eval_positions_are_sorted_distinct_rows_seeded():
    p = X.random_eval_positions(6, 20, 64, (3, 7))
    assert p.shape == (6, 20) and p.dtype == np.int32 and (np.diff(p, axis=1) > 0).all()
    assert p.min() >= 0 and p.max() < 64 and len({tuple(r) for r in p}) == 6
    np.testing.assert_array_equal(p, X.random_eval_positions(6, 20, 64, (3, 7)))
    assert not np.array_equal(p, X.random_eval_positions(6, 20, 64, (3, 8)))
    with pytest.raises(ValueError, match="randomize_max_len=16 must be >= the evaluated length 20"):
        X.random_eval_positions(2, 20, 16, 0)


def test_per_size_evaluation_at_random_positions_feeds_each_row_its_own_positions():
    """With `random_positions` = R every row reaches the model with its own sorted draw from [0, R): a stub right
    only at positions below a cutoff scores exactly what those positions give."""
    from jaxformer.data import synthetic

    dataset = synthetic.SyntheticDataset("reverse_string")
    seen = []

    def at_positions(params, inputs_BxT, targets_BxT, positions_BxT=None):
        positions = np.broadcast_to(np.arange(np.shape(inputs_BxT)[1]), np.shape(inputs_BxT)) \
            if positions_BxT is None else np.asarray(positions_BxT)
        seen.append(positions)
        correct = positions < 40
        return np.where(correct, 0.1, 2.0).astype(np.float32), correct

    records = X.evaluate_sizes(None, {}, dataset, (1, 10), train_max=4, examples=7, batch_tokens=64,
                               losses_fn=at_positions, random_positions=100, seed=5)
    drawn = np.concatenate(seen)
    assert (np.diff(drawn, axis=1) > 0).all() and drawn.max() < 100 and drawn.max() >= 40  # past 0..T-1
    for r in records:  # exact match: the rows whose answer positions are all below 40
        n, T = r["items"], drawn.shape[1]
        rows = X.random_eval_positions(7, T, 100, (5, n))
        answer_at = np.arange(n, 2 * n)  # reverse_string: n items and the separator, inputs index t predicts t+1
        assert r["exact_match"] == pytest.approx(np.mean((rows[:, answer_at] < 40).all(axis=1)))
    plain = X.evaluate_sizes(None, {}, dataset, (1, 10), train_max=4, examples=7, batch_tokens=64,
                             losses_fn=at_positions)
    assert all(r["exact_match"] == 1.0 for r in plain)  # 0..T-1: every position below 40


def test_aggregate_sizes_over_seeds():
    def run(seed, id_exact, ood_exact):
        recs = [{"items": 1, "ood": False, "na": None, "exact_match": id_exact, "token_accuracy": id_exact},
                {"items": 2, "ood": True, "na": None, "exact_match": ood_exact, "token_accuracy": ood_exact}]
        return {"seed": seed, "sizes": {"train_max_items": 1, "records": recs, **X.size_summary(recs)}}

    agg = A.aggregate_sizes([run(0, 1.0, 0.2), run(1, 0.98, 0.4), run(2, 1.0, 0.9)])
    assert agg["reached"] == 2 and agg["seeds"] == 3  # 98% is short of the 99% precondition
    mean, std = agg["ood"]["exact_match"]
    assert mean == pytest.approx(0.5) and std == pytest.approx(np.std([0.2, 0.4, 0.9], ddof=1))
    assert agg["per_size"][1]["exact_match"][0] == pytest.approx(0.5)


def context_sum(params, inputs_BxT, targets_BxT):
    """A stub 'model' whose loss at position t is the sum of the tokens it can see (0..t): reveals each context."""
    inputs_BxT = np.asarray(inputs_BxT, np.float64)
    return np.cumsum(inputs_BxT, axis=1), np.asarray(targets_BxT) % 2 == 0


@pytest.mark.parametrize("T,window,stride,prefix", [(64, 16, 8, 0), (50, 16, 5, 0), (64, 16, 16, 0), (40, 16, 8, 1),
                                                    (16, 16, 8, 0), (10, 16, 3, 1)])
def test_sliding_plan_scores_every_column_once(T, window, stride, prefix):
    plan = X.sliding_plan(T, window=window, stride=stride, prefix=prefix)
    scored = np.concatenate([np.arange(first, end) for _, first, end in plan])
    assert np.array_equal(scored, np.arange(T))  # each column once, in order
    assert plan[0][1] == 0
    for start, first, end in plan[1:]:  # later windows score only columns inside their own body
        assert start <= first < end == start + window - prefix <= T


def test_sliding_window_with_stride_one_sees_exactly_the_last_window_tokens():
    rng = np.random.default_rng(0)
    inputs = rng.integers(1, 9, (3, 40))
    losses, correct = X.sliding_window_losses(context_sum, {}, inputs, inputs, window=8, stride=1, batch_tokens=64)
    expected = np.array([[inputs[n, max(0, t - 7):t + 1].sum() for t in range(40)] for n in range(3)], np.float64)
    np.testing.assert_allclose(losses, expected, rtol=0, atol=1e-9)
    assert np.array_equal(correct, inputs % 2 == 0)
    # with a BOS-like first column kept in every window: column 0 + the last 7 tokens
    losses, _ = X.sliding_window_losses(context_sum, {}, inputs, inputs, window=8, stride=1, prefix=1, batch_tokens=64)
    expected = np.array([[inputs[n, :t + 1].sum() if t < 8 else inputs[n, 0] + inputs[n, t - 6:t + 1].sum()
                          for t in range(40)] for n in range(3)], np.float64)
    np.testing.assert_allclose(losses, expected, rtol=0, atol=1e-9)


def test_sliding_window_context_lengths_with_half_window_stride():
    inputs = np.ones((2, 64), np.int64)  # the loss is then the context length itself
    losses, _ = X.sliding_window_losses(context_sum, {}, inputs, inputs, window=16, stride=8, batch_tokens=32)
    assert np.array_equal(losses[:, :16], np.tile(np.arange(1, 17), (2, 1)))  # the first window: full context
    assert losses[:, 16:].min() == 9 and losses[:, 16:].max() == 16  # later: window - stride + 1 .. window
    full, _ = X.window_losses(context_sum, {}, inputs[:, :16], inputs[:, :16], batch_tokens=32)
    same, _ = X.sliding_window_losses(context_sum, {}, inputs[:, :16], inputs[:, :16], window=16, stride=8,
                                      batch_tokens=32)
    assert np.array_equal(full, same)  # a row of the window's length: the full-context numbers


@pytest.mark.parametrize("stride", [0, 17, -1])
def test_sliding_stride_out_of_range_is_an_error(stride):
    with pytest.raises(ValueError, match=r"stride=.*must be in \[1, window=16\]"):
        X.sliding_plan(64, window=16, stride=stride)


def test_evaluate_lengths_sliding_rows(monkeypatch):
    monkeypatch.setattr(X, "compile_losses", lambda graphdef: context_sum)

    class Text:
        tokens = np.random.default_rng(1).integers(1, 9, 1025)

        def split_tokens(self, split):
            return self.tokens

        def windows(self, split, *, length, max_windows):
            x = self.tokens[:max_windows * length].reshape(max_windows, length)
            return {"inputs": x, "targets": x, "weights": np.ones(x.shape)}

    lengths = [{"multiplier": 1, "length": 16, "na": None}, {"multiplier": 4, "length": 64, "na": None},
               {"multiplier": 8, "length": 128, "na": "n/a (learned table has 16 positions)", "sliding_ok": True}]
    out = X.evaluate_lengths(None, {}, Text(), lengths, eval_tokens=0, batch_tokens=256, window=16)
    assert [x["windows"] for x in out] == [64, 16, 8]  # eval_tokens=0: the whole split (1024 predictable tokens)
    assert out[0]["sliding"]["loss"] == out[0]["loss"] and out[0]["sliding"]["stride"] == 8
    x = Text.tokens[:1024].reshape(16, 64)
    full = np.cumsum(x, axis=1).mean()
    assert out[1]["loss"] == pytest.approx(full, rel=1e-12)
    assert out[1]["sliding"]["loss"] < out[1]["loss"]  # less context, smaller sums
    assert out[2]["na"] and "loss" not in out[2] and out[2]["sliding"]["loss"] > 0  # learned past its table
    assert "sliding_ok" not in out[2]


def test_per_size_protocol_with_a_bos_token():
    """data.bos: every row starts with BOS, so each answer sits one position later; the numbers follow it."""
    from jaxformer.data import synthetic
    from jaxformer.data.dataset import BOSDataset

    dataset = BOSDataset(synthetic.SyntheticDataset("parity_check", min_items=1, max_items=6))
    assert X.train_max_items(dataset, 8) == 6 and dataset.task.name == "parity_check"
    rows = dataset.sized("val", items=3, count=2, length=6)
    assert (rows["inputs"][:, 0] == dataset.bos_id).all() and rows["weights"][:, 0].sum() == 0
    cutoff = 7
    records = X.evaluate_sizes(None, {}, dataset, (1, 9), train_max=6, examples=3, batch_tokens=64,
                               losses_fn=cutoff_losses(cutoff))
    for r in records:
        answer_at = r["items"] + 1  # BOS, n bits, '|': the input at n + 1 predicts the answer
        assert r["length"] == r["items"] + 2 and r["exact_match"] == float(answer_at < cutoff), r


def test_an_all_zero_exact_match_panel_spans_0_to_100_percent(tmp_path, monkeypatch):
    """Issue 39.8: the exact-match axis is the whole percentage range (not -0.04%..0.04% when every point is 0)."""
    import matplotlib.pyplot as plt

    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    lengths = [{"length": T, "loss": (2.0, 0.1), "exact_match": (0.0, 0.0)} for T in (32, 64)]
    plots.plot_extrapolation([{"variant": "rope", "lengths": lengths, "has_accuracy": True, "block_size": 32}],
                         str(tmp_path / "x.png"))
    (fig,) = closed
    loss_ax, exact_ax = fig.axes[:2]
    assert exact_ax.get_ylabel() == "exact match (%)" and exact_ax.get_ylim() == (-2, 102)
    assert loss_ax.get_ylim()[1] < 10  # the loss panel keeps its own range
    assert (tmp_path / "x.png").exists()
