"""The training-length defaults each positional encoding declares (`PositionalEncoding.derived` / `derive`) resolve
every config exactly as the per-variant code that `config.resolve` held before (issue 35, must-have 4): the same
values, of the same types, for every variant x block size x the fields the rules read."""

import itertools

import ml_collections
import pytest

from jaxformer import config as config_lib
from jaxformer import positional


def old_resolve_position(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The derivation as config.resolve wrote it before the registry held it (copied from main at 5428144)."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    if cfg.model.position.learned.max_len == 0:
        cfg.model.position.learned.max_len = cfg.model.position.get("randomize_max_len", 0) or cfg.data.block_size
    if cfg.model.position.rope.get("original_max_len", None) == 0:
        cfg.model.position.rope.original_max_len = cfg.data.block_size
    pe, block = cfg.model.position, cfg.data.block_size
    if pe.get("sinusoidal", {}).get("scale", None) == 0:
        pe.sinusoidal.scale = positional.sinusoidal_scale(pe.sinusoidal.get("scheme", "matched"))
    if pe.get("t5", {}).get("max_distance", None) == 0:
        pe.t5.max_distance = positional.t5_max_distance(block, num_buckets=pe.t5.num_buckets,
                                                        bidirectional=pe.t5.bidirectional)
    if pe.get("xpos", {}).get("scale_base", None) == 0:
        pe.xpos.scale_base = positional.xpos_scale_base(block)
    if pe.get("fire", {}).get("init_L", None) == 0:
        pe.fire.init_L = positional.fire_init_L(block)
    return cfg


OLD_DERIVED_FROM = {  # config.DERIVED_FROM's position entries before the registry generated them
    "model.position.learned.max_len": "data.block_size",
    "model.position.rope.original_max_len": "data.block_size",
    "model.position.t5.max_distance": "data.block_size",
    "model.position.xpos.scale_base": "data.block_size",
    "model.position.fire.init_L": "data.block_size",
}


def _typed(tree):
    """Leaves with their types: 512 and 512.0 compare equal, but a config.json records them differently."""
    if isinstance(tree, dict):
        return {k: _typed(v) for k, v in tree.items()}
    return (type(tree).__name__, tree)


def _old_resolve(cfg, monkeypatch, **kwargs):
    """The old derivation, then the rest of today's resolve with the registry's derivation switched off (so a field
    only the new code fills would show as a difference)."""
    with monkeypatch.context() as m:
        m.setattr(positional, "derived_defaults", lambda position_cfg, *, block_size: {})
        return config_lib.resolve(old_resolve_position(cfg), **kwargs)


CASES = list(itertools.product(
    positional.list_positional_encodings(), (1, 2, 7, 32, 33, 64, 100, 256, 1024, 4096), (0, 5000),
    (False, True), ("sqrt_d", "matched")))


@pytest.mark.parametrize("name,block,randomize,bidirectional,scheme", CASES)
def test_resolution_is_the_old_one_for_every_variant_and_block_size(name, block, randomize, bidirectional, scheme,
                                                                    monkeypatch):
    cfg = config_lib.load("default", [f"--config.model.position.name={name}", f"--config.data.block_size={block}",
                                      f"--config.model.position.randomize_max_len={randomize}",
                                      f"--config.model.position.t5.bidirectional={bidirectional}",
                                      f"--config.model.position.sinusoidal.scheme={scheme}"])
    new = config_lib.resolve(cfg, vocab_size=11)
    old = _old_resolve(cfg, monkeypatch, vocab_size=11)
    assert _typed(new.to_dict()) == _typed(old.to_dict())
    assert all(new.model.position[v][f] != 0 for v, fs in positional.derived_defaults(
        cfg.model.position.to_dict(), block_size=block).items() for f in fs)


def test_resolution_keeps_set_values_and_leaves_missing_fields_missing(monkeypatch):
    """A value set by hand is never replaced; a section saved before a field existed does not gain it."""
    cfg = config_lib.load("default", ["--config.model.position.t5.max_distance=77",
                                      "--config.model.position.learned.max_len=300"])
    with cfg.unlocked():
        del cfg.model.position.rope["original_max_len"]
        del cfg.model.position["fire"]
    new, old = config_lib.resolve(cfg), _old_resolve(cfg, monkeypatch)
    assert _typed(new.to_dict()) == _typed(old.to_dict())
    assert new.model.position.t5.max_distance == 77 and new.model.position.learned.max_len == 300
    assert "original_max_len" not in new.model.position.rope and "fire" not in new.model.position


def test_derived_from_names_the_same_fields_as_before():
    assert {f: s for f, s in config_lib.DERIVED_FROM.items() if f.startswith("model.position.")} == OLD_DERIVED_FROM


def test_a_new_encoding_with_a_length_default_needs_only_its_registration(monkeypatch):
    """What adding an encoding takes: its record declares the rule; resolve and DERIVED_FROM pick it up."""
    record = positional.PositionalEncoding(
        "toy", defaults={"window": 0, "width": 3}, init=lambda key, cfg, **_: {},
        derived={"window": "`data.block_size` * 3"},
        derive=lambda cfg, *, block_size, positions: {"window": block_size * cfg["width"]})
    monkeypatch.setitem(positional._REGISTRY, "toy", record)
    assert "model.position.toy.window" in positional.block_size_fields()
    position = {"toy": {"window": 0, "width": 3}, "learned": {"max_len": 9}}
    assert positional.derived_defaults(position, block_size=40) == {"toy": {"window": 120}}
