"""Generation: cached decoding samples exactly what uncached decoding samples; sampling rules; cropping."""

import jax
import numpy as np
import pytest
from flax import nnx

from jaxformer import config as config_lib
from jaxformer import sample as sample_lib
from jaxformer.model import GPT


def make_model(position="rope"):
    cfg = config_lib.load("tiny", [f"--config.model.position.name={position}"])
    cfg = config_lib.resolve(cfg, vocab_size=11)
    return GPT(cfg.model, rngs=nnx.Rngs(params=0))


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_cached_equals_uncached(position):
    model = make_model(position)
    prompt = np.array([1, 2, 3], np.int32)
    kwargs = dict(max_new_tokens=20, temperature=1.0, top_k=5, seed=3, max_context=32)
    cached = sample_lib.generate(model, prompt, **kwargs)
    uncached = sample_lib.generate(model, prompt, use_cache=False, **kwargs)
    np.testing.assert_array_equal(cached, uncached)
    assert cached.shape == (23,) and (cached[:3] == prompt).all()


def test_generation_past_the_context_crops_like_nanogpt():
    """Beyond max_context the window slides: 60 tokens from a model with a 32-position learned table."""
    model = make_model("learned")
    out = sample_lib.generate(model, np.array([1], np.int32), max_new_tokens=60, temperature=0.0, max_context=32)
    assert out.shape == (61,)
    ref = sample_lib.generate(model, np.array([1], np.int32), max_new_tokens=60, temperature=0.0, max_context=32,
                              use_cache=False)
    np.testing.assert_array_equal(out, ref)
    # Written out without the sampling loop: past the context, each greedy token is the argmax of the model on
    # the last 32 tokens before it.
    graphdef, state = nnx.split(model)
    last = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t)[0, -1])
    for j in range(33, 61):
        assert out[j] == int(np.argmax(np.asarray(last(state, out[None, j - 32:j])))), j


def test_top_k_and_greedy():
    logits = np.array([0.0, 5.0, 1.0, 4.0], np.float32)
    assert int(sample_lib.sample_logits(logits, jax.random.key(0), temperature=0.0, top_k=None)) == 1
    draws = {int(sample_lib.sample_logits(logits, jax.random.key(i), temperature=10.0, top_k=2)) for i in range(200)}
    assert draws == {1, 3}


def test_ids_past_the_tokenizer_are_never_drawn():
    """A model vocabulary padded past its tokenizer's (vocab_size): its largest logits there are never drawn."""
    logits = np.array([0.0, 2.0, 1.0, 9.0, 8.0], np.float32)
    assert int(sample_lib.sample_logits(logits, jax.random.key(0), temperature=0.0, top_k=None, vocab_size=3)) == 1
    draws = {int(sample_lib.sample_logits(logits, jax.random.key(i), temperature=5.0, top_k=None, vocab_size=3))
             for i in range(200)}
    assert draws == {0, 1, 2}
    model = make_model()
    ids = sample_lib.generate(model, np.array([4], np.int32), max_new_tokens=40, temperature=2.0, seed=1, vocab_size=5)
    assert ids[1:].max() < 5 and np.unique(ids[1:]).size > 1


def test_same_seed_same_text_different_seed_different_text():
    model = make_model()
    prompt = np.array([4], np.int32)
    a = sample_lib.generate(model, prompt, max_new_tokens=30, seed=0)
    b = sample_lib.generate(model, prompt, max_new_tokens=30, seed=0)
    c = sample_lib.generate(model, prompt, max_new_tokens=30, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
