"""The data layer: datasets by name, as NumPy batches that are pure functions of (seed, split, step).

    load_dataset(cfg.data) -> Dataset        data.name: tiny_shakespeare | synthetic/<task> | tfds:<name> |
                                             text:PATH (a file, folder or glob; token_cache.py)
    list_datasets()                          the names load_dataset knows (tfds:<name> aside)
    tokenizer_problem(name, tokenizer)       the dataset/tokenizer rule (synthetic tasks: char), for config too
    default_config()                         the `data` config section
    load_tokenizer(path)                     a run directory's vocab.json
    run_tokenizer(workdir)                   a run directory's tokenizer.json (subword) or vocab.json (characters)

A Dataset has `.batch(split, step, ...)`, `.eval_batches(...)`, `.windows(split, length=...)`,
`.split_tokens(split)`, `.tokenizer`, `.vocab_size`, `.has_accuracy` and `.data_hash` (see dataset.py).
Splits are "train" and "val".
Nothing here imports the model; TFDS is imported only when a TFDS dataset is loaded, TensorFlow never.
"""

from __future__ import annotations

import ml_collections

from jaxformer.data import algorithmic, retrieval  # noqa: F401 -- register the literature's tasks, passkey and mqar
from jaxformer.data.dataset import BOSDataset, Dataset, prepend_bos
from jaxformer.data.sources import is_text_name
from jaxformer.data.synthetic import TASKS, SyntheticDataset, load_synthetic
from jaxformer.data.text import TextDataset, load_tfds_text, load_tiny_shakespeare
from jaxformer.data.token_cache import load_text_files
from jaxformer.data.tokenizer import (
    TOKENIZER_KINDS,
    DataError,
    SubwordTokenizer,
    Tokenizer,
    cached_tokenizer,
    load_tokenizer,
    run_tokenizer,
)

__all__ = ["TOKENIZER_KINDS", "BOSDataset", "DataError", "Dataset", "SubwordTokenizer", "SyntheticDataset",
           "TextDataset", "Tokenizer", "cached_tokenizer", "default_config", "is_text_name", "list_datasets",
           "load_dataset", "load_tokenizer", "prepend_bos", "run_tokenizer"]


def default_config() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.name = "synthetic/copy"  # tiny_shakespeare | synthetic/<task> | tfds:<name> (tf extra) | text:PATH (your text)
    d.block_size = 32  # tokens per training row T (context length); 0 with --config FILE --init-from RUN = RUN's
    d.batch_size = 32  # rows per batch B (per optimizer micro-step)
    d.bos = False  # prepend a beginning-of-sequence token (id = tokenizer vocab size) to every row; not scored
    d.tokenizer = "char"  # char | bpe (byte-level BPE trained on the train split) | pretrained (an imported model's)
    d.vocab_size = 1024  # ids of the bpe tokenizer (256 bytes + merges); nanoGPT's `shakespeare` uses GPT-2's 50257
    d.val_split = "validation"  # TFDS split(s) read as "val", +-joined; validation+test = nanoGPT's last 10%
    d.manual_dir = ""  # folder holding input.txt for offline use; "" = $JAXFORMER_MANUAL_DIR, else download
    d.data_dir = ""  # TFDS data dir for prepared data; "" = $TFDS_DATA_DIR, else ~/tensorflow_datasets
    d.val_fraction = 0.1  # text:PATH: the last fraction of the characters is the val split (nanoGPT: 10%)
    d.text_field = "text"  # text:PATH: the field of a .jsonl record / the column of a .parquet file
    d.cache_dir = ""  # text:PATH token files; "" = $JAXFORMER_CACHE_DIR, else ~/.cache/jaxformer
    d.synthetic = ml_collections.ConfigDict()
    d.synthetic.num_symbols = 16  # distinct symbols a, b, ... in the prompts (at most 52)
    d.synthetic.min_items = 0  # smallest task size n in batches (n ~ uniform[min, max]); 0 = max_items
    d.synthetic.max_items = 0  # largest task size n in batches; 0 = as many as fit data.block_size
    d.synthetic.eval_examples = 256  # examples per length in windows() when the caller gives no count
    d.synthetic.key_digits = 5  # synthetic/passkey: digits of the key (Mohtashami & Jaggi 2023)
    d.synthetic.pairs = 8  # synthetic/mqar: key-value pairs, distinct keys (<= num_symbols; Arora et al. 2023)
    return d


def list_datasets() -> list:
    return ["tiny_shakespeare", *(f"synthetic/{task}" for task in TASKS)]


def tokenizer_problem(name: str, tokenizer: str) -> str | None:
    """The one rule tying a dataset to its tokenizer (config.validate and load_dataset both ask it): a synthetic
    task's symbols are its own characters, so it takes data.tokenizer=char; the error line, or None."""
    if name.startswith("synthetic/") and tokenizer != "char":
        return f"data.tokenizer={tokenizer!r}: synthetic tasks have their own symbols; use data.tokenizer=char"
    return None


def load_dataset(data_cfg, tokenizer=None) -> Dataset:
    """The dataset `data_cfg.name` names (TFDS data is prepared on first use); `tokenizer`: a run directory's saved
    one (`cached_tokenizer`) instead of building it from `data.tokenizer`."""
    name = data_cfg.name
    if name == "tiny_shakespeare":
        dataset = load_tiny_shakespeare(data_cfg, tokenizer)
    elif name.startswith("synthetic/") and name[len("synthetic/"):] in TASKS:
        if problem := tokenizer_problem(name, data_cfg.get("tokenizer", "char")):
            raise DataError(problem)
        dataset = load_synthetic(data_cfg)
    elif name.startswith("tfds:") and len(name) > len("tfds:"):
        dataset = load_tfds_text(data_cfg, tokenizer)
    elif is_text_name(name):
        dataset = load_text_files(data_cfg, tokenizer)
    else:
        raise DataError(f"data.name={name!r}; choose one of: {', '.join(list_datasets())}, tfds:<name>, text:PATH")
    return BOSDataset(dataset) if data_cfg.get("bos", False) else dataset
