"""Character-level text datasets: tiny_shakespeare (the package's TFDS builder), any TFDS text set by name.

Batches are nanoGPT's random windows: B start offsets i drawn uniformly from [0, N - T) of the split's N
tokens, `inputs = tokens[i : i + T]`, `targets = tokens[i + 1 : i + T + 1]`, every position weighted 1. The
offsets come from a generator seeded with (seed, split, step) (see dataset.py), so they survive restarts.

Where tiny_shakespeare comes from, in order: a copy already prepared in the TFDS data dir (`data.data_dir`,
else TFDS's default: $TFDS_DATA_DIR or ~/tensorflow_datasets); `input.txt` in the manual dir
(`data.manual_dir`, else $JAXFORMER_MANUAL_DIR), checksum-verified by TFDS; a download. Before downloading,
one TCP connect to the URL's host (or to the proxy the environment names for it) with a 3 s timeout decides
whether the network is there. Offline, TFDS's HTTP retries back off for about 3.5 minutes before failing, and
their count is no public setting; the probe depends on no TFDS internals, and TFDS keeps its retries for
transient errors once a connection is possible.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import socket
import threading
import urllib.parse

import numpy as np

from jaxformer.data.dataset import (
    EVAL_STREAM,
    TRAIN_STREAM,
    Dataset,
    check_sizes,
    check_split,
    check_windows,
    rng,
)
from jaxformer.data.tokenizer import DataError, text_tokenizer

MANUAL_DIR_ENV = "JAXFORMER_MANUAL_DIR"
PROBE_TIMEOUT_S = 3.0
TINY_SHAKESPEARE_SPLITS = ("train", "validation", "test")
VAL_SPLITS = ("validation", "validation+test", "test")  # validation+test = nanoGPT's last 10%


class TextDataset(Dataset):
    """A training and a validation text, tokenized by `tokenizer` (default: characters of the training text)."""

    has_accuracy = False

    def __init__(self, name: str, train_text: str, val_text: str, *, data_hash: str, tokenizer=None):
        self.name = name
        self.data_hash = data_hash
        self.tokenizer = tokenizer if tokenizer is not None else text_tokenizer({}, train_text)
        self._tokens = {}
        for split, text in (("train", train_text), ("val", val_text)):
            try:
                self._tokens[split] = self.tokenizer.encode(text)
            except DataError as e:
                raise DataError(f"{name} {split} split: {e}") from None

    @classmethod
    def from_tokens(cls, name: str, tokens: dict, *, data_hash: str, tokenizer) -> TextDataset:
        """A dataset over token ids already made (e.g. memory-mapped token files, data/token_cache.py):
        `tokens` = {"train": ids, "val": ids}, any integer dtype; rows are gathered from them as int32."""
        dataset = cls.__new__(cls)
        dataset.name, dataset.data_hash, dataset.tokenizer = name, data_hash, tokenizer
        dataset._tokens = {split: tokens[split] for split in ("train", "val")}
        return dataset

    def split_tokens(self, split: str) -> np.ndarray:
        check_split(split)
        return self._tokens[split]

    def _rows(self, split: str, starts: np.ndarray, block_size: int) -> dict:
        idx = starts[:, None] + np.arange(block_size + 1)
        seq = np.asarray(self._tokens[split][idx], np.int32)  # a gather: only these rows leave a memory map
        inputs, targets = seq[:, :-1], seq[:, 1:]
        return {"inputs": inputs, "targets": targets, "weights": np.ones(targets.shape, np.float32)}

    def _random_rows(self, split: str, g: np.random.Generator, batch_size: int, block_size: int) -> dict:
        check_sizes(batch_size=batch_size, block_size=block_size)
        n = self._tokens[split].size
        if n <= block_size:
            raise DataError(f"data.block_size={block_size} needs more than {block_size} tokens; "
                            f"the {self.name} {split} split has {n}")
        return self._rows(split, g.integers(0, n - block_size, size=batch_size), block_size)

    def batch(self, split: str, step: int, *, batch_size: int, block_size: int, seed: int) -> dict:
        return self._random_rows(split, rng(seed, split, TRAIN_STREAM, step), batch_size, block_size)

    def eval_batches(self, split: str, *, batch_size: int, block_size: int, num_batches: int,
                     seed: int) -> list:
        return [self._random_rows(split, rng(seed, split, EVAL_STREAM, i), batch_size, block_size)
                for i in range(num_batches)]

    def windows(self, split: str, *, length: int, max_windows: int | None = None) -> dict:
        """The first `max_windows` (all if None) non-overlapping `length`-token windows of the split.

        With W * L fixed (W windows of length L), every length predicts the same text, tokens[1 : 1 + W*L].
        """
        check_split(split)
        check_windows(length=length, max_windows=max_windows)
        available = (self._tokens[split].size - 1) // length
        count = available if max_windows is None else max_windows
        if not 1 <= count <= available:
            raise DataError(f"max_windows={max_windows}: the {self.name} {split} split has "
                            f"{self._tokens[split].size} tokens, room for 1..{available} windows of "
                            f"{length}")
        return self._rows(split, np.arange(count) * length, length)


# ------------------------------------------------------------------------------------------- tiny_shakespeare


def manual_dir(data_cfg) -> tuple[str | None, str]:
    """(directory, where it was set) from `data.manual_dir`, else `$JAXFORMER_MANUAL_DIR`, else (None, "")."""
    if data_cfg.get("manual_dir"):
        return os.path.expanduser(data_cfg.manual_dir), f"data.manual_dir={data_cfg.manual_dir}"
    if os.environ.get(MANUAL_DIR_ENV):
        value = os.environ[MANUAL_DIR_ENV]
        return os.path.expanduser(value), f"{MANUAL_DIR_ENV}={value}"
    return None, ""


def _how_to(url: str) -> str:
    return (f"download {url} into a folder DIR (as DIR/input.txt) and pass --config.data.manual_dir=DIR "
            f"(or export {MANUAL_DIR_ENV}=DIR)")


def _check_manual_file(directory: str, origin: str, url: str) -> str:
    path = os.path.join(directory, "input.txt")
    if not os.path.isfile(path):
        raise DataError(f"{origin} has no input.txt; {_how_to(url)}")
    with open(path, "rb") as f:
        raw = f.read()
    if not raw:
        raise DataError(f"{path} is empty; {_how_to(url)}")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}); {_how_to(url)}") from None
    return path


def _probe_address(url: str) -> tuple[str, int]:
    """The host:port a download of `url` connects to first: the proxy the environment names for it, if any."""
    import requests.utils

    proxy = requests.utils.get_environ_proxies(url).get(urllib.parse.urlsplit(url).scheme)
    target = urllib.parse.urlsplit(proxy if proxy else url)
    if proxy and not target.hostname:  # "proxy:3128" without a scheme
        target = urllib.parse.urlsplit(f"http://{proxy}")
    default_port = 443 if target.scheme == "https" else 80
    return target.hostname or "", target.port or default_port


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to `url`'s host (or proxy) opens within `timeout` s, name lookup included."""
    host, port = _probe_address(url)
    result = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    # A thread, because the name lookup inside create_connection ignores the timeout.
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def _prepare_tiny_shakespeare(builder, data_cfg) -> None:
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download import download_manager

    from jaxformer.data.tiny_shakespeare import builder as builder_lib

    url = builder_lib.URL
    directory, origin = manual_dir(data_cfg)
    if directory is not None:
        path = _check_manual_file(directory, origin, url)
    elif not reachable(url):
        raise DataError(f"tiny_shakespeare is not prepared in {builder.data_dir} and {url} cannot be reached "
                        f"(offline?); {_how_to(url)}")
    # No GCS lookup for prepared data: this builder is not on TFDS's bucket, and offline it would only wait.
    config = tfds.download.DownloadConfig(manual_dir=directory, try_download_gcs=False)
    tfds.display_progress_bar(False)  # a 1 MB file: its nine progress bars would only fill a log with redraws
    try:
        builder.download_and_prepare(download_config=config)
    except download_manager.NonMatchingChecksumError:
        if directory is None:
            raise DataError(f"the download of {url} does not match the size/sha256 in the builder's "
                            "checksums.tsv; " + _how_to(url)) from None
        with open(path, "rb") as f:
            raw = f.read()
        expected = builder.url_infos[url]
        raise DataError(f"{path} is not the tiny-shakespeare text: {len(raw)} bytes, sha256 "
                        f"{hashlib.sha256(raw).hexdigest()}; expected {int(expected.size)} bytes, sha256 "
                        f"{expected.checksum} (TFDS checksum check)") from None
    except (tfds.download.DownloadError, OSError) as e:
        reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        if directory is not None:
            raise DataError(f"preparing tiny_shakespeare from {path} in {builder.data_dir} failed "
                            f"({reason})") from None
        raise DataError(f"downloading {url} failed ({reason}); {_how_to(url)}") from None
    finally:
        tfds.display_progress_bar(True)


