"""The length-extrapolation numbers themselves: per-length loss, token accuracy, exact match, per-position loss,
the padded batching, and the means / spreads / pooled position curve of the report, each against values written
out here from known per-token losses (a stub model), in float64."""

import math

import numpy as np
import pytest

from jaxformer import extrapolation as X


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
    agg = {v["variant"]: v for v in X.aggregate([a0, a1, a2, b0])}
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
    unpooled = X.position_curve([a0, a1, a2], pool=False)
    np.testing.assert_allclose(unpooled, np.mean([[1.5, 2.5, 3.5, 4.5], [0.5, 1.5, 2.5, 6.5], [1, 1, 1, 1]], 0))


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
