"""The GPU file pipeline's streaming engine (gpuquant/backends/cupy/stream.py), run without a GPU.

The CUDA simulator (gpuquant/cudasim, GPUQUANT_CUDA_SIM=1) stands in for CuPy and the device: work
queued on a stream runs only when the host waits for it, as on a GPU, and the launchers launch the
real kernels/*.cu, built for the CPU. Every output must equal the numpy backend's, byte for byte,
whatever the chunk shapes, slot sizes and types.
"""

from __future__ import annotations

import numpy as np
import pytest
from kernel_inputs import random_imatrix, random_rows
from tiny_models import kokoro_like, write_tiny

import gpuquant
from gpuquant import hostkernels, pipeline
from gpuquant.backends import NonFiniteError, get_backend
from gpuquant.backends.cupy import CupyBackend
from gpuquant.backends.cupy.device import SIMULATOR_ENV
from gpuquant.backends.cupy.stream import (
    DEFAULT_DEVICE_MEMORY,
    DEVICE_MEMORY_ENV,
    StreamEngine,
    device_memory_setting,
    slot_input_bytes,
)
from gpuquant.backends.numpy_backend import NumpyBackend
from gpuquant.cudasim import cupy as simulated_cupy
from gpuquant.imatrix import Imatrix

pytestmark = pytest.mark.skipif(hostkernels.find_compiler() is None,
                                reason="the CUDA simulator builds the kernels for the CPU: needs a C++ compiler")

# A slot of this budget with 4 slots takes 3 rows of 256 float32 (or 1 row of 512) a piece.
TINY_MEMORY = int(4 * 3.5 * 3 * 1024)


@pytest.fixture
def fake(monkeypatch):
    """The CUDA simulator in place of CuPy and a GPU, for one test; its counters start at zero."""
    monkeypatch.delenv(DEVICE_MEMORY_ENV, raising=False)
    monkeypatch.setenv(SIMULATOR_ENV, "1")
    simulated_cupy.reset()
    return simulated_cupy


