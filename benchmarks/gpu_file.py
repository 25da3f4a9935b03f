"""File-to-file throughput on the GPU: full-size synthetic models (TTS.cpp's layouts) quantized by the
cupy and the numpy backend in the same run, from a warm page cache; wall seconds, GB/s of input
file, and whether the two outputs are the same bytes.

    python benchmarks/gpu_file.py [--models parler-tts-mini,dia] [--types Q4_0,Q8_0]
                                  [--data-dir build/bench] [--numpy-threads N] [--skip-numpy]

The input models are written once into the data folder (dia is 6.7 GB) and read with `cat` before
timing. Timing is in this process, after a warm-up that compiles and loads the kernels and fills
CuPy's pinned-memory pool (CUDA start-up is not counted; a one-shot CLI run pays it). The last
line printed is `GPU_FILE_RESULT <json>` for benchmarks/gpu_test.py. Without cupy or a CUDA device
it says so and exits 0.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpuquant.backends import cupy_available  # noqa: E402
from gpuquant.pipeline import quantize_file  # noqa: E402
from gpuquant.qtypes import resolve  # noqa: E402

RESULT_PREFIX = "GPU_FILE_RESULT "
TARGET_Q4_0_GB_PER_S = 3.0  # file to file, on an H100


def _model_file(data_dir: Path, model: str) -> Path:
    from gpuquant.synthetic import write_synthetic_model

    data_dir.mkdir(parents=True, exist_ok=True)
    src = data_dir / f"{model}-f32.gguf"
    if not src.exists():  # the writer renames a finished file into place: present means whole
        print(f"writing {src} ...", flush=True)
        start = time.perf_counter()
        write_synthetic_model(model, src)
        print(f"  {src.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - start:.1f} s", flush=True)
    return src


def _warm_page_cache(path: Path) -> None:
    try:
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    except (OSError, subprocess.CalledProcessError):
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass


def _warm_up_gpu(types: list[str]) -> None:
    """Outside the timing: compile and load every kernel the runs use (and CuPy's finite check), and
    leave pinned buffers of the pipeline's sizes (32 MiB chunks, every slot) in CuPy's pinned pool,
    as a long-running process would have them."""
    from gpuquant.backends.cupy import CupyBackend
    from gpuquant.pipeline import CHUNK_BYTES

    backend = CupyBackend()
    x = (np.random.default_rng(0).standard_normal((CHUNK_BYTES // (4 * 4096), 4096)) * 0.02).astype(np.float32)
    for name in types:
        for _ in backend.quantize_chunks([(x, resolve(name), None)] * (backend.stream_slots + 1), True):
            pass


def _device_name() -> str:
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="parler-tts-mini", help="comma-separated synthetic model names")
    parser.add_argument("--types", default="Q4_0,Q8_0")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--numpy-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-numpy", action="store_true", help="time the cupy backend only")
    args = parser.parse_args(argv)
    if not cupy_available():
        print("gpu_file: skipped, needs cupy and a CUDA device")
        return 0
    types = [resolve(t).name for t in args.types.split(",")]
    backends = ["cupy"] if args.skip_numpy else ["cupy", "numpy"]
    device = _device_name()
    _warm_up_gpu(types)

    results, identical = [], {}
    for model in args.models.split(","):
        src = _model_file(args.data_dir, model)
        size = src.stat().st_size
        _warm_page_cache(src)
        print(f"\n{device}: {model} F32 {size / 1e9:.2f} GB, warm page cache; numpy with "
              f"{args.numpy_threads} threads")
        print(f"{'type':<6} {'backend':<7} {'wall s':>7} {'GB/s in':>8}")
        for name in types:
            outputs = {}
            for backend in backends:
                dst = args.data_dir / f"{model}-{name.lower()}-{backend}.gguf"
                start = time.perf_counter()
                quantize_file(src, dst, name, backend=backend, n_threads=args.numpy_threads)
                wall = time.perf_counter() - start
                outputs[backend] = dst
                results.append({"model": model, "type": name, "backend": backend, "seconds": round(wall, 3),
                                "gb_per_s": round(size / wall / 1e9, 3), "input_bytes": size})
                print(f"{name:<6} {backend:<7} {wall:7.2f} {size / wall / 1e9:8.2f}", flush=True)
            if len(outputs) == 2:
                same = filecmp.cmp(outputs["cupy"], outputs["numpy"], shallow=False)
                identical[f"{model} {name}"] = same
                print(f"{name:<6} outputs {'identical' if same else 'DIFFER'}")
            for dst in outputs.values():
                dst.unlink()
    print(RESULT_PREFIX + json.dumps({"device": device, "results": results, "identical": identical}))
    return 0 if all(identical.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
