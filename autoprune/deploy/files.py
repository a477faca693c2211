"""Saving pruned models without pickled code.

A file holds plain data only -- the base architecture's name and arguments, the channels removed at each pruning
step (group name -> indices), the example input shapes and the state_dict -- so ``torch.load(path,
weights_only=True)`` reads it. Loading rebuilds the base model, replays the removals through the engine (which is
deterministic) and loads the weights.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn as nn

from .._files import atomic_write
from .._lineage import lineage_of, set_lineage
from ..graph import ChannelGraph
from ..models import get_model

__all__ = ["save", "load", "read_checkpoint", "FORMAT"]

FORMAT = "autoprune.v1"


def save(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model`` (pruned by autoprune, or a model built by :func:`autoprune.get_model`) to ``path``.

    The write is atomic (temporary file, then rename), so an interrupted save never leaves a truncated file.
    """
    lineage = lineage_of(model)
    payload = {
        "format": FORMAT,
        "arch": dict(lineage.arch) if lineage.arch else None,
        "steps": [dict(s) for s in lineage.steps],
        "input_shapes": [list(s) for s in lineage.input_shapes] if lineage.input_shapes is not None else None,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    atomic_write(path, lambda f: torch.save(payload, f))


def read_checkpoint(path: str | os.PathLike, what: str = "checkpoint", *, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and the fix.

    ``what`` names the file's role in the message (e.g. ``"model.weights"``).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}: {path} not found")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what}: {path} is a directory, not a weights file; give the checkpoint file in it "
                                "(e.g. a .pt or .pth file written by torch.save)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError / UnpicklingError / EOFError / ... for a bad file
        size = os.path.getsize(path)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        with open(path, "rb") as f:
            head = f.read(16)
        said = f" torch said: {first}"
        if size == 0:
            fix, said = "it is empty (an interrupted download or copy?); copy or download it again", ""
        elif _looks_like_safetensors(head, size):
            fix, said = ("it is a safetensors file, not a PyTorch checkpoint; convert it: torch.save("
                         "safetensors.torch.load_file(path), 'weights.pt')"), ""
        elif not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save: a zip, or a legacy pickle
            fix, said = ("it is not a PyTorch checkpoint (not a zip/pickle file written by torch.save); give the "
                         "file torch.save(model.state_dict(), path) wrote"), ""
        elif "global" in str(e).lower() and ("weights_only" in str(e) or "WeightsUnpickler" in str(e)):
            fix = ("it holds pickled objects that weights_only loading refuses; save a plain state_dict "
                   "(torch.save(model.state_dict(), path)) or an autoprune file (autoprune.save)")
        else:
            fix = ("it is truncated or corrupt (an interrupted download or copy?); copy or download it again, or "
                   "re-save it with torch.save")
        raise ValueError(f"{what}: cannot read {path} ({size:,} bytes): {fix}.{said}") from None


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header."""
    return len(head) > 8 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < size


def load(path: str | os.PathLike, model: nn.Module | None = None, *, map_location: Any = "cpu") -> nn.Module:
    """Rebuild a model written by :func:`save`.

    ``model``: an unpruned instance of the base architecture, needed when the file's base model was not built by
    :func:`autoprune.get_model` (your own class); its weights are replaced by the file's.
    """
    payload = read_checkpoint(path, "autoprune model file", map_location=map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an autoprune model file (expected format {FORMAT!r})")
    arch = payload.get("arch")
    if model is None:
        if not arch:
            raise ValueError(f"{path} does not name its base architecture (the model was not built with "
                             "autoprune.get_model): pass model=<an unpruned instance of its class> to load()")
        model = get_model(arch["name"], **arch.get("kwargs", {}))
    for removed in payload.get("steps", []):
        shapes = payload.get("input_shapes") or [[1, 3, 32, 32]]
        graph = ChannelGraph(model, tuple(torch.zeros(s) for s in shapes))
        model = graph.prune_channels(removed)
    model.load_state_dict(payload["state_dict"])
    if arch:
        set_lineage(model, lineage_of(model).with_arch(arch))
    return model.eval()
