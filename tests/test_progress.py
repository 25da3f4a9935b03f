"""Progress over the whole file: a tqdm bar on a terminal, lines redrawn in place without tqdm,
plain lines when stderr is not a terminal."""

from __future__ import annotations

import io
import sys

import pytest

from gpuquant import progress as progress_module
from gpuquant.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _drive(p: Progress, sizes: list[int]) -> None:
    for i, n in enumerate(sizes):
        p.tensor_started(i, f"blk.{i}.ffn_up.weight", "F32", "Q4_K")
        p.advance(n)
    p.close()


def test_tqdm_bar_on_a_terminal():
    pytest.importorskip("tqdm")
    stream = Terminal()
    p = Progress(3_000_000, 3, stream)
    p.warn("a note")
    _drive(p, [1_000_000] * 3)
    text = stream.getvalue()
    last = text.split("\r")[-1]
    assert "warning: a note" in text
    # bytes done of the whole file, the rate, the time left, the tensor count and name
    assert "100%" in last and "3.00M/3.00M" in last and "B/s" in last and "<00:00" in last
    assert last.startswith("[3/3]") and "blk.2.ffn_up.weight F32->Q4_K" in last


def test_terminal_without_tqdm_redraws_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    stream = Terminal()
    p = Progress(3_000_000, 3, stream)
    assert p._bar is None
    _drive(p, [1_000_000] * 3)
    text = stream.getvalue()
    assert "\r\033[K" in text and text.endswith("\n")
    final = text.split("\r\033[K")[-1]
    assert "[   3/3] 100%" in final and "GB/s" in final and "00:00 left" in final


def test_plain_lines_when_not_a_terminal(monkeypatch):
    clock = iter(range(0, 1000, 3))  # 3 s between reads: every advance draws
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: float(next(clock)))
    stream = io.StringIO()
    p = Progress(4_000_000, 4, stream)
    _drive(p, [1_000_000] * 4)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 4
    assert lines[1].startswith("[   2/4]  50%") and "left" in lines[1]
    assert lines[-1].startswith("[   4/4] 100%") and "00:00 left" in lines[-1]
