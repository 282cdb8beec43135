"""SHA-256 digests of nested tensors: what cache keys and reproducibility records hash
model weights and calibration data with."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch


def feed_digest(h: Any, obj: Any) -> None:
    """Adds `obj` to the hash: tensors by dtype, shape and bytes; mappings by sorted key;
    sequences in order; anything else by its repr."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, Mapping):
        for k in sorted(obj):
            h.update(str(k).encode())
            feed_digest(h, obj[k])
    elif isinstance(obj, list | tuple):
        for v in obj:
            feed_digest(h, v)
    else:
        h.update(repr(obj).encode())


def hash_tensors(obj: Any) -> str:
    """SHA-256 (hex) of tensors nested in mappings, lists and tuples: the digest the cache
    key and the pipeline's reproducibility record give model weights and calibration data.

    Args:
        obj: A tensor, or mappings / lists / tuples of them (other leaves hash by repr).
    """
    h = hashlib.sha256()
    feed_digest(h, obj)
    return h.hexdigest()
