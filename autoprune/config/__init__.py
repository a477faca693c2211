"""The config schema of every command: one YAML file describes a model, its data and a whole pruning search.

``autoprune search``, ``sensitivity``, ``prune``, ``compare-criteria``, ``export``, ``pareto``, ``report`` and
``dashboard`` all read this schema through :func:`load_config`, which returns a validated :class:`SearchConfig`.
A command loads its config once and passes that object down (``load_config`` of a :class:`SearchConfig` without
overrides returns it as it is). Every error is a :class:`ConfigError` (a ``ValueError``) naming the file and the
offending key, e.g. ``ratios.groups['layer4.*']: pattern matches no prunable group`` or
``unknown key 'n_trial' in the top level; did you mean 'n_trials'?``.

**One place for every key**: each key is a dataclass field of :mod:`.schema` whose metadata holds its documentation
and its check (:mod:`.keys`); its default is the field's default. :data:`SCHEMA` (allowed keys) and the reference
tables of ``docs/search.md`` (:func:`reference_markdown`, :mod:`.loading`) are derived from the dataclasses, and a
test keeps the document equal to them.

Two stages of checks:

* :func:`load_config` -- keys, types, ranges, choices: everything that needs no model (this package);
* :func:`autoprune.study.bounds.check_against_graph` -- what needs the model's channel groups: every
  ``ratios.groups`` pattern must match a prunable group, and the budget constraints must be reachable within the
  ratio bounds.

**Trust**: a config the user passes (a file, a dict, a :class:`SearchConfig`) may name code (``model.name:
module:function``) and choose where files are written. One read from a study's storage (:func:`load_stored_config`,
``SearchConfig.trusted`` False) may not: :meth:`SearchConfig.check_code_allowed` refuses its code names when a model
is built, and its output paths are kept under the working directory (docs/distributed.md, "What is trusted").
"""
from .keys import GUIDES, MODES, OBJECTIVES, SAMPLERS, ConfigError, UntrustedConfigError, is_code_name
from .loading import load_config, load_stored_config, reference_markdown
from .schema import (GUIDED_ONLY, SCHEMA, SECTIONS, ConstraintSpec, DataSpec, DistillSpec, EarlyStoppingSpec,
                     FinetuneSpec, LatencySpec, ModelSpec, PretrainSpec, RatioSpec, SamplerSpec, ScoringSpec,
                     SearchConfig)

__all__ = [
    "ConfigError", "UntrustedConfigError", "SearchConfig", "ModelSpec", "PretrainSpec", "DataSpec", "RatioSpec",
    "ConstraintSpec", "SamplerSpec", "FinetuneSpec", "ScoringSpec", "LatencySpec", "load_config", "load_stored_config",
    "reference_markdown", "is_code_name", "OBJECTIVES", "SAMPLERS", "GUIDES", "SCHEMA",
]

