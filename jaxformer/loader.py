"""Loading a run: the model from a config, its parameters from a run directory's checkpoint, its tokenizer.

The one place a model is built (`build_model`, `abstract_model`) and a checkpoint turned back into parameters
(`restore_params`), below training (`train.py`) and the research tools (`analysis/`, `sweep.py`,
`extrapolation.py`), which all load runs through it. Machine tuning enters here: the model is constructed with the
matrix product `platform.configure()` chose (`matmul.default_dot_general()`) and the machine's tuned activations and
head mapping (`platform.model_ops()`), so nothing inside the forward pass reads them.
"""

from __future__ import annotations

import logging
import os

import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxformer import checkpoint as checkpoint_lib
from jaxformer import data as data_lib
from jaxformer import fingerprint, matmul, platform
from jaxformer import run as run_lib
from jaxformer.model import GPT

log = logging.getLogger(__name__)


def follow_run_matmul(workdir: str) -> str | None:
    """An existing run keeps the CPU product path its manifest records, on the CPU kind that recorded it.

    With JAXFORMER_CPU_MATMUL unset the path is measured ("auto"); two measurements on one machine can land on
    either side of the margin, and the two paths round differently, so a resumed, evaluated or re-checked run
    takes the path it was trained with instead of measuring again. Returns the path followed, or None (a path set
    by the environment, another CPU kind, a run from before the record, or not a CPU run)."""
    manifest = os.path.join(workdir, "manifest.json")
    if matmul.cpu_backend() != "auto" or not os.path.isfile(manifest):
        return None
    record = run_lib.read_json(manifest)
    path = (record.get("cpu_matmul_choice") or {}).get("path")
    if path not in ("xla", "blas") or record.get("cpu") != fingerprint.cpu():
        return None
    matmul.set_cpu_backend(path, f"the path {workdir}'s manifest records (the run keeps the path it was trained "
                                 "with)")
    log.debug("CPU matmul: %s, as recorded in %s", path, manifest)
    return path


def build_model(cfg: ml_collections.ConfigDict) -> GPT:
    """The model for a resolved config, initialised from `train.seed`, its products on this machine's matmul (on
    a CPU with JAXFORMER_CPU_MATMUL unset, the faster path for this config's training step, measured once)."""
    shaped = "data" in cfg and cfg.data.get("batch_size") and cfg.data.get("block_size")
    dot_general = (matmul.default_dot_general(trace_step=lambda dg: _trace_step(cfg, dg)) if shaped
                   else matmul.default_dot_general())
    return GPT(cfg.model, rngs=nnx.Rngs(params=cfg.train.seed), dot_general=dot_general, **platform.model_ops())


def _trace_step(cfg: ml_collections.ConfigDict, dot_general):
    """The jaxpr (traced, nothing run) of one step's forward and backward at the config's batch shape, the model
    built with `dot_general`: where `matmul` finds the products it times to choose the CPU path."""
    import jax

    graphdef, state = nnx.split(nnx.eval_shape(
        lambda: GPT(cfg.model, rngs=nnx.Rngs(params=0), dot_general=dot_general, **platform.model_ops())))
    tokens_BxT = jax.ShapeDtypeStruct((cfg.data.batch_size, cfg.data.block_size), jnp.int32)
    loss = lambda state, tokens_BxT: nnx.merge(graphdef, state)(tokens_BxT).astype(jnp.float32).sum()
    return jax.make_jaxpr(jax.grad(loss))(state, tokens_BxT)


def split_model(model: GPT):
    """(graphdef, params as a plain nested dict of arrays)."""
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state)


def abstract_model(model_cfg: ml_collections.ConfigDict):
    """(graphdef, abstract params) of the `model` section's GPT, built with `nnx.eval_shape`: nothing is initialised."""
    return split_model(nnx.eval_shape(
        lambda: GPT(model_cfg, rngs=nnx.Rngs(params=0), dot_general=matmul.default_dot_general(),
                    **platform.model_ops())))


def restore_params(workdir: str, *, which: str = "latest", step: int | None = None):
    """(config, graphdef, params, step) of a run directory's checkpoint, without loading its dataset.

    Only the params subtree is used, so the checkpoint of any train-state layout restores; the model structure comes
    from `abstract_model` (no initialisation).
    """
    cfg = run_lib.load_config(workdir)
    follow_run_matmul(workdir)
    graphdef, abstract = abstract_model(cfg.model)
    checkpoints = checkpoint_lib.Checkpoints(workdir, keep=cfg.train.keep_checkpoints)
    try:
        step, state = checkpoints.restore(None, which=which, step=step)
    finally:
        checkpoints.close()
    return cfg, graphdef, like(abstract, state["params"]), step


def load_run(workdir: str, *, which: str = "latest", step: int | None = None):
    """(config, model, tokenizer, step): everything `sample`, `eval` and the analysis tools need from a run."""
    cfg, graphdef, params, step = restore_params(workdir, which=which, step=step)
    tokenizer = data_lib.run_tokenizer(workdir)  # vocab.json (characters) or tokenizer.json (subwords, an import)
    return cfg, nnx.merge(graphdef, params), tokenizer, step


def like(abstract, restored):
    """`restored` (as saved: dict keys may come back as strings) in the structure and dtypes of `abstract`."""
    if isinstance(abstract, dict):
        return {k: like(v, restored[k] if k in restored else restored[str(k)]) for k, v in abstract.items()}
    return jnp.asarray(restored, abstract.dtype).reshape(abstract.shape)
