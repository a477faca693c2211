# TEMPORARY SHIM (issue 19): removed in the sweep
"""Old path of :mod:`autoprune.study.report`."""
from .study.report import *  # noqa: F401,F403
from .study.report import default_trials, make_report, plot_pareto, plot_ratios, write_html  # noqa: F401
