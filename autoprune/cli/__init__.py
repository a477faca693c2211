"""The ``autoprune`` command line: argument parsing and printing only; the work is done by the library."""
from .main import build_parser, main

__all__ = ["main", "build_parser"]
