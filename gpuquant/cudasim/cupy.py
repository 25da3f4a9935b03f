"""The CUDA simulator's CuPy: the part of CuPy that gpuquant's CuPy backend uses, over host memory,
launching the real kernels/*.cu built for the CPU (build.py, cuda_sim.cpp).

What it checks that a GPU run would only get wrong silently:
- Work is deferred as on a GPU: copies, kernels and reductions queued on a stream run only when the
  host waits for them (Stream.synchronize, Event.synchronize, a blocking get), in queue order per
  stream, each reading its inputs when it runs. Stale pinned buffers, refills of buffers a queued
  copy still reads, and unsynchronized streams give stale bytes here as on a GPU. New device and
  pinned memory holds 0xCD garbage. Device arrays are not host arrays: converting one raises.
- A launch `fn(grid, block, args, stream=..., shared_mem=...)` checks CUDA's grid and block limits
  and each argument against the kernel's C signature: a device array of the pointee's dtype for a
  pointer, a NumPy scalar of exactly the declared width and kind for a scalar (a Python int where
  the kernel takes gq_i64, or a float64 where it takes float, is an error, not a silent cast).
- Every kernel runs twice, its threads (and blocks) in opposite orders, from the same device memory;
  the two results must be the same bytes, or a race or a missing barrier is reported. Memory that
  the kernel reaches only through pointers to const must come out unchanged.
- Device allocations carry guard bytes on both sides, checked after every launch: a kernel that
  writes out of bounds fails.

It counts what the engine did (STATS): operations by kind (h2d, d2h, d2d, kernel, quantize and
dequantize launches, elementwise), quantize launches on non-finite input, and allocations
with the live and peak device and pinned bytes.
"""

from __future__ import annotations

import ctypes
import os
import threading
import types
import weakref
from collections import Counter

import numpy as np

from . import build

_lock = threading.RLock()  # queues, execution and counters: the engine calls in from two threads
_local = threading.local()
STATS: Counter = Counter()

THREADS_ENV = "GPUQUANT_CUDA_SIM_THREADS"  # CPU threads a launch spreads its blocks over
# A benchmark switch, never a product mode (the outputs are garbage): device copies and kernels
# cost nothing, as the DMA engines and the GPU take them off the host, so that a benchmark times the
# streaming engine's host side alone. Nothing moves: the host sees what its pinned buffers held.
COST_FREE_DEVICE = False


def _nothing() -> None:
    pass
GUARD_BYTES = 256
ALIGNMENT = 256  # CuPy's allocations start 256-byte aligned: the kernels' vector loads see the same
_GUARD_PATTERN = np.random.default_rng(0x6A5D).integers(0, 256, GUARD_BYTES, dtype=np.uint8)


def reset() -> None:
    with _lock:
        STATS.clear()


class SimulatorError(RuntimeError):
    """A kernel launch that would be wrong on a GPU: a bad argument, a race, an out-of-bounds write."""


class CUDADriverError(RuntimeError):
    """cupy.cuda.driver.CUDADriverError's name: a failed CUDA call (as a GPU would report it)."""


class OutOfMemoryError(MemoryError):
    """cupy.cuda.memory.OutOfMemoryError's name, for fault tests."""


class CompileException(Exception):
    """cupy.cuda.compiler.CompileException's name, for fault tests."""


# ---------------------------------------------------------------- memory


class _Allocation:
    """Device memory: nbytes between two guard zones, the user region 256-byte aligned."""

    live: weakref.WeakSet = weakref.WeakSet()

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        raw = np.empty(nbytes + 2 * GUARD_BYTES + ALIGNMENT, dtype=np.uint8)
        skip = (-(raw.ctypes.data + GUARD_BYTES)) % ALIGNMENT
        self.whole = raw[skip : skip + nbytes + 2 * GUARD_BYTES]  # guard, user region, guard
        self.whole[:GUARD_BYTES] = _GUARD_PATTERN
        self.whole[GUARD_BYTES + nbytes :] = _GUARD_PATTERN
        self.user = self.whole[GUARD_BYTES : GUARD_BYTES + nbytes]
        if not COST_FREE_DEVICE:  # device memory is the GPU's: filling it would cost the host
            self.user[...] = 0xCD
        _Allocation.live.add(self)
        with _lock:
            STATS["device_allocs"] += 1
            STATS["device_live"] += nbytes
            STATS["device_peak"] = max(STATS["device_peak"], STATS["device_live"])
        weakref.finalize(self, _freed, "device", nbytes)

    def damaged_guard(self) -> str | None:
        """Where a write landed outside the allocation, or None."""
        before = np.flatnonzero(self.whole[:GUARD_BYTES] != _GUARD_PATTERN)
        after = np.flatnonzero(self.whole[GUARD_BYTES + self.nbytes :] != _GUARD_PATTERN)
        if before.size:
            return f"{GUARD_BYTES - int(before[0])} bytes before an allocation of {self.nbytes} bytes"
        if after.size:
            return f"{int(after[-1]) + 1} bytes past the end of an allocation of {self.nbytes} bytes"
        return None


