"""synthetic/passkey and synthetic/mqar (data/retrieval.py): the literature's formats, depths and distances checked
against the strings, and their bad settings."""

import re

import numpy as np
import pytest

from jaxformer import data as data_lib
from jaxformer.data import SyntheticDataset


def _decode(ds, ids) -> str:
    return ds.tokenizer.decode([int(t) for t in ids])


@pytest.mark.parametrize("length,depth", [(32, 0.0), (64, 0.5), (100, 1.0), (256, 0.25)])
def test_passkey_rows_hide_the_key_at_the_depth_and_ask_for_it_at_the_end(length, depth):
    ds = SyntheticDataset("passkey", num_symbols=8, settings={"key_digits": 5})
    rows = ds.probe("val", length=length, depth=depth, count=6)
    n = length + 1 - 13  # filler tokens: the row holds n + 2 * 5 + 3 tokens
    for inputs, targets, weights, distance in zip(rows["inputs"], rows["targets"], rows["weights"],
                                                  rows["distance"], strict=True):
        text = _decode(ds, [*inputs, targets[-1]])
        m = re.fullmatch(r"([a-h]*)=(\d{5})=([a-h]*)\?(\d{5})", text)
        assert m, text
        before, key, after, answer = m.groups()
        assert answer == key and len(before) + len(after) == n and len(before) == round(depth * n)
        assert before + after == ("abcdefgh" * 64)[:n]  # the same filler text, the key inserted into it
        assert _decode(ds, targets[weights > 0]) == key  # only the answer is predicted
        # each answer digit copies the key digit (position of the answer token - position of the key digit)
        assert (distance[weights > 0] == n + 7 - len(before)).all()
        assert (distance[weights == 0] == -1).all()


def test_passkey_training_rows_vary_depth_and_total_length():
    ds = SyntheticDataset("passkey", num_symbols=8, min_items=1)
    batch = ds.batch("train", 0, batch_size=64, block_size=32, seed=0)
    texts = [_decode(ds, row) for row in batch["inputs"]]
    before = [t.index("=") for t in texts]
    lengths = [t.index("?") for t in texts]
    assert len(set(before)) > 5 and len(set(lengths)) > 5 and max(lengths) == 32 - 5


def test_mqar_keys_are_distinct_and_the_depth_sets_the_pairs_beyond_the_filler():
    ds = SyntheticDataset("mqar", num_symbols=16, settings={"pairs": 8})
    L = 64
    rows = ds.probe("val", length=256, depth=0.25, count=5)
    for inputs, targets, weights, distance in zip(rows["inputs"], rows["targets"], rows["weights"],
                                                  rows["distance"], strict=True):
        text = _decode(ds, [*inputs, targets[-1]])
        m = re.fullmatch(r"((?:[a-p]\d)*)(\.*)((?:[a-p]\d)*)\|((?:[a-p]\d){8})", text)
        assert m, text
        far, filler, near, queries = m.groups()
        assert len(far) == 2 * 2 and len(near) == 2 * 6 and len(filler) == 256 + 1 - 33
        pairs = far + near
        binding = dict(zip(pairs[0::2], pairs[1::2], strict=True))
        assert len(binding) == 8  # distinct keys
        asked = queries[0::2]
        assert sorted(asked) == sorted(binding)
        assert all(binding[q] == v for q, v in zip(asked, queries[1::2], strict=True))
        predicted = weights > 0
        assert _decode(ds, targets[predicted]) == queries[1::2]  # the values are predicted, the queries given
        start = text.index("|") + 1
        for j, q in enumerate(asked):  # distance from the answer token back to the value it copies
            value_pos = text.index(q) + 1
            assert distance[predicted][j] == start + 2 * j + 1 - value_pos
        far_keys = set(far[0::2])
        beyond = distance[predicted] > L
        assert [q in far_keys for q in asked] == beyond.tolist()  # exactly the far pairs are beyond L


@pytest.mark.parametrize("task,kw,call,message", [
    ("passkey", {}, {"length": 32, "depth": 1.5, "count": 2},
     "depth=1.5; a depth is a fraction of the context, in [0, 1]"),
    ("passkey", {}, {"length": 11, "depth": 0.5, "count": 2}, "length=11 is too short for a synthetic/passkey example: "
                                                              "the key and the query alone take 12 tokens"),
    ("copy", {}, {"length": 32, "depth": 0.5, "count": 2}, "synthetic/copy has no depth to place"),
])
def test_probe_bad_input_is_one_line(task, kw, call, message):
    with pytest.raises(data_lib.DataError, match=re.escape(message)):
        SyntheticDataset(task, **kw).probe("val", **call)


def test_mqar_with_more_pairs_than_distinct_keys_is_refused_in_one_line():
    with pytest.raises(data_lib.DataError, match=re.escape(
            "data.synthetic.pairs=20 is more than the 16 distinct keys (data.synthetic.num_symbols)")):
        SyntheticDataset("mqar", num_symbols=16, settings={"pairs": 20})


def test_settings_reach_the_data_hash_and_the_config():
    a = SyntheticDataset("mqar", settings={"pairs": 4})
    b = SyntheticDataset("mqar", settings={"pairs": 5})
    assert a.data_hash != b.data_hash and a.length(10) == 4 * 4 + 1 + 10
    cfg = data_lib.default_config()
    cfg.name, cfg.synthetic.pairs = "synthetic/mqar", 3
    assert data_lib.load_dataset(cfg).settings == {"pairs": 3}
    np.testing.assert_array_equal(a.probe("val", length=64, depth=0.5, count=3)["inputs"],
                                  a.probe("val", length=64, depth=0.5, count=3)["inputs"])  # fixed probes
