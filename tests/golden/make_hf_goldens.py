"""Writes tests/golden/hf/<architecture>/: a small random transformers model saved with save_pretrained
(config.json, model.safetensors), its tokenizer.json, and outputs.npz (transformers' logits, attention weights and
20 greedy tokens with the KV cache on the prompt `hf_reference.PROMPT`).

tests/test_convert.py imports each folder and compares with outputs.npz, which needs no torch (what CI runs); with
the `hf` extra installed the same comparison also runs live against models built in the test.
Run (needs `pip install -e ".[hf]"`): python tests/golden/make_hf_goldens.py
"""

import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import hf_reference  # noqa: E402

if __name__ == "__main__":
    import torch
    import transformers

    for name in hf_reference.ARCHITECTURES:
        folder = os.path.join(HERE, "hf", name)
        shutil.rmtree(folder, ignore_errors=True)
        model = hf_reference.make_model(name)
        hf_reference.save(model, folder)
        for extra in ("generation_config.json",):
            if os.path.exists(os.path.join(folder, extra)):
                os.remove(os.path.join(folder, extra))
        out = hf_reference.outputs(model, hf_reference.prompt_ids(folder))
        np.savez_compressed(os.path.join(folder, "outputs.npz"), **out,
                            versions=np.asarray([torch.__version__, transformers.__version__]))
        print(name, {k: v.shape for k, v in out.items()})