def _freed(kind: str, n: int) -> None:
    with _lock:
        STATS[f"{kind}_live"] -= n


class MemoryPointer:
    """cupy.cuda.MemoryPointer: a byte offset into a device allocation."""

    def __init__(self, allocation: _Allocation, offset: int) -> None:
        self.allocation, self.offset = allocation, offset

    @property
    def ptr(self) -> int:
        return self.allocation.user.ctypes.data + self.offset

    def _bytes(self, size: int) -> np.ndarray:
        if self.offset + size > self.allocation.nbytes:
            raise CUDADriverError("CUDA_ERROR_INVALID_VALUE: a copy past the end of a device allocation")
        return self.allocation.user[self.offset : self.offset + size]

    def copy_from_device_async(self, src: MemoryPointer, size: int, stream: Stream | None = None) -> None:
        dst_bytes, src_bytes = self._bytes(size), src._bytes(size)
        _stream(stream)._queue("d2d", lambda: np.copyto(dst_bytes, src_bytes))


class ndarray:  # noqa: N801 (cupy's name)
    """A device array: a NumPy view of simulated device memory that host code cannot read directly."""

    def __init__(self, memory: np.ndarray, allocation: _Allocation) -> None:
        self._a = memory
        self._allocation = allocation

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    ndim = property(lambda self: self._a.ndim)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T, self._allocation))

    @property
    def data(self) -> MemoryPointer:
        return MemoryPointer(self._allocation, self._a.ctypes.data - self._allocation.user.ctypes.data)

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed (CUDA simulator)")

    def __getitem__(self, key) -> ndarray:
        return ndarray(self._a[key], self._allocation)

    def view(self, dtype) -> ndarray:
        return ndarray(self._a.view(dtype), self._allocation)

    def reshape(self, *shape) -> ndarray:
        return ndarray(self._a.reshape(*shape), self._allocation)

    def astype(self, dtype) -> ndarray:
        out = empty(self.shape, dtype=dtype)
        src = self._a
        get_current_stream()._queue("elementwise", lambda: np.copyto(out._a, src.astype(dtype)))
        return out

    def set(self, arr: np.ndarray, stream=None) -> None:
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if arr.dtype != self.dtype or arr.shape != self.shape:
            raise ValueError(f"set: {arr.dtype}{arr.shape} into {self.dtype}{self.shape}")
        if not self._a.flags.c_contiguous:
            raise RuntimeError("Cannot set to non-contiguous array")
        src, dst = np.ascontiguousarray(arr), self._a  # like CuPy: a non-contiguous source is copied now
        _stream(stream)._queue("h2d", lambda: np.copyto(dst, src))

    def get(self, stream=None, order="C", out: np.ndarray | None = None, blocking: bool = True) -> np.ndarray:
        if out is None:
            out = np.empty(self.shape, dtype=self.dtype)
        elif not isinstance(out, np.ndarray):
            raise TypeError("Only numpy.ndarray can be obtained from cupy.ndarray")
        elif out.dtype != self.dtype or out.shape != self.shape:
            raise ValueError(f"get: {self.dtype}{self.shape} into {out.dtype}{out.shape}")
        if not (out.flags.c_contiguous and self._a.flags.c_contiguous):
            raise RuntimeError("the simulator copies C-contiguous arrays only")
        src = self._a
        stream = _stream(stream)
        stream._queue("d2h", lambda: np.copyto(out, src))
        if blocking:
            stream.synchronize()
        return out

float32, float64, uint8, int32, int64, bool_ = np.float32, np.float64, np.uint8, np.int32, np.int64, np.bool_


