"""The keys of the config schema: names, errors, one :func:`key` per field, and the checks of the values.

Each check ``c_*(value, where, ctx) -> value`` normalises one value or raises :class:`ConfigError` naming the key
(``where``); the ``as_*`` helpers are the shared type and range checks. The dataclasses that use them are in
:mod:`autoprune.config.schema`.
"""
from __future__ import annotations

import copy
import difflib
import inspect
import math
import os
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..allocation.sensitivity_analysis import sensitivity
from ..criteria import available_criteria
from ..data.loading import DATA_OPTIONS
from ..data.sources import DATASETS
from ..train.loop import SCHEDULES

__all__ = ["OBJECTIVES", "SAMPLERS", "GUIDES", "MODES", "ConfigError", "UntrustedConfigError", "is_code_name", "Ctx",
           "Check", "key"]


OBJECTIVES = ("accuracy", "macs", "params", "latency")
SAMPLERS = ("nsga2", "tpe")
GUIDES = ("sensitivity", "srr", "uniform")
MODES = ("guided", "per_group")


class ConfigError(ValueError):
    """An invalid configuration; the message names the key (and the file, when read from one)."""


class UntrustedConfigError(ConfigError):
    """A config read from a study's storage names code (``model.name: module:function``); only the user's own
    config file may (see :meth:`SearchConfig.check_code_allowed`)."""


def is_code_name(name: str) -> bool:
    """Whether a ``model.name`` names code of the user's (``module:function``, imported and called) rather than a
    registered model (a package model, ``torchvision:NAME``, ``timm:NAME`` or a bare torchvision name)."""
    return ":" in name and not name.startswith(("torchvision:", "timm:"))


# ------------------------------------------------------------------------------------------------------------
# one key = one field: its default, its documentation and its check


@dataclass
class Ctx:
    """What a check may need: the config file's folder (relative input paths) and the keys parsed before it."""

    base: Path | None
    values: dict[str, Any]


Check = Callable[[Any, str, Ctx], Any]


def key(default: Any = MISSING, doc: str = "", check: Check | None = None, *, shown: str | None = None,
         section: type | None = None) -> Any:
    """A config key: ``default`` (MISSING = required; a list, dict or section class is copied per instance),
    ``doc`` (markdown, for docs/search.md), ``check(value, where, ctx) -> value`` (raises ConfigError), ``shown``
    (how the default reads in the reference when it is computed), ``section`` (a nested section's dataclass)."""
    md = {"doc": doc, "check": check, "shown": shown, "section": section}
    if default is MISSING:
        return field(metadata=md)
    if isinstance(default, type):
        return field(default_factory=default, metadata=md)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=md)
    return field(default=default, metadata=md)


# -- checks (each returns the normalised value) ----------------------------------------------------------------


def c_int(lo: int | None = None) -> Check:
    return lambda v, where, ctx: as_int(v, where, lo=lo)


