# TEMPORARY SHIM (issue 19): removed in the sweep
"""Old path of :mod:`autoprune.data.adapter`."""
from .data.adapter import *  # noqa: F401,F403
from .data.adapter import __all__  # noqa: F401
from .data.adapter import _bundle, _classes_of, _is_split, _one, _UserSplit, _xy  # noqa: F401
