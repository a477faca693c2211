# TEMPORARY SHIM (issue 19): removed in the sweep
"""Old path of :mod:`autoprune.train.distill`."""
from .train.distill import *  # noqa: F401,F403
from .train.distill import __all__  # noqa: F401
