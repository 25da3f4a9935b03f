"""F16 and BF16 sources widened to float32: every path gives ggml's bits (GGML_FP16_TO_FP32: exact, a
NaN made quiet with sign and payload kept; BF16: the bits shifted up 16).

The paths: SourceModel.rows_as_float32 without a dequantizer (NumPy, for inspect/diff), with the NumPy
backend's, and with the native backend's (kernels/host_floats.cpp: vcvtph2ps where the CPU has F16C or
AVX-512, a vectorized integer loop otherwise; split over threads), which the pipeline uses; a GPU run
widens on the device (test_gpu_stream_fake checks all 65536 patterns there). Each is
checked on all 65536 bit patterns against an independent reference, and whole-file runs through
native and NumPy write the same files.
"""

from __future__ import annotations

import ctypes
import hashlib
import platform
from pathlib import Path

import gguf
import numpy as np
import pytest
from tiny_models import write_tiny

import gpuquant
from gpuquant import hostkernels
from gpuquant.backends import native as native_module
from gpuquant.backends.native import NativeBackend
from gpuquant.backends.numpy_backend import NumpyBackend
from gpuquant.gguf_io import SourceModel
from gpuquant.outputs import RunOptions
from gpuquant.qtypes import QTYPES
from gpuquant.synthetic_llama import write_llama_model

pytestmark = pytest.mark.usefixtures("host_library")

ALL_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


def reference_f16(bits: np.ndarray) -> np.ndarray:
    """GGML_FP16_TO_FP32's float32 bits, from the half's fields (no float16 cast involved)."""
    b = bits.astype(np.int64)
    sign, exponent, mantissa = b >> 15, (b >> 10) & 0x1F, b & 0x3FF
    significand = np.where(exponent == 0, mantissa, mantissa | 0x400)
    magnitude = np.ldexp(significand.astype(np.float64), np.maximum(exponent, 1) - 25)  # exact in float32
    out = np.where(sign == 1, -magnitude, magnitude).astype(np.float32).view(np.uint32).copy()
    special = exponent == 0x1F
    quiet = np.where(mantissa != 0, 0x00400000, 0)
    out[special] = ((sign << 31) | 0x7F800000 | quiet | (mantissa << 13))[special].astype(np.uint32)
    return out


def reference_bf16(bits: np.ndarray) -> np.ndarray:
    return bits.astype(np.uint32) << np.uint32(16)


REFERENCE = {"F16": reference_f16, "BF16": reference_bf16}


def test_reference_spot_values():
    got = reference_f16(np.array([0x3C00, 0x0001, 0x8000, 0x7C00, 0x7C01, 0xFD55, 0x7E00, 0x03FF], dtype=np.uint16))
    expected = [0x3F800000, 0x33800000, 0x80000000, 0x7F800000, 0x7FC02000, 0xFFEAA000, 0x7FC00000, 0x387FC000]
    assert got.tolist() == expected


@pytest.fixture(scope="module")
def all_patterns(tmp_path_factory) -> SourceModel:
    """A GGUF whose F16 tensor and BF16 tensor each hold every 16-bit pattern once (256 rows of 256)."""
    path = tmp_path_factory.mktemp("widen") / "all.gguf"
    rows = ALL_BITS.reshape(256, 256)
    write_tiny(path, {"f16": rows.view(np.float16), "bf16": rows.copy()})
    model = SourceModel(path)
    yield model
    model.close()


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_every_pattern_widens_alike_on_every_path(dtype, all_patterns, monkeypatch):
    t = next(t for t in all_patterns.tensors if t.qtype.name == dtype)
    expected = REFERENCE[dtype](ALL_BITS)
    got = {"numpy (no dequantizer)": all_patterns.rows_as_float32(t, 0, t.n_rows),
           "numpy backend": all_patterns.rows_as_float32(t, 0, t.n_rows, NumpyBackend(1).dequantize_rows)}
    for n in (1, 3):
        got[f"native, {n} threads"] = all_patterns.rows_as_float32(t, 0, t.n_rows, NativeBackend(n).dequantize_rows)
    # Small spans: many tasks, boundaries inside rows, tails that are no multiple of the vector width.
    monkeypatch.setattr(native_module, "_MIN_WIDEN_PER_TASK", 1000)
    got["native, 3 threads, 12 spans"] = all_patterns.rows_as_float32(t, 0, t.n_rows, NativeBackend(3).dequantize_rows)
    got["native, rows 5..200"] = np.concatenate([
        all_patterns.rows_as_float32(t, 0, 5, NativeBackend(3).dequantize_rows),
        all_patterns.rows_as_float32(t, 5, 200, NativeBackend(3).dequantize_rows),
        all_patterns.rows_as_float32(t, 200, 256, NativeBackend(3).dequantize_rows)])
    for what, x in got.items():
        assert x.dtype == np.float32 and x.shape == (256, 256), what
        bad = np.flatnonzero(x.view(np.uint32).reshape(-1) != expected)
        assert bad.size == 0, f"{dtype} {what}: {bad.size} patterns differ, first {hex(int(ALL_BITS[bad[0]]))}"


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 15, 16, 17, 31, 33, 63, 100, 1000])
def test_native_lengths_and_offsets(dtype, n):
    """Lengths around the vector widths, from unaligned addresses: the tail loop and the vector loop
    meet without a gap or an overlap."""
    rng = np.random.default_rng(n)
    buffer = rng.integers(0, 1 << 16, size=n + 3, dtype=np.uint32).astype(np.uint16)
    for offset in (0, 1, 3):
        words = buffer[offset : offset + n]
        q = words.view(np.uint8)[None, :] if n else np.empty((1, 0), dtype=np.uint8)
        y = hostkernels.dequantize(q, dtype, n)
        assert np.array_equal(y.view(np.uint32).reshape(-1), REFERENCE[dtype](words)), (n, offset)