@contextlib.contextmanager
def _quiet_tfds():
    """TFDS's absl warnings off for the duration (its scan of a half-made version folder warns at every first use)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def tiny_shakespeare_splits(data_cfg) -> dict:
    """{"train", "validation", "test": str} through the package's TFDS builder (prepared on first use)."""
    import tensorflow_datasets as tfds

    from jaxformer.data.tiny_shakespeare import NAME, TinyShakespeare

    data_dir = os.path.expanduser(data_cfg.data_dir) if data_cfg.get("data_dir") else None
    with _quiet_tfds():  # not prepared yet is the normal first use, not a warning ("Variant folder ... has no ...")
        builder = TinyShakespeare(data_dir=data_dir, file_format="array_record")
        prepared = builder.is_prepared()
    if not prepared:
        _prepare_tiny_shakespeare(builder, data_cfg)
    else:
        _check_manual_against_cache(builder, data_cfg)
    try:
        sources = tfds.data_source(NAME, split=list(TINY_SHAKESPEARE_SPLITS), data_dir=data_dir,
                                   download=False, builder_kwargs={"file_format": "array_record"})
        return {split: source[0]["text"].decode("utf-8")
                for split, source in zip(TINY_SHAKESPEARE_SPLITS, sources, strict=True)}
    except Exception as e:  # noqa: BLE001 -- array_record/TFDS raise RuntimeError, OSError, ValueError, ...
        raise DataError(_unreadable_cache(builder.data_path, e)) from None


