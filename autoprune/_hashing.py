"""Hashes of tensors and models: the bytes of a tensor, a model's fingerprint, a digest of its weights.

The three algorithms are part of what is on disk: sensitivity-table cache keys hash :func:`model_fingerprint` (and
the data fingerprints of :mod:`autoprune.data.fingerprint`, built on :func:`tensor_bytes`), and a study records the
base model's :func:`weights_digest`; changing one of them makes every cache and study look foreign.
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn as nn

__all__ = ["model_fingerprint", "tensor_bytes", "weights_digest"]


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of ``t`` (detached, on the CPU, contiguous, flattened); ``b""`` for an empty tensor."""
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the model class and every state_dict tensor (name, dtype, shape and bytes)."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            continue
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def weights_digest(model: nn.Module) -> str:
    """The first 16 hex digits of the sha256 of ``model``'s state_dict (sorted names and tensor bytes): the study's
    base-weights digest (``BASE_SHA_ATTR``)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
