"""tiny_shakespeare as a TFDS `GeneratorBasedBuilder` that runs without TensorFlow.

The same download (URL, size and sha256 in `checksums.tsv` beside this file, which TFDS reads from the
builder's folder), the same one-example-per-split layout and the same 90/5/5 character split as TFDS's stock
`tiny_shakespeare` builder, which needs TensorFlow only to read the file through `tf.io.gfile`. Prepared as
array_record and read with `tfds.data_source`.

It is registered under its own name, `jaxformer_tiny_shakespeare`, so that it collides neither with the stock
builder in TFDS's registry (which `tfds:tiny_shakespeare` still reaches when TensorFlow is installed) nor with
a TFRecord copy the stock builder prepared in the same data directory.
"""

import tensorflow_datasets as tfds

NAME = "jaxformer_tiny_shakespeare"
URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
FILENAME = "input.txt"  # the name TFDS looks for in a manual dir (last column of checksums.tsv)


def split_text(text: str) -> dict:
    """The stock builder's split: the first 90% of the characters, then 5% validation, then 5% test."""
    i = int(len(text) * 0.9)
    train, rest = text[:i], text[i:]
    j = int(len(rest) * 0.5)
    return {"train": train, "validation": rest[:j], "test": rest[j:]}


class TinyShakespeare(tfds.core.GeneratorBasedBuilder):
    """Karpathy's char-rnn tiny-shakespeare (1,115,394 characters); one example per split: {"text": str}."""

    name = NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "The stock tiny_shakespeare 1.0.0 data, read without TensorFlow."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="40,000 lines of Shakespeare from a variety of plays (Karpathy, char-rnn, 2015).",
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
            supervised_keys=None,
            homepage="https://github.com/karpathy/char-rnn/blob/master/data/tinyshakespeare/input.txt",
            citation="@misc{karpathy2015, author={Karpathy, Andrej}, title={char-rnn}, year={2015}, "
                     "howpublished={\\url{https://github.com/karpathy/char-rnn}}}",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        path = dl_manager.download(URL)  # or the manual dir's input.txt; checksum-verified either way
        if path.is_dir():  # TFDS's download mock in tests hands over a directory
            path = path / FILENAME
        # Bytes, strictly decoded: text mode would translate newlines and change the character count.
        text = path.read_bytes().decode("utf-8")
        return {split: self._generate_examples(split, part) for split, part in split_text(text).items()}

    def _generate_examples(self, split: str, text: str):
        yield split, {"text": text}
