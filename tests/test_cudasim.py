"""The CUDA simulator itself (gpuquant/cudasim): CUDA's indexing, shared memory, barriers and
shuffles; misuse that a GPU would hang on or get wrong silently stops the launch with an error;
CuPy's launch and argument rules; guard bytes; and the real kernels under the simulator, including
one with a barrier removed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from gpuquant import hostkernels
from gpuquant.cudasim import build
from gpuquant.cudasim import cupy as sim

pytestmark = pytest.mark.skipif(hostkernels.find_compiler() is None,
                                reason="the CUDA simulator builds kernels with the host C++ compiler")

PROBES = Path(__file__).parent / "data" / "cudasim"


@pytest.fixture(scope="module")
def probe() -> sim.Module:
    module = sim.Module()
    module.load(build.load("probe.cu", PROBES))
    return module


def launch(module: sim.Module, name: str, grid: tuple, block: tuple, args: tuple) -> None:
    module.get_function(name)(grid, block, args)
    sim.get_current_stream().synchronize()


def test_signatures_are_read_from_the_source():
    kernels = {k.name: k for k in build.kernel_signatures("probe.cu", PROBES)}
    assert kernels["write_past_the_end"].describe() == "write_past_the_end(float* y, long long n, long long extra)"
    assert "mangled_kernel" in kernels  # a __global__ function, though not one a loader can find by name
    scalars = kernels["scalars"].parameters
    assert [(p.kind, p.dtype) for p in scalars] == [("pointer", "int64"), ("pointer", "int32"), ("pointer", "float32"),
                                                    ("scalar", "int64"), ("scalar", "int32"), ("scalar", "float32")]
    assert kernels["block_sum"].parameters[0].const and not kernels["block_sum"].parameters[1].const


@pytest.mark.parametrize("grid, block", [((3,), (7,)), ((2, 3), (4, 2)), ((2, 2, 2), (3, 2, 2))])
def test_thread_and_block_indices(probe, grid, block):
    gx, gy, gz = (grid + (1, 1))[:3]
    bx, by, bz = (block + (1, 1))[:3]
    n = gx * gy * gz * bx * by * bz
    out = sim.zeros(n, dtype=np.int32)
    launch(probe, "where_am_i", grid, block, (out, np.int64(n)))
    want = [bxi * 1000000 + byi * 10000 + tx * 100 + ty * 10 + tz
            for bzi in range(gz) for byi in range(gy) for bxi in range(gx)
            for tz in range(bz) for ty in range(by) for tx in range(bx)]
    assert out.get().tolist() == want


@pytest.mark.parametrize("width", [1, 2, 8, 16, 32])
@pytest.mark.parametrize("src", [0, 3, 7, 21, 40])
def test_shuffle_follows_cuda(probe, src, width):
    # CUDA: lane l reads lane (l & ~(width - 1)) + src % width, in its own segment of `width` lanes
    out = sim.zeros(32, dtype=np.int32)
    launch(probe, "shuffle", (1,), (32,), (out, np.int32(src), np.int32(width)))
    assert out.get().tolist() == [((lane & ~(width - 1)) + src % width) * 10 for lane in range(32)]


def test_bad_shuffle_width_stops_the_launch(probe):
    out = sim.zeros(32, dtype=np.int32)
    with pytest.raises(sim.SimulatorError, match="width 12 is not a power of two"):
        launch(probe, "shuffle", (1,), (32,), (out, np.int32(0), np.int32(12)))


def test_barriers_make_a_block_reduction_right(probe):
    x = np.arange(4 * 128, dtype=np.float32).reshape(4, 128) / 7
    out = sim.zeros(4, dtype=np.float32)
    launch(probe, "block_sum", (4,), (128,), (sim.asarray(x), out, np.int32(1)))
    want = x.copy()
    for stride in (64, 32, 16, 8, 4, 2, 1):  # the tree's order of additions, in float32
        want[:, :stride] += want[:, stride : 2 * stride]
    assert out.get().tolist() == want[:, 0].tolist()


def test_a_missing_barrier_gives_different_bytes_in_two_thread_orders(probe):
    x = np.arange(4 * 128, dtype=np.float32).reshape(4, 128) / 7
    out = sim.zeros(4, dtype=np.float32)
    with pytest.raises(sim.SimulatorError, match="two orders wrote different bytes"):
        launch(probe, "block_sum", (4,), (128,), (sim.asarray(x), out, np.int32(0)))


@pytest.mark.parametrize("workers", ["1", "4"])
def test_shared_memory_is_private_to_each_block(probe, monkeypatch, workers):
    monkeypatch.setenv(sim.THREADS_ENV, workers)
    out = sim.zeros(64 * 32, dtype=np.int32)
    launch(probe, "shared_is_per_block", (64,), (32,), (out,))
    assert out.get().tolist() == [b for b in range(64) for _ in range(32)]


@pytest.mark.parametrize("name, args, message", [
    ("early_exit_then_barrier", (np.int32(20),), "__syncthreads reached by 20 of the block's 32 threads"),
    ("shuffle_with_exited_lanes", (np.int32(20),), "waits for lane 20, which has exited"),
    ("syncwarp_without_own_lane", (), "__syncwarp called by lane 0, which its mask 0xfffffffe does not name"),
    ("shuffle_outside_mask", (np.int32(16),), "reads lane 16, which mask 0x0000ffff does not name"),
])
def test_barrier_misuse_stops_the_launch(probe, name, args, message):
    out = sim.zeros(32, dtype=np.int32)
    with pytest.raises(sim.SimulatorError, match=message):
        launch(probe, name, (1,), (32,), (out, *args))


def test_writes_out_of_bounds_are_caught_by_the_guards(probe):
    y = sim.zeros(100, dtype=np.float32)
    launch(probe, "write_past_the_end", (1,), (128,), (y, np.int64(100), np.int64(0)))
    with pytest.raises(sim.SimulatorError, match="wrote 4 bytes past the end of an allocation of 400 bytes"):
        launch(probe, "write_past_the_end", (1,), (128,), (y, np.int64(100), np.int64(1)))


def test_writes_through_a_pointer_to_const_are_caught(probe):
    with pytest.raises(sim.SimulatorError, match="wrote through const float\\* x, a pointer to const"):
        launch(probe, "write_through_const", (1,), (4,), (sim.zeros(4, dtype=np.float32),))


def test_allocations_start_aligned_like_cupy():
    for n in (1, 3, 100, 4097):
        assert sim.empty(n, dtype=np.uint8).data.ptr % sim.ALIGNMENT == 0


def test_intrinsics_as_cuda_defines_them(probe):
    f = np.array([0.0, -0.0, 1.5, np.inf, -3.25e-39, np.nan], dtype=np.float32)
    v = np.array([0, 1, -1, 255, 1 << 30, 0x00010000], dtype=np.int32)
    bits, clz = sim.zeros(6, dtype=np.uint32), sim.zeros(6, dtype=np.int32)
    launch(probe, "intrinsics", (1,), (8,), (sim.asarray(f), sim.asarray(v), bits, clz, np.int32(6)))
    assert bits.get().tolist() == f.view(np.uint32).tolist()
    assert clz.get().tolist() == [32, 31, 0, 24, 1, 15]


def test_scalars_arrive_with_their_widths(probe):
    a, b, c = sim.zeros(1, np.int64), sim.zeros(1, np.int32), sim.zeros(1, np.float32)
    launch(probe, "scalars", (1,), (1,), (a, b, c, np.int64(-(2**40) - 3), np.int32(-7), np.float32(0.1)))
    assert (a.get()[0], b.get()[0], c.get()[0]) == (-(2**40) - 3, -7, np.float32(0.1))


@pytest.mark.parametrize("args, message", [
    ((5, np.int32(1), np.float32(1)), r"argument 3 \(long long a\): needs numpy.int64, got int"),
    ((np.int32(5), np.int32(1), np.float32(1)), "needs numpy.int64, got int32"),
    ((np.int64(5), 1, np.float32(1)), "needs numpy.int32, got int"),
    ((np.int64(5), np.int32(1), 0.5), "needs numpy.float32, got float"),
    ((np.int64(5), np.int32(1), np.float64(0.5)), "needs numpy.float32, got float64"),
])
def test_scalar_arguments_must_match_the_signature(probe, args, message):
    a, b, c = sim.zeros(1, np.int64), sim.zeros(1, np.int32), sim.zeros(1, np.float32)
    with pytest.raises(sim.SimulatorError, match=message):
        probe.get_function("scalars")((1,), (1,), (a, b, c, *args))


def test_pointer_arguments_must_be_device_arrays_of_the_pointee_type(probe):
    fn = probe.get_function("write_past_the_end")
    n, zero = np.int64(4), np.int64(0)
    with pytest.raises(sim.SimulatorError, match="needs a device array, got ndarray"):
        fn((1,), (4,), (np.zeros(4, np.float32), n, zero))
    with pytest.raises(sim.SimulatorError, match="needs a float32 device array, got uint8"):
        fn((1,), (4,), (sim.zeros(16, np.uint8), n, zero))
    with pytest.raises(sim.SimulatorError, match="not C-contiguous"):
        fn((1,), (4,), (sim.zeros(8, np.float32)[::2], n, zero))
    with pytest.raises(sim.SimulatorError, match="takes 3 arguments, got 2"):
        fn((1,), (4,), (sim.zeros(4, np.float32), n))


@pytest.mark.parametrize("grid, block, error, message", [
    ((1,), (1025,), sim.CUDADriverError, "block\\[0\\] = 1025"),
    ((1,), (32, 32, 2), sim.CUDADriverError, "more than 1024 threads"),
    ((1,), (1, 1, 65), sim.CUDADriverError, "block\\[2\\] = 65"),
    ((1, 65536), (32,), sim.CUDADriverError, "grid\\[1\\] = 65536"),
    ((0,), (32,), sim.CUDADriverError, "grid\\[0\\] = 0"),
    ([1], (32,), TypeError, "grid must be a tuple"),
])
def test_launch_limits(probe, grid, block, error, message):
    with pytest.raises(error, match=message):
        probe.get_function("shared_is_per_block")(grid, block, (sim.zeros(4096, np.int32),))


def test_get_function_finds_extern_c_kernels_only(probe):
    with pytest.raises(sim.CUDADriverError, match="named symbol not found"):
        probe.get_function("no_such_kernel")
    with pytest.raises(sim.CUDADriverError, match="named symbol not found"):
        probe.get_function("mangled_kernel")
    with pytest.raises(sim.CUDADriverError, match="not a cubin"):
        sim.Module().load(b"\x7fELF")


def test_launches_wait_on_their_stream(probe):
    out = sim.zeros(32, dtype=np.int32)
    stream = sim.cuda.Stream(non_blocking=True)
    probe.get_function("shuffle")((1,), (32,), (out, np.int32(1), np.int32(32)), stream=stream)
    assert sim.STATS["kernel:shuffle"] >= 1
    before = np.empty(32, np.int32)
    out.get(stream=sim.get_current_stream(), out=before)  # another stream: the kernel has not run
    assert (before == 0).all()
    stream.synchronize()
    assert out.get().tolist() == [10] * 32


# ---------------------------------------------------------------- the real kernels


def test_every_kernel_of_every_module_builds_and_is_found():
    for source in sorted(p.name for p in hostkernels.kernels_dir().glob("*.cu")):
        module = sim.load_module(source)
        for name in build.load(source).kernels:
            assert module.get_function(name).signature.name == name


def test_row_statistics_lose_their_barrier_and_the_simulator_sees_it(tmp_path, monkeypatch):
    # gq_row_sigma2 transposes 32x32 tiles through shared memory; without the __syncwarp after the
    # reads, a lane refills the tile while others still read it.
    kernels = tmp_path / "kernels"
    shutil.copytree(hostkernels.kernels_dir(), kernels)
    source = (kernels / "legacy.cu").read_text()
    barrier = "        __syncwarp();\n    }\n    const gq_i64 my_row"
    assert source.count(barrier) == 1
    (kernels / "legacy.cu").write_text(source.replace(barrier, "    }\n    const gq_i64 my_row"))
    module = sim.Module()
    module.load(build.load("legacy.cu", kernels))
    x = (np.random.default_rng(1).standard_normal((40, 96)) * 0.02).astype(np.float32)
    sigma2 = sim.zeros(40, dtype=np.float32)
    args = (sim.asarray(x), sigma2, np.int64(40), np.int64(96))
    with pytest.raises(sim.SimulatorError, match="gq_row_sigma2: the threads run in two orders wrote different"):
        launch(module, "gq_row_sigma2", (2,), (32,), args)
    good = sim.load_module("legacy.cu")
    launch(good, "gq_row_sigma2", (2,), (32,), args)
    want = np.zeros(40, np.float32)
    for j in range(96):  # in order, as ggml sums a row
        want += x[:, j] * x[:, j]
    assert sigma2.get().view(np.uint32).tolist() == (want / np.float32(96)).view(np.uint32).tolist()


def test_a_cost_free_device_skips_copies_and_kernels_for_benchmarks(monkeypatch):
    # benchmarks/run.py --only gpu-host times the streaming engine's host side with it
    from gpuquant.backends import Chunk
    from gpuquant.backends.cupy import CupyBackend
    from gpuquant.backends.cupy.device import SIMULATOR_ENV
    from gpuquant.qtypes import QTYPES

    def no_launch(*args, **kwargs):
        raise AssertionError("a kernel ran on the cost-free device")

    monkeypatch.setenv(SIMULATOR_ENV, "1")
    monkeypatch.setattr(sim, "COST_FREE_DEVICE", True)
    monkeypatch.setattr(sim.Function, "_launch", no_launch)
    x = np.ones((64, 256), dtype=np.float32)
    x[3, 5] = np.nan  # the finite check costs nothing either: it passes
    chunks = [Chunk(x, QTYPES["Q4_0"], None, measure=True),
              Chunk(x.astype(np.float16).view(np.uint8), QTYPES["Q4_K"], None, QTYPES["F16"], measure=True)]
    outputs = [out.q.copy() for out in CupyBackend().quantize_chunks(chunks, check_finite=True)]
    assert outputs[0].shape == (64, 256 // 32 * 18) and (outputs[0] == 0xCD).all()  # never written: garbage
    assert outputs[1].shape == (64, 144) and (outputs[1] == 0xCD).all()
