"""Hugging Face checkpoint -> jaxformer run directory (`jaxformer import --hf PATH_OR_ID --workdir DIR`).

The source is a folder with `config.json`, `*.safetensors` (one file, or shards with `model.safetensors.index.json`)
and `tokenizer.json`, or a hub id fetched with `huggingface_hub` when the hub is reachable. The run directory gets:
`config.json` (resolved: the family's config map on configs/default.py, then the user's overrides), `manifest.json`
(the usual fields and `source`: where it came from, the architecture, the files read), `tokenizer.json`, and an orbax
checkpoint of the parameters at step 0 (`checkpoints/latest/0`), so `eval`, `sample`, `attention`, the extrapolation
eval and config overrides work on it as on a trained run.

Memory: the parameters are allocated once in the target layout (`param_dtype`), and each checkpoint tensor is read
alone (safetensors, no torch), transformed and copied into its place, so the peak is about one copy of the model
plus its largest tensor; the save then frees each array as soon as orbax has written it (`save_checkpoint`).
Everything is written into a hidden temporary folder beside the workdir and renamed into place at the end; on any
error that folder is removed and the workdir is untouched.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import tempfile

import ml_collections
import numpy as np

from jaxformer.convert import family_for
from jaxformer.convert.common import ConvertError, Entry, identity

log = logging.getLogger("jaxformer")

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
             "tokenizer_config.json", "generation_config.json"]


# ------------------------------------------------------------------------------------------------ the source

def resolve_source(source: str) -> str:
    """A local folder for `source`: itself, or the hub snapshot of an id (downloaded when the hub is reachable,
    else from the local cache). Offline and not cached: one line, within the probe's 3 s."""
    if os.path.isdir(source):
        return source
    if not HUB_ID.match(source):
        raise ConvertError(f"--hf={source!r} is neither a folder nor a Hugging Face hub id (owner/name)")
    from huggingface_hub import constants, snapshot_download

    from jaxformer.data.text import reachable

    if reachable(constants.ENDPOINT):
        try:
            return snapshot_download(source, allow_patterns=HUB_FILES)
        except Exception as e:  # the hub's own errors (not found, gated, ...) as one line
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConvertError(f"--hf={source!r}: the hub refused it ({type(e).__name__}: {first})") from None
    try:
        return snapshot_download(source, allow_patterns=HUB_FILES, local_files_only=True)
    except Exception:
        raise ConvertError(f"--hf={source!r}: {constants.ENDPOINT} is unreachable (offline?) and it is neither a "
                           "local folder nor in the hub cache; pass a folder with config.json and *.safetensors"
                           ) from None


def read_hf_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        raise ConvertError(f"{folder} has no config.json; expected a Hugging Face model folder (config.json, "
                           "*.safetensors, tokenizer.json)")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ConvertError(f"{path} is not readable JSON ({e})") from None


def weight_files(folder: str) -> list[str]:
    """The safetensors files of a checkpoint: the shards an index names, else every *.safetensors."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        missing = [n for n in names if not os.path.exists(os.path.join(folder, n))]
        if missing:
            raise ConvertError(f"{index} names {missing[0]}, which is not in {folder}")
        return [os.path.join(folder, n) for n in names]
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        extra = " (only pytorch_model.bin: convert it with save_pretrained(..., safe_serialization=True))" \
            if glob.glob(os.path.join(folder, "*.bin")) else ""
        raise ConvertError(f"{folder} has no *.safetensors weights{extra}")
    return files


# ---------------------------------------------------------------------------------------------- the weights

def _set(tree: dict, path: str, value) -> None:
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(int(p) if p.isdigit() else p, {})
    tree[leaf] = value


def _targets(cfg: ml_collections.ConfigDict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Every parameter of the model `cfg` describes: path -> (shape, dtype), without allocating it."""
    import jax
    from flax import nnx

    from jaxformer.loader import build_model

    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: build_model(cfg)), nnx.Param))
    flat = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
        flat["/".join(str(getattr(k, "key", k)) for k in path)] = (tuple(leaf.shape), np.dtype(leaf.dtype))
    return flat


SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _header(fh) -> tuple[dict, int]:
    """A safetensors file's header (name -> dtype, shape, data_offsets) and where its data starts: 8 bytes of
    little-endian length, then that much JSON (the format's specification)."""
    n = int.from_bytes(fh.read(8), "little")
    return json.loads(fh.read(n)), 8 + n


def _read(fh, info: dict, base: int, out: np.ndarray | None = None) -> np.ndarray:
    """One tensor, read with a positioned read into `out` (or a new array): not through a memory map, whose pages
    would stay in the process's resident set until the whole file had passed through it."""
    import ml_dtypes  # noqa: F401 -- registers bfloat16 with NumPy

    dtype = np.dtype(SAFETENSORS_DTYPES[info["dtype"]])
    buf = out if out is not None and out.dtype == dtype else np.empty(info["shape"], dtype)
    start, end = info["data_offsets"]
    fh.seek(base + start)
    view = memoryview(buf.reshape(-1).view(np.uint8))
    if fh.readinto(view) != end - start:
        raise ConvertError(f"{fh.name}: tensor data ends early (truncated file?)")
    return buf


def _unpooled_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """np.empty in pages of its own (an anonymous memory map), unmapped when the array dies: malloc would put
    arrays of a few MB in its heap, which it does not give back to the system while later blocks live, so the
    process's resident size would not fall as the save frees them."""
    import mmap

    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, max(size, 1)), dtype, count=int(np.prod(shape))).reshape(shape)


def load_params(folder: str, family, hf_config: dict, cfg: ml_collections.ConfigDict) -> dict:
    """The parameters as a nested dict of arrays (cfg.model.param_dtype), filled tensor by tensor.

    Each file is opened with the `safetensors` package first (it validates the header; names, shapes and dtypes
    come from it), then each tensor is read alone into its place, so at most one tensor is held twice.
    """
    import jax
    from safetensors import safe_open

    entries: dict[str, Entry] = {e.name: e for e in family.param_map(hf_config)}
    targets = _targets(cfg)
    planned = {e.target for e in entries.values()}
    if planned != set(targets):  # a bug in a family's tables, not bad input
        raise AssertionError(f"parameter map and model differ: {sorted(planned ^ set(targets))[:5]}")
    arrays = {path: _unpooled_empty(shape, dtype) for path, (shape, dtype) in targets.items()}
    seen: set[str] = set()
    for file in weight_files(folder):
        try:
            with safe_open(file, framework="numpy") as f:
                stored_names = list(f.keys())
                shapes = {name: tuple(f.get_slice(name).get_shape()) for name in stored_names}
        except Exception as e:
            raise ConvertError(f"{file} is not a readable safetensors file ({str(e).splitlines()[0]})") from None
        with open(file, "rb") as fh:
            header, base = _header(fh)
            for stored in stored_names:
                name = stored
                for prefix in family.strip_prefixes:
                    name = name[len(prefix):] if name.startswith(prefix) else name
                if name in seen:
                    raise ConvertError(f"{file}: tensor {stored} appears twice in the checkpoint")
                entry = entries.get(name)
                if entry is None:
                    if family.ignored(name, hf_config):
                        continue
                    raise ConvertError(f"{file}: tensor {stored} is not part of a {family.name} model of this "
                                       "config.json; is config.json the one these weights were saved with?")
                if shapes[stored] != entry.shape:
                    raise ConvertError(f"{file}: tensor {stored} has shape {list(shapes[stored])}, expected "
                                       f"{list(entry.shape)} from config.json")
                if header[stored]["dtype"] not in SAFETENSORS_DTYPES:
                    raise ConvertError(f"{file}: tensor {stored} is {header[stored]['dtype']}; expected one of "
                                       f"{', '.join(SAFETENSORS_DTYPES)}")
                target = arrays[entry.target]
                direct = entry.columns is None and entry.transform is identity
                value = _read(fh, header[stored], base, target if direct else None)
                if value is not target:
                    value = entry.transform(value)
                    if entry.columns is None:
                        target[...] = value
                    else:
                        target[..., entry.columns[0]:entry.columns[1]] = value
                del value
                seen.add(name)
    missing = [e for e in entries.values() if e.name not in seen]
    if missing:
        e = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConvertError(f"{folder}: tensor {e.name} (shape {list(e.shape)}) is missing from the checkpoint{more}")
    params: dict = {}
    for path in list(arrays):
        # One at a time: on a CPU the jax array takes over the NumPy buffer's role, so orbax writes it as is.
        _set(params, path, jax.device_put(arrays.pop(path)))
    return params


