# TEMPORARY SHIM (issue 19): removed in the sweep
"""Old path of :mod:`autoprune.deploy.files`."""
from .deploy.files import *  # noqa: F401,F403
from .deploy.files import FORMAT, load, read_checkpoint, save  # noqa: F401
