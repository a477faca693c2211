# TEMPORARY SHIM (issue 19): removed in the sweep
"""Old path of :mod:`autoprune.study.front`."""
from .front import *  # noqa: F401,F403
from .front import (ExportedTrial, ParetoFront, TrialRecord, front_records, hypervolume_2d,  # noqa: F401
                    pareto_filter, trial_records)
