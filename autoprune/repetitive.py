# TEMPORARY SHIM (issue 19): removed in the sweep
"""Moved to :mod:`autoprune.allocation.repetitive`."""
from .allocation.repetitive import *  # noqa: F401,F403
from .allocation.repetitive import __all__  # noqa: F401