# ---------------------------------------------------------------- host_floats.cpp built without F16C / AVX-512

# The library is built with -march=native, so it runs only this CPU's path; these builds of
# host_floats.cpp alone take the others that this CPU can run.
VARIANTS = {"integer loop (no F16C)": ("-mno-f16c", "-mno-avx512f"), "F16C (no AVX-512)": ("-mno-avx512f",)}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 compiler flags")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_other_instruction_paths(variant, tmp_path):
    import subprocess

    if variant.startswith("F16C") and "f16c" not in _cpu_flags():
        pytest.skip("this CPU has no F16C")
    library = tmp_path / "floats.so"
    source_dir = hostkernels.kernels_dir()
    command = [hostkernels.find_compiler(), *hostkernels.CXX_FLAGS, *VARIANTS[variant], "-I", str(source_dir),
               str(source_dir / "host_floats.cpp"), "-o", str(library)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    fn = ctypes.CDLL(str(library)).gq_floats_dequantize
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    words = np.concatenate([ALL_BITS, ALL_BITS[:21]])  # a tail after the vector loop
    for dtype in ("F16", "BF16"):
        y = np.empty(words.size, dtype=np.float32)
        assert fn(QTYPES[dtype].ggml_id, words.ctypes.data, y.ctypes.data, 1, words.size) == 0
        assert np.array_equal(y.view(np.uint32), REFERENCE[dtype](words)), (variant, dtype)


# ---------------------------------------------------------------- whole files


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_whole_file_native_equals_numpy(dtype, tmp_path):
    src = write_llama_model("llama-gqa", tmp_path / f"src-{dtype}.gguf", dtype=dtype)
    outputs = {}
    for backend, n_threads in (("numpy", 1), ("native", 1), ("native", 3)):
        dst = tmp_path / f"{backend}-{n_threads}.gguf"
        gpuquant.quantize_file(src, dst, "Q4_K_M", options=RunOptions(backend=backend, n_threads=n_threads))
        outputs[(backend, n_threads)] = _sha(dst)
    assert len(set(outputs.values())) == 1, outputs


def test_signalling_nans_reach_an_f32_output_quiet(tmp_path):
    """F16 -> F32 copies the widened bits into the file: every backend writes ggml's quiet NaNs."""
    rows = ALL_BITS.reshape(256, 256)
    src = write_tiny(tmp_path / "src.gguf", {"blk.0.attn_q.weight": rows.view(np.float16)}, arch="llama",
                     extra={"llama.block_count": 1})
    expected = reference_f16(ALL_BITS)
    for backend in ("numpy", "native"):
        dst = tmp_path / f"{backend}.gguf"
        gpuquant.quantize_file(src, dst, "F32", options=RunOptions(backend=backend, n_threads=2))
        (t,) = gguf.GGUFReader(dst).tensors
        assert t.tensor_type.name == "F32", backend
        assert np.array_equal(np.asarray(t.data).view(np.uint32).reshape(-1), expected), backend


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_a_gpu_run_widens_on_the_device(dtype, tmp_path, monkeypatch):
    """On the CUDA simulator: the F16/BF16 rows go to the device as the file stores them (2 bytes a
    weight) and are widened there by the floats kernel, never on the host; the file is the CPU
    backends' file, and so are the error figures, measured on the device, to float rounding."""
    from gpuquant.backends.cupy import CupyBackend
    from gpuquant.cudasim import cupy as simulated

    monkeypatch.setenv("GPUQUANT_CUDA_SIM", "1")
    rng = np.random.default_rng(5)
    values = (rng.standard_normal((16, 256)) * 0.02).astype(np.float32)
    bf16 = (values.view(np.uint32) >> np.uint32(16)).astype(np.uint16)  # tiny_models writes uint16 as BF16
    tensor = values.astype(np.float16) if dtype == "F16" else bf16
    src = write_tiny(tmp_path / "src.gguf", {"blk.0.attn_q.weight": tensor}, arch="llama",
                     extra={"llama.block_count": 1})
    calls: dict[type, list[str]] = {NativeBackend: [], CupyBackend: []}
    for cls, log in calls.items():
        def spy(self, q, qtype, n_per_row, real=cls.dequantize_rows, log=log):
            log.append(qtype.name)
            return real(self, q, qtype, n_per_row)

        monkeypatch.setattr(cls, "dequantize_rows", spy)
    simulated.reset()
    digests, figures = set(), []
    for backend in ("cupy", "native"):
        dst = tmp_path / f"{backend}.gguf"
        summary = gpuquant.quantize_file(src, dst, "Q8_0", options=RunOptions(backend=backend, n_threads=2))
        digests.add(_sha(dst))
        figures.append(summary.records[0].error)
    assert calls == {NativeBackend: [dtype], CupyBackend: []} and len(digests) == 1
    assert simulated.STATS[f"kernel:gq_dequantize_{dtype.lower()}"] == 1
    assert simulated.STATS["h2d"] == 1  # one copy: the stored words
    assert figures[0].rel_rmse == pytest.approx(figures[1].rel_rmse, rel=1e-6, abs=0)
    assert figures[0].max_abs == figures[1].max_abs
