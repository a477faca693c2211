"""The identity of a data set for cache keys: its name, class count, cache file and the contents of its splits.

The sensitivity table's cache key hashes :func:`data_fingerprint`; the dict (and so the key) is unchanged from
earlier versions: the split class names (``TensorSplit``, ``StreamSplit``, ``DatasetSplit``, ``LoaderSplit``) enter
it, so they must not be renamed.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from .._hashing import tensor_bytes

__all__ = ["data_fingerprint", "first_batch_sha", "split_fingerprint"]


def split_fingerprint(sp: Any, full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(sp).__name__}
    try:
        out["n"] = len(sp)
    except TypeError:
        pass
    images = getattr(sp, "images", None)
    if isinstance(images, torch.Tensor):
        h = hashlib.sha256()
        labels = getattr(sp, "labels", None)
        if isinstance(labels, torch.Tensor):
            h.update(tensor_bytes(labels))
        # the val split is hashed in full; a training split by a strided sample of ~2k images (plus all labels)
        step = 1 if full else max(1, len(images) // 2048)
        h.update(tensor_bytes(images[::step]))
        out.update(shape=list(images.shape), sha=h.hexdigest(), padding=getattr(sp, "padding", None),
                   mean=list(getattr(sp, "mean", ())), std=list(getattr(sp, "std", ())))
        return out
    if hasattr(sp, "fingerprint"):  # a user's Dataset or DataLoader (autoprune.data.adapter)
        out["sha"] = sp.fingerprint(full)
        return out
    samples = getattr(sp, "samples", None)
    if samples is not None:
        out["sha"] = hashlib.sha256(json.dumps([[str(p), int(y)] for p, y in samples]).encode()).hexdigest()
        out.update(size=list(getattr(sp, "image_size", ())), mean=list(getattr(sp, "mean", ())),
                   std=list(getattr(sp, "std", ())))
        return out
    # anything else: the first batch
    out["sha"] = first_batch_sha(sp)
    return out


def first_batch_sha(it: Any) -> str:
    src = it.batches(256) if hasattr(it, "batches") else it
    h = hashlib.sha256()
    for b in src:
        for t in (b if isinstance(b, (tuple, list)) else (b,)):
            if isinstance(t, torch.Tensor):
                h.update(tensor_bytes(t))
        break
    return h.hexdigest()


def data_fingerprint(data: Any) -> dict[str, Any]:
    """The data's identity for cache keys: name, classes, cache file, and the contents of the val split (hashed in
    full) and of the train split used for BN re-estimation and activation scores (labels + a strided sample).
    Objects without ``val`` fall back to hashing their first batch."""
    ident: dict[str, Any] = {"type": type(data).__name__}
    for attr in ("name", "num_classes", "cache_path", "image_size"):
        v = getattr(data, attr, None)
        if v is not None:
            ident[attr] = v if isinstance(v, (int, float, str)) else str(v)
    if hasattr(data, "val"):
        ident["val"] = split_fingerprint(data.val, full=True)
        if hasattr(data, "train"):
            ident["train"] = split_fingerprint(data.train, full=False)
    else:
        ident["first_batch"] = first_batch_sha(data)
    return ident
