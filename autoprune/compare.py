# TEMPORARY SHIM (issue 19): removed in the sweep
"""Moved to :mod:`autoprune.allocation.compare`."""
from .allocation.compare import *  # noqa: F401,F403
from .allocation.compare import __all__  # noqa: F401