def empty(shape, dtype=np.float64) -> ndarray:
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    allocation = _Allocation(count * dtype.itemsize)
    return ndarray(allocation.user.view(dtype).reshape(shape), allocation)


def asarray(arr, dtype=None) -> ndarray:
    """A device copy of a host array (synchronous, as cupy.asarray of a NumPy array is)."""
    host = np.ascontiguousarray(np.asarray(arr, dtype=dtype))
    out = empty(host.shape, host.dtype)
    np.copyto(out._a, host)
    return out


def zeros(shape, dtype=np.float64) -> ndarray:
    out = empty(shape, dtype)
    out._a[...] = 0
    return out


def ones(shape, dtype=np.float64) -> ndarray:
    out = empty(shape, dtype)
    out._a[...] = 1
    return out


class _MemoryPool:
    """CuPy's pool caches freed device memory; the simulator frees it at once: nothing to release."""

    def free_all_blocks(self, stream: Stream | None = None) -> None:
        with _lock:
            STATS["pool_releases"] += 1


_POOL = _MemoryPool()


def get_default_memory_pool() -> _MemoryPool:
    return _POOL


# ---------------------------------------------------------------- streams and events


class Stream:
    def __init__(self, null: bool = False, non_blocking: bool = False) -> None:
        self._pending: list = []  # queued operations, oldest first
        self._ran = 0  # how many operations have run
        self._queued = 0  # how many were ever queued

    def _queue(self, kind: str, operation) -> None:
        """Queues `operation`; with COST_FREE_DEVICE it is counted but skipped."""
        if COST_FREE_DEVICE:
            operation = _nothing
        with _lock:
            STATS[kind] += 1
            self._pending.append(operation)
            self._queued += 1

    def _run_to(self, mark: int) -> None:
        with _lock:
            while self._ran < mark:
                operation = self._pending.pop(0)
                self._ran += 1
                operation()

    def synchronize(self) -> None:
        with _lock:
            self._run_to(self._queued)

    def record(self, event: Event | None = None) -> Event:
        event = event or Event()
        event.record(self)
        return event

    def __enter__(self) -> Stream:
        _stack().append(self)
        return self

    def __exit__(self, *exc) -> None:
        _stack().pop()


class Event:
    def __init__(self, block: bool = False, disable_timing: bool = False, interprocess: bool = False) -> None:
        self._mark: tuple[Stream, int] | None = None

    def record(self, stream: Stream | None = None) -> None:
        stream = _stream(stream)
        with _lock:
            self._mark = (stream, stream._queued)

    def synchronize(self) -> None:
        # like cudaEventSynchronize: an event never recorded is complete
        if self._mark is not None:
            stream, mark = self._mark
            stream._run_to(mark)

    @property
    def done(self) -> bool:
        return self._mark is None or self._mark[0]._ran >= self._mark[1]


_NULL_STREAM = Stream(null=True)


def _stack() -> list[Stream]:
    if not hasattr(_local, "streams"):
        _local.streams = []
    return _local.streams


def get_current_stream() -> Stream:
    stack = _stack()
    return stack[-1] if stack else _NULL_STREAM


def _stream(stream: Stream | None) -> Stream:
    return get_current_stream() if stream is None else stream


def alloc_pinned_memory(size: int) -> np.ndarray:
    memory = np.full(size, 0xCD, dtype=np.uint8)  # anything with a writable buffer will do
    with _lock:
        STATS["pinned_allocs"] += 1
        STATS["pinned_live"] += size
        STATS["pinned_peak"] = max(STATS["pinned_peak"], STATS["pinned_live"])
    weakref.finalize(memory, _freed, "pinned", size)
    return memory


def _get_device() -> int:
    return getattr(_local, "device", 0)


def _set_device(device: int) -> None:
    if device != 0:
        raise ValueError(f"the simulator has one device, 0; asked for {device}")
    _local.device = device


class Device:
    """cupy.cuda.Device: the simulator's one device, reported as compute capability 9.0."""

    def __init__(self, device: int | None = None) -> None:
        self.id = _get_device() if device is None else device

    compute_capability = "90"
    name = "CUDA simulator"


# What the simulated device reports as free (memGetInfo); tests lower it to see the bound reduced.
DEVICE_FREE_BYTES = 80 << 30


# ---------------------------------------------------------------- kernels: modules, functions, launches

MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_BLOCK = (1024, 1024, 64)
MAX_THREADS_PER_BLOCK = 1024
MAX_STATIC_SHARED_BYTES = 48 << 10


class Module:
    """cupy.cuda.function.Module; `load` takes a simulator build (build.load) instead of a cubin."""

    def __init__(self) -> None:
        self._build: build.SimulatorModule | None = None

    def load(self, binary) -> None:
        if not isinstance(binary, build.SimulatorModule):
            raise CUDADriverError("CUDA_ERROR_INVALID_IMAGE: the CUDA simulator loads its own builds "
                                  "(gpuquant.cudasim.build.load), not a cubin or PTX")
        self._build = binary

    def get_function(self, name: str) -> Function:
        if self._build is None:
            raise CUDADriverError("CUDA_ERROR_INVALID_HANDLE: no module loaded")
        signature = self._build.kernels.get(name)
        # By name, as cuModuleGetFunction: only an extern "C" __global__ function has its own name.
        if signature is None or not self._build.has_c_linkage(name):
            raise CUDADriverError(f"CUDA_ERROR_NOT_FOUND: named symbol not found ({name} in "
                                  f"{self._build.source_name})")
        return Function(self._build, signature)


def _dims(value, what: str, limits: tuple[int, int, int]) -> tuple[int, int, int]:
    if not isinstance(value, tuple) or not 1 <= len(value) <= 3:
        raise TypeError(f"{what} must be a tuple of 1 to 3 ints, got {value!r}")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        raise TypeError(f"{what} must hold ints, got {value!r}")
    dims = tuple(int(v) for v in value) + (1,) * (3 - len(value))
    for axis, (v, limit) in enumerate(zip(dims, limits, strict=True)):
        if not 1 <= v <= limit:
            raise CUDADriverError(f"CUDA_ERROR_INVALID_VALUE: {what}[{axis}] = {v} is outside 1..{limit}")
    return dims


_SCALAR_CTYPES = {"int32": ctypes.c_int32, "int64": ctypes.c_int64, "uint32": ctypes.c_uint32,
                  "uint64": ctypes.c_uint64, "float32": ctypes.c_float, "float64": ctypes.c_double,
                  "uint8": ctypes.c_uint8, "int8": ctypes.c_int8, "uint16": ctypes.c_uint16}


