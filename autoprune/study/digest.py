"""The digest of a removal plan ({group: channel indices}): the key under which a search records, reuses and caches
what a cut measured (a trial's ``removal_sha``, the latency cache of :mod:`autoprune.study.speed`)."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

__all__ = ["removal_digest"]


def removal_digest(removal: Mapping[str, Any]) -> str:
    """Short hash of a removal plan ({group: channel indices}); export checks it to prove it rebuilt the same cut."""
    canon = {k: sorted(int(i) for i in v) for k, v in sorted(removal.items()) if len(v)}
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:16]
