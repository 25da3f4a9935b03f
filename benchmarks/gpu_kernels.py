"""Kernel-only throughput of the CuPy backend: GB/s of float32 input per type, timed with CUDA events
on arrays already on the device (no host copies), with and without an importance matrix.

    python benchmarks/gpu_kernels.py [--rows 16384] [--cols 8192] [--repeats 10] [--seconds 1.0]
                                     [--types Q4_0,Q8_0]

Each measurement is the mean of up to --repeats runs, fewer when they would take more than
--seconds (the slow search kernels), so the whole table takes a bounded time. Prints one table;
exits 0 with a message where there is no cupy or CUDA device.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpuquant.backends import cupy_available  # noqa: E402
from gpuquant.backends.cupy import _FAMILIES  # noqa: E402
from gpuquant.qtypes import resolve  # noqa: E402

# Every type the CuPy backend has but F32 (a copy); those that use an imatrix are timed with one too.
TYPES = tuple(name for name in _FAMILIES if name != "F32")
WEIGHTED = tuple(name for name in TYPES if resolve(name).imatrix_use != "ignored")


def _time_ms(fn, fn_args: tuple, repeats: int, budget_s: float) -> float:
    """Mean milliseconds of fn(*fn_args) on the current stream: up to `repeats` runs, as many as fit
    in `budget_s` seconds after a first timed one."""
    import cupy

    fn(*fn_args)  # compile, load and warm up outside the timing

    def timed(n: int) -> float:
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(n):
            fn(*fn_args)
        stop.record()
        stop.synchronize()
        return cupy.cuda.get_elapsed_time(start, stop) / n

    first = timed(1)
    more = min(repeats - 1, int(budget_s * 1e3 / max(first, 1e-3)))
    return first if more < 1 else timed(more)


def _device_name() -> str:
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--cols", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=1.0, help="time budget of one measurement")
    parser.add_argument("--types", default=",".join(TYPES))
    args = parser.parse_args(argv)
    if not cupy_available():
        print("gpu_kernels: skipped, needs cupy and a CUDA device")
        return 0

    import cupy

    from gpuquant.backends.cupy import CupyBackend

    backend = CupyBackend()
    stream = cupy.cuda.get_current_stream()
    x = cupy.random.standard_normal((args.rows, args.cols), dtype=cupy.float32) * np.float32(0.02)
    imatrix = cupy.random.random(args.cols, dtype=cupy.float32)
    y = cupy.empty_like(x)
    print(f"{_device_name()}: {args.rows} x {args.cols} float32 ({x.nbytes / 2**20:.0f} MiB), "
          f"mean of up to {args.repeats} runs ({args.seconds} s each at most)", flush=True)
    print(f"{'type':<6} {'imatrix':<8} {'quantize ms':>12} {'GB/s in':>9} {'dequantize ms':>14} {'GB/s out':>9}")
    for name in args.types.split(","):
        t = resolve(name)
        out = cupy.empty(args.rows * t.row_bytes(args.cols), dtype=cupy.uint8)
        dequant_ms = None
        for im in (None, imatrix) if t.name in WEIGHTED else (None,):
            ms = _time_ms(backend.quantize_device, (x, t, im, out, stream), args.repeats, args.seconds)
            if dequant_ms is None:
                dequant_ms = _time_ms(backend.dequantize_device, (out, t, args.cols, y, stream), args.repeats,
                                      args.seconds)
            print(f"{t.name:<6} {'yes' if im is not None else 'no':<8} {ms:12.3f} {x.nbytes / ms / 1e6:9.0f} "
                  f"{dequant_ms:14.3f} {y.nbytes / dequant_ms / 1e6:9.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
