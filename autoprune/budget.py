# TEMPORARY SHIM (issue 19): removed in the sweep
"""Moved to :mod:`autoprune.allocation.budget`."""
from .allocation.budget import *  # noqa: F401,F403
from .allocation.budget import __all__  # noqa: F401
