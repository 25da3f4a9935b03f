"""500 seeded damaged GGUF files (tests/fuzz_gguf.py; `make fuzz` runs 100,000): each ends in a
readable output or a one-line error, with no traceback, within 10 s, and the fuzzing process
stays under 1 GB of memory (its own process, so that the suite's memory does not count)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_damaged_files_end_cleanly():
    script = Path(__file__).parent / "fuzz_gguf.py"
    p = subprocess.run([sys.executable, str(script), "500"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and p.stdout.strip().endswith("500 passed, 0 failed"), p.stdout[-3000:] + p.stderr[-3000:]
