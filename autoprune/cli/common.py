"""What several subcommands share: the CONFIG argument, reading it, budgets and number lists typed on the command
line, SIGTERM as Ctrl-C, output directories that must be writable."""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from ..config import SearchConfig, load_config

__all__ = ["add_config", "read_config", "parse_budget", "parse_floats", "output_path", "logger",
           "sigterm_to_keyboard_interrupt", "sigterm_as_keyboard_interrupt", "check_writable_dir"]

CONFIG_HELP = "config file (YAML; the schema of `autoprune search`, docs/search.md), e.g. search_spaces/quickstart.yaml"


def add_config(p: argparse.ArgumentParser) -> None:
    """The positional CONFIG and ``--device`` (overrides the config's ``device``)."""
    p.add_argument("config", metavar="CONFIG", help=CONFIG_HELP)
    p.add_argument("--device", help="device for data and model (default: the config's, else cuda when available)")


def read_config(args: argparse.Namespace) -> SearchConfig:
    return load_config(args.config, device=getattr(args, "device", None))


def output_path(cfg: SearchConfig, given: str | None, default: str) -> Path:
    """``given``, else ``<run_dir>/<default>``."""
    return Path(given) if given else cfg.run_path / default


def parse_budget(text: str | None) -> float | int | None:
    """``"0.5"`` / ``"50%"`` -> 0.5 (fraction to keep); ``"62000000"`` / ``"62M"`` / ``"1.5G"`` -> absolute count."""
    if text is None:
        return None
    s = str(text).strip()
    mult = {"k": 10**3, "m": 10**6, "g": 10**9}
    try:
        if s.endswith("%"):
            return float(s[:-1]) / 100.0
        if s and s[-1].lower() in mult:
            return int(round(float(s[:-1]) * mult[s[-1].lower()]))
        try:
            return int(s)
        except ValueError:
            return float(s)
    except ValueError:
        raise ValueError(f"budget {text!r}: expected a fraction to keep (0.5, 50%) or a count (62M, 1.5G, 62000000)") \
            from None


def parse_floats(text: str | None, what: str) -> list[float] | None:
    """``"0.3,0.5,0.7"`` -> [0.3, 0.5, 0.7]."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated numbers such as 0.3,0.5,0.7, got {text!r}") from None


def logger(quiet: bool) -> Callable[[str], None]:
    return (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr))


def sigterm_to_keyboard_interrupt() -> Any:
    """SIGTERM (``kill``, Kubernetes pod shutdown, a batch scheduler's time limit) behaves like Ctrl-C: a search's
    running trial is failed and re-enqueued, and the command exits with status 130. Returns the previous handler
    (None outside the main thread, where Python runs no signal handlers and nothing is changed)."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


@contextlib.contextmanager
def sigterm_as_keyboard_interrupt() -> Iterator[None]:
    """:func:`sigterm_to_keyboard_interrupt` for the duration of the block; the previous handler is put back after
    (``autoprune.cli.main`` called in a longer-lived process: a test, a notebook)."""
    previous = sigterm_to_keyboard_interrupt()
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def check_writable_dir(path: str | os.PathLike, option: str) -> None:
    """Raise a ``PermissionError`` naming ``path`` and ``option`` (the option that chooses another place) when the
    directory ``path`` cannot be created or written here (a read-only file system or missing permission)."""
    p = Path(path)
    d = next((q for q in [p, *p.parents] if q.exists()), None)
    if d is not None and (not d.is_dir() or not os.access(d, os.W_OK | os.X_OK)):
        why = "not a directory" if not d.is_dir() else "not writable here (a read-only file system, or no permission)"
        raise PermissionError(f"cannot write to {p}: {d} is {why}; give {option} DIR, a directory you can write")
