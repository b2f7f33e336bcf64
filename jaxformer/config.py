"""Loading, resolving and validating configs, before anything compiles.

A config is a Python file (or the name of one in `jaxformer.configs`) whose `get_config()` returns an
`ml_collections.ConfigDict`. Fields are overridden with `--config.section.field=value` (ml_collections' `config_flags`,
locked, so a typo is an error). `resolve` fills the derived fields (0 = "take it from elsewhere"), and `validate`
checks everything a run needs, raising a one-line `ConfigError` that names the field, the value and what is valid.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.resources
import json
import math
import os
from collections.abc import Mapping, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from jaxformer import attention, losses, positional
from jaxformer import data as data_lib
from jaxformer import sharding as sharding_lib

DTYPES = ("float32", "bfloat16", "float16")
NONFINITE_POLICIES = ("stop", "skip")
INT32_MAX = 2**31 - 1  # the train state's step counter and the data sampler's seeds are int32
NORM_EPS_MAX = 0.1  # model.norm_eps: far above any published model's (1e-12 .. 1e-5), far below a dead model's
SAMPLE_CHARS_MAX = 100_000  # train.sample_chars: an end-of-run look at the model, generated one token at a time


class ConfigError(ValueError):
    """A config that cannot run; the message is one line naming the field and what would be valid."""


def config_path(config: str) -> str:
    """A config given as a path to a .py file, or as the name of one in `jaxformer.configs` (e.g. "tiny")."""
    if config.endswith(".py") or os.sep in config:
        if not os.path.isfile(config):
            names = ", ".join(list_configs())
            raise ConfigError(f"--config={config!r}: no such file; give a .py file or one of: {names}")
        return config
    packaged = importlib.resources.files("jaxformer.configs").joinpath(f"{config.replace('.', '/')}.py")
    if not packaged.is_file():
        names = ", ".join(list_configs())
        raise ConfigError(f"--config={config!r}: not a file nor a packaged config; choose one of: {names}")
    return str(packaged)


def list_configs() -> list[str]:
    root = importlib.resources.files("jaxformer.configs")
    names = []
    for entry in root.iterdir():
        if entry.name.endswith(".py") and not entry.name.startswith("_"):
            names.append(entry.name[:-3])
        elif entry.is_dir() and not entry.name.startswith("_"):
            names += [f"{entry.name}.{e.name[:-3]}" for e in entry.iterdir()
                      if e.name.endswith(".py") and not e.name.startswith("_")]
    return sorted(names)


def _field_names(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    names = []
    for key, value in cfg.items():
        names.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            names += _field_names(value, prefix + key + ".")
    return names


def _suggest(field: str, cfg: ml_collections.ConfigDict) -> list[str]:
    """The nearest settable fields to a mistyped one: leaves only (a section such as `model.position.none` holds no
    value to set)."""
    leaves = [name for name in _field_names(cfg) if not isinstance(_get(cfg, name), ml_collections.ConfigDict)]
    return difflib.get_close_matches(field, leaves, n=3, cutoff=0.8)


def load(config: str = "default", overrides: Sequence[str] = (), *,
         check_fields: bool = True) -> ml_collections.ConfigDict:
    """Loads a config and applies `--config.a.b=value` overrides (typed by the existing field; unknown = error).

    A training config (one with `model` and `train` sections) may only hold the fields of configs/default.py: a
    typo in the file (`c.model.n_layers = 4`) is an error, as it is in an override (`check_fields=False` skips it:
    a run's saved config.json, written by the code of its day).
    """
    path = config_path(config)
    overrides = list(overrides)
    for arg in overrides:
        if not arg.startswith("--config."):
            raise ConfigError(f"override {arg!r}: expected --config.<section>.<field>=<value>")
    base = _load_file(path)
    if check_fields and "model" in base and "train" in base:
        _check_known_fields(base, path)
    try:
        cfg = _parse(path, overrides) if overrides else base
    except (AttributeError, KeyError) as e:
        # An override naming a field the config does not have: find which one, and suggest the nearest names.
        known = _field_names(base)
        for arg in overrides:
            field = arg[len("--config."):].split("=", 1)[0]
            if field not in known:
                close = _suggest(field, base)
                hint = f"did you mean: {', '.join(close)}" if close else f"see `jaxformer config --config {config}`"
                raise ConfigError(f"unknown config field {field!r}; {hint}") from e
        raise ConfigError(f"bad override: {e}") from e
    except flags.Error as e:
        line = str(e).splitlines()[0]
        field = line.split("--config.", 1)[1].split("=", 1)[0] if line.startswith("flag --config.") else None
        value = _get(base, field) if field else None
        if isinstance(value, ml_collections.ConfigDict):  # --config.model.position=alibi: a section, not a field
            raise ConfigError(_section_hint(field, value, line.split("=", 1)[1].split(":", 1)[0])) from e
        if value is not None:
            line += f" (expected {type(value).__name__}, like the current value {value!r})"
        raise ConfigError(line) from e
    return cfg


def _section_hint(field: str, section: ml_collections.ConfigDict, value: str) -> str:
    """The one line for `--config.<section>=v`: set one of the section's fields instead."""
    leaves = [k for k, v in section.items() if not isinstance(v, ml_collections.ConfigDict)]
    example = "name" if "name" in section else (leaves[0] if leaves else next(iter(section.keys()), "field"))
    return (f"--config.{field}={value}: {field} is a section of fields, not a value; set one of its fields, e.g. "
            f"--config.{field}.{example}={value} (its fields: {', '.join(section.keys())})")


def _get(cfg: ml_collections.ConfigDict, field: str):
    node = cfg
    for part in field.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return None
        node = node[part]
    return node


def _load_file(path: str) -> ml_collections.ConfigDict:
    """The config file's get_config(), with what can go wrong in the file as a one-line ConfigError."""
    with open(path) as f:
        source = f.read()
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as e:
        raise ConfigError(f"--config={path}: syntax error at line {e.lineno}: {e.msg}") from e
    # Checked here, not from the loaded module: ml_collections reuses one module object for every config file
    # loaded in a process, so a file without get_config() would silently run the previous file's.
    defined = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            defined.add(node.name)
        elif isinstance(node, ast.ImportFrom):
            defined.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
    if "get_config" not in defined:
        raise ConfigError(f"--config={path}: defines no get_config() (it must return an ml_collections.ConfigDict)")
    try:
        cfg = _parse(path, [])
    except flags.Error as e:  # raised inside the file's get_config(): the first line and the error itself
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise ConfigError(" ".join(lines[:1] + lines[-1:] if len(lines) > 1 else lines)) from e
    except Exception as e:  # noqa: BLE001 -- any error raised by the user's file, said in one line
        raise ConfigError(f"--config={path}: get_config() failed: {type(e).__name__}: {e}") from e
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(f"--config={path}: get_config() returned a {type(cfg).__name__}; it must return an "
                          "ml_collections.ConfigDict (start from jaxformer.configs.default.get_config())")
    return cfg


def _check_known_fields(cfg: ml_collections.ConfigDict, path: str) -> None:
    from jaxformer.configs import default

    reference = default.get_config()
    known = set(_field_names(reference))
    for field in _field_names(cfg):
        if field not in known:
            close = _suggest(field, reference)
            hint = f"did you mean: {', '.join(close)}" if close else "see configs/default.py for every field"
            raise ConfigError(f"unknown config field {field!r} set in {path}; {hint}")


def _parse(path: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """The config file at `path` with `--config.x=v` overrides, through a fresh (locked) config flag."""
    argv = ["jaxformer", f"--config={path}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=flag_values, lock_config=True, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


# The fields `resolve` fills when they are 0, and the field each is then taken from.
DERIVED_FROM = {
    "model.n_kv_head": "model.n_head",
    "optim.decay_steps": "train.steps",
    # each positional encoding's training-length defaults, as it declares them (learned.max_len: from
    # model.position.randomize_max_len when that is set)
    **{field: "data.block_size" for field in positional.block_size_fields()},
}


def cause_first(fields) -> list[str]:
    """Differing dotted fields, sorted, a derived field after the field it follows when both differ: a changed
    `train.steps` is reported as itself, not as the `optim.decay_steps` it brought along."""
    fields = set(fields)
    return sorted(fields, key=lambda f: (DERIVED_FROM.get(f) in fields, f))


def resolve(cfg: ml_collections.ConfigDict, *, vocab_size: int | None = None) -> ml_collections.ConfigDict:
    """Returns a copy with the derived fields filled in: 0 means "take it from elsewhere"."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    if cfg.model.n_kv_head == 0:
        cfg.model.n_kv_head = cfg.model.n_head
    if cfg.optim.decay_steps == 0:
        cfg.optim.decay_steps = cfg.train.steps
    # Each variant's fair default for the training length, as the variant declares it (positional.py).
    derived = positional.derived_defaults(cfg.model.position.to_dict(), block_size=cfg.data.block_size)
    for variant, fields in derived.items():
        cfg.model.position[variant].update(fields)
    if vocab_size is not None and cfg.model.vocab_size == 0:  # + [MASK]'s id after the data's tokens (masked LM)
        cfg.model.vocab_size = vocab_size + appended_ids(cfg)
    if warmup_too_long(cfg):
        cfg.optim.warmup_steps = cfg.train.steps
    return cfg


def warmup_too_long(cfg: ml_collections.ConfigDict) -> bool:
    """Whether `optim.warmup_steps` is longer than the run: `resolve` shortens it to `train.steps`, so that a quick
    trial of any config (`--config.train.steps=40`) needs no second override; `train` says so in one line."""
    steps, warmup = cfg.train.get("steps"), cfg.optim.get("warmup_steps")
    return (isinstance(steps, int) and isinstance(warmup, int) and 0 < steps < warmup)


def appended_ids(cfg: ml_collections.ConfigDict) -> int:
    """Ids the model has beyond its data's vocabulary: 1 for a masked LM whose [MASK] is a new id
    (model.mlm.mask_token_id=-1 = the last id of model.vocab_size), else 0."""
    pair = losses.FAMILIES.get(cfg.model.get("loss", "causal_lm"))  # an unknown loss is refused by validate
    return pair.appended_ids(cfg.model) if pair else 0


def data_vocab_size(cfg: ml_collections.ConfigDict) -> int | None:
    """The data's vocabulary size a resolved config was made with (model.vocab_size less the appended ids)."""
    return (cfg.model.vocab_size - appended_ids(cfg)) if cfg.model.vocab_size else None


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: ml_collections.ConfigDict, *, n_devices: int | None = None,
             eval_lengths: Sequence[int] = ()) -> None:
    """Raises ConfigError (one line) for anything that would fail or silently train the wrong thing."""
    from jaxformer import model as model_lib  # the norm / MLP registries (flax only once a config is validated)

    m, d, o, t = cfg.model, cfg.data, cfg.optim, cfg.train
    _require(d.block_size != 0, "data.block_size=0 takes the context of the --init-from run (a fine-tuning config "
             "such as finetune_text); give --init-from RUN or a positive block size")
    for section, names in (("model", ("n_layer", "n_head", "n_embd")), ("data", ("block_size", "batch_size")),
                           ("train", ("steps", "log_every", "eval_every", "eval_iters")),
                           ("optim", ("accum_steps",)), ("model.attention", ("block_size",))):
        node = cfg
        for part in section.split("."):
            node = node[part]
        for name in names:
            value = node[name]
            _require(isinstance(value, int) and value > 0, f"{section}.{name}={value!r}; must be a positive integer")
    for name in ("n_kv_head", "vocab_size"):
        _require(m[name] >= 0, f"model.{name}={m[name]!r}; must be >= 0 (0 = derive it)")
    for field, value in flat_fields(cfg).items():  # inf/nan anywhere (rope.theta=inf, ...) builds a dead model
        _require(not isinstance(value, float) or math.isfinite(value), f"{field}={value!r}; must be a finite number")
    for field in ("optim.lr", "optim.min_lr", "optim.weight_decay", "optim.grad_clip", "optim.beta1", "optim.beta2",
                  "model.dropout"):
        value = _get(cfg, field)
        _require(isinstance(value, (int, float)) and math.isfinite(value),
                 f"{field}={value!r}; must be a finite number")
    _require(t.steps <= INT32_MAX,
             f"train.steps={t.steps}; the step counter is int32: at most {INT32_MAX}")
    _require(isinstance(t.seed, int) and 0 <= t.seed <= INT32_MAX,
             f"train.seed={t.seed!r}; must be an integer in [0, {INT32_MAX}]")
    _require(t.get("max_skipped_steps", 0) >= 0,
             f"train.max_skipped_steps={t.get('max_skipped_steps')!r}; must be >= 0 (0 = never stop)")
    _require(t.checkpoint_every >= 0, f"train.checkpoint_every={t.checkpoint_every!r}; must be >= 0 (0 = final only)")
    _require(t.keep_checkpoints >= 1, f"train.keep_checkpoints={t.keep_checkpoints!r}; must be >= 1")
    _require(o.lr > 0, f"optim.lr={o.lr!r}; must be > 0")
    _require(0 <= o.min_lr <= o.lr, f"optim.min_lr={o.min_lr!r}; must be in [0, optim.lr={o.lr!r}]")
    _require(o.warmup_steps >= 0, f"optim.warmup_steps={o.warmup_steps!r}; must be >= 0")
    _require(o.decay_steps >= 0, f"optim.decay_steps={o.decay_steps!r}; must be >= 0 (0 = train.steps)")
    _require(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1,
             f"optim.beta1={o.beta1!r}, optim.beta2={o.beta2!r}; both must be in [0, 1)")
    _require(o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay!r}; must be >= 0")
    _require(o.grad_clip >= 0, f"optim.grad_clip={o.grad_clip!r}; must be >= 0 (0 = off)")
    _require(0 <= m.dropout < 1, f"model.dropout={m.dropout!r}; must be in [0, 1)")
    _require(m.get("embed_multiplier", 1.0) >= 0,
             f"model.embed_multiplier={m.get('embed_multiplier')!r}; must be >= 0 (0 = sqrt(n_embd), 1 = GPT-2)")
    _require(m.dtype in DTYPES, f"model.dtype={m.dtype!r}; choose one of: {', '.join(DTYPES)}")
    _require(m.param_dtype in DTYPES, f"model.param_dtype={m.param_dtype!r}; choose one of: {', '.join(DTYPES)}")
    _require(t.nonfinite in NONFINITE_POLICIES,
             f"train.nonfinite={t.nonfinite!r}; choose one of: {', '.join(NONFINITE_POLICIES)}")
    _require(t.attention_diagnostics_every >= 0,
             f"train.attention_diagnostics_every={t.attention_diagnostics_every!r}; must be >= 0 (0 = off)")
    _require(m.head_dim > 0 or m.n_embd % m.n_head == 0,
             f"model.n_embd={m.n_embd} is not divisible by model.n_head={m.n_head}; pick n_embd = n_head * head width "
             "or set model.head_dim")
    _check_encoder(cfg)
    for name, choices in (("norm", model_lib.NORMS), ("mlp", model_lib.MLPS)):
        _require(m[name] in choices, f"model.{name}={m[name]!r}; choose one of: {', '.join(choices)}")
    _require(0 < m.norm_eps <= NORM_EPS_MAX,
             f"model.norm_eps={m.norm_eps!r}; must be in (0, {NORM_EPS_MAX}] (1e-5 or 1e-6 as GPT-2 and Llama: an "
             "epsilon near the activations' variance flattens every norm's output and the model learns nothing)")
    _require(0 <= t.get("sample_chars", 0) <= SAMPLE_CHARS_MAX,
             f"train.sample_chars={t.get('sample_chars')!r}; must be in [0, {SAMPLE_CHARS_MAX}] (0 = none; "
             "`jaxformer sample --max-new-tokens N` generates more from the finished run)")
    for name in ("head_dim", "mlp_hidden"):
        _require(isinstance(m[name], int) and m[name] >= 0, f"model.{name}={m[name]!r}; must be >= 0 (0 = derive it)")
    n_kv = m.n_kv_head or m.n_head
    _require(m.n_head % n_kv == 0,
             f"model.n_head={m.n_head} is not divisible by model.n_kv_head={n_kv}; kv heads must divide query heads")
    implementations = sorted(attention.IMPLEMENTATIONS)
    _require(m.attention.implementation in implementations,
             f"model.attention.implementation={m.attention.implementation!r}; "
             f"choose one of: {', '.join(implementations)}")

    names = positional.list_positional_encodings()
    _require(m.position.name in names, f"model.position.name={m.position.name!r}; choose one of: {', '.join(names)}")
    pe = positional.get_positional_encoding(m.position.name)
    pe_cfg = m.position[m.position.name].to_dict()
    if pe.validate is not None:
        try:
            pe.validate(pe_cfg)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    randomize = m.position.get("randomize_max_len", 0)
    _require(isinstance(randomize, int) and randomize <= INT32_MAX,
             f"model.position.randomize_max_len={randomize!r}; positions are int32: at most {INT32_MAX}")
    _require(isinstance(randomize, int) and (randomize == 0 or randomize >= d.block_size),
             f"model.position.randomize_max_len={randomize!r} is smaller than data.block_size={d.block_size}; "
             "give 0 (off) or a range of at least the block size (Ruoss et al. 2023 use several times it)")
    per = m.position.get("randomize_per", "sequence")
    _require(per in ("sequence", "batch"), f"model.position.randomize_per={per!r}; choose sequence (a draw per "
             "training sequence, Ruoss et al. 2023) or batch (one draw per micro-batch, as the authors' code)")
    limit = positional.max_length(m.position)
    if limit is not None:
        field = f"model.position.{m.position.name}"
        _require(randomize <= limit, f"model.position.randomize_max_len={randomize} is beyond the "
                 f"{m.position.name} table ({field}.max_len={limit}); give max_len >= it (0 = the range)")
        _require(d.block_size <= limit,
                 f"data.block_size={d.block_size} is beyond the {m.position.name} table ({field}.max_len={limit})")
        for length in eval_lengths:
            _require(length <= limit,
                     f"eval length {length} is beyond the {m.position.name} table ({field}.max_len={limit})")

    _require(d.tokenizer in data_lib.TOKENIZER_KINDS,
             f"data.tokenizer={d.tokenizer!r}; choose one of: {', '.join(data_lib.TOKENIZER_KINDS)}")
    _require(d.tokenizer != "bpe" or d.vocab_size >= 257,
             f"data.vocab_size={d.vocab_size!r}; a byte-level BPE needs at least 257 (256 bytes + merges)")
    problem = data_lib.tokenizer_problem(d.name, d.tokenizer)
    _require(problem is None, problem)
    datasets = data_lib.list_datasets()
    _require(d.name in datasets or (d.name.startswith("tfds:") and len(d.name) > 5) or data_lib.is_text_name(d.name),
             f"data.name={d.name!r}; choose one of: {', '.join(datasets)}, tfds:<name>, text:PATH")
    fraction = d.get("val_fraction", 0.1)
    _require(isinstance(fraction, float) and 0 < fraction < 1,
             f"data.val_fraction={fraction!r}; must be a number in (0, 1), e.g. 0.1 (the last 10%)")

    sizes = {axis: cfg.mesh.get(axis, 1) for axis in sharding_lib.AXES}
    _require(all(isinstance(v, int) and (v >= 1 or v == -1) for v in sizes.values()) and
             list(sizes.values()).count(-1) <= 1,
             ", ".join(f"mesh.{k}={v!r}" for k, v in sizes.items()) + "; sizes must be positive, at most one -1")
    if n_devices is not None:
        try:
            sizes = sharding_lib.mesh_shape(cfg.mesh, n_devices)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        shards = sizes["data"] * sizes["fsdp"]
        _require(d.batch_size % shards == 0,
                 f"data.batch_size={d.batch_size} is not divisible by the {shards} data-parallel devices "
                 "(mesh.data x mesh.fsdp)")


NORM_PLACEMENTS = ("pre", "post")


def _check_encoder(cfg: ml_collections.ConfigDict) -> None:
    """The encoder fields: the loss and the mask agree, the positional encoding has a bidirectional form."""
    from jaxformer import losses

    m = cfg.model
    causal, loss = m.get("causal", True), m.get("loss", "causal_lm")
    _require(isinstance(causal, bool), f"model.causal={causal!r}; must be True (decoder) or False (encoder)")
    _require(m.get("norm_placement", "pre") in NORM_PLACEMENTS,
             f"model.norm_placement={m.get('norm_placement')!r}; choose one of: {', '.join(NORM_PLACEMENTS)}")
    _require(m.get("type_vocab_size", 0) >= 0, f"model.type_vocab_size={m.get('type_vocab_size')!r}; must be >= 0")
    _require(loss in losses.LOSSES, f"model.loss={loss!r}; choose one of: {', '.join(losses.LOSSES)}")
    _require(not (m.get("head_transform", False) and m.mlp == "swiglu"),
             "model.head_transform=True needs model.mlp=gelu or gelu_tanh (the head's activation); got swiglu")
    if loss == "causal_lm":
        _require(causal, "model.loss=causal_lm needs model.causal=True (a bidirectional model sees the token it "
                 "predicts); use model.loss=masked_lm for an encoder")
    else:
        _require(not causal, f"model.loss={loss} needs model.causal=False (bidirectional attention)")
        mlm = m.mlm
        _require(0 < mlm.rate < 1, f"model.mlm.rate={mlm.rate!r}; must be in (0, 1)")
        _require(mlm.p_mask >= 0 and mlm.p_random >= 0 and mlm.p_mask + mlm.p_random <= 1,
                 f"model.mlm.p_mask={mlm.p_mask!r}, model.mlm.p_random={mlm.p_random!r}; both >= 0, sum <= 1")
        _require(not cfg.data.get("bos", False), "data.bos=True with model.loss=masked_lm; an encoder's blocks "
                 "need no BOS token: set data.bos=False")
        if m.vocab_size > 0 and mlm.mask_token_id >= 0:
            _require(mlm.mask_token_id < m.vocab_size, f"model.mlm.mask_token_id={mlm.mask_token_id} is not an id "
                     f"of model.vocab_size={m.vocab_size}; give -1 (a new id after the data's)")
    if not causal:
        reason = positional.bidirectional_problem(m.position)
        _require(reason is None, f"model.position.name={m.position.name!r} with model.causal=False: {reason}")


def check_vocab(cfg: ml_collections.ConfigDict, needed: int) -> None:
    """A resolved `model.vocab_size` must hold the dataset's ids (`needed`, BOS included when data.bos)."""
    size = cfg.model.vocab_size
    if size >= needed:
        return
    if cfg.data.get("bos", False):
        raise ConfigError(f"model.vocab_size={size} has no room for data.bos=True's token: the data has "
                          f"{needed - 1} tokens and BOS takes id {needed - 1}; set model.vocab_size >= {needed} "
                          "or 0 (derived)")
    raise ConfigError(f"model.vocab_size={size} is smaller than the {needed} tokens of data.name={cfg.data.name!r}; "
                      f"set it >= {needed} or 0 (the data's)")


def config_hash(cfg: ml_collections.ConfigDict) -> str:
    return hashlib.sha256(to_json(cfg).encode()).hexdigest()[:16]


def to_json(cfg: ml_collections.ConfigDict) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=list)


def flatten(nested: Mapping, prefix: str = "") -> dict:
    """`nested` ({"train": {"steps": 50}}) as dotted fields ({"train.steps": 50}), one entry per leaf."""
    out = {}
    for key, value in nested.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def flat_fields(cfg: ml_collections.ConfigDict) -> dict:
    """`{"section.field": value}` for every leaf, values as config.json holds them (tuples as lists), so a config
    compares equal to its own saved copy."""
    return flatten(json.loads(to_json(cfg)))


# Fields added after runs had already been written, each with the value that reproduces how those runs were built
# and trained (not necessarily today's default). `from_json` fills any that a saved config.json lacks, so a run
# written before the field existed still loads, resumes, samples and evaluates as it was trained. A change that
# adds a config field whose default alters behaviour adds a line here: "section.field": old_behaviour_value.
LEGACY_DEFAULTS: dict[str, object] = {
    "model.position.randomize_max_len": 0,  # randomized positions (Ruoss et al. 2023) came later: off
    "model.position.randomize_per": "batch",  # randomized runs before it drew one set of positions per micro-batch
    "model.position.rope.yarn_ramp": "paper",  # YaRN runs before the authors' (code) ramp became the default
    "model.position.rope.yarn_alpha": 1.0,  # YaRN's ramp bounds were the paper's constants before they were fields
    "model.position.rope.yarn_beta": 32.0,
    "data.synthetic.key_digits": 5,  # the retrieval tasks' settings (issue 33); no earlier task reads them
    "data.synthetic.pairs": 8,
    "model.position.sinusoidal.scale": 1.0,  # the unit-amplitude table (issue 22 made it a field) ...
    "model.position.sinusoidal.scheme": "matched",  # ... added to the embeddings as they are, no sqrt(D)
    "data.bos": False,  # no beginning-of-sequence token
    "model.embed_multiplier": 1.0,  # token embeddings as they are (GPT-2), not x sqrt(D)
    # Pretrained-model fields (issue 27): runs before them were LayerNorm(eps 1e-5), 4x GELU, tied, d = D / H.
    "model.norm": "layernorm",
    "model.norm_eps": 1e-5,
    "model.mlp": "gelu",
    "model.mlp_hidden": 0,
    "model.tie_embeddings": True,
    "model.head_dim": 0,
    "model.qkv_bias": False,
    "model.position.rope.low_freq_factor": 1.0,
    "model.position.rope.high_freq_factor": 4.0,
    "data.tokenizer": "char",
    "data.vocab_size": 1024,
    "train.max_skipped_steps": 0,  # before it, nonfinite=skip runs never stopped on their own
    "data.val_fraction": 0.1,  # text:PATH data (issue 37) came later; these only apply to it
    "data.text_field": "text",
    "data.cache_dir": "",
    # Encoder fields (issue 36): every run before them was a pre-norm causal decoder with the next-token loss.
    "model.causal": True,
    "model.norm_placement": "pre",
    "model.type_vocab_size": 0,
    "model.head_transform": False,
    "model.pooler": False,
    "model.loss": "causal_lm",
    "model.mlm.rate": 0.15,
    "model.mlm.p_mask": 0.8,
    "model.mlm.p_random": 0.1,
    "model.mlm.mask_token_id": -1,
    "model.mlm.random_vocab_size": 0,
}


def fill_legacy(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of a saved config with every LEGACY_DEFAULTS field it lacks filled in (fields it has are kept)."""
    d = cfg.to_dict()
    for field, value in LEGACY_DEFAULTS.items():
        *sections, leaf = field.split(".")
        node = d
        for section in sections:
            node = node.setdefault(section, {})
        node.setdefault(leaf, value)
    return ml_collections.ConfigDict(d)


def from_json(text: str) -> ml_collections.ConfigDict:
    """A saved config (config.json), with the fields added since it was written filled by LEGACY_DEFAULTS."""
    return fill_legacy(ml_collections.ConfigDict(json.loads(text)))
