"""Progress on stderr: tensor i/n, bytes done, rate; redrawn in place on a terminal, throttled otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total_bytes: int, n_tensors: int, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total_bytes = max(1, total_bytes)
        self.n_tensors = n_tensors
        self.done_bytes = 0
        self.start = time.perf_counter()
        self._label = ""
        self._index = 0
        self._last_draw = 0.0
        self._tty = self.stream.isatty()
        self._interval = 0.1 if self._tty else 2.0

    def warn(self, message: str) -> None:
        if self._tty:
            self.stream.write("\r\033[K")
        print(f"warning: {message}", file=self.stream)

    def tensor_started(self, index: int, name: str, src: str, dst: str) -> None:
        self._index, self._label = index, f"{name} {src}->{dst}"

    def advance(self, n_bytes: int) -> None:
        """Counts input bytes done (a chunk, or a whole tensor) and redraws at most every interval."""
        self.done_bytes += n_bytes
        last = self._index + 1 == self.n_tensors and self.done_bytes >= self.total_bytes
        now = time.perf_counter()
        if not last and now - self._last_draw < self._interval:
            return
        self._last_draw = now
        rate = self.done_bytes / 1e9 / max(now - self.start, 1e-9)
        line = (
            f"[{self._index + 1:>4}/{self.n_tensors}] {self.done_bytes / 1e6:9.1f}/{self.total_bytes / 1e6:.1f} MB "
            f"{rate:6.2f} GB/s  {self._label}"
        )
        if self._tty:
            self.stream.write("\r\033[K" + line[:160] + ("\n" if last else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
