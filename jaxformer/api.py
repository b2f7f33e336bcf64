"""A run in Python: what the `jaxformer` subcommands do, as methods of one object (docs/python_api.md).

    from jaxformer.api import Run

    run = Run.train("tiny", overrides={"data.name": "text:input.txt", "train.steps": 200})   # jaxformer train
    run = Run.load("runs/tiny-rope-...")                      # a trained run, by its directory
    gpt2 = Run.import_hf("gpt2", "runs/gpt2")                 # jaxformer import --hf gpt2 --workdir runs/gpt2
    run.sample("ROMEO:", max_new_tokens=100)                  # jaxformer sample (KV cache)
    run.score("To be or not to be")                           # per-token loss of a text
    run.attention("To be or not to be")                       # jaxformer attention, shown inline in Jupyter
    run.eval(lengths=[128, 256], overrides={"model.position.rope.scaling": "yarn"})   # jaxformer eval

Everything reads the run directory read-only (the `Run.train` and `Run.import_hf` constructors write theirs). The
parameters of the chosen checkpoint are loaded once, on first use.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence

import jax
import ml_collections
import numpy as np

from jaxformer import config as config_lib
from jaxformer import data as data_lib
from jaxformer import loader
from jaxformer import run as run_lib
from jaxformer import sample as sample_lib


def _configure_once() -> None:
    """The machine settings `jaxformer` applies before JAX starts (platform.configure), when JAX has not yet."""
    from jax._src import xla_bridge

    from jaxformer import platform

    if not xla_bridge.backends_are_initialized():
        platform.configure()


def with_overrides(cfg: ml_collections.ConfigDict, overrides: Mapping[str, object] | None) -> ml_collections.ConfigDict:
    """A copy of `cfg` with `{"section.field": value}` set; an unknown field or a value of another type is a
    one-line ConfigError naming it (as `--config.section.field=value` is)."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    for field, value in (overrides or {}).items():
        node, *path = [cfg, *field.split(".")]
        *sections, leaf = path
        for section in sections:
            if not isinstance(node, ml_collections.ConfigDict) or section not in node:
                raise config_lib.ConfigError(f"unknown config field {field!r}")
            node = node[section]
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise config_lib.ConfigError(f"unknown config field {field!r}")
        try:
            node[leaf] = value
        except TypeError as e:
            raise config_lib.ConfigError(f"{field}={value!r}: {e}") from None
    return cfg


def load_config(config: str | Mapping | ml_collections.ConfigDict = "default",
                overrides: Mapping[str, object] | None = None) -> ml_collections.ConfigDict:
    """A training config from a packaged name or a path (`--config`), or a (partial) nested dict on top of
    configs/default.py, then `overrides` (`--config.a.b=v`)."""
    if isinstance(config, str):
        cfg = config_lib.load(config)
    else:
        nested = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
        cfg = with_overrides(config_lib.load("default"), config_lib.flatten(nested))
    return with_overrides(cfg, overrides)


@dataclasses.dataclass
class Scores:
    """The per-token loss of a text: `losses[i]` (nats) is the cross-entropy of predicting `tokens[i + 1]` from
    `tokens[: i + 1]`; `loss` their mean (what `eval` reports, on one text)."""

    tokens: list[str]  # [T] the text of each token
    token_ids: np.ndarray  # [T]
    losses: np.ndarray  # [T - 1] float64

    @property
    def loss(self) -> float:
        return float(self.losses.mean())

    def __repr__(self) -> str:
        return f"Scores({len(self.tokens)} tokens, mean loss {self.loss:.4f} nats)"


class AttentionView:
    """Captured attention (`.capture`: weights [L, H, T, T], tokens) that Jupyter shows as the attention viewer
    (analysis/viewer.py's page, inside an iframe so that its script and styles stay its own)."""

    def __init__(self, capture, *, height: int = 640):
        self.capture, self.height = capture, height

    def html(self) -> str:
        """The viewer page (what `jaxformer attention` writes as attention.html)."""
        from jaxformer.analysis import viewer

        return viewer.render(self.capture)

    def _repr_html_(self) -> str:
        from jaxformer.analysis import viewer  # the same iframe as viewer.show (the page's scripts kept apart)

        return viewer.iframe(self.html(), height=self.height)

    def __repr__(self) -> str:
        L, H, T, _ = self.capture.weights_LxHxTxT.shape
        return f"AttentionView({L} layer(s) x {H} head(s) x {T} tokens)"


