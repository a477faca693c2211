# TEMPORARY SHIM (issue 19): removed in the sweep
"""Old path of :mod:`autoprune.study.speed`."""
from .study.speed import *  # noqa: F401,F403
from .study.speed import (LATENCY_ATTRS, RemovalLatency, latency_attrs, latency_settings, speed_rows,  # noqa: F401
                          speed_table, wants_latency)
