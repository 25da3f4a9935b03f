"""Kernel-only throughput of the CuPy backend: GB/s of float32 input per type, timed with CUDA events
on arrays already on the device (no host copies), with and without an importance matrix.

    python benchmarks/gpu_kernels.py [--rows 16384] [--cols 8192] [--repeats 10] [--seconds 1.0]
                                     [--types Q4_0,Q8_0]

Each measurement is the mean of up to --repeats runs, fewer when they would take more than
--seconds (the slow search kernels), so the whole table takes a bounded time. Prints one table;
exits 0 with a message where there is no cupy or CUDA device.

Under the CUDA simulator (GPUQUANT_CUDA_SIM=1; `benchmarks/gpu_test.py --simulator` rehearses with
small sizes: --rows 16 --cols 4096 --repeats 1) the same launchers and kernels run on the CPU: the
simulated CuPy has no event timing, so the host clock times each run up to its synchronize, and the
numbers are the simulator's, labelled with the device name "CUDA simulator".
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpuquant.backends import cupy_available  # noqa: E402
from gpuquant.backends.cupy import TYPES as CUPY_TYPES  # noqa: E402
from gpuquant.backends.cupy.device import cupy_module, simulator_enabled  # noqa: E402
from gpuquant.qtypes import resolve  # noqa: E402

# Every type the CuPy backend has but F32 (a copy); those that use an imatrix are timed with one too.
TYPES = tuple(name for name in CUPY_TYPES if name != "F32")
WEIGHTED = tuple(name for name in TYPES if resolve(name).imatrix_use != "ignored")


def _time_ms(fn: Callable[..., None], fn_args: tuple, repeats: int, budget_s: float) -> float:
    """Mean milliseconds of fn(*fn_args) on the current stream: up to `repeats` runs, as many as fit
    in `budget_s` seconds after a first timed one."""
    cupy = cupy_module()
    simulated = simulator_enabled()

    fn(*fn_args)  # compile, load and warm up outside the timing
    if simulated:
        cupy.cuda.get_current_stream().synchronize()  # the warm-up runs at the first wait

    def timed(n: int) -> float:
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        began = time.perf_counter()
        for _ in range(n):
            fn(*fn_args)
        stop.record()
        stop.synchronize()
        if simulated:
            # no event timing in the simulator; its queued launches all run inside synchronize()
            return (time.perf_counter() - began) * 1e3 / n
        return cupy.cuda.get_elapsed_time(start, stop) / n

    first = timed(1)
    more = min(repeats - 1, int(budget_s * 1e3 / max(first, 1e-3)))
    return first if more < 1 else timed(more)


def _device_name() -> str:
    if simulator_enabled():
        return "CUDA simulator"
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def _inputs(rows: int, cols: int) -> tuple:
    """Device float32 weights [rows, cols] (std 0.02) and an imatrix of cols positive values."""
    cupy = cupy_module()
    if simulator_enabled():
        # the simulated CuPy has no cupy.random and no arithmetic: draw on the host, copy over
        rng = np.random.default_rng(0)
        x = (rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)).astype(np.float32)
        return cupy.asarray(x), cupy.asarray(rng.random(cols, dtype=np.float32))
    x = cupy.random.standard_normal((rows, cols), dtype=cupy.float32) * np.float32(0.02)
    return x, cupy.random.random(cols, dtype=cupy.float32)


def _gb_per_s(nbytes: int, ms: float) -> str:
    # whole GB/s on a GPU (the table's usual look); the simulator's MB/s need decimals to show at all
    value = nbytes / ms / 1e6
    return f"{value:9.0f}" if value >= 10 else f"{value:9.4f}"


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

    cupy = cupy_module()

    from gpuquant.backends.cupy import CupyBackend

    backend = CupyBackend()
    stream = cupy.cuda.get_current_stream()
    x, imatrix = _inputs(args.rows, args.cols)
    y = cupy.empty(x.shape, dtype=cupy.float32)
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
            print(f"{t.name:<6} {'yes' if im is not None else 'no':<8} {ms:12.3f} {_gb_per_s(x.nbytes, ms)} "
                  f"{dequant_ms:14.3f} {_gb_per_s(y.nbytes, dequant_ms)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
