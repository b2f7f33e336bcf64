"""Preparing a run: from (config, workdir, intent) to one resolved, validated `Run` that training, evaluation,
sampling and sweeps consume (nanodo's `get_model_and_loss` plus the checks before anything is written).

    intent      what it checks, before anything is built or written
    new         the config resolved and validated against the data and this machine (`check_config`)
    init_from   the same, after the source run's checks (`check_init_source`, its derived fields, its vocabulary)
    resume      the run's saved config against the new one (fields that may change), the steps done, then `new`'s
    evaluate    overrides against the run's config (`check_init_config`), resolved and validated: no training checks

`config.resolve` and `config.validate` run here once per run; the loop (`train.py`) and the commands take the
resolved config from the `Run`. Bad input is a one-line error before the run directory is made or touched.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxformer import config as config_lib
from jaxformer import data as data_lib
from jaxformer import losses
from jaxformer import run as run_lib
from jaxformer.loader import build_model, follow_run_matmul, restore_params
from jaxformer.model import count_params

log = logging.getLogger("jaxformer")

INTENTS = ("new", "resume", "init_from", "evaluate")


@dataclasses.dataclass(frozen=True)
class Run:
    """One resolved, validated run: what the loop, evaluation and sampling are built from.

    `cfg`: resolved (derived fields filled in, model.vocab_size from the data) and validated; `objective`: the
    model's loss, paired with it (`losses.for_model`; `family` says what else the pair means); `saved`: the run
    directory's own config (resume, evaluate); `changed`: the dotted fields that differ from it (or from the
    `init_from` source's)."""

    intent: str
    workdir: str
    cfg: ml_collections.ConfigDict
    dataset: object
    objective: losses.Objective
    saved: ml_collections.ConfigDict | None = None
    init_from: str | None = None
    init_checkpoint: str = "latest"
    changed: tuple[str, ...] = ()

    @property
    def family(self) -> losses.Family:
        return self.objective.family


def resolved_config(cfg: ml_collections.ConfigDict, **validate_kwargs) -> ml_collections.ConfigDict:
    """A config resolved (derived fields filled) and validated without its data: what `jaxformer config` prints and
    an import writes (`validate_kwargs`: `config.validate`'s, e.g. eval_lengths)."""
    cfg = config_lib.resolve(cfg)
    config_lib.validate(cfg, **validate_kwargs)
    return cfg


