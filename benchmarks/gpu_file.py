"""File-to-file throughput on the GPU: full-size synthetic models (TTS.cpp's layouts) quantized by the
cupy backend and by the native one (the kernels built for this CPU, all cores) in the same run, from
a warm page cache; wall seconds, GB/s of input file, and whether the two outputs are the same bytes.

    python benchmarks/gpu_file.py [--models parler-tts-mini,dia] [--types Q4_0,Q8_0]
                                  [--data-dir build/bench] [--cpu-threads N] [--skip-cpu]
                                  [--rows-scale N]

The input models are written once into the data folder (dia is 6.7 GB) and read with `cat` before
timing. A model is a TTS.cpp layout (gpuquant.synthetic) or a llama.cpp one
(gpuquant.synthetic_llama, a few MB, every matrix's rows times --rows-scale): the small ones serve
the CUDA simulator's rehearsal (GPUQUANT_CUDA_SIM=1), which runs some MB/s. Where the native backend
cannot be had (no C++ compiler) the CPU side is the numpy backend, and the output says so.

Timing is in this process, after a warm-up that compiles and loads the kernels (the native library
too) and fills CuPy's pinned-memory pool (CUDA start-up is not counted; a one-shot CLI run pays it).
The last line printed is `GPU_FILE_RESULT <json>` for benchmarks/gpu_test.py. Without cupy or a CUDA
device (and no simulator) it says so and exits 0.
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

from gpuquant.backends import Chunk, cupy_available, native_backend  # noqa: E402
from gpuquant.backends.cupy.device import simulator_enabled  # noqa: E402
from gpuquant.outputs import RunOptions  # noqa: E402
from gpuquant.pipeline import quantize_file  # noqa: E402
from gpuquant.qtypes import resolve  # noqa: E402

RESULT_PREFIX = "GPU_FILE_RESULT "
TARGET_Q4_0_GB_PER_S = 3.0  # file to file, on an H100
SIMULATOR_WARM_UP_ROWS = 64  # of 4096: the simulator has no pinned pool to fill, and runs some MB/s


def _model_file(data_dir: Path, model: str, rows_scale: int) -> Path:
    from gpuquant.synthetic import write_synthetic_model
    from gpuquant.synthetic_llama import LAYOUT_NAMES, write_llama_model

    data_dir.mkdir(parents=True, exist_ok=True)
    llama = model in LAYOUT_NAMES
    scaled = f"-x{rows_scale}" if llama and rows_scale != 1 else ""
    src = data_dir / f"{model}{scaled}-f32.gguf"
    if not src.exists():  # the writers rename a finished file into place: present means whole
        print(f"writing {src} ...", flush=True)
        start = time.perf_counter()
        if llama:
            write_llama_model(model, src, rows_scale=rows_scale)
        else:
            write_synthetic_model(model, src)
        print(f"  {src.stat().st_size / 1e9:.3f} GB in {time.perf_counter() - start:.1f} s", flush=True)
    return src


def _warm_page_cache(path: Path) -> None:
    try:
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    except (OSError, subprocess.CalledProcessError):
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass


def _warm_up_gpu(types: list[str]) -> None:
    """Outside the timing: compile and load every kernel the runs use (and the row kernels), and
    leave pinned buffers of the pipeline's sizes (32 MiB chunks, every slot) in CuPy's pinned pool,
    as a long-running process would have them."""
    from gpuquant.backends.cupy import CupyBackend
    from gpuquant.pipeline import CHUNK_BYTES

    backend = CupyBackend()
    rows = SIMULATOR_WARM_UP_ROWS if simulator_enabled() else CHUNK_BYTES // (4 * 4096)
    x = (np.random.default_rng(0).standard_normal((rows, 4096)) * 0.02).astype(np.float32)
    f16 = x.astype(np.float16).view(np.uint8)
    # every kernel once (F32 and F16 sources, measured), then every slot's buffers at their size
    chunks = [Chunk(x, resolve(name), None, measure=True) for name in types]
    chunks += [Chunk(f16, resolve(name), None, resolve("F16"), True) for name in types]
    chunks += [Chunk(f16, resolve(types[0]), None, resolve("F16"), True)] * backend.stream_slots
    for out in backend.quantize_chunks(chunks, True):
        out.release()


def _device_name() -> str:
    if simulator_enabled():
        return "CUDA simulator"
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def _cpu_backend(threads: int) -> tuple[str, str | None]:
    """("native", None), or ("numpy", why native is not there): the CPU side of the comparison. Builds
    the native library now (seconds, once per machine), outside the timing."""
    backend, why_not = native_backend(threads)
    if backend is None:
        return "numpy", why_not
    return "native", None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="parler-tts-mini",
                        help="comma-separated synthetic model names (TTS.cpp or llama.cpp layouts)")
    parser.add_argument("--rows-scale", type=int, default=1, help="llama.cpp layouts: rows of every matrix times N")
    parser.add_argument("--types", default="Q4_0,Q8_0")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--cpu-threads", "--numpy-threads", dest="cpu_threads", type=int,
                        default=os.cpu_count() or 1, help="threads of the native (or numpy) backend")
    parser.add_argument("--skip-cpu", "--skip-numpy", dest="skip_cpu", action="store_true",
                        help="time the cupy backend only")
    args = parser.parse_args(argv)
    if not cupy_available():
        print("gpu_file: skipped, needs cupy and a CUDA device")
        return 0
    types = [resolve(t).name for t in args.types.split(",")]
    device = _device_name()
    cpu, cpu_note = (None, None) if args.skip_cpu else _cpu_backend(args.cpu_threads)
    if cpu_note:
        print(f"gpu_file: the native backend is not available ({cpu_note}): comparing with numpy instead")
    backends = ["cupy"] if cpu is None else ["cupy", cpu]
    _warm_up_gpu(types)

    results, identical = [], {}
    for model in args.models.split(","):
        src = _model_file(args.data_dir, model, args.rows_scale)
        size = src.stat().st_size
        _warm_page_cache(src)
        print(f"\n{device}: {model} F32 {size / 1e9:.3f} GB, warm page cache; {cpu or 'no CPU backend'} with "
              f"{args.cpu_threads} threads")
        print(f"{'type':<6} {'backend':<7} {'wall s':>7} {'GB/s in':>8}")
        for name in types:
            outputs = {}
            for backend in backends:
                dst = args.data_dir / f"{src.stem.removesuffix('-f32')}-{name.lower()}-{backend}.gguf"
                start = time.perf_counter()
                quantize_file(src, dst, name, options=RunOptions(backend=backend, n_threads=args.cpu_threads))
                wall = time.perf_counter() - start
                outputs[backend] = dst
                results.append({"model": model, "type": name, "backend": backend, "seconds": round(wall, 3),
                                "gb_per_s": round(size / wall / 1e9, 4), "input_bytes": size})
                print(f"{name:<6} {backend:<7} {wall:7.2f} {size / wall / 1e9:8.3f}", flush=True)
            if len(outputs) == 2:
                same = filecmp.cmp(outputs["cupy"], outputs[cpu], shallow=False)
                identical[f"{model} {name}"] = same
                print(f"{name:<6} outputs {'identical' if same else 'DIFFER'} (cupy and {cpu})")
            for dst in outputs.values():
                dst.unlink()
    print(RESULT_PREFIX + json.dumps({"device": device, "simulator": simulator_enabled(), "compared_with": cpu,
                                      "cpu_note": cpu_note, "cpu_threads": args.cpu_threads, "results": results,
                                      "identical": identical}))
    return 0 if all(identical.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