def rows(seed: int, n_rows: int, n_per_row: int) -> np.ndarray:
    kinds = ("weights", "ties", "sparse", "huge", "heavy_tail")
    x = random_rows(seed, kinds, rows_per_kind=-(-n_rows // len(kinds)), n_per_row=n_per_row)
    return np.ascontiguousarray(x[:n_rows])


def mixed_chunks() -> list:
    """Chunks of several tensors in a row: types, widths, an importance matrix that comes, changes,
    comes back and goes, an empty chunk, one-row chunks, a strided view."""
    im_a, im_b, im_c = random_imatrix(1, 256), random_imatrix(2, 256), random_imatrix(3, 512)
    big = rows(10, 37, 256)
    chunks = [
        (big, "Q4_0", None),
        (rows(11, 1, 512), "Q8_0", None),
        (rows(12, 5, 256), "Q4_1", im_a),
        (rows(13, 6, 256), "Q4_1", im_b),
        (rows(14, 4, 256), "Q4_1", im_a),
        (rows(15, 9, 256), "Q5_0", im_a.copy()),  # the same values in another array
        (np.zeros((0, 256), np.float32), "Q5_0", im_a),
        (rows(16, 7, 512), "Q5_1", im_c),
        (rows(17, 3, 64), "F16", None),
        (rows(18, 3, 64), "BF16", None),
        (rows(19, 2, 96), "F32", None),
        (big[1::3, 32:160], "Q4_0", None),  # not contiguous: rows 1, 4, ..., columns 32..159
        (rows(20, 1, 32), "Q4_0", None),
        (rows(21, 8, 256), "Q8_0", im_b),  # Q8_0 ignores the importance matrix
    ]
    return [(x, gpuquant.resolve(t), w) for x, t, w in chunks]


def run(backend, chunks, check_finite: bool = True) -> list[np.ndarray]:
    # copy each output before asking for the next: the engine reuses its buffers after that
    return [q.copy() for q in backend.quantize_chunks(chunks, check_finite)]


def expected(chunks, check_finite: bool = True) -> list[np.ndarray]:
    contiguous = [(np.ascontiguousarray(x), t, w) for x, t, w in chunks]
    return run(NumpyBackend(), contiguous, check_finite)


def chunks_with_non_finite_row(bad: float, bad_row: int) -> list:
    """Four Q4_0 chunks of 20 rows of 256; the third holds `bad` in row bad_row."""
    t = gpuquant.resolve("Q4_0")
    chunks = [(rows(30 + i, 20, 256), t, None) for i in range(4)]
    chunks[2][0][bad_row, 77] = bad
    return chunks


def assert_stops_at_non_finite_row(backend, chunks, bad_row: int) -> list[np.ndarray]:
    """quantize_chunks(check_finite=True) yields the numpy backend's bytes of the first two chunks of
    chunks_with_non_finite_row, then raises NonFiniteError naming bad_row. Returns those two."""
    want = expected(chunks[:2])
    outputs = backend.quantize_chunks(chunks, check_finite=True)
    assert np.array_equal(next(outputs), want[0])
    assert np.array_equal(next(outputs), want[1])
    with pytest.raises(NonFiniteError) as raised:
        next(outputs)
    assert raised.value.row == bad_row
    return want


def assert_same_outputs(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.dtype == w.dtype and g.shape == w.shape, f"chunk {i}: {g.dtype}{g.shape} vs {w.dtype}{w.shape}"
        assert np.array_equal(g, w), f"chunk {i}: rows {np.flatnonzero((g != w).any(axis=1)).tolist()} differ"


def pieces(chunks, memory: int, slots: int, block_types_only: bool = False) -> int:
    per_slot = slot_input_bytes(memory, slots)
    total = 0
    for x, t, _ in chunks:
        if block_types_only and t.is_float:
            continue
        per_piece = per_slot // max(4 * x.shape[1], t.row_bytes(x.shape[1]))
        total += -(-x.shape[0] // per_piece)
    return total


@pytest.mark.parametrize("memory, slots", [
    (TINY_MEMORY, 4),  # most chunks split into pieces of 1 to 3 rows
    (int(2 * 3.5 * 5 * 1024), 2),  # two slots of 5 rows of 256
    (None, 4),  # the default: no chunk here is split
    (None, 3),
], ids=["tiny-4", "small-2", "default-4", "default-3"])
def test_chunks_match_numpy_backend(fake, memory, slots):
    chunks = mixed_chunks()
    backend = CupyBackend(device_memory_bytes=memory, stream_slots=slots)
    assert_same_outputs(run(backend, chunks), expected(chunks))
    budget = memory or DEFAULT_DEVICE_MEMORY
    n_pieces = pieces(chunks, budget, slots)
    n_checked = pieces(chunks, budget, slots, block_types_only=True)  # F16/BF16 carry NaN as values
    n_copied = pieces([c for c in chunks if c[1].name == "F32"], budget, slots)  # F32: a device copy
    assert 0 < n_checked < n_pieces and n_copied > 0
    assert fake.STATS["quantize"] == n_pieces - n_copied and fake.STATS["d2d"] == n_copied
    assert fake.STATS["h2d"] >= n_pieces and fake.STATS["d2h"] == n_pieces + n_checked  # outputs, finite flags
    assert fake.STATS["elementwise"] == n_checked  # the finite checks
    assert 0 < fake.STATS["device_peak"] <= budget
    if memory == TINY_MEMORY:
        assert n_pieces > 2 * len(chunks)


def test_outputs_without_finite_check_and_a_second_run(fake):
    chunks = mixed_chunks()
    backend = CupyBackend(device_memory_bytes=TINY_MEMORY)
    assert_same_outputs(run(backend, chunks, check_finite=False), expected(chunks, check_finite=False))
    assert fake.STATS["elementwise"] == 0
    # the same backend again: its engine and buffers are reused; only the finite checks' results and
    # the row statistics of the weighted legacy kernels are allocated anew
    allocations = fake.STATS["device_allocs"] + fake.STATS["pinned_allocs"]
    sigma2_before = fake.STATS["kernel:gq_row_sigma2"]
    assert_same_outputs(run(backend, chunks), expected(chunks))
    sigma2 = fake.STATS["kernel:gq_row_sigma2"] - sigma2_before
    assert sigma2 > 0
    assert fake.STATS["device_allocs"] + fake.STATS["pinned_allocs"] - allocations == \
        fake.STATS["elementwise"] * 2 + sigma2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("bad_row", [0, 13, 19])
def test_non_finite_weight_raises_when_its_chunk_is_due(fake, bad, bad_row):
    chunks = chunks_with_non_finite_row(bad, bad_row)
    backend = CupyBackend(device_memory_bytes=TINY_MEMORY)  # 3 rows a piece: 7 pieces a chunk
    want = assert_stops_at_non_finite_row(backend, chunks, bad_row)
    assert fake.STATS["quantize_nonfinite"] == 0  # the kernels never saw the bad piece
    with pytest.raises(NonFiniteError) as reference:
        run(NumpyBackend(), chunks)
    assert reference.value.row == bad_row
    # without the check the run goes through; and the engine is whole again for the next run
    assert len(run(backend, chunks, check_finite=False)) == 4
    assert fake.STATS["quantize_nonfinite"] == 1
    assert_same_outputs(run(backend, chunks[:2]), want)


def test_abandoned_and_interleaved_runs(fake):
    t = gpuquant.resolve("Q4_0")
    chunks = [(rows(40 + i, 10, 256), t, None) for i in range(5)]
    want = expected(chunks)
    backend = CupyBackend(device_memory_bytes=TINY_MEMORY, stream_slots=2)
    first = backend.quantize_chunks(chunks, True)
    got_first = [next(first).copy()]
    second = backend.quantize_chunks(chunks, True)  # while the first is in flight: its own engine
    got_second = [next(second).copy() for _ in range(3)]
    got_first += [q.copy() for q in first]
    got_second += [q.copy() for q in second]
    assert_same_outputs(got_first, want)
    assert_same_outputs(got_second, want)
    third = backend.quantize_chunks(chunks, True)
    next(third)
    third.close()  # abandoned half way, as the pipeline does after its last output
    assert_same_outputs(run(backend, chunks), want)


def test_large_pieces_are_filled_by_several_threads(fake):
    # Pieces of MiBs: the pinned buffer is filled by 5 threads over row ranges, contiguous or not.
    rng = np.random.default_rng(45)
    big = (rng.standard_normal((1400, 1024)) * 0.02).astype(np.float32)
    chunks = [(big[:700], gpuquant.resolve("Q8_0"), None), (big[1::2], gpuquant.resolve("Q4_0"), None),
              (big[700:703], gpuquant.resolve("Q4_0"), None)]
    engine = StreamEngine(CupyBackend(), 64 << 20, slots=2, copy_threads=5)
    try:
        assert_same_outputs([q.copy() for q in engine.run(chunks, True)], expected(chunks))
    finally:
        engine.close()


def test_yielded_array_is_valid_until_the_next_is_asked_for(fake):
    # The pipeline writes each output before asking for the next; holding on to one past that is
    # allowed to see it reused (the protocol says so). Here: each is right when it is yielded.
    t = gpuquant.resolve("Q8_0")
    chunks = [(rows(50 + i, 3, 256), t, None) for i in range(6)]
    want = expected(chunks)
    for i, q in enumerate(CupyBackend(stream_slots=2).quantize_chunks(chunks, True)):
        assert np.array_equal(q, want[i])


def test_device_memory_setting(monkeypatch):
    monkeypatch.delenv(DEVICE_MEMORY_ENV, raising=False)
    assert device_memory_setting() == DEFAULT_DEVICE_MEMORY == 2 << 30
    for text, value in [("4G", 4 << 30), ("512MiB", 512 << 20), ("1.5g", 3 << 29), ("123456", 123456),
                        ("64 KB", 64 << 10)]:
        monkeypatch.setenv(DEVICE_MEMORY_ENV, text)
        assert device_memory_setting() == value, text
    assert device_memory_setting(1 << 20) == 1 << 20  # the argument wins over the variable
    assert device_memory_setting("3M") == 3 << 20
    for bad in ("four", "4X", "0", "-5"):
        monkeypatch.setenv(DEVICE_MEMORY_ENV, bad)
        with pytest.raises(ValueError, match=DEVICE_MEMORY_ENV):
            device_memory_setting()
    with pytest.raises(ValueError, match="positive"):
        CupyBackend(device_memory_bytes=0)


def test_setting_reaches_the_backend_and_bounds_rows(fake, monkeypatch):
    monkeypatch.setenv(DEVICE_MEMORY_ENV, "96K")
    backend = get_backend("cupy")
    assert isinstance(backend, CupyBackend) and backend.device_memory_bytes == 96 << 10
    small = CupyBackend(device_memory_bytes=10_000)  # 714 bytes a slot: a row of 256 float32 is 1024
    chunks = [(rows(60, 2, 256), gpuquant.resolve("Q4_0"), None)]
    with pytest.raises(ValueError, match="GPU memory setting"):
        run(small, chunks)
    with pytest.raises(ValueError, match="imatrix has 128 values"):
        run(backend, [(rows(61, 2, 256), gpuquant.resolve("Q4_0"), random_imatrix(1, 128))])
    with pytest.raises(ValueError, match="float32"):
        run(backend, [(rows(62, 2, 256).astype(np.float64), gpuquant.resolve("Q4_0"), None)])


# ---------------------------------------------------------------- the whole file pipeline


def tiny_model(path, source: str):
    rng = np.random.default_rng(5)
    tensors = kokoro_like(rng, n_per_row=512, rows=30)  # q [30, 512], ffn [60, 512], a bias and a norm
    tensors["kokoro.albert.layer.0.k"] = (rng.standard_normal((3, 20, 256)) * 0.02).astype(np.float32)
    for name, a in tensors.items():
        if a.ndim >= 2 and source == "F16":
            tensors[name] = a.astype(np.float16)
        elif a.ndim >= 2 and source == "BF16":
            tensors[name] = (a.view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    return write_tiny(path, tensors), tensors


def importance() -> Imatrix:
    rng = np.random.default_rng(6)
    entries = {
        "kokoro.albert.layer.0.q": rng.random(512).astype(np.float32),
        "kokoro.albert.layer.0.k": rng.random(3 * 256).astype(np.float32),  # one row per expert
    }
    return Imatrix("calib.imatrix", entries, ["calib.txt"], 10, "gguf")


@pytest.mark.parametrize("target, weighted, source", [
    ("Q4_0", False, "F32"),
    ("Q4_1", True, "F32"),
    ("Q8_0", False, "F16"),
    ("Q5_0", True, "BF16"),
    ("F16", False, "F32"),
])
def test_file_pipeline_matches_numpy(fake, monkeypatch, tmp_path, target, weighted, source):
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 8 << 10)  # several chunks a tensor
    monkeypatch.setenv(DEVICE_MEMORY_ENV, "96K")  # several pieces a chunk: 1 to 3 rows of 512
    src, _ = tiny_model(tmp_path / "in.gguf", source)
    imatrix = importance() if weighted else None
    on_gpu = gpuquant.quantize_file(src, tmp_path / "gpu.gguf", target, backend="cupy", imatrix=imatrix)
    on_cpu = gpuquant.quantize_file(src, tmp_path / "cpu.gguf", target, backend="numpy", imatrix=imatrix)
    assert on_gpu.backend == "cupy" and on_cpu.backend == "numpy"
    assert [r.dst_type for r in on_gpu.records] == [r.dst_type for r in on_cpu.records]
    assert sum(r.imatrix_used for r in on_gpu.records) == (2 if weighted else 0)
    assert (tmp_path / "gpu.gguf").read_bytes() == (tmp_path / "cpu.gguf").read_bytes()
    # the error pass of a GPU run (on the host, with the native build): the numpy backend's figures
    for g, c in zip(on_gpu.records, on_cpu.records, strict=True):
        assert g.error.rows_measured == c.error.rows_measured and g.error.max_abs == c.error.max_abs
        assert g.error.rel_rmse == pytest.approx(c.error.rel_rmse, rel=1e-6, abs=0)
    assert fake.STATS["dequantize"] == 0
    chunks = sum(-(-r.n_elements * 4 // (8 << 10)) for r in on_gpu.records if r.src_type != r.dst_type)
    assert fake.STATS["quantize"] > chunks  # the chunks were split into pieces


def test_file_pipeline_non_finite_message_matches_numpy(fake, monkeypatch, tmp_path):
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 8 << 10)  # 4 rows of 512 a chunk
    monkeypatch.setenv(DEVICE_MEMORY_ENV, "96K")
    rng = np.random.default_rng(7)
    tensors = kokoro_like(rng, n_per_row=512, rows=30)
    tensors["kokoro.albert.layer.0.ffn"][17, 300] = np.nan  # chunk 4 (rows 16..19), its 2nd row
    src = write_tiny(tmp_path / "nan.gguf", tensors)
    messages = []
    for backend in ("cupy", "numpy"):
        dst = tmp_path / f"{backend}.gguf"
        with pytest.raises(ValueError) as raised:
            gpuquant.quantize_file(src, dst, "Q4_0", backend=backend)
        messages.append(str(raised.value))
        assert not dst.exists()
    assert messages[0] == messages[1]
    assert "kokoro.albert.layer.0.ffn" in messages[0] and "row 17" in messages[0]


# ---------------------------------------------------------------- device faults


@pytest.mark.parametrize("fault, message", [
    ("oom", "the GPU ran out of memory"),
    ("launch", "a CUDA call failed"),
    ("compile", "the CUDA kernels did not compile with NVRTC"),
])
def test_device_faults_are_one_line_errors_and_leave_no_output(fake, monkeypatch, tmp_path, fault, message):
    from click.testing import CliRunner

    from gpuquant.backends.cupy import launch
    from gpuquant.cli import main

    if fault == "oom":
        def empty(shape, dtype=np.float64):
            raise fake.OutOfMemoryError("Out of memory allocating 1,073,741,824 bytes")
        monkeypatch.setattr(fake, "empty", empty)
    else:
        error = (fake.CUDADriverError("CUDA_ERROR_LAUNCH_FAILED: unspecified launch failure") if fault == "launch"
                 else fake.CompileException("lattice.cu(12): error: identifier undefined"))

        def failing(*args, **kwargs):  # where the launcher gets its kernels: compiling, or launching them
            raise error
        monkeypatch.setattr(launch, "get_kernel", failing)
    src, _ = tiny_model(tmp_path / "in.gguf", "F32")
    out = tmp_path / "o.gguf"
    r = CliRunner().invoke(main, ["quantize", str(src), str(out), "Q4_0", "--backend", "cupy", "-q"])
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and message in lines[0], r.output
    assert "unexpected" not in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gguf"]


def test_a_memory_setting_above_the_device_is_reduced_with_a_note(fake, monkeypatch, tmp_path):
    monkeypatch.setattr(fake, "DEVICE_FREE_BYTES", 1 << 20)  # the device has 1 MiB free
    monkeypatch.setenv(DEVICE_MEMORY_ENV, "64G")
    src, _ = tiny_model(tmp_path / "in.gguf", "F32")
    summary = gpuquant.quantize_file(src, tmp_path / "gpu.gguf", "Q4_0", backend="cupy")
    note = [w for w in summary.warnings if DEVICE_MEMORY_ENV in w]
    assert len(note) == 1 and "using 943718" in note[0]
    gpuquant.quantize_file(src, tmp_path / "cpu.gguf", "Q4_0", backend="numpy")
    assert (tmp_path / "gpu.gguf").read_bytes() == (tmp_path / "cpu.gguf").read_bytes()


def test_error_pass_without_the_native_build_dequantizes_on_the_device(fake, monkeypatch, tmp_path):
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 8 << 10)
    monkeypatch.setattr(pipeline, "native_backend", lambda n: (None, "no compiler"))
    src, _ = tiny_model(tmp_path / "in.gguf", "F32")
    on_gpu = gpuquant.quantize_file(src, tmp_path / "gpu.gguf", "Q4_K", backend="cupy")
    on_cpu = gpuquant.quantize_file(src, tmp_path / "cpu.gguf", "Q4_K", backend="numpy")
    assert fake.STATS["dequantize"] > 0  # the CuPy backend's dequantize kernels ran
    for g, c in zip(on_gpu.records, on_cpu.records, strict=True):
        assert g.error.max_abs == c.error.max_abs
        assert g.error.rel_rmse == pytest.approx(c.error.rel_rmse, rel=1e-6, abs=0)