def apply_overrides(cfg: ml_collections.ConfigDict | str, overrides, *,
                    check_fields: bool = False) -> ml_collections.ConfigDict:
    """`--config.a.b=v` overrides on a config object, or on a saved config.json given by its path (a run's own, e.g.
    `--resume --config.train.steps=4000`; a source run's model; an imported model's). `config.load` types and
    checks overrides against a config file, so the config is read through one that returns `config.from_json` of
    it: a config.json written before a field existed gets its LEGACY_DEFAULTS value. `check_fields`: refuse fields
    configs/default.py does not have (off for a saved config: written by the code of its day)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = cfg
        if not isinstance(cfg, str):
            path = os.path.join(tmp, "config.json")
            with open(path, "w") as f:
                f.write(config_lib.to_json(cfg))
        loader_py = os.path.join(tmp, "c.py")
        with open(loader_py, "w") as f:
            f.write("from jaxformer import config\n"
                    f"def get_config():\n    return config.from_json(open({path!r}).read())\n")
        return config_lib.load(loader_py, list(overrides), check_fields=check_fields)


def load_data(cfg: ml_collections.ConfigDict, workdir: str, intent: str, init_from: str | None = None):
    """The run's dataset; a subword run keeps its own tokenizer (the BPE it trained, or the source run's for
    init_from), it is not trained again."""
    if intent == "init_from":
        return data_lib.load_dataset(cfg.data, tokenizer=data_lib.cached_tokenizer(cfg.data, init_from))
    saved_run = intent in ("resume", "evaluate") and os.path.exists(os.path.join(workdir, "config.json"))
    return data_lib.load_dataset(cfg.data, tokenizer=data_lib.cached_tokenizer(cfg.data, workdir)
                                 if saved_run else None)


def init_from_config(cfg: ml_collections.ConfigDict, source: str, which: str,
                     workdir: str) -> tuple[ml_collections.ConfigDict, tuple[str, ...]]:
    """(cfg with the source run's derived fields, the fields changed from it): a change that gives another model
    is refused; the source is only read."""
    source_cfg = check_init_source(source, which, workdir)
    cfg = inherit_derived(cfg, source_cfg)
    changed = run_lib.check_init_config(
        source, config_lib.resolve(source_cfg),
        config_lib.resolve(cfg, vocab_size=config_lib.data_vocab_size(source_cfg)))
    if changed:
        log.info("initialising from %s with changed fields: %s", source, ", ".join(changed))
    return cfg, tuple(changed)


def check_resume(cfg: ml_collections.ConfigDict, workdir: str) -> tuple[ml_collections.ConfigDict, tuple[str, ...]]:
    """(the run's saved config, the fields changed on resume), refusing a change that may not be made and fewer
    train.steps than the run has done; the run keeps the matmul path it was trained with."""
    saved = run_lib.load_config(workdir)
    changed = run_lib.check_resume_config(
        workdir, saved, config_lib.resolve(cfg, vocab_size=config_lib.data_vocab_size(saved)))
    if changed:
        log.info("resuming with changed fields: %s", ", ".join(changed))
    done = max([int(name) for kind in ("latest", "best") if os.path.isdir(d := os.path.join(
        workdir, "checkpoints", kind)) for name in os.listdir(d) if name.isdigit()], default=0)
    if done > cfg.train.steps:
        raise run_lib.RunDirError(f"--resume: {workdir} has trained {done} steps; train.steps={cfg.train.steps} "
                                  f"is fewer: give train.steps >= {done} (more extends the run)")
    return saved, tuple(changed)


def prepare(cfg: ml_collections.ConfigDict, workdir: str, intent: str, *, dataset=None, init_from: str | None = None,
            init_checkpoint: str = "latest", changed: tuple[str, ...] = (), eval_lengths=()) -> Run:
    """The `Run` of `cfg` in `workdir` for `intent` (module docstring). For `init_from`, `cfg` is the one
    `init_from_config` returned (the source's derived fields taken); for `resume` the run directory is locked by
    the caller first (its saved files are read). `eval_lengths`: the lengths an evaluation will run at (checked
    against the position encoding's limits)."""
    if intent not in INTENTS:
        raise ValueError(f"intent={intent!r}; choose one of: {', '.join(INTENTS)}")
    saved = None
    if intent == "resume":
        saved, changed = check_resume(cfg, workdir)
    elif intent == "evaluate":
        saved = run_lib.load_config(workdir)
        overridden = config_lib.resolve(cfg)
        changed = tuple(run_lib.check_init_config(workdir, config_lib.resolve(saved), overridden,
                                                  what="eval override"))
        # before the data is loaded, as a new run's check_config
        config_lib.validate(overridden, eval_lengths=eval_lengths)
    if dataset is None:
        dataset = load_data(cfg, workdir, intent, init_from)
    if intent == "init_from":
        check_init_vocabulary(init_from, dataset, cfg)
    if intent == "evaluate":
        resolved = config_lib.resolve(cfg, vocab_size=dataset.vocab_size)
        config_lib.validate(resolved, n_devices=jax.device_count())
        config_lib.check_vocab(resolved, dataset.vocab_size)
    else:
        resolved = check_config(cfg, dataset)
        if intent == "resume":
            follow_run_matmul(workdir)  # the path the run was trained with, before the model is built
    return Run(intent=intent, workdir=workdir, cfg=resolved, dataset=dataset,
               objective=losses.for_model(resolved.model), saved=saved, init_from=init_from,
               init_checkpoint=init_checkpoint, changed=tuple(changed))


def check_init_source(source: str, which: str, workdir: str) -> ml_collections.ConfigDict:
    """The saved config of the run `--init-from` names, after checking it is a run with that checkpoint (read only:
    nothing is created or written there)."""
    if which not in ("latest", "best"):
        raise run_lib.RunDirError(f"--init-checkpoint={which!r}; choose one of: latest, best")
    if os.path.abspath(source) == os.path.abspath(workdir):
        raise run_lib.RunDirError(f"--init-from={source} is the new run's --workdir; give the new run another one")
    if not os.path.isfile(os.path.join(source, "config.json")):
        raise run_lib.RunDirError(f"--init-from={source} holds no run (no config.json); give a run directory made "
                                  "by `jaxformer train`")
    directory = os.path.join(source, "checkpoints", which)
    if not os.path.isdir(directory) or not any(name.isdigit() for name in os.listdir(directory)):
        raise run_lib.RunDirError(f"--init-from={source} has no {which} checkpoint ({directory} holds none); "
                                  f"train it first{' or use --init-checkpoint=latest' if which == 'best' else ''}")
    return run_lib.load_config(source)


def inherit_derived(cfg: ml_collections.ConfigDict, source_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`cfg` with the derived position fields left at 0 taken from the source run, not from the new block size: a
    learned table keeps its rows, YaRN's `original_max_len` stays the context the source was trained at, and T5's
    max_distance, xPos's scale_base and FIRE's init_L stay what the source was trained with."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    source = config_lib.resolve(source_cfg)
    fields = [f[len("model.position."):] for f in config_lib.DERIVED_FROM if f.startswith("model.position.")]
    for field in fields:  # learned.max_len, rope.original_max_len, and the others derived from the block size
        variant, name = field.split(".")
        if cfg.model.position[variant].get(name) == 0 and variant in source.model.position:
            cfg.model.position[variant][name] = source.model.position[variant][name]
    return cfg


def check_init_vocabulary(source: str, dataset, cfg: ml_collections.ConfigDict) -> None:
    """A one-line error when the new run's data has another vocabulary than the source run's tokenizer."""
    source_tok, new_tok = data_lib.run_tokenizer(source), dataset.tokenizer
    if (type(source_tok) is not type(new_tok) or source_tok.vocab_size != new_tok.vocab_size
            or getattr(source_tok, "vocab", None) != getattr(new_tok, "vocab", None)):
        raise run_lib.RunDirError(f"--init-from: data.name={cfg.data.name!r} has another vocabulary than "
                                  f"{source}/{source_tok.filename} ({new_tok.vocab_size} vs {source_tok.vocab_size} "
                                  "tokens); fine-tune on data with the source run's vocabulary")


def load_init_params(source: str, which: str, params0) -> tuple[dict, dict]:
    """(parameters of the source run's checkpoint in the new model's structure, what the manifest records); a
    one-line error for other parameter shapes."""
    _, _, params, step = restore_params(source, which=which)
    want = jax.tree_util.tree_flatten_with_path(params0)[0]
    got = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    for path, x in want:
        y = got.get(path)
        if y is None or y.shape != x.shape:
            name = jax.tree_util.keystr(path)
            raise run_lib.RunDirError(f"--init-from: parameter {name} has shape {None if y is None else y.shape} in "
                                      f"{source}, the new model's is {x.shape}; keep the model fields of the source")
    params = jax.tree.map(lambda x, y: jnp.asarray(y, x.dtype), params0, params)
    manifest = run_lib.read_json(os.path.join(source, "manifest.json")) if os.path.isfile(
        os.path.join(source, "manifest.json")) else {}
    info = {"run": os.path.abspath(source), "checkpoint": which, "step": int(step),
            "config_hash": manifest.get("config_hash"), "git_revision": manifest.get("git_revision")}
    return params, info


def check_config(cfg: ml_collections.ConfigDict, dataset) -> ml_collections.ConfigDict:
    """The resolved config, validated against the data and this machine: everything refused here is refused before
    the run directory is made or touched (one-line ConfigError)."""
    resolved = config_lib.resolve(cfg, vocab_size=dataset.vocab_size)
    config_lib.validate(resolved, n_devices=jax.device_count())
    m, d, t = resolved.model, resolved.data, resolved.train
    if config_lib.warmup_too_long(cfg):  # resolve() shortened it: a quick trial of a long config, said once
        log.info("optim.warmup_steps=%d is longer than the run: shortened to train.steps=%d (recorded in "
                 "config.json)", cfg.optim.warmup_steps, resolved.train.steps)
    config_lib.check_vocab(resolved, dataset.vocab_size)
    for split in ("train", "val"):
        tokens = dataset.split_tokens(split)
        if tokens is not None and d.block_size + 1 > len(tokens):
            raise config_lib.ConfigError(
                f"data.block_size={d.block_size} needs {d.block_size + 1} tokens per row; the {split} split of "
                f"{d.name!r} has {len(tokens)}: choose data.block_size <= {len(tokens) - 1}")
    # The data as training will ask for it (a synthetic task's sizes must fit the block size, ...): refused here,
    # before the run directory is made, not at the first step after config.json was written.
    dataset.batch("train", 0, batch_size=1, block_size=d.block_size, seed=t.seed)
    dataset.eval_batches("val", batch_size=1, block_size=d.block_size, num_batches=1, seed=t.seed)
    need, n_params = memory_estimate(resolved)
    have = device_memory()
    evals = eval_batches_bytes(resolved)
    if evals > have / 4:
        raise config_lib.ConfigError(
            f"train.eval_iters={t.eval_iters} keeps {evals / 2**30:,.1f} GiB of fixed evaluation batches (two splits "
            f"x {t.eval_iters} x data.batch_size={d.batch_size} x data.block_size={d.block_size}); this machine's "
            f"{jax.devices()[0].platform} memory is {have / 2**30:,.1f} GiB: choose train.eval_iters <= "
            f"{max(1, int(t.eval_iters * have / 4 / evals)):,}")
    draw = positions_draw_bytes(resolved)
    if draw > have / 2:
        raise config_lib.ConfigError(
            f"model.position.randomize_max_len={m.position.randomize_max_len:,} draws its positions from a "
            f"permutation of that range per sequence: about {draw / 2**30:,.1f} GiB a step; this machine's memory is "
            f"{have / 2**30:,.1f} GiB: choose a range of a few times data.block_size={d.block_size}")
    if need > have:
        raise config_lib.ConfigError(
            f"the model ({n_params:,} parameters, model.n_layer={m.n_layer}, model.n_embd={m.n_embd}) needs about "
            f"{need / 2**30:,.1f} GiB for parameters, optimizer state and activations at data.batch_size="
            f"{d.batch_size}, data.block_size={d.block_size}; this machine's {jax.devices()[0].platform} memory is "
            f"{have / 2**30:,.1f} GiB: shrink the model or the batch, or add devices (mesh.fsdp)")
    return resolved


def memory_estimate(cfg: ml_collections.ConfigDict) -> tuple[int, int]:
    """(bytes, parameter count) a training step needs at least, per device: parameters, gradients and AdamW's two
    moments (4 copies, split by mesh.fsdp/tensor), plus the activations kept for the backward pass, from the
    per-layer count of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
    s*b*h*(34 + 5*a*s/h) bytes at 16 bits, doubled for float32) and the float32 logits and their gradient.

    The parameter count is `param_count`'s (closed form in the depth: milliseconds at any model.n_layer)."""
    n_params = param_count(cfg)
    m, d = cfg.model, cfg.data
    width = np.dtype(jnp.dtype(m.param_dtype)).itemsize
    act = np.dtype(jnp.dtype(m.dtype)).itemsize
    n_devices = jax.device_count()
    shards = max(1, cfg.mesh.fsdp if cfg.mesh.fsdp > 0 else 1) * max(1, cfg.mesh.tensor if cfg.mesh.tensor > 0 else 1)
    B = d.batch_size / max(1, n_devices // shards)  # rows per device
    T, D, H = d.block_size, m.n_embd, m.n_head
    per_layer = T * B * D * (34 + 5 * H * T / D) * act / 2
    layers = per_layer * (1 if m.remat else m.n_layer) + (m.n_layer * T * B * D * act if m.remat else 0)
    logits = 2 * B * T * m.vocab_size * 4
    return int(4 * n_params * width / shards + layers + logits), n_params


def param_count(cfg: ml_collections.ConfigDict) -> int:
    """The model's parameter count, P(L) = P(1) + (L - 1) (P(2) - P(1)): every block holds the same parameters, so
    the count is affine in the depth L, and two abstract builds (`nnx.eval_shape`, nothing allocated) of one and
    two blocks give it exactly; one abstract build of L blocks takes seconds at L=100 and minutes at L=500."""
    def count(n_layer: int) -> int:
        shallow = ml_collections.ConfigDict(cfg.to_dict())
        shallow.model.n_layer = n_layer
        return count_params(nnx.eval_shape(lambda: build_model(shallow)))

    one, two = count(1), count(2)
    return one + (cfg.model.n_layer - 1) * (two - one)


def eval_batches_bytes(cfg: ml_collections.ConfigDict) -> int:
    """Bytes of the fixed evaluation batches a run keeps (`Trainer._eval_batches`): two splits of
    train.eval_iters batches of int32 inputs, int32 targets and float32 weights."""
    return 2 * cfg.train.eval_iters * cfg.data.batch_size * cfg.data.block_size * 3 * 4


def positions_draw_bytes(cfg: ml_collections.ConfigDict) -> int:
    """Bytes one step's randomized positions take while drawn: `jax.random.choice` without replacement permutes
    the whole range R (int32 values and their sort keys, ~3 x 4 bytes each), per sequence of a micro-batch or once
    (model.position.randomize_per)."""
    pe = cfg.model.position
    R = pe.get("randomize_max_len", 0)
    draws = cfg.data.batch_size if pe.get("randomize_per", "sequence") == "sequence" else 1
    return 3 * 4 * R * draws


def device_memory() -> int:
    """Bytes of memory of one device: the accelerator's allocator limit, or the host's RAM for the CPU."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if stats.get("bytes_limit"):
            return int(stats["bytes_limit"])
    import psutil

    return int(psutil.virtual_memory().total)
