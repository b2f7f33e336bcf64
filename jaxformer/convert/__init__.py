"""Importers of pretrained Hugging Face checkpoints into jaxformer run directories.

    jaxformer import --hf PATH_OR_ID --workdir runs/gpt2 [--param-dtype bfloat16] [--config.a.b=value ...]

One file per family (`gpt2.py`, `llama.py`, `bert.py`), each two pure functions registered in `FAMILIES` by the
`architectures` names of a Hugging Face `config.json`:

- `config_map(hf_config) -> dict`: the jaxformer `model` fields (and `data.block_size`) for that config;
- `param_map(hf_config) -> list[Entry]`: one entry per checkpoint tensor: its name, the shape it must have, the
  jaxformer parameter it goes to (a path), the columns of that parameter it fills (a fused [q | k | v] kernel is
  filled by three tensors) and the transform on the way (a transpose; the q/k permutation that turns Hugging Face's
  half-rotation RoPE layout into jaxformer's interleaved pairs).

`hf.py` walks the table (safetensors shards read one tensor at a time, no torch) and writes the run directory.
A new family is a new file with its two maps and one line in `FAMILIES`; the model has no per-family code.
"""

from __future__ import annotations

from jaxformer.convert import bert, gpt2, llama
from jaxformer.convert.common import ConvertError, Entry, Family

FAMILIES: dict[str, Family] = {
    "GPT2LMHeadModel": gpt2.FAMILY,
    "LlamaForCausalLM": llama.FAMILY,
    "MistralForCausalLM": llama.FAMILY,
    "Qwen2ForCausalLM": llama.FAMILY,
    **bert.FAMILIES,  # BERT / MiniLM / sentence-transformers, RoBERTa, DistilBERT: *Model and *ForMaskedLM
}


def family_for(hf_config: dict, source: str) -> tuple[str, Family]:
    """(architecture name, its family) from a config.json; an unsupported one is a one-line error listing ours."""
    names = hf_config.get("architectures") or []
    model_type = hf_config.get("model_type")
    for name in names:
        if name in FAMILIES:
            return name, FAMILIES[name]
    by_type = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
               "qwen2": "Qwen2ForCausalLM", **bert.BY_MODEL_TYPE}
    if not names and model_type in by_type:
        return by_type[model_type], FAMILIES[by_type[model_type]]
    found = ", ".join(names) or f"model_type={model_type!r}"
    raise ConvertError(f"{source}/config.json: architecture {found} is not supported; supported: "
                       f"{', '.join(FAMILIES)}")


__all__ = ["FAMILIES", "Entry", "Family", "ConvertError", "family_for"]
