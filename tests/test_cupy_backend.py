"""The CuPy backend: ggml's golden bytes, and random arrays byte-equal to the host build of the same
kernel code and to the numpy backend, through the real launchers and kernels.

On a machine with CuPy and a CUDA device (make gpu-test) it runs on the GPU; anywhere else on the
CUDA simulator (GPUQUANT_CUDA_SIM=1: the same kernels/*.cu built for the CPU), where the large-chunk
and whole-file cases are smaller."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_golden_dequantize, assert_golden_quantize, assert_matches_numpy_backend, assert_same_bytes
from kernel_inputs import KINDS, random_imatrix, random_rows

import gpuquant
from gpuquant import hostkernels
from gpuquant.backends import cupy_available
from gpuquant.backends.cupy import TYPES as CUPY_TYPES
from gpuquant.backends.cupy import CupyBackend
from gpuquant.backends.cupy.device import SIMULATOR_ENV, cupy_module, get_kernel, simulator_enabled
from gpuquant.backends.numpy import QUANTIZERS

ON_GPU = cupy_available() and not simulator_enabled()
if not ON_GPU and hostkernels.find_compiler() is None:
    pytest.skip("needs cupy and a CUDA device, or a C++ compiler for the CUDA simulator", allow_module_level=True)
N_PER_ROW = 1024
ROWS_PER_KIND = 8


@pytest.fixture(scope="module", autouse=True)
def device():
    """The GPU, or the CUDA simulator switched on for this module only."""
    if ON_GPU:
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SIMULATOR_ENV, "1")
        yield


@pytest.fixture
def cupy():
    return cupy_module()

# Every type the backend has (F32, a plain copy, is tested on its own), and those that use an imatrix.
TYPES = tuple(name for name in CUPY_TYPES if name != "F32")
WEIGHTED = tuple(name for name in TYPES if gpuquant.resolve(name).imatrix_use != "ignored")
HAVE_HOST_BUILD = hostkernels.find_compiler() is not None


@pytest.fixture(scope="module")
def backend() -> CupyBackend:
    return CupyBackend()


def host_reference(x: np.ndarray, type_name: str, imatrix: np.ndarray | None) -> np.ndarray:
    if not HAVE_HOST_BUILD:
        pytest.skip("no C++ compiler for the host build of the kernels")
    return hostkernels.quantize(x, type_name, imatrix)


# ---------------------------------------------------------------- against ggml


@pytest.mark.parametrize("type_name", TYPES)
def test_supports(backend, type_name):
    assert backend.supports(gpuquant.resolve(type_name))


@pytest.mark.parametrize("type_name", TYPES)
def test_quantize_matches_ggml(type_name):
    keys = assert_golden_quantize(
        lambda x, imatrix: gpuquant.quantize(x, type_name, imatrix=imatrix, backend="cupy"), type_name
    )
    # every case with an importance matrix, and without one unless the type requires one
    assert len(keys) >= (6 if gpuquant.resolve(type_name).requires_imatrix else 12)
    assert any(k.endswith("__imatrix") for k in keys)


@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_matches_ggml(type_name):
    assert_golden_dequantize(lambda q, n_per_row: gpuquant.dequantize(q, type_name, backend="cupy"), type_name)


# ---------------------------------------------------------------- random arrays


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("type_name", TYPES)
def test_random_rows_match_host_build(backend, type_name, with_imatrix):
    # Every kind of input at once, subnormals included: a kernel compiled with flush-to-zero or
    # with fused multiply-adds differs from the host build here.
    x = random_rows(seed=21, rows_per_kind=ROWS_PER_KIND, n_per_row=N_PER_ROW)
    imatrix = random_imatrix(seed=22, n_per_row=N_PER_ROW) if with_imatrix else None
    got = backend.quantize(x, gpuquant.resolve(type_name), imatrix)
    assert_same_bytes(got, host_reference(x, type_name, imatrix), type_name)
    back = backend.dequantize(got, gpuquant.resolve(type_name), x.shape[1])
    if HAVE_HOST_BUILD:
        expected_back = hostkernels.dequantize(got, type_name, x.shape[1])
        assert_same_bytes(back.view(np.uint32), expected_back.view(np.uint32), f"{type_name} dequantize")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("type_name", TYPES)
def test_random_rows_match_numpy_backend(backend, type_name, with_imatrix, kind):
    if type_name not in QUANTIZERS:
        pytest.skip(f"the numpy backend has no {type_name} yet")
    if gpuquant.resolve(type_name).requires_imatrix and not with_imatrix:
        pytest.skip(f"{type_name} requires an importance matrix")
    x = random_rows(seed=31, kinds=(kind,), rows_per_kind=4, n_per_row=512)
    imatrix = random_imatrix(seed=32, n_per_row=512) if with_imatrix else None
    t = gpuquant.resolve(type_name)
    assert_matches_numpy_backend(
        lambda x, imatrix: backend.quantize(x, t, imatrix),
        lambda q, n_per_row: backend.dequantize(q, t, n_per_row),
        type_name, x, imatrix, f"{type_name} {kind}",
    )


@pytest.mark.parametrize("type_name", WEIGHTED)
def test_row_statistics_with_many_rows(backend, type_name):
    # 77 rows: the sigma2 kernel's 32-row tiles end part-filled; 4096 columns: many tiles a row.
    x = random_rows(seed=41, kinds=("weights", "heavy_tail", "skewed"), rows_per_kind=26, n_per_row=4096)[:77]
    x = np.ascontiguousarray(x)
    imatrix = random_imatrix(seed=42, n_per_row=4096)
    got = backend.quantize(x, gpuquant.resolve(type_name), imatrix)
    assert_same_bytes(got, host_reference(x, type_name, imatrix), type_name)


# ---------------------------------------------------------------- the device-level API


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("type_name", TYPES)
def test_quantize_device_on_a_stream_with_unaligned_buffers(backend, cupy, type_name, with_imatrix):
    # Views one element into larger buffers: the kernels' scalar (not float4) paths, on a
    # non-default stream.
    t = gpuquant.resolve(type_name)
    x = random_rows(seed=51, kinds=("weights", "ties", "subnormal"), rows_per_kind=3, n_per_row=256)
    rows, n_per_row = x.shape
    imatrix = random_imatrix(seed=52, n_per_row=n_per_row) if with_imatrix else None
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        x_buffer = cupy.zeros(x.size + 1, dtype=cupy.float32)
        x_dev = x_buffer[1:].reshape(rows, n_per_row)
        x_dev.set(x, stream=stream)
        im_dev = None
        if imatrix is not None:
            im_buffer = cupy.zeros(n_per_row + 1, dtype=cupy.float32)
            im_dev = im_buffer[1:]
            im_dev.set(imatrix, stream=stream)
        out_buffer = cupy.zeros(rows * t.row_bytes(n_per_row) + 1, dtype=cupy.uint8)
        out_dev = out_buffer[1:]
        backend.quantize_device(x_dev, t, im_dev, out_dev, stream)
        got = out_dev.get(stream=stream).reshape(rows, -1)
        assert_same_bytes(got, host_reference(x, type_name, imatrix), f"{type_name} quantize_device")

        y_buffer = cupy.zeros(x.size + 1, dtype=cupy.float32)
        y_dev = y_buffer[1:].reshape(rows, n_per_row)
        backend.dequantize_device(out_dev, t, n_per_row, y_dev, stream)
        back = y_dev.get(stream=stream)
    assert_same_bytes(back.view(np.uint32), backend.dequantize(got, t, n_per_row).view(np.uint32),
                      f"{type_name} dequantize_device")


def test_f32_is_a_copy(backend):
    x = random_rows(seed=61, rows_per_kind=1)
    t = gpuquant.resolve("F32")
    q = backend.quantize(x, t, None)
    np.testing.assert_array_equal(q, x.view(np.uint8))
    np.testing.assert_array_equal(backend.dequantize(q, t, x.shape[1]).view(np.uint32), x.view(np.uint32))


def test_empty_input(backend):
    t = gpuquant.resolve("Q4_0")
    assert backend.quantize(np.zeros((0, 64), np.float32), t, None).shape == (0, 36)
    assert backend.dequantize(np.zeros((0, 36), np.uint8), t, 64).shape == (0, 64)


def test_device_arguments_are_checked(backend, cupy):
    t = gpuquant.resolve("Q4_0")
    x = cupy.zeros((2, 64), dtype=cupy.float32)
    out = cupy.zeros(72, dtype=cupy.uint8)
    with pytest.raises(ValueError, match="float32"):
        backend.quantize_device(x.astype(cupy.float64), t, None, out)
    with pytest.raises(ValueError, match="bytes"):
        backend.quantize_device(x, t, None, out[:-1])
    with pytest.raises(ValueError, match="C-contiguous"):
        backend.quantize_device(cupy.zeros((64, 2), dtype=cupy.float32).T, t, None, out)
    with pytest.raises(ValueError, match="imatrix"):
        backend.quantize_device(x, t, cupy.ones(32, dtype=cupy.float32), out)
    with pytest.raises(TypeError, match="cupy.ndarray"):
        backend.quantize_device(np.zeros((2, 64), np.float32), t, None, out)


def test_kernels_load_once():
    assert get_kernel("legacy.cu", "gq_quantize_q4_0") is get_kernel("legacy.cu", "gq_quantize_q4_0")


# ---------------------------------------------------------------- the streaming file pipeline (stream.py)

import test_gpu_stream_fake as streaming  # noqa: E402  (its chunk cases and helpers)

from gpuquant.backends import Chunk  # noqa: E402
from gpuquant.outputs import RunOptions  # noqa: E402
from gpuquant.synthetic import write_synthetic_model  # noqa: E402


@pytest.mark.parametrize("memory", [streaming.TINY_MEMORY, None], ids=["tiny-slots", "default"])
def test_quantize_chunks_match_numpy_backend(memory):
    # Types, widths, an importance matrix that changes and comes back, empty, one-row and strided
    # chunks, F16/BF16 and quantized sources, measured ones; with tiny slots most chunks are split.
    chunks = streaming.mixed_chunks()
    got = streaming.run(CupyBackend(device_memory_bytes=memory, stream_slots=4), chunks)
    streaming.assert_same_outputs(got, streaming.expected(chunks))


@pytest.mark.parametrize("type_name", ["Q4_0", "Q8_0", "Q5_1"])
def test_quantize_chunks_large_chunks_split_over_slots(type_name):
    # 16 MiB chunks through 1.1 MiB slots (on the simulator 1 MiB through 72 KiB): every chunk spans
    # many pieces and all slots are busy.
    rng = np.random.default_rng(71)
    t = gpuquant.resolve(type_name)
    rows, memory = (1024, 16 << 20) if ON_GPU else (256, 4 << 20)
    imatrix = random_imatrix(72, n_per_row=4096) if type_name == "Q5_1" else None
    chunks = [Chunk((rng.standard_normal((rows, 4096)) * 0.02).astype(np.float32), t, imatrix, measure=True)
              for _ in range(3)]
    chunks.append(chunks[0]._replace(data=chunks[0].data[:7]))
    chunks.append(streaming.chunk(chunks[1].data[:33], type_name, imatrix, source="F16", measure=True))
    backend = CupyBackend(device_memory_bytes=memory)
    streaming.assert_same_outputs(streaming.run(backend, chunks), streaming.expected(chunks))


@pytest.mark.parametrize("bad_row", [0, 13, 19])
def test_quantize_chunks_non_finite_row(bad_row):
    chunks = streaming.chunks_with_non_finite_row(np.nan, bad_row)
    backend = CupyBackend(device_memory_bytes=streaming.THREE_ROWS_OF_Q4_0, stream_slots=4)
    want = streaming.assert_stops_at_non_finite_row(backend, chunks, bad_row)
    assert len(streaming.run(backend, chunks, check_finite=False)) == 4
    streaming.assert_same_outputs(streaming.run(backend, chunks[:2]), want)


@pytest.fixture(scope="module")
def kokoro_file(tmp_path_factory):
    # the full-size model on a GPU; on the simulator a tiny one of kokoro's architecture
    folder = tmp_path_factory.mktemp("kokoro")
    if ON_GPU:
        return write_synthetic_model("kokoro", folder / "kokoro-f32.gguf")
    return streaming.tiny_model(folder / "kokoro-tiny-f32.gguf", "F32")[0]


@pytest.mark.parametrize("type_name, memory", [("Q4_0", None), ("Q8_0", None), ("Q4_0", "8M")],
                         ids=["Q4_0", "Q8_0", "Q4_0-8M-slots"])
def test_whole_file_matches_numpy_backend(kokoro_file, tmp_path, monkeypatch, type_name, memory):
    if memory:
        monkeypatch.setenv("GPUQUANT_GPU_MEMORY", memory)
    on_gpu = gpuquant.quantize_file(kokoro_file, tmp_path / "gpu.gguf", type_name, options=RunOptions(backend="cupy"))
    gpuquant.quantize_file(kokoro_file, tmp_path / "cpu.gguf", type_name,
                           options=RunOptions(backend="numpy", n_threads=8))
    assert on_gpu.backend == "cupy"
    assert (tmp_path / "gpu.gguf").read_bytes() == (tmp_path / "cpu.gguf").read_bytes()