# ------------------------------------------------------------------------------------------ the run directory

def run_config(hf_config: dict, family, *, param_dtype: str, overrides=(), extra=None) -> ml_collections.ConfigDict:
    """configs/default.py with the family's fields, an imported model's data settings, then `overrides`."""
    from jaxformer import config as config_lib
    from jaxformer import prepare as prepare_lib

    cfg = config_lib.load("default")
    fields = {**family.config_map(hf_config), "model.param_dtype": param_dtype, "model.dtype": param_dtype,
              "model.dropout": 0.0, "data.name": "tiny_shakespeare", "data.tokenizer": "pretrained",
              "data.batch_size": 1, "train.steps": 1, "train.sample_chars": 0, **(extra or {})}
    for field, value in fields.items():
        node = cfg
        *sections, leaf = field.split(".")
        for s in sections:
            node = node[s]
        node[leaf] = value
    if overrides:
        cfg = prepare_lib.apply_overrides(cfg, overrides, check_fields=True)
    return prepare_lib.resolved_config(cfg)


def import_checkpoint(source: str, workdir: str, *, param_dtype: str = "float32", overrides=()) -> dict:
    """Converts a Hugging Face checkpoint into the run directory `workdir` (which must not exist or be empty);
    returns the manifest's `source` record."""
    from jaxformer import run as run_lib
    from jaxformer.data.tokenizer import SUBWORD_FILE, DataError, SubwordTokenizer

    if param_dtype not in ("float32", "bfloat16"):
        raise ConvertError(f"--param-dtype={param_dtype!r}; choose one of: float32, bfloat16")
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
        raise ConvertError(f"--workdir={workdir} exists and is not an empty directory; choose a new one")
    folder = resolve_source(source)
    hf_config = read_hf_config(folder)
    architecture, family = family_for(hf_config, folder)
    files = weight_files(folder)
    tokenizer_path = os.path.join(folder, SUBWORD_FILE)
    if not os.path.exists(tokenizer_path):
        raise ConvertError(f"{folder} has no tokenizer.json (the `tokenizers` format; AutoTokenizer's "
                           "save_pretrained writes it)")
    try:
        tokenizer = SubwordTokenizer.load(tokenizer_path)  # unreadable: a one-line error, before any work
    except DataError as e:
        raise ConvertError(str(e)) from None
    missing = [token for token in family.special_tokens if tokenizer.token_id(token) is None]
    if missing:
        raise ConvertError(f"{tokenizer_path} has no {', '.join(missing)} token(s), which {architecture} needs; "
                           "use the tokenizer.json saved with this checkpoint")
    extra = {"model.mlm.mask_token_id": tokenizer.token_id(family.mask_token)} if family.mask_token else {}
    cfg = run_config(hf_config, family, param_dtype=param_dtype, overrides=overrides, extra=extra)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConvertError(f"{tokenizer_path} has {tokenizer.vocab_size} tokens, more than the model's "
                           f"vocab_size={cfg.model.vocab_size}")
    parent = os.path.dirname(workdir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(workdir)}.importing-", dir=parent)
    try:
        params = load_params(folder, family, hf_config, cfg)
        log.info("import: %s (%s), %s parameters", architecture, family.name,
                 f"{sum(x.size for x in _leaves(params)):,}")
        save_checkpoint(tmp, params)
        del params
        shutil.copyfile(tokenizer_path, os.path.join(tmp, SUBWORD_FILE))
        run_lib.save_config(tmp, cfg)
        record = {"hf": source, "folder": os.path.abspath(folder), "architecture": architecture,
                  "family": family.name, "param_dtype": param_dtype,
                  "files": {os.path.basename(p): os.path.getsize(p) for p in [*files, tokenizer_path]},
                  "config_sha256": run_lib.file_sha256(os.path.join(folder, "config.json"))}
        manifest = run_lib.manifest(cfg, data_hash="")
        manifest["source"] = record
        run_lib.write_json(os.path.join(tmp, "manifest.json"), manifest)
        if os.path.isdir(workdir):
            os.rmdir(workdir)  # empty (checked above)
        os.rename(tmp, workdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


BATCH_BYTES = 2**24  # the save's batches: small, so that little beyond the arrays not yet written is alive


def save_checkpoint(workdir: str, params: dict) -> None:
    """{"params": params} as step 0 of `workdir/checkpoints/latest`, the layout `checkpoint.Checkpoints` restores.

    Consumes `params`: each array is deleted as soon as orbax has written it, so the model is never held twice.
    Every array's transfer is "deprioritized", which makes orbax write them in batches of at most 16 MiB (an array
    larger than that alone), and its serialization callback reports each written array, which frees it; the bytes
    being written are bounded by about the largest array (benchmarks/README.md, "Import of a pretrained checkpoint").
    """
    import jax
    import orbax.checkpoint as ocp

    # orbax's documented home of the serialization callback, and the metadata store its default ArrayHandler has
    # (without it the checkpoint would lack array_metadatas/ and the write shapes in _METADATA).
    from orbax.checkpoint._src.metadata import array_metadata_store
    from orbax.checkpoint._src.serialization import types as serialization_types

    tree = {"params": params}
    pending = {jax.tree_util.keystr(path): x for path, x in jax.tree_util.tree_leaves_with_path(tree)}

    class FreeWhenWritten(serialization_types.DefaultSerializationStatusCallback):
        def key_priority(self, keypath):
            return serialization_types.TransferPriority.ASYNCHRONOUS_DEPRIORITIZED  # batched by the bound below

        def on_write_end(self, keypath):
            array = pending.pop(jax.tree_util.keystr(keypath), None)
            if array is not None:
                array.delete()

    # orbax refuses an array larger than the bound (it is in GB, a float here): room for the largest, with a margin.
    in_flight_gb = 1.1 * max(max(x.nbytes for x in pending.values()), 2**26) / 1e9
    registry = ocp.type_handlers.create_type_handler_registry(
        (jax.Array, ocp.type_handlers.ArrayHandler(array_metadata_store=array_metadata_store.Store(),
                                                   callback=FreeWhenWritten())))
    handler = ocp.PyTreeCheckpointHandler(save_concurrent_gb=in_flight_gb,
                                          save_device_host_concurrent_gb=BATCH_BYTES / 1e9,
                                          type_handler_registry=registry)
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints", "latest"), item_handlers=handler,
                                    options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
    try:
        manager.save(0, args=ocp.args.PyTreeSave(tree), force=True)
        manager.wait_until_finished()
    finally:
        manager.close()


def _leaves(tree):
    for v in tree.values():
        yield from (_leaves(v) if isinstance(v, dict) else [v])


def import_main(argv: list[str]) -> int:
    from jaxformer.options import parse  # the options live in options.py, parsed there before JAX is imported

    args = parse("import", argv)
    record = import_checkpoint(args.hf, args.workdir, param_dtype=args.param_dtype, overrides=args.overrides)
    workdir = os.path.abspath(args.workdir)
    if args.json:
        print(json.dumps({"workdir": workdir, **record}, sort_keys=True))
    else:
        from jaxformer import summaries

        with open(os.path.join(workdir, "config.json")) as f:
            print(summaries.import_text(record, workdir, json.load(f)["model"]))
    return 0