class Function:
    """cupy.cuda.function.Function: fn(grid, block, args, shared_mem=0, stream=None)."""

    def __init__(self, module: build.SimulatorModule, signature: build.KernelSignature) -> None:
        self._module = module
        self.signature = signature
        self._entry = module.entry(signature.name)

    def __call__(self, grid, block, args, shared_mem: int = 0, stream: Stream | None = None,
                 enable_cooperative_groups: bool = False) -> None:
        name = self.signature.name
        grid3 = _dims(grid, "grid", MAX_GRID)
        block3 = _dims(block, "block", MAX_BLOCK)
        if block3[0] * block3[1] * block3[2] > MAX_THREADS_PER_BLOCK:
            raise CUDADriverError(f"CUDA_ERROR_INVALID_VALUE: {name}: a block of {block3} has more than "
                                  f"{MAX_THREADS_PER_BLOCK} threads")
        if shared_mem:
            raise SimulatorError(f"{name}: dynamic shared memory ({shared_mem} bytes) is not simulated")
        values = self._checked_arguments(tuple(args))
        if enable_cooperative_groups:
            raise SimulatorError(f"{name}: cooperative launches are not simulated")
        _stream(stream)._queue("kernel", lambda: self._launch(grid3, block3, values))
        kind = "quantize" if name.startswith("gq_quantize_") else "dequantize" if name.startswith(
            "gq_dequantize_") else None
        with _lock:
            STATS[f"kernel:{name}"] += 1
            if kind:
                STATS[kind] += 1

    def _checked_arguments(self, args: tuple) -> list:
        """Each argument against the kernel's C parameter: (parameter, device array or NumPy scalar)."""
        sig = self.signature
        if len(args) != len(sig.parameters):
            raise SimulatorError(f"{sig.name} takes {len(sig.parameters)} arguments, got {len(args)}: "
                                 f"{sig.describe()}")
        checked = []
        for i, (param, value) in enumerate(zip(sig.parameters, args, strict=True)):
            where = f"{sig.name} argument {i} ({param.c_type} {param.name})"
            if param.kind == "pointer":
                if not isinstance(value, ndarray):
                    raise SimulatorError(f"{where}: needs a device array, got {type(value).__name__}")
                if value.dtype != np.dtype(param.dtype):
                    raise SimulatorError(f"{where}: needs a {param.dtype} device array, got {value.dtype}")
                if not value.flags.c_contiguous:
                    raise SimulatorError(f"{where}: the device array is not C-contiguous")
            else:
                wanted = np.dtype(param.dtype).type
                if type(value) is not wanted:
                    raise SimulatorError(f"{where}: needs numpy.{wanted.__name__}, got {type(value).__name__} "
                                         f"{value!r} (on a GPU another width or kind is read as garbage)")
            checked.append((param, value))
        return checked

    def _launch(self, grid3, block3, values) -> None:
        name = self.signature.name
        holders = []
        for param, value in values:
            if param.kind == "pointer":
                holders.append(ctypes.c_void_p(value._a.ctypes.data))
            else:
                holders.append(_SCALAR_CTYPES[param.dtype](value.item()))
        argv = (ctypes.c_void_p * max(1, len(holders)))(
            *[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in holders])
        if name.startswith("gq_quantize_"):
            x = next((v for p, v in values if p.kind == "pointer" and p.dtype == "float32"), None)
            if x is not None and not np.isfinite(x._a).all():
                with _lock:
                    STATS["quantize_nonfinite"] += 1
        # All device memory the kernel can reach: run it in one thread order, keep the result,
        # restore, run it in the other, compare.
        reachable = {id(v._allocation): v._allocation for p, v in values if p.kind == "pointer"}
        writable = {id(v._allocation) for p, v in values if p.kind == "pointer" and not p.const}
        before = {k: a.whole.copy() for k, a in reachable.items()}
        self._run(grid3, block3, argv, reverse=False)
        forward = {k: a.whole.copy() for k, a in reachable.items()}
        for p, v in values:  # memory reached only through pointers to const must come out unchanged
            if p.kind != "pointer" or id(v._allocation) in writable:
                continue
            if not np.array_equal(forward[id(v._allocation)], before[id(v._allocation)]):
                raise SimulatorError(f"{name} wrote through {p.c_type} {p.name}, a pointer to const")
        for k, a in reachable.items():
            a.whole[...] = before[k]
        self._run(grid3, block3, argv, reverse=True)
        for allocation in list(_Allocation.live):
            damage = allocation.damaged_guard()
            if damage is not None:
                raise SimulatorError(f"{name} wrote {damage} (out of bounds)")
        for k, a in reachable.items():
            differs = np.flatnonzero(a.whole != forward[k])
            if differs.size:
                raise SimulatorError(
                    f"{name}: the threads run in two orders wrote different bytes (a race or a missing barrier): "
                    f"{differs.size} bytes of an allocation of {a.nbytes}, the first at byte "
                    f"{int(differs[0]) - GUARD_BYTES}")

    def _run(self, grid3, block3, argv, reverse: bool) -> None:
        error = ctypes.create_string_buffer(1024)
        status = self._module.library.gqsim_launch(
            self._entry, (ctypes.c_uint * 3)(*grid3), (ctypes.c_uint * 3)(*block3), argv, _workers(),
            int(reverse), error, len(error))
        if status != 0:
            raise SimulatorError(f"{self.signature.name}: {error.value.decode(errors='replace')}")


def _workers() -> int:
    setting = os.environ.get(THREADS_ENV)
    return max(1, int(setting)) if setting else (os.cpu_count() or 1)


def load_module(source_name: str) -> Module:
    """The simulator's module for kernels/<source_name> (built and cached on first use)."""
    module = Module()
    module.load(build.load(source_name))
    return module


cuda = types.SimpleNamespace(
    Stream=Stream,
    Event=Event,
    Device=Device,
    MemoryPointer=MemoryPointer,
    alloc_pinned_memory=alloc_pinned_memory,
    get_current_stream=get_current_stream,
    function=types.SimpleNamespace(Module=Module, Function=Function),
    runtime=types.SimpleNamespace(getDevice=_get_device, setDevice=_set_device, getDeviceCount=lambda: 1,
                                  memGetInfo=lambda: (DEVICE_FREE_BYTES, DEVICE_FREE_BYTES)),
    driver=types.SimpleNamespace(CUDADriverError=CUDADriverError),
    memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError),
)
