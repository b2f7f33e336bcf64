"""The parameter-map record shared by the families, and the transforms its entries use."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np


class ConvertError(ValueError):
    """A checkpoint that cannot be imported; the message is one line naming the file or tensor and what is valid."""


def identity(x: np.ndarray) -> np.ndarray:
    return x


@dataclasses.dataclass(frozen=True)
class Entry:
    """One checkpoint tensor: where it goes and how.

    `target` is the jaxformer parameter path ("blocks/0/attn/params/qkv/kernel"); `columns` the slice of that
    parameter's last axis it fills (None: all of it); `transform` maps the stored array (in `shape`) to the
    target layout.
    """

    name: str
    shape: tuple[int, ...]
    target: str
    transform: Callable[[np.ndarray], np.ndarray] = identity
    columns: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class Family:
    """An architecture family: its config map, its parameter map and the tensors it may skip (buffers, a tied
    head stored twice)."""

    name: str
    config_map: Callable[[dict], dict]
    param_map: Callable[[dict], list[Entry]]
    ignored: Callable[[str, dict], bool]
    strip_prefixes: tuple[str, ...] = ()
    special_tokens: tuple[str, ...] = ()  # tokens tokenizer.json must have (an encoder's [CLS], [SEP], [MASK], ...)
    mask_token: str | None = None  # its masked-LM token: model.mlm.mask_token_id is its id


def transpose(x: np.ndarray) -> np.ndarray:
    """torch.nn.Linear's [out, in] weight as jaxformer's [in, out] kernel (x @ W)."""
    return np.ascontiguousarray(x.T)


def half_to_interleaved(head_dim: int) -> np.ndarray:
    """The column order that turns rotate-half RoPE into rotate-pairs RoPE, for one head of width d.

    Hugging Face's Llama rotates the pairs (x_i, x_{i+d/2}) by angle p·theta_i; jaxformer (Su et al.) rotates
    (x_2i, x_2i+1) by the same angle. Reordering q's and k's output columns within each head as
    [0, d/2, 1, d/2+1, ...] makes the two the same function: q·k is a sum over pairs, so the logits are unchanged,
    and v (unpermuted) never sees the order.
    """
    half = head_dim // 2
    return np.stack([np.arange(half), np.arange(half) + half], axis=1).reshape(-1)


def permute_heads(x: np.ndarray, n_heads: int, head_dim: int) -> np.ndarray:
    """Applies `half_to_interleaved` within each head to the last axis of a [.., n_heads·head_dim] array."""
    order = (np.arange(n_heads)[:, None] * head_dim + half_to_interleaved(head_dim)[None, :]).reshape(-1)
    return np.ascontiguousarray(x[..., order])
