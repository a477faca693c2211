"""autoprune: find how many channels each layer of a trained CNN can lose.

The public API is what ``__all__`` lists, all of it named below (everything else may change). Every function taking
``data`` accepts a ``torch.utils.data.DataLoader``, a map-style ``Dataset`` of ``(image, label)``, a ``(train, val)``
pair of these, or a :class:`DataBundle` from :func:`load_data`.

Channel graph and models:

- :class:`ChannelGraph`, :class:`ChannelGroup` -- channel dependency analysis and physical pruning;
  :class:`TraceError`, :class:`PruneError` -- what it raises when a model cannot be traced or pruned;
- :func:`count_macs`, :func:`count_params` -- the papers' MAC convention, counted by fvcore;
- :func:`get_model` -- the CIFAR ResNets/VGGs and torchvision classifiers by name;
- :func:`save`, :func:`load` -- pruned models without pickled code;
- :func:`register_channel_rule` with :class:`ChannelRule` (or the presets :class:`PerChannel`, :class:`Dense`,
  :class:`Elementwise`, :class:`Lock`) -- teach the engine a layer of your own (docs/engine.md);
  :func:`register_traced_forward` -- trace a block fx cannot follow through a forward of your own.

Channel importance:

- :func:`score` -- per-channel scores of a criterion;
- :func:`get_criterion`, :func:`register_criterion`, :func:`available_criteria` -- the criteria registry.

Data and the inner loop of a trial:

- :func:`load_data` -> :class:`DataBundle` -- cached, device-resident train/val/test splits;
- :func:`finetune` -> :class:`FinetuneResult`, :func:`evaluate` -> :class:`EvalResult`, :func:`recalibrate_bn`.

Sensitivity and budgets:

- :func:`sensitivity` -> :class:`SensitivityTable` -- FLOP-normalized sensitivity of every group;
- :func:`allocate` -> :class:`Allocation` -- per-group ratios meeting a MAC/parameter budget;
- :func:`prune_to_budget` -> :class:`BudgetResult` -- one call from a trained model to a pruned, fine-tuned one;
- :func:`compare_criteria` -> :class:`CriteriaComparison` -- criteria side by side at fixed ratios.

Search:

- :func:`search` -- the Optuna search of per-group ratios; :func:`load_front` -> :class:`ParetoFront`;
- :func:`load_config` -> :class:`SearchConfig` (raises :class:`ConfigError`) -- the one config schema of every command.

Deployment:

- :func:`export_model` -> :class:`ExportResult` -- ONNX, torch.export, TorchScript or autoprune files, checked by
  running them back;
- :func:`measure_latency` -> :class:`Latency` -- measured latency (median and spread) on a device and runtime.

:data:`__version__` is the package version.
"""
# To export a name: import it in its section below, add it to ``__all__`` in the same section, and name it in the
# docstring above (tests/test_api.py checks all three, and that no function hides a submodule of the same name).
from ._version import __version__

# channel graph and models
from .graph.flops import count_macs, count_params
from .graph import (ChannelGraph, ChannelGroup, ChannelRule, Dense, Elementwise, Lock, PerChannel, PruneError,
                    TraceError, register_channel_rule, register_traced_forward)
from .deploy.files import load, save
from .models import get_model

# channel importance
from .criteria import available_criteria, get_criterion, register_criterion
from .criteria.scoring import score

# data and the inner loop of a trial
from .data import DataBundle, load_data
from .train import EvalResult, FinetuneResult, evaluate, finetune, recalibrate_bn

# sensitivity and budgets
from .allocation import Allocation, allocate
from .allocation.budget import BudgetResult, prune_to_budget
from .allocation.compare import CriteriaComparison, compare_criteria
from .allocation.sensitivity_analysis import sensitivity
from .allocation.sensitivity_table import SensitivityTable

# search
from .config import ConfigError, SearchConfig, load_config
from .study import ParetoFront, load_front, search

# deployment
from .deploy.export import ExportResult, export_model
from .deploy.latency import Latency, measure_latency

__all__ = [
    "__version__",
    # channel graph and models
    "ChannelGraph", "ChannelGroup", "TraceError", "PruneError", "count_macs", "count_params", "get_model", "save",
    "load", "register_channel_rule", "ChannelRule", "PerChannel", "Dense", "Elementwise", "Lock",
    "register_traced_forward",
    # channel importance
    "score", "get_criterion", "register_criterion", "available_criteria",
    # data and the inner loop of a trial
    "load_data", "DataBundle", "finetune", "FinetuneResult", "evaluate", "EvalResult", "recalibrate_bn",
    # sensitivity and budgets
    "sensitivity", "SensitivityTable", "allocate", "Allocation", "prune_to_budget", "BudgetResult",
    "compare_criteria", "CriteriaComparison",
    # search
    "search", "load_front", "ParetoFront", "load_config", "SearchConfig", "ConfigError",
    # deployment
    "export_model", "ExportResult", "measure_latency", "Latency",
]
