"""Files the runs write (a model, a report, a manifest): the checks made before any work is done,
text written whole or not at all, and a file's digest."""

from __future__ import annotations

import hashlib
import os
import tempfile
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


def write_text_atomic(path: Path, text: str) -> None:
    """`text` at `path`, whole or not at all: a temporary file beside it, renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would be stricter than any file the user writes
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    """The file's SHA-256, hex, read in 16 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()
