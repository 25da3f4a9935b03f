"""500 seeded damaged GGUF files (tests/fuzz_gguf.py; `make fuzz` runs 100,000): each ends in a
readable output or a one-line error, with no traceback, within 10 s, under 1 GB of memory."""

from __future__ import annotations

from fuzz_gguf import fuzz


def test_damaged_files_end_cleanly(tmp_path):
    failures = fuzz(500, 0, tmp_path)
    assert not failures, "\n".join(failures[:20])
