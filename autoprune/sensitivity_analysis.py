# TEMPORARY SHIM (issue 19): removed in the sweep
"""Moved to :mod:`autoprune.allocation.sensitivity_analysis` and :mod:`autoprune.allocation.sensitivity_table`."""
from ._hashing import model_fingerprint  # noqa: F401
from .allocation.sensitivity_analysis import cpu_graph, sensitivity, sensitivity_cache_dir  # noqa: F401
from .allocation.sensitivity_table import CACHE_VERSION, DEFAULT_RATIOS, SensitivityRow, SensitivityTable  # noqa: F401
from .data.fingerprint import data_fingerprint  # noqa: F401

__all__ = ["DEFAULT_RATIOS", "SensitivityRow", "SensitivityTable", "sensitivity", "sensitivity_cache_dir",
           "model_fingerprint", "data_fingerprint", "cpu_graph"]
