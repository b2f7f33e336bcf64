"""jaxformer: self-attention and positional encodings as pure JAX functions, with the plumbing around them."""

__version__ = "0.1.0"