def c_float(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Check:
    return lambda v, where, ctx: as_float(v, where, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)


def c_str(choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None) -> Check:
    return lambda v, where, ctx: as_str(v, where, choices=choices() if callable(choices) else choices)


def c_bool(v: Any, where: str, ctx: Ctx) -> bool:
    return as_bool(v, where)


def c_bounds(v: Any, where: str, ctx: Ctx) -> list[float]:
    return as_bounds(v, where)


def c_mapping(v: Any, where: str, ctx: Ctx) -> dict:
    if not isinstance(v, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {show(v)}")
    return dict(v)


def c_input_path(v: Any, where: str, ctx: Ctx) -> str:
    return resolve_input_path(as_str(v, where), ctx.base)  # type: ignore[return-value]


def c_expanded(v: Any, where: str, ctx: Ctx) -> str:
    return os.path.expanduser(os.path.expandvars(as_str(v, where)))  # type: ignore[arg-type]


def c_input_shape(v: Any, where: str, ctx: Ctx) -> list[int]:
    if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in v):
        raise ConfigError(f"{where}: expected [C, H, W] (three positive integers), got {show(v)}")
    return [int(s) for s in v]


def c_image_size(v: Any, where: str, ctx: Ctx) -> list[int]:
    size = [v, v] if isinstance(v, int) and not isinstance(v, bool) else v
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ConfigError(f"{where}: expected an integer or [H, W], got {show(v)}")
    return [int(s) for s in size]


def dataset_names() -> tuple[str, ...]:
    return tuple(DATASETS)


def schedule_names() -> tuple[str, ...]:
    return tuple(SCHEDULES)


def c_data_options(v: Any, where: str, ctx: Ctx) -> dict:
    opts = c_mapping(v, where, ctx)
    ds = ctx.values.get("dataset")
    accepted = sorted(DATA_OPTIONS.get(ds, ()))
    for k in opts:
        if k not in accepted:
            close = difflib.get_close_matches(str(k), accepted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {k!r} in {where} for dataset {ds}{hint} (accepted: {', '.join(accepted)})")
    return opts


def c_criteria(v: Any, where: str, ctx: Ctx) -> list[str]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError(f"{where}: expected a criterion name or a non-empty list of names, got {show(v)}")
    known = tuple(available_criteria())
    out: list[str] = []
    for i, c in enumerate(items):
        as_str(c, f"{where}[{i}]", choices=known)
        if c in out:
            raise ConfigError(f"{where}: {c!r} is listed twice")
        out.append(c)
    return out


def c_objectives(v: Any, where: str, ctx: Ctx) -> list[str]:
    want = {"accuracy": "max", "macs": "min", "params": "min", "latency": "min"}
    if isinstance(v, Mapping):
        for k, d in v.items():
            as_str(k, where, choices=OBJECTIVES)
            if d not in (want[k], want[k] + "imize"):
                raise ConfigError(f"{where}.{k}: {k} is always {want[k]}imised, got {d!r}")
        items = list(v)
    elif isinstance(v, (list, tuple)):
        items = list(v)
    else:
        raise ConfigError(f"{where}: expected a list such as [accuracy, macs], got {show(v)}")
    for i, o in enumerate(items):
        as_str(o, f"{where}[{i}]", choices=OBJECTIVES)
    if len(set(items)) != len(items):
        raise ConfigError(f"{where}: duplicates in {items}")
    if "accuracy" not in items or len(items) < 2:
        raise ConfigError(f"{where}: need accuracy and at least one of macs, params, latency; got {items}")
    return sorted(items, key=OBJECTIVES.index)


def c_level(v: Any, where: str, ctx: Ctx) -> list[float]:
    lv = [v, v] if is_num(v) else v
    if not isinstance(lv, (list, tuple)) or len(lv) != 2 or not all(is_num(x) for x in lv):
        raise ConfigError(f"{where}: expected [low, high] (fractions of MACs kept), got {show(v)}")
    lo, hi = float(lv[0]), float(lv[1])
    if not (0.0 < lo <= hi <= 1.0):
        raise ConfigError(f"{where}: must satisfy 0 < low <= high <= 1 (fraction of MACs kept), got [{lv[0]}, {lv[1]}]")
    return [lo, hi]


def c_groups(v: Any, where: str, ctx: Ctx) -> dict[str, list[float]]:
    if not isinstance(v, Mapping):
        raise ConfigError(f"{where}: expected a mapping {{pattern: [low, high]}}, got {show(v)}")
    out = {}
    for pat, b in v.items():
        if not isinstance(pat, str) or not pat:
            raise ConfigError(f"{where}: patterns must be non-empty strings, got {pat!r}")
        out[pat] = as_bounds(b, f"{where}[{pat!r}]")
    return out


def c_sensitivity(v: Any, where: str, ctx: Ctx) -> dict:
    if not isinstance(v, Mapping):
        raise ConfigError(f"{where}: expected a mapping of options of "
                          f"autoprune.allocation.sensitivity_analysis.sensitivity, got {show(v)}")
    accepted = [p for p in inspect.signature(sensitivity).parameters
                if p not in ("model", "data", "example_inputs", "graph")]
    for k in v:
        if k not in accepted:
            close = difflib.get_close_matches(str(k), accepted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; accepted: {', '.join(accepted)}"
            raise ConfigError(f"unknown key {k!r} in {where}{hint}")
    return dict(v)


def c_name(v: Any, where: str, ctx: Ctx) -> str:
    """A search's name is a folder of ``runs/``: one plain file-name-like word, never a path (``../x``, ``/x``)."""
    s: str = as_str(v, where)  # type: ignore[assignment]
    bad = [c for c in ("/", "\\", ":") if c in s]
    if bad or not s.strip(".") or s != s.strip() or not s.isprintable() or os.path.isabs(s):
        why = (f"it contains {bad[0]!r}" if bad else "it is only dots" if not s.strip(".") else
               "it starts or ends with a space" if s != s.strip() else "it holds a control character")
        raise ConfigError(f"{where}: {s!r} is not a plain name ({why}): the run directory is runs/<name>, so a name "
                          "with path separators, '..' or an absolute path would put it outside the working directory. "
                          "Use one word such as 'resnet56-search' (letters, digits, '-', '_', '.'; the default is the "
                          "config file's stem), and set run_dir: PATH for a run directory elsewhere")
    return s


def c_sampler_name(v: Any, where: str, ctx: Ctx) -> str:
    name = str(v).lower().replace("-", "").replace("_", "")
    return as_str({"nsgaii": "nsga2"}.get(name, name), where, choices=SAMPLERS)  # type: ignore[return-value]


def c_rungs(v: Any, where: str, ctx: Ctx) -> list[float]:
    if not isinstance(v, (list, tuple)) or not v or not all(is_num(x) and 0.0 <= x < 1.0 for x in v):
        raise ConfigError(f"{where}: expected a non-empty list of fractions of the fine-tuning budget in [0, 1) "
                          f"(e.g. [0, 0.33]: after BatchNorm re-estimation and after a third), got {show(v)}")
    return sorted({float(x) for x in v})


# -- value helpers ----------------------------------------------------------------------------------------


def show(v: Any) -> str:
    return f"{v!r} ({type(v).__name__})"


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def as_int(v: Any, where: str, *, lo: int | None = None, optional: bool = False) -> int | None:
    if v is None and optional:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise ConfigError(f"{where}: expected an integer, got {show(v)}")
    if lo is not None and v < lo:
        raise ConfigError(f"{where}: must be >= {lo}, got {v}")
    return int(v)


def as_float(v: Any, where: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, optional: bool = False) -> float | None:
    if v is None and optional:
        return None
    if not is_num(v) or math.isnan(v):
        raise ConfigError(f"{where}: expected a number, got {show(v)}")
    v = float(v)
    bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
    bad_hi = hi is not None and (v >= hi if hi_open else v > hi)
    if bad_lo or bad_hi:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ConfigError(f"{where}: must be in {lb}{lo if lo is not None else '-inf'}, "
                          f"{hi if hi is not None else 'inf'}{rb}, got {v}")
    return v


def as_str(v: Any, where: str, *, optional: bool = False, choices: tuple[str, ...] | None = None) -> str | None:
    if v is None and optional:
        return None
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{where}: expected a non-empty string, got {show(v)}")
    if choices is not None and v not in choices:
        close = difflib.get_close_matches(v, choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where}: {v!r} is not one of {', '.join(choices)}{hint}")
    return v


def as_bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{where}: expected true or false, got {show(v)}")
    return v


def as_bounds(v: Any, where: str) -> list[float]:
    if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(is_num(x) for x in v):
        raise ConfigError(f"{where}: expected bounds [low, high] (two numbers), got {show(v)}")
    lo, hi = float(v[0]), float(v[1])
    if not (0.0 <= lo <= hi < 1.0):
        raise ConfigError(f"{where}: bounds must satisfy 0 <= low <= high < 1 (a ratio is the fraction of a group's "
                          f"channels removed), got [{v[0]}, {v[1]}]")
    return [lo, hi]


def resolve_input_path(p: str | None, base: Path | None) -> str | None:
    """An input file/directory: absolute, else relative to the config file's directory if it exists there, else
    relative to the working directory. ``~`` and ``$VARS`` are expanded."""
    if p is None:
        return None
    s = os.path.expanduser(os.path.expandvars(str(p)))
    path = Path(s)
    if path.is_absolute():
        return str(path)
    if base is not None and (base / path).exists():
        return str((base / path).resolve())
    return str(path.resolve())
