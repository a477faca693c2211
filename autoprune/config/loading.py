"""Reading a config: one generic walk over the schema's dataclasses (:func:`load_config`), the rules that tie keys
of a section together, a config read from a study's storage (:func:`load_stored_config`), and the key reference of
docs/search.md (:func:`reference_markdown`).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
from dataclasses import MISSING
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from .keys import ConfigError, Ctx, show
from .schema import GUIDED_ONLY, SCHEMA, SECTIONS, DataSpec, ModelSpec, RatioSpec, SearchConfig, schema_keys

__all__ = ["load_config", "load_stored_config", "reference_markdown"]


# ------------------------------------------------------------------------------------------------------------
# parsing: one generic walk over the dataclasses, plus the rules that tie keys of a section together


def _where(section: str, key: str | None = None) -> str:
    if key is None:
        return section or "top level"
    return f"{section}.{key}" if section else key


def _check_keys(d: Mapping[str, Any], section: str) -> None:
    allowed = SCHEMA[section]
    for k in d:
        if not isinstance(k, str):
            raise ConfigError(f"{_where(section)}: keys must be strings, got {k!r}")
        if k not in allowed:
            close = difflib.get_close_matches(k, list(allowed), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed keys: {', '.join(allowed)}"
            raise ConfigError(f"unknown key {k!r} in {_where(section) if section else 'the top level'}{hint}")


def _section(raw: Any, section: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{section}: expected a mapping (section), got {show(raw)}")
    _check_keys(raw, section)
    return dict(raw)


def _required(f: dataclasses.Field) -> bool:
    return f.default is MISSING and f.default_factory is MISSING  # type: ignore[misc]


def _parse(cls: type, raw: Any, section: str, base: Path | None) -> Any:
    shorthand = getattr(cls, "shorthand", None)
    if isinstance(raw, str) and shorthand:
        raw = {shorthand: raw}
    switch = getattr(cls, "switch", None)
    if isinstance(raw, bool) and switch:  # `early_stopping: true` = `{enabled: true}`
        raw = {switch: raw}
    d = _section(raw, section)
    values: dict[str, Any] = {}
    for f in schema_keys(cls):
        where = _where(section, f.name)
        if f.name not in d:
            if _required(f):
                raise ConfigError(f"{where} is required: {f.metadata['doc']}")
            continue
        v = d[f.name]
        if v is None and f.default is None:
            values[f.name] = None
        elif f.metadata["section"] is not None:
            values[f.name] = _parse(f.metadata["section"], v, where, base)
        else:
            values[f.name] = f.metadata["check"](v, where, Ctx(base, values))
    obj = cls(**values)
    rule = _RULES.get(cls)
    if rule is not None:
        rule(obj, d)
    return obj


def _rule_model(m: ModelSpec, given: Mapping[str, Any]) -> None:
    if m.weights is not None and m.pretrain is not None:
        raise ConfigError("model: give either weights or pretrain, not both")


def _rule_data(d: DataSpec, given: Mapping[str, Any]) -> None:
    if d.dataset == "imagefolder" and d.root is None:
        raise ConfigError("data.root is required for dataset imagefolder (a directory with train/ and test/)")


def _rule_ratios(r: RatioSpec, given: Mapping[str, Any]) -> None:
    guided_only = [k for k in GUIDED_ONLY if k in given]
    if r.mode == "per_group" and guided_only:
        raise ConfigError(f"ratios.{guided_only[0]} only applies to mode: guided (mode is per_group)")
    if r.sensitivity and r.guide != "sensitivity":
        raise ConfigError(f"ratios.sensitivity only applies to guide: sensitivity (guide is {r.guide})")


_RULES: dict[type, Callable[[Any, Mapping[str, Any]], None]] = {
    ModelSpec: _rule_model, DataSpec: _rule_data, RatioSpec: _rule_ratios}


# ------------------------------------------------------------------------------------------------------------
# public


def load_config(src: str | os.PathLike | Mapping[str, Any] | SearchConfig, **overrides: Any) -> SearchConfig:
    """Read and validate a config: a YAML file path, a dict with the same keys, or a config (a
    :class:`SearchConfig` is already valid: without overrides it is returned as it is, not validated again).

    ``overrides`` replace top-level keys after reading (``n_trials=5``, ``storage=...``, ``study_name=...``,
    ``device=...``); ``None`` values are ignored. Relative input paths (``model.weights``, ``data.root``) are looked
    up next to the YAML file first, then in the working directory; outputs (``run_dir``, a journal ``storage``
    path) are relative to the working directory. Errors name the file (when there is one) and the key.
    """
    if isinstance(src, SearchConfig) and all(v is None for v in overrides.values()):
        return src  # validated when it was made: a command loads its config once and passes this object down
    if isinstance(src, SearchConfig):
        raw: Any = src.to_dict()
        base, source = (Path(src.source).parent if src.source else None), src.source
    elif isinstance(src, Mapping):
        raw, base, source = copy.deepcopy(dict(src)), None, None
    else:
        path = Path(os.fspath(src))
        if not path.exists():
            raise FileNotFoundError(f"config file {str(path)!r} not found (a YAML file such as "
                                    "search_spaces/quickstart.yaml)")
        if path.is_dir():
            found = sorted(q.name for q in path.iterdir() if q.suffix in (".yaml", ".yml"))
            which = (f"one of its YAML files ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''})" if found
                     else "the YAML file (e.g. search_spaces/quickstart.yaml)")
            raise ConfigError(f"config path {str(path)!r} is a directory; give {which}")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if raw is None:
            raw = {}
        base, source = path.resolve().parent, str(path)
        if isinstance(raw, Mapping):
            raw = dict(raw)
            raw.setdefault("name", path.stem)
    try:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a config is a mapping of keys, got {show(raw)}")
        raw = dict(raw)
        for k, v in overrides.items():
            if v is not None:
                raw[k] = v
        cfg = _parse(SearchConfig, raw, "", base)
        cfg.source = source
        if isinstance(src, SearchConfig):  # a config read from a study's storage stays untrusted when re-read
            cfg.trusted, cfg.origin = src.trusted, src.origin
        r, c = cfg.ratios, cfg.constraints
        if r.mode == "guided":
            if r.level is None:
                hi = c.max_macs if c.max_macs is not None else 0.9
                r.level = [min(0.2, hi), hi]
            if c.max_macs is not None and r.level[0] > c.max_macs + 1e-12:
                raise ConfigError(f"constraints.max_macs={c.max_macs} cannot be met by any guided allocation: "
                                  f"ratios.level {r.level} keeps at least {r.level[0]:.0%} of the MACs; lower "
                                  f"ratios.level or relax the budget")
        if cfg.early_stopping.enabled and cfg.finetune.epochs == 0:
            raise ConfigError("early_stopping needs fine-tuning to stop: finetune.epochs is 0 (set it to 1 or more, "
                              "or early_stopping: false)")
    except ConfigError as e:
        if source is None or str(e).startswith(f"{source}: "):
            raise
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def load_stored_config(raw: Any, *, origin: str) -> SearchConfig:
    """A config read from a study's storage (what ``autoprune search`` stored in the study's user attributes), for
    reading the study without the config file: validated like any other, but **untrusted** -- anyone who can write
    to a shared database may have written it. ``origin`` says where it was read (it opens the error messages).

    * it never names code: ``model.name: module:function`` is refused when a model is built
      (:meth:`SearchConfig.check_code_allowed`: the user passes their own config file instead);
    * the paths it would write to stay under the working directory: a ``run_dir`` outside it is replaced by
      ``runs/<name>``, a ``data.cache_dir`` or ``ratios.sensitivity`` ``cache_dir`` outside it by the default cache,
      and a CIFAR ``data.root`` outside it is read but never downloaded into.

    Inputs it reads (``model.weights``, ``data.root``) are read as data only (``torch.load(weights_only=True)``).
    """
    cfg = load_config(raw)
    cfg.source = None  # (a stored source path would only tell where to import code from)
    cfg.trusted, cfg.origin = False, origin
    cwd = Path.cwd().resolve()

    def outside(p: Any) -> bool:
        return not Path(os.path.expanduser(str(p))).resolve().is_relative_to(cwd)

    # (silently: `pareto --storage` writes nothing, and `report` prints where it writes; docs/distributed.md)
    if cfg.run_dir is not None and outside(cfg.run_dir):
        cfg.run_dir = None  # runs/<name>: the name is a plain word (c_name)
    if cfg.data.cache_dir is not None and outside(cfg.data.cache_dir):
        cfg.data.cache_dir = None  # the user's own default cache
    sens_cache = cfg.ratios.sensitivity.get("cache_dir")
    if isinstance(sens_cache, (str, os.PathLike)) and outside(sens_cache):
        cfg.ratios.sensitivity.pop("cache_dir")
    if cfg.data.dataset in ("cifar10", "cifar100") and cfg.data.root is not None and outside(cfg.data.root):
        cfg.data.options["download"] = False  # read what is there, never download into it
    return cfg


def _shown_default(f: dataclasses.Field) -> str:
    md = f.metadata
    if md.get("shown"):
        return md["shown"]
    if md.get("section") is not None:
        return "required section" if _required(f) else "section"
    if _required(f):
        return "required"
    v = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    if isinstance(v, (list, dict, str, int, float)):
        return f"`{json.dumps(v).replace(chr(34), '')}`"
    return str(v)


def reference_markdown() -> str:
    """The key reference of docs/search.md (one table per section), generated from the dataclasses."""
    out = []
    for sec, cls in SECTIONS.items():
        title = "top level" if not sec else f"`{sec}`"
        intro = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split()) if sec else \
            "Sections are the keys whose default says *section*."
        lines = [f"### {title}", "", intro, "",
                 "| key | default | meaning |", "|---|---|---|"]
        for f in schema_keys(cls):
            lines.append(f"| `{f.name}` | {_shown_default(f)} | {f.metadata['doc']} |")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"
