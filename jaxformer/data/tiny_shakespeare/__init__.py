"""TFDS builder for tiny_shakespeare that needs no TensorFlow (its `checksums.tsv` lives beside it)."""

from jaxformer.data.tiny_shakespeare.builder import NAME, URL, TinyShakespeare

__all__ = ["NAME", "URL", "TinyShakespeare"]
