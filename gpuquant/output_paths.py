"""Checks on a file about to be written (a model, a report), made before any work is done."""

from __future__ import annotations

import os
from pathlib import Path


def same_file(a: Path, b: Path) -> bool:
    """Whether a and b name one file (the same path, or links to it)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_new_file(path: Path, what: str) -> None:
    """A one-line ValueError unless `path` can be written: not a directory, in a writable directory."""
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(f"{what} directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what} directory {parent} is not writable")
