"""autoprune: find how many channels each layer of a trained CNN can lose.

Public entry points (everything else may change):

- :class:`ChannelGraph` -- channel dependency analysis and physical pruning;
- :func:`count_macs`, :func:`count_params` -- the papers' MAC convention, counted by fvcore;
- :func:`save` / :func:`load` -- pruned models without pickled code;
- :func:`score` and the criteria registry -- channel importance;
- :func:`load_data`, :func:`finetune`, :func:`evaluate`, :func:`recalibrate_bn` -- the inner loop of a trial;
- :func:`sensitivity`, :func:`allocate`, :func:`prune_to_budget` -- FLOP-normalized sensitivity and budgets;
- :func:`search`, :func:`load_front` -- the Optuna search and its Pareto front.
"""
from .allocation import Allocation, allocate
from .budget import BudgetResult, prune_to_budget
from .compare import compare_criteria
from .criteria import available_criteria, get_criterion, register_criterion
from .flops import count_macs, count_params
from .graph import ChannelGraph, ChannelGroup, PruneError, TraceError
from .io import load, save
from .models import get_model
from .data import load_data
from .scoring import score
from .study import ParetoFront, load_front, search
from .sensitivity_analysis import SensitivityTable, sensitivity
from .train import evaluate, finetune, recalibrate_bn

from ._version import __version__

__all__ = [
    "ChannelGraph", "ChannelGroup", "TraceError", "PruneError", "count_macs", "count_params", "get_model",
    "save", "load", "score", "get_criterion", "register_criterion", "available_criteria",
]