def _check_manual_against_cache(builder, data_cfg) -> None:
    """With the text prepared already, a manual dir that is set must still hold the checksummed text: a missing,
    empty, binary or other file there is the same one-line error as when preparing (not silently ignored)."""
    from jaxformer.data.tiny_shakespeare import builder as builder_lib

    directory, origin = manual_dir(data_cfg)
    if directory is None:
        return
    url = builder_lib.URL
    path = _check_manual_file(directory, origin, url)
    with open(path, "rb") as f:
        raw = f.read()
    expected = builder.url_infos[url]
    if hashlib.sha256(raw).hexdigest() != expected.checksum:
        raise DataError(f"{path} ({origin}) is not the tiny-shakespeare text: {len(raw)} bytes, sha256 "
                        f"{hashlib.sha256(raw).hexdigest()}; expected {int(expected.size)} bytes, sha256 "
                        f"{expected.checksum}")


def _unreadable_cache(path, e: Exception) -> str:
    reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"
    return (f"the prepared TFDS data in {path} cannot be read ({reason}); delete that folder and run again to "
            "prepare it anew")


def load_tiny_shakespeare(data_cfg, tokenizer=None) -> TextDataset:
    val_split = data_cfg.get("val_split", "validation")
    if val_split not in VAL_SPLITS:
        raise DataError(f"data.val_split={val_split!r}; choose one of: {', '.join(VAL_SPLITS)}")
    splits = tiny_shakespeare_splits(data_cfg)
    source = "".join(splits[s] for s in TINY_SHAKESPEARE_SPLITS)  # the whole input.txt, in order
    val_text = "".join(splits[s] for s in val_split.split("+"))
    return TextDataset("tiny_shakespeare", splits["train"], val_text,
                       data_hash=hashlib.sha256(source.encode("utf-8")).hexdigest(),
                       tokenizer=text_tokenizer(data_cfg, splits["train"], tokenizer))


# ------------------------------------------------------------------------------------------------ tfds:<name>


def load_tfds_text(data_cfg, tokenizer=None) -> TextDataset:
    """data.name = "tfds:<name>": a stock TFDS builder (TensorFlow prepares it), read as array_record.

    The text is the dataset's `text` feature (or its only Text feature); a split's examples joined by "\\n".
    `data.val_split` names the TFDS split(s) used as "val", joined with "+" (e.g. "validation+test").
    """
    name = data_cfg.name[len("tfds:"):]
    if importlib.util.find_spec("tensorflow") is None:
        raise DataError(f"data.name={data_cfg.name!r} is prepared by TFDS's stock builder, which needs "
                        "TensorFlow: pip install 'jaxformer[tf]'")
    import tensorflow_datasets as tfds

    data_dir = os.path.expanduser(data_cfg.data_dir) if data_cfg.get("data_dir") else None
    directory, _ = manual_dir(data_cfg)
    try:
        builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(f"data.name={data_cfg.name!r}: {str(e).splitlines()[0]}") from None
    feature = _text_feature(builder, data_cfg.name)
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=directory))
    except tfds.download.DownloadError as e:
        raise DataError(f"data.name={data_cfg.name!r}: download failed ({str(e).splitlines()[0]})") from None
    train_parts, val_parts = ["train"], data_cfg.get("val_split", "validation").split("+")
    missing = [s for s in train_parts + val_parts if s.split("[")[0] not in builder.info.splits]
    if missing:  # split names are known only once the data is prepared
        raise DataError(f"data.val_split={data_cfg.val_split!r}: {name} has no split {missing[0]!r}; it has: "
                        f"{', '.join(builder.info.splits)}")

    def read(parts):
        texts = []
        for source in tfds.data_source(name, split=parts, data_dir=data_dir, download=False,
                                       builder_kwargs={"file_format": "array_record"}):
            texts.extend(_as_str(source[i][feature]) for i in range(len(source)))
        return "\n".join(texts)

    train_text, val_text = read(train_parts), read(val_parts)
    digest = hashlib.sha256(train_text.encode("utf-8") + b"\0" + val_text.encode("utf-8")).hexdigest()
    return TextDataset(data_cfg.name, train_text, val_text, data_hash=digest,
                       tokenizer=text_tokenizer(data_cfg, train_text, tokenizer))


def _text_feature(builder, name: str) -> str:
    import tensorflow_datasets as tfds

    features = builder.info.features
    texts = [k for k, f in features.items() if isinstance(f, tfds.features.Text)]
    if "text" in texts:
        return "text"
    if len(texts) == 1:
        return texts[0]
    raise DataError(f"data.name={name!r} has {len(texts)} Text features ({', '.join(texts) or 'none'}) "
                    f"among {', '.join(features)}; a text dataset needs a 'text' feature or exactly one")


def _as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
