# TEMPORARY SHIM (issue 19): removed in the sweep
"""Old path of :mod:`autoprune.deploy.latency`."""
from .deploy.latency import *  # noqa: F401,F403
from .deploy.latency import (DEVICES, RUNTIMES, Latency, LatencyCache, LatencyRunner,  # noqa: F401
                             check_latency_settings, machine_label, measure_latency)
