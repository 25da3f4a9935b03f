"""The GPU file pipeline's streaming engine (gpuquant/backends/cupy/stream.py), run without a GPU.

The CUDA simulator (gpuquant/cudasim, GPUQUANT_CUDA_SIM=1) stands in for CuPy and the device: work
queued on a stream runs only when the host waits for it, as on a GPU, and the launchers launch the
real kernels/*.cu, built for the CPU. Every output must equal the numpy backend's, byte for byte,
whatever the chunk shapes, sources, slot sizes and types; the error figures measured on the device
must agree with the numpy backend's to float rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from kernel_inputs import random_imatrix, random_rows
from tiny_models import kokoro_like, write_tiny

import gpuquant
from gpuquant import hostkernels, pipeline
from gpuquant.backends import Chunk, NonFiniteError, get_backend
from gpuquant.backends.cupy import CupyBackend
from gpuquant.backends.cupy.device import SIMULATOR_ENV
from gpuquant.backends.cupy.stream import (
    DEFAULT_DEVICE_MEMORY,
    DEFAULT_SLOTS,
    DEVICE_MEMORY_ENV,
    StreamEngine,
    device_memory_setting,
)
from gpuquant.backends.numpy_backend import NumpyBackend
from gpuquant.cudasim import cupy as simulated_cupy
from gpuquant.imatrix import Imatrix
from gpuquant.outputs import RunOptions
from gpuquant.qtypes import QTYPES

pytestmark = pytest.mark.skipif(hostkernels.find_compiler() is None,
                                reason="the CUDA simulator builds the kernels for the CPU: needs a C++ compiler")

# A slot keeps room for its regions' alignment (8 of 256 bytes) whatever the piece, and 1/32 of
# itself for kernels' scratch (see usable).
ALIGNMENT_ROOM = 8 * 256
# 4 slots of 10.5 KiB: a piece holds 7 rows of 256 float32 bound for Q4_0, 1 row of 512 F16
# measured with an importance matrix (see device_row_bytes).
TINY_MEMORY = 4 * 10752
# 4 slots of 3 rows of 256 float32 bound for Q4_0 (1169 bytes a row)
THREE_ROWS_OF_Q4_0 = 4 * 5800


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


def stored(x: np.ndarray, source: str) -> np.ndarray:
    """float32 rows as a file of type `source` stores them (the chunk's data); rows of the "huge" kind
    (3e5) are scaled into F16's range first, as they would overflow to Inf there."""
    if source == "F32":
        return x
    x = np.where(np.abs(x) > 1e4, x * np.float32(1e-3), x).astype(np.float32)
    q = NumpyBackend().quantize(np.ascontiguousarray(x), QTYPES[source], None)
    return q.reshape(x.shape[0], -1)


def chunk(x, target: str, w=None, source: str = "F32", measure: bool = False, sample=None) -> Chunk:
    return Chunk(stored(x, source), QTYPES[target], w, QTYPES[source], measure,
                 None if sample is None else np.asarray(sample, dtype=np.int64))


def mixed_chunks() -> list[Chunk]:
    """Chunks of several tensors in a row: types, sources (F32, F16, BF16, a quantized one), widths,
    an importance matrix that comes, changes, comes back and goes, an empty chunk, one-row chunks,
    strided views, measured chunks (all rows or a sample)."""
    im_a, im_b, im_c = random_imatrix(1, 256), random_imatrix(2, 256), random_imatrix(3, 512)
    big = rows(10, 37, 256)
    f16 = stored(rows(22, 30, 256), "F16")
    return [
        chunk(big, "Q4_0"),
        chunk(rows(11, 1, 512), "Q8_0", measure=True),
        chunk(rows(12, 5, 256), "Q4_1", im_a),
        chunk(rows(13, 6, 256), "Q4_1", im_b, measure=True),
        chunk(rows(14, 4, 256), "Q4_1", im_a),
        chunk(rows(15, 9, 256), "Q5_0", im_a.copy()),  # the same values in another array
        chunk(np.zeros((0, 256), np.float32), "Q5_0", im_a, measure=True),
        chunk(rows(16, 7, 512), "Q5_1", im_c),
        chunk(rows(17, 3, 64), "F16"),
        chunk(rows(18, 3, 64), "BF16", measure=True),
        chunk(rows(19, 2, 96), "F32", measure=True),
        chunk(big[1::3, 32:160], "Q4_0"),  # not contiguous: rows 1, 4, ..., columns 32..159
        chunk(rows(20, 1, 32), "Q4_0"),
        chunk(rows(21, 8, 256), "Q8_0", im_b),  # Q8_0 ignores the importance matrix
        chunk(rows(23, 19, 256), "Q4_K", source="F16", measure=True),
        Chunk(f16[::2], QTYPES["Q4_K"], None, QTYPES["F16"], True, np.array([0, 3, 14])),  # strided, a sample
        chunk(rows(24, 11, 512), "Q5_0", im_c, source="BF16", measure=True, sample=[2, 9]),
        chunk(rows(25, 13, 256), "Q4_0", source="Q8_0", measure=True),  # requantizing
        chunk(rows(26, 4, 256), "F32", source="F16", measure=True),
        chunk(rows(27, 5, 256), "IQ4_NL", im_b, source="F16", measure=True),
    ]


def run(backend, chunks, check_finite: bool = True) -> list[np.ndarray]:
    """The outputs' bytes, each copied and released at once (as a writer would)."""
    got = []
    for out in backend.quantize_chunks(chunks, check_finite):
        got.append(out.q.copy())
        out.release()
    return got


def run_measured(backend, chunks, check_finite: bool = True) -> list:
    got = []
    for out in backend.quantize_chunks(chunks, check_finite):
        got.append((out.q.copy(), out.error))
        out.release()
    return got


def expected(chunks, check_finite: bool = True) -> list[np.ndarray]:
    return run(NumpyBackend(), chunks, check_finite)


def chunks_with_non_finite_row(bad: float, bad_row: int) -> list[Chunk]:
    """Four Q4_0 chunks of 20 rows of 256; the third holds `bad` in row bad_row."""
    chunks = [chunk(rows(30 + i, 20, 256), "Q4_0") for i in range(4)]
    chunks[2].data[bad_row, 77] = bad
    return chunks


def assert_stops_at_non_finite_row(backend, chunks, bad_row: int) -> list[np.ndarray]:
    """quantize_chunks(check_finite=True) yields the numpy backend's bytes of the first two chunks of
    chunks_with_non_finite_row, then raises NonFiniteError naming bad_row. Returns those two."""
    want = expected(chunks[:2])
    outputs = backend.quantize_chunks(chunks, check_finite=True)
    assert np.array_equal(next(outputs).q, want[0])
    assert np.array_equal(next(outputs).q, want[1])
    with pytest.raises(NonFiniteError) as raised:
        next(outputs)
    assert raised.value.row == bad_row
    return want


def assert_same_outputs(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.dtype == w.dtype and g.shape == w.shape, f"chunk {i}: {g.dtype}{g.shape} vs {w.dtype}{w.shape}"
        assert np.array_equal(g, w), f"chunk {i}: rows {np.flatnonzero((g != w).any(axis=1)).tolist()} differ"


def device_row_bytes(c: Chunk, check_finite: bool) -> tuple[int, int]:
    """(device bytes a row of the chunk takes, bytes a piece takes whatever its rows): the stored row
    (not for F32, copied straight to x), float32 x, the output, the finite flag, and when measured
    the round trip y and 5 float64 sums; the importance matrix once."""
    n = c.n_per_row
    check = check_finite and not c.qtype.is_float
    per_row = (0 if c.source.name == "F32" else c.data.shape[1] * c.data.itemsize) + 4 * n \
        + c.qtype.row_bytes(n) + int(check) + ((4 * n + 40) if c.measure else 0)
    return per_row, 4 * n if c.imatrix is not None else 0


def pieces(c: Chunk, memory: int, slots: int, check_finite: bool = True) -> int:
    if c.rows == 0:
        return 0
    per_row, fixed = device_row_bytes(c, check_finite)
    return -(-c.rows // ((usable(memory, slots) - fixed) // per_row))


def usable(memory: int, slots: int) -> int:
    """A slot's bytes for its pieces' regions: 1/32 is kept for kernels' scratch, and room for alignment."""
    slot = memory // slots
    return slot - slot // 32 - ALIGNMENT_ROOM


@pytest.mark.parametrize("memory, slots", [
    (TINY_MEMORY, 4),  # most chunks split into pieces of 1 to 7 rows
    (2 * (ALIGNMENT_ROOM + 12288), 2),  # two slots of 12 KiB and their alignment
    (None, DEFAULT_SLOTS),  # the default: no chunk here is split
    (None, 3),
], ids=["tiny-4", "small-2", "default", "default-3"])
def test_chunks_match_numpy_backend(fake, memory, slots):
    chunks = mixed_chunks()
    backend = CupyBackend(device_memory_bytes=memory, stream_slots=slots)
    got = run_measured(backend, chunks)
    want = run_measured(NumpyBackend(), chunks)
    assert_same_outputs([q for q, _ in got], [q for q, _ in want])
    for c, (_, g), (_, w) in zip(chunks, got, want, strict=True):
        assert (g is None) == (w is None) == (not c.measure)
        if g is not None:  # measured on the device: the host's figures to float rounding
            assert (g.rows, g.weighted, g.max_abs) == (w.rows, w.weighted, w.max_abs)
            for name in ("sum_sq_x", "sum_sq_err", "w_sum_sq_x", "w_sum_sq_err"):
                assert getattr(g, name) == pytest.approx(getattr(w, name), rel=1e-6, abs=0), name
    # Every step of every piece, counted: what the device did is what the engine says it does.
    budget = memory or DEFAULT_DEVICE_MEMORY
    count = {}
    for key, wanted in (("all", lambda c: True), ("checked", lambda c: not c.qtype.is_float),
                        ("f32 target", lambda c: c.qtype.name == "F32"), ("measured", lambda c: c.measure),
                        ("measured f32 target", lambda c: c.measure and c.qtype.name == "F32"),
                        ("converted", lambda c: c.source.name != "F32"),
                        ("measured block target", lambda c: c.measure and c.qtype.name != "F32")):
        count[key] = sum(pieces(c, budget, slots) for c in chunks if wanted(c))
    assert 0 < count["checked"] < count["all"] and count["f32 target"] > 0 and count["converted"] > 0
    assert fake.STATS["quantize"] == count["all"] - count["f32 target"]
    assert fake.STATS["d2d"] == count["f32 target"] + count["measured f32 target"]  # F32: device copies
    assert fake.STATS["dequantize"] == count["converted"] + count["measured block target"]
    assert fake.STATS["h2d"] >= count["all"]
    assert fake.STATS["d2h"] == count["all"] + count["checked"] + count["measured"]  # outputs, flags, sums
    assert fake.STATS["kernel:gq_check_rows"] == count["checked"]
    assert fake.STATS["kernel:gq_error_rows_plain"] + fake.STATS["kernel:gq_error_rows_weighted"] == \
        count["measured"]
    assert fake.STATS["elementwise"] == fake.STATS["reduce"] == 0  # nothing but the kernels
    assert 0 < fake.STATS["device_peak"] <= budget
    if memory == TINY_MEMORY:
        assert count["all"] > 2 * len(chunks)


def test_figures_do_not_depend_on_how_rows_are_split(fake):
    """The same measured chunk in pieces of 1 row and in one piece: the same figures, bit for bit."""
    c = chunk(rows(28, 23, 512), "Q4_K", random_imatrix(4, 512), source="F16", measure=True)
    per_row, fixed = device_row_bytes(c, True)
    one_row = CupyBackend(device_memory_bytes=4 * int((ALIGNMENT_ROOM + per_row + fixed) * 32 / 31 + 8),
                          stream_slots=4)
    (q1, e1), = run_measured(one_row, [c])
    (q2, e2), = run_measured(CupyBackend(), [c])
    assert np.array_equal(q1, q2) and e1 == e2 and e1.rows == 23


def test_outputs_without_finite_check_and_a_second_run(fake):
    chunks = mixed_chunks()
    backend = CupyBackend(device_memory_bytes=TINY_MEMORY, stream_slots=4)
    assert_same_outputs(run(backend, chunks, check_finite=False), expected(chunks, check_finite=False))
    assert fake.STATS["kernel:gq_check_rows"] == 0
    run(backend, chunks)
    # the same backend again: its engine and buffers are reused; only the row statistics of the
    # weighted legacy kernels are allocated anew
    allocations = fake.STATS["device_allocs"] + fake.STATS["pinned_allocs"]
    sigma2_before = fake.STATS["kernel:gq_row_sigma2"]
    assert_same_outputs(run(backend, chunks), expected(chunks))
    sigma2 = fake.STATS["kernel:gq_row_sigma2"] - sigma2_before
    assert sigma2 > 0
    assert fake.STATS["device_allocs"] + fake.STATS["pinned_allocs"] - allocations == sigma2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("bad_row", [0, 13, 19])
def test_non_finite_weight_raises_when_its_chunk_is_due(fake, bad, bad_row):
    chunks = chunks_with_non_finite_row(bad, bad_row)
    backend = CupyBackend(device_memory_bytes=THREE_ROWS_OF_Q4_0, stream_slots=4)  # 3 rows a piece: 7 pieces a chunk
    want = assert_stops_at_non_finite_row(backend, chunks, bad_row)
    assert fake.STATS["quantize_nonfinite"] == 0  # the kernels never saw the bad value
    with pytest.raises(NonFiniteError) as reference:
        run(NumpyBackend(), chunks)
    assert reference.value.row == bad_row
    # without the check the run goes through; and the engine is whole again for the next run
    assert len(run(backend, chunks, check_finite=False)) == 4
    assert fake.STATS["quantize_nonfinite"] == 1
    assert_same_outputs(run(backend, chunks[:2]), want)


@pytest.mark.parametrize("source", ["F16", "BF16"])
def test_non_finite_f16_and_bf16_words_are_caught_on_the_device(fake, source):
    x = rows(29, 9, 256)
    data = stored(x, source).copy()
    words = data.view(np.uint16)
    words[4, 10] = 0x7C00 if source == "F16" else 0x7F80  # +Inf
    words[6, 0] = 0x7E01 if source == "F16" else 0x7FC1  # a NaN
    c = Chunk(data, QTYPES["Q4_K"], None, QTYPES[source], True, None)
    for backend in (CupyBackend(device_memory_bytes=4 * 8400, stream_slots=4), NumpyBackend()):
        with pytest.raises(NonFiniteError) as raised:
            run(backend, [c])
        assert raised.value.row == 4
    assert fake.STATS["quantize_nonfinite"] == 0
    # bound for F16 itself, NaN and Inf are values: carried, not refused, on both
    f16 = c._replace(qtype=QTYPES["F16"])
    assert_same_outputs(run(CupyBackend(), [f16]), expected([f16]))


def test_widening_on_the_device_is_ggmls_for_every_f16_and_bf16_word(fake):
    """All 65536 words of each through the device's conversion (and on to F32, a device copy): the
    host's bits (NaN payloads, signalling NaNs quieted as ggml's conversion does)."""
    words = np.arange(1 << 16, dtype=np.uint16).reshape(256, 256)
    for source in ("F16", "BF16"):
        c = Chunk(words.view(np.uint8), QTYPES["F32"], None, QTYPES[source])
        got = run(CupyBackend(), [c])[0].view(np.uint32)
        want = NumpyBackend().dequantize(words.view(np.uint8), QTYPES[source], 256).view(np.uint32)
        assert np.array_equal(got, want), source


def test_abandoned_and_interleaved_runs(fake):
    chunks = [chunk(rows(40 + i, 10, 256), "Q4_0") for i in range(5)]
    want = expected(chunks)
    backend = CupyBackend(device_memory_bytes=THREE_ROWS_OF_Q4_0, stream_slots=4)
    first = backend.quantize_chunks(chunks, True)
    out = next(first)
    got_first = [out.q.copy()]
    out.release()
    second = backend.quantize_chunks(chunks, True)  # while the first is in flight: its own engine
    got_second = []
    for _ in range(3):
        out = next(second)
        got_second.append(out.q.copy())
        out.release()
    got_first += run_rest(first)
    got_second += run_rest(second)
    assert_same_outputs(got_first, want)
    assert_same_outputs(got_second, want)
    third = backend.quantize_chunks(chunks, True)
    next(third)
    third.close()  # abandoned half way, as the pipeline does after its last output
    assert_same_outputs(run(backend, chunks), want)


def run_rest(outputs) -> list[np.ndarray]:
    got = []
    for out in outputs:
        got.append(out.q.copy())
        out.release()
    return got


def test_large_pieces_are_filled_by_several_threads(fake):
    # Pieces of MiBs: the pinned buffer is filled by 5 threads over row ranges, contiguous or not.
    rng = np.random.default_rng(45)
    big = (rng.standard_normal((1400, 1024)) * 0.02).astype(np.float32)
    chunks = [chunk(big[:700], "Q8_0"), chunk(big[1::2], "Q4_0"), chunk(big[700:703], "Q4_0"),
              chunk(big[:640], "Q4_K", source="F16")]
    engine = StreamEngine(CupyBackend(), 64 << 20, slots=2, copy_threads=5)
    try:
        assert_same_outputs(run_rest(engine.run(chunks, True)), expected(chunks))
    finally:
        engine.close()


def test_outputs_are_lent_until_released_and_copied_past_the_limit(fake):
    """The writer writes an output straight from its slot's pinned memory: lent until released, at
    most slots - 2 at once. A consumer that keeps every output never stalls the engine: past the
    limit, outputs come as copies, and every output stays right until it is released."""
    chunks = [chunk(rows(50 + i, 3, 256), "Q8_0") for i in range(9)]
    want = expected(chunks)
    kept = list(CupyBackend(stream_slots=4).quantize_chunks(chunks, True))  # nothing released
    assert_same_outputs([out.q for out in kept], want)
    lent = [out for out in kept if not out.q.flags.owndata]
    assert len(lent) == 2  # 4 slots, 2 kept for computing
    for out in kept:
        out.release()
        out.release()  # a second release changes nothing
    assert_same_outputs(run(CupyBackend(stream_slots=4), chunks), want)


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
    small = CupyBackend(device_memory_bytes=6 * 3100)  # a slot has room for 900 bytes: a row of 256 float32 is 1024
    with pytest.raises(ValueError, match="GPU memory setting"):
        run(small, [chunk(rows(60, 2, 256), "Q4_0")])
    with pytest.raises(ValueError, match="imatrix has 128 values"):
        run(backend, [chunk(rows(61, 2, 256), "Q4_0", random_imatrix(1, 128))])
    with pytest.raises(ValueError, match="float32"):
        run(backend, [Chunk(rows(62, 2, 256).astype(np.float64), QTYPES["Q4_0"])])
    with pytest.raises(ValueError, match="not whole F16 blocks|uint8"):
        run(backend, [Chunk(np.zeros((2, 7), np.uint8), QTYPES["Q4_0"], None, QTYPES["F16"])])


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
    on_gpu = gpuquant.quantize_file(src, tmp_path / "gpu.gguf", target, imatrix=imatrix,
                                    options=RunOptions(backend="cupy"))
    on_cpu = gpuquant.quantize_file(src, tmp_path / "cpu.gguf", target, imatrix=imatrix,
                                    options=RunOptions(backend="numpy"))
    assert on_gpu.backend == "cupy" and on_cpu.backend == "numpy"
    assert [r.dst_type for r in on_gpu.records] == [r.dst_type for r in on_cpu.records]
    assert sum(r.imatrix_used for r in on_gpu.records) == (2 if weighted else 0)
    assert (tmp_path / "gpu.gguf").read_bytes() == (tmp_path / "cpu.gguf").read_bytes()
    # the error measured on the device: the numpy backend's figures to float rounding
    for g, c in zip(on_gpu.records, on_cpu.records, strict=True):
        assert g.error.rows_measured == c.error.rows_measured and g.error.max_abs == c.error.max_abs
        assert g.error.rel_rmse == pytest.approx(c.error.rel_rmse, rel=1e-6, abs=0)
    converted = [r for r in on_gpu.records if r.src_type != r.dst_type]
    assert fake.STATS["kernel:gq_error_rows_plain"] + fake.STATS["kernel:gq_error_rows_weighted"] > 0
    chunks = sum(-(-r.n_elements * 4 // (8 << 10)) for r in converted)
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
            gpuquant.quantize_file(src, dst, "Q4_0", options=RunOptions(backend=backend))
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
    summary = gpuquant.quantize_file(src, tmp_path / "gpu.gguf", "Q4_0", options=RunOptions(backend="cupy"))
    note = [w for w in summary.warnings if DEVICE_MEMORY_ENV in w]
    assert len(note) == 1 and "using 943718" in note[0]
    gpuquant.quantize_file(src, tmp_path / "cpu.gguf", "Q4_0", options=RunOptions(backend="numpy"))
    assert (tmp_path / "gpu.gguf").read_bytes() == (tmp_path / "cpu.gguf").read_bytes()


def test_sampled_figures_match_numpy(fake, monkeypatch, tmp_path):
    """--report-sample rows measured on the device: the numpy backend's rows and figures."""
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 8 << 10)
    src, _ = tiny_model(tmp_path / "in.gguf", "F16")
    on_gpu = gpuquant.quantize_file(src, tmp_path / "gpu.gguf", "Q4_K",
                                    options=RunOptions(backend="cupy", report_sample=7))
    on_cpu = gpuquant.quantize_file(src, tmp_path / "cpu.gguf", "Q4_K",
                                    options=RunOptions(backend="numpy", report_sample=7))
    assert (tmp_path / "gpu.gguf").read_bytes() == (tmp_path / "cpu.gguf").read_bytes()
    sampled = [r for r in on_gpu.records if r.error is not None and r.error.rows_measured < r.error.rows_total]
    assert sampled
    for g, c in zip(on_gpu.records, on_cpu.records, strict=True):
        assert g.error.rows_measured == c.error.rows_measured and g.error.max_abs == c.error.max_abs
        assert g.error.rel_rmse == pytest.approx(c.error.rel_rmse, rel=1e-6, abs=0)


@pytest.mark.parametrize("source", ["F32", "F16"])
def test_several_outputs_from_one_read_on_the_gpu_engine(fake, monkeypatch, tmp_path, source):
    """quantize_model hands the engine each chunk's rows once per type (the same array): every output
    is the numpy backend's file, and the lent buffers go back after their last write."""
    from gpuquant.outputs import OutputSpec
    from gpuquant.pipeline import quantize_model

    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 8 << 10)
    monkeypatch.setenv(DEVICE_MEMORY_ENV, "96K")
    src, _ = tiny_model(tmp_path / "in.gguf", source)
    types = ["Q4_0", "Q8_0", "Q4_1", "F16"]
    gpu = quantize_model(src, [OutputSpec.make(tmp_path / f"gpu-{t}.gguf", t) for t in types],
                         RunOptions(backend="cupy"))
    for t, summary in zip(types, gpu, strict=True):
        cpu = gpuquant.quantize_file(src, tmp_path / f"cpu-{t}.gguf", t, options=RunOptions(backend="numpy"))
        assert summary.backend == "cupy"
        assert (tmp_path / f"gpu-{t}.gguf").read_bytes() == (tmp_path / f"cpu-{t}.gguf").read_bytes(), t
        for a, b in zip(summary.records, cpu.records, strict=True):
            if b.error is not None and b.dst_type != b.src_type:
                assert a.error.rel_rmse == pytest.approx(b.error.rel_rmse, rel=1e-6)


def test_several_outputs_copy_and_widen_each_chunk_once(fake, monkeypatch, tmp_path):
    """The engine groups a chunk's outputs: its rows go to the device and are widened once, however
    many types are made of them (no memory setting, so that no chunk is split into pieces)."""
    from gpuquant.outputs import OutputSpec
    from gpuquant.pipeline import quantize_model

    src, _ = tiny_model(tmp_path / "in.gguf", "F16")
    options = RunOptions(backend="cupy", measure_error=False)

    def counts(types: list[str]) -> tuple[int, int, int]:
        fake.reset()
        quantize_model(src, [OutputSpec.make(tmp_path / f"{len(types)}-{t}.gguf", t) for t in types], options)
        stats = fake.STATS
        return stats["h2d"], stats["kernel:gq_dequantize_f16"], sum(
            n for k, n in stats.items() if k.startswith("kernel:gq_quantize"))

    one = counts(["Q4_0"])
    four = counts(["Q4_0", "Q8_0", "Q4_1", "Q5_0"])
    assert one[0] == four[0] > 0  # the rows' uploads
    assert one[1] == four[1] > 0  # the F16 rows widened
    assert four[2] == 4 * one[2] > 0  # and quantized once per type
    for t in ["Q4_0", "Q8_0", "Q4_1", "Q5_0"]:  # lent from the slots' pinned buffers, each written whole
        gpuquant.quantize_file(src, tmp_path / f"cpu-{t}.gguf", t, options=RunOptions(backend="numpy"))
        assert (tmp_path / f"4-{t}.gguf").read_bytes() == (tmp_path / f"cpu-{t}.gguf").read_bytes(), t
