"""The on-disk cache of decoded data sets: where it lives, its keys, and atomic writes of its files."""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .._files import atomic_write

__all__ = ["CACHE_VERSION", "cache_key", "cached", "default_cache_dir"]

# Bump when the cache file layout or a decoder/generator changes, so stale caches are not reused.
CACHE_VERSION = 1


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$AUTOPRUNE_CACHE``, else ``~/.cache/autoprune``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("AUTOPRUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autoprune"


def cache_key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


def cached(path: Path, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Load ``path`` or build it; written to a temp file then os.replace'd so readers never see half a file."""
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception as e:  # a truncated/foreign file: rebuild instead of failing every trial
            warnings.warn(f"ignoring unreadable data cache {path} ({e}); rebuilding it")
    arrays = build()
    atomic_write(path, lambda f: torch.save(arrays, f))
    return arrays
