"""Progress on stderr over the whole file: bytes done, rate and time left.

On a terminal a tqdm bar (the optional extra gpuquant[progress]), or without tqdm one line
redrawn in place; when stderr is not a terminal, plain lines every few seconds.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, total_bytes: int, n_tensors: int, stream: TextIO | None = None,
                 use_tqdm: bool = True) -> None:
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
        self._bar = self._tqdm() if self._tty and use_tqdm else None

    def _tqdm(self):
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        # a terminal that reports no width (a pty without a size) would get an empty bar
        width, height = shutil.get_terminal_size((0, 0))
        return tqdm(total=self.total_bytes, unit="B", unit_scale=True, unit_divisor=1000, file=self.stream,
                    dynamic_ncols=width > 0, ncols=None if width > 0 else 120, nrows=None if height > 0 else 24,
                    mininterval=0.1,
                    smoothing=0.05, leave=True,
                    bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                               "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")

    def warn(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(f"warning: {message}", file=self.stream)
            return
        if self._tty:
            self.stream.write("\r\033[K")
        print(f"warning: {message}", file=self.stream)

    def tensor_started(self, index: int, name: str, src: str, dst: str) -> None:
        self._index, self._label = index, f"{name} {src}->{dst}"
        if self._bar is not None:
            self._bar.set_description_str(f"[{index + 1}/{self.n_tensors}]", refresh=False)
            self._bar.set_postfix_str(self._label[:60], refresh=False)

    def advance(self, n_bytes: int) -> None:
        """Counts input bytes done (a chunk, or a whole tensor) and redraws at most every interval."""
        self.done_bytes += n_bytes
        if self._bar is not None:
            self._bar.update(n_bytes)
            return
        last = self._index + 1 == self.n_tensors and self.done_bytes >= self.total_bytes
        now = time.perf_counter()
        if not last and now - self._last_draw < self._interval:
            return
        self._last_draw = now
        elapsed = max(now - self.start, 1e-9)
        rate = self.done_bytes / elapsed
        left = (self.total_bytes - self.done_bytes) / rate if rate > 0 else 0.0
        line = (
            f"[{self._index + 1:>4}/{self.n_tensors}] {100 * self.done_bytes / self.total_bytes:3.0f}% "
            f"{self.done_bytes / 1e6:9.1f}/{self.total_bytes / 1e6:.1f} MB {rate / 1e9:6.2f} GB/s "
            f"{_duration(elapsed)} elapsed, {_duration(left)} left  {self._label}"
        )
        if self._tty:
            self.stream.write("\r\033[K" + line[:160] + ("\n" if last else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
