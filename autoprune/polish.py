# TEMPORARY SHIM (issue 19): removed in the sweep
"""Old path of :mod:`autoprune.train.polish`."""
from .train.polish import *  # noqa: F401,F403
from .train.polish import __all__  # noqa: F401
