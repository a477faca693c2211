"""The ``autoprune`` command line: every subcommand is registered here, explicitly; ``autoprune SUBCOMMAND --help``
documents each. The CLI parses, calls the library and prints; the work is done by the library.

A user error (a bad config key, a missing or truncated file, a model that does not fit its data, a full disk...) is
printed as one paragraph naming the file or key and the fix, with exit status 2; ``--debug`` shows the traceback
instead. Output piped into a command that stops reading (``autoprune pareto ... | head``) ends quietly, with the
status of a process killed by SIGPIPE (141).
"""
from __future__ import annotations

import argparse
import os
import select
import sys
from typing import Any, Sequence

from .._files import disk_full_in
from .._version import __version__
from ..graph import PruneError, TraceError
from . import budget, criteria, distributed, inspection, search

__all__ = ["main", "build_parser", "USER_ERRORS"]


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser: options may sit between positionals (``autoprune export CONFIG --trial 3 OUT``), and
    every subcommand takes ``--debug``.

    argparse's plain parsing fills all positionals from the first run of them, so ``CONFIG --trial 3 OUT`` would
    leave OUT unrecognised; ``parse_known_intermixed_args`` (public argparse API) collects positionals across the
    options. It calls ``parse_known_args`` itself, hence the re-entry guard.
    """

    _intermixing = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="show the full traceback of an error")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoprune", description="Find how many channels each layer of a "
                                     "trained CNN can lose: channel analysis, pruning, sensitivity and search. "
                                     "Every CONFIG is a YAML file of the schema in docs/search.md.")
    parser.add_argument("--version", action="version", version=f"autoprune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_SubcommandParser)
    search.add_subcommands(sub)        # search, pareto, report, export, dashboard
    distributed.add_subcommands(sub)   # worker (search builds its own --backend ray options)
    budget.add_subcommands(sub)        # sensitivity, prune
    criteria.add_subcommands(sub)      # compare-criteria
    inspection.add_subcommands(sub)    # groups, macs
    return parser


#: Errors that mean bad input, not a bug: ConfigError and other ValueErrors, missing files and modules, models that
#: cannot be traced or pruned (the message names the line).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError, KeyError, TraceError, PruneError)


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    elif (isinstance(exc, OSError) and type(exc).__str__ is OSError.__str__ and exc.filename and exc.strerror
          and exc.filename2 is None):
        text = f"{exc.filename}: {exc.strerror}"  # (not "[Errno 2] No such file or directory: '...'")
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())  # one paragraph


def _stdout_closed() -> bool:
    """Whether the reader of standard output went away (the far end of a pipe closed: POLLERR/POLLHUP)."""
    try:
        fd = sys.__stdout__.fileno() if sys.__stdout__ is not None else 1
        poller = select.poll()
        poller.register(fd, 0)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, ValueError, OSError):  # no poll (Windows), no file descriptor
        return True


def _quiet_stdout() -> None:
    """Point standard output at /dev/null, so that the interpreter's final flush does not fail again (the recipe
    of the Python docs' signal module, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno() if sys.__stdout__ is not None else 1)
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = getattr(args, "debug", False)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # (a closed pipe shows here, not at exit)
        return code
    except BrokenPipeError as exc:
        if _stdout_closed():
            _quiet_stdout()
            return 141  # as a shell reports a process killed by SIGPIPE
        if debug:  # another pipe or socket: an error like any other
            raise
        return _user_error(args, exc)
    except USER_ERRORS as exc:
        if debug:
            raise
        return _user_error(args, disk_full_in(exc) or exc)
    except Exception as exc:  # a full disk under an error of Optuna's or torch's (torch.save, a journal write)
        full = disk_full_in(exc)
        if full is None or debug:
            raise
        return _user_error(args, full)


def _user_error(args: argparse.Namespace, exc: BaseException) -> int:
    print(f"autoprune {args.command}: error: {_message(exc)} (--debug shows the traceback)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