class Run:
    """A run directory (`jaxformer train` or `jaxformer import`) and one of its checkpoints (latest | best)."""

    def __init__(self, workdir: str, *, checkpoint: str = "latest"):
        if checkpoint not in ("latest", "best"):
            raise ValueError(f"checkpoint={checkpoint!r}; choose one of: latest, best")
        self.workdir, self.checkpoint = os.fspath(workdir), checkpoint
        self.config = run_lib.load_config(self.workdir)  # not a run directory: a one-line error
        self.tokenizer = data_lib.run_tokenizer(self.workdir)

    # ---------------------------------------------------------------------------------------- constructors

    @classmethod
    def load(cls, workdir: str, *, checkpoint: str = "latest") -> Run:
        """A trained or imported run, by its directory (`--workdir`)."""
        return cls(workdir, checkpoint=checkpoint)

    @classmethod
    def import_hf(cls, hf: str, workdir: str, *, param_dtype: str = "float32",
                  overrides: Mapping[str, object] | None = None) -> Run:
        """`jaxformer import --hf HF --workdir WORKDIR`: a Hugging Face checkpoint (folder or hub id) as a run."""
        from jaxformer.convert import hf as hf_lib

        _configure_once()
        hf_lib.import_checkpoint(hf, workdir, param_dtype=param_dtype,
                                 overrides=[f"--config.{k}={v}" for k, v in (overrides or {}).items()])
        return cls(workdir)

    @classmethod
    def train(cls, config: str | Mapping | ml_collections.ConfigDict = "default", workdir: str | None = None, *,
              overrides: Mapping[str, object] | None = None, init_from: str | Run | None = None,
              init_checkpoint: str = "latest", resume: bool = False, overwrite: bool = False) -> Run:
        """`jaxformer train`: trains a config (a name, a path, or a dict on top of configs/default.py, then
        `overrides`) into `workdir` (default runs/<config>-<position>-<time>), with the CLI's hooks (diagnostics,
        samples.txt, plots/loss.png), and returns the run. `init_from`: a run to start from, whose model (and,
        with data.block_size=0, context) the run takes, as `--config FILE --init-from RUN` does."""
        from jaxformer import prepare as prepare_lib
        from jaxformer import train as train_lib
        from jaxformer.analysis import run_hooks

        _configure_once()
        cfg = load_config(config, overrides)
        source = init_from.workdir if isinstance(init_from, Run) else init_from
        if source is not None:  # its model (and context), the model overrides on top, as the CLI does
            cfg = run_lib.with_source_model(cfg, prepare_lib.check_init_source(source, init_checkpoint, workdir or ""))
            cfg = with_overrides(cfg, {k: v for k, v in (overrides or {}).items() if k.startswith("model.")})
        name = config if isinstance(config, str) else "api"
        workdir = workdir or run_lib.default_workdir(name, cfg.model.position.name)
        train_lib.train(cfg, workdir, resume=resume, overwrite=overwrite,
                        hooks=run_hooks.for_run(cfg, workdir), init_from=source,
                        init_checkpoint=init_checkpoint)
        return cls(workdir)

    # ------------------------------------------------------------------------------------------ the model

    @functools.cached_property
    def _restored(self):
        _configure_once()
        return loader.restore_params(self.workdir, which=self.checkpoint)

    @property
    def step(self) -> int:
        """The step of the loaded checkpoint."""
        return int(self._restored[3])

    @property
    def params(self) -> dict:
        return self._restored[2]

    @functools.cached_property
    def model(self):
        """The Flax NNX model with the checkpoint's parameters."""
        from flax import nnx

        return nnx.merge(self._restored[1], self.params)

    @property
    def metrics(self) -> list[dict]:
        """metrics.jsonl: one dict per logged step or evaluation."""
        return run_lib.read_metrics(self.workdir)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text), np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def _bos(self) -> np.ndarray:
        from jaxformer import sample as sample_lib

        return sample_lib.bos_prefix(self.config, self.tokenizer)

    # ------------------------------------------------------------------------------------------ the verbs

    @functools.cached_property
    def _generator(self):
        return sample_lib.Generator(self.model)

    def sample(self, prompt: str | None = None, *, max_new_tokens: int = 200, temperature: float = 0.8,
               top_k: int | None = None, seed: int = 0, max_context: int = 0) -> str:
        """`jaxformer sample`: the prompt and its continuation (KV cache; `max_context` 0 = the block size)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens}; must be >= 1")
        if prompt == "":
            raise ValueError("prompt=''; give at least one character, or None")
        ids = self.encode(prompt if prompt is not None else "\n")
        bos = self._bos()
        out = self._generator(np.concatenate([bos, ids]), max_new_tokens=max_new_tokens, temperature=temperature,
                              top_k=top_k, seed=seed, max_context=max_context or self.config.data.block_size,
                              vocab_size=self.tokenizer.vocab_size)
        return self.decode(np.asarray(out)[bos.size + (0 if prompt is not None else ids.size):])

    @functools.cached_property
    def _losses_fn(self):
        from jaxformer import train as train_lib

        graphdef = self._restored[1]
        return jax.jit(lambda params, inputs, targets: train_lib.token_losses(params, graphdef, inputs, targets)[0])

    def score(self, text: str) -> Scores:
        """The per-token next-token loss of `text` under the model (one sequence; at most the position table)."""
        from jaxformer.analysis import capture

        ids = self.encode(text)
        capture.check_length(self.config, int(ids.size) + self._bos().size, what="text")
        seq = np.concatenate([self._bos(), ids])[None]
        losses = np.asarray(self._losses_fn(self.params, seq[:, :-1], seq[:, 1:])[0], np.float64)
        return Scores(tokens=capture.token_labels(self.tokenizer, ids), token_ids=ids,
                      losses=losses[self._bos().size:])

    def attention(self, text: str, *, layers: Sequence[int] | None = None,
                  heads: Sequence[int] | None = None) -> AttentionView:
        """`jaxformer attention`: every (selected) layer's and head's attention on `text`, shown inline."""
        from jaxformer.analysis import capture

        _, _, ids, layers, heads = capture.prepare_text(self.workdir, text, layers=list(layers) if layers else None,
                                                        heads=list(heads) if heads else None)
        model = capture.reference_model(self.config.model, self.params)
        cap = capture.capture_ids(model, ids, capture.token_labels(self.tokenizer, ids), layers=layers, heads=heads,
                                  info=capture.run_info(self.workdir, self.config, which=self.checkpoint,
                                                        step=self.step))
        return AttentionView(cap)

    def eval(self, split: str = "val", *, full: bool = False, lengths: Sequence[int] | None = None,
             overrides: Mapping[str, object] | None = None, batches: int = 0, eval_tokens: int = 16384) -> dict:
        """`jaxformer eval`: the loss on `split` (`full`: every block of it), or at other `lengths`; `overrides`
        change how the model is evaluated (e.g. a RoPE scaling), never which model it is."""
        from jaxformer import extrapolation
        from jaxformer import prepare as prepare_lib
        from jaxformer import train as train_lib

        cfg = with_overrides(self.config, overrides)
        lengths = [int(n) for n in lengths or []]
        if batches:
            cfg.train.eval_iters = batches
        # resolved and validated once; an evaluator builds no optimizer
        run = prepare_lib.prepare(cfg, self.workdir, "evaluate", eval_lengths=lengths)
        dataset = run.dataset
        trainer = train_lib.Evaluator.for_run(run)
        result = {"step": self.step, "split": split,
                  "overrides": {k: config_lib.flat_fields(trainer.cfg)[k] for k in run.changed
                                if k != "model.vocab_size"}}
        if not lengths:
            params = jax.device_put(self.params, trainer.params_sharding)
            result.update((trainer.evaluate_full if full else trainer.evaluate)(params, split))
            return result
        block = trainer.cfg.data.block_size
        wanted = [{"multiplier": T / block, "length": T, "na": None} for T in lengths]
        records = extrapolation.evaluate_lengths(trainer.graphdef, self.params, dataset, wanted,
                                                 eval_tokens=eval_tokens, batch_tokens=8192, split=split)
        result["lengths"] = [{k: v for k, v in x.items() if k not in ("position_loss", "multiplier")}
                             for x in records]
        return result

    def __repr__(self) -> str:
        m = self.config.model
        return (f"Run({self.workdir!r}, {self.checkpoint}: {m.position.name}, {m.n_layer} layers x {m.n_head} heads, "
                f"width {m.n_embd}, data {self.config.data.name!r})")
