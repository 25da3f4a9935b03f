"""A NumPy stand-in for the part of CuPy that the GPU file pipeline (gpuquant/backends/cupy/stream.py)
uses, so that CI, which has no GPU, runs that engine itself.

Like a GPU, it defers work: copies, kernels and reductions queued on a stream run only when the
host waits for them (Stream.synchronize, Event.synchronize, a blocking get), in queue order per
stream, each reading its inputs when it runs. An engine that reads a pinned buffer before waiting
for its event, refills a buffer that a queued copy still reads, or uses data another stream has
not been waited for, gets stale bytes here as it would on a GPU. New device and pinned memory holds
0xCD garbage. Device arrays are not host arrays: converting one to numpy raises, as in CuPy.

The kernels are the real ones' per-block code: install() replaces each CuPy family's
quantize_device with a queued call of the host build (gpuquant.hostkernels), writing into the fake
device output. CupyBackend.quantize_device itself (argument checks) still runs.

It also counts what the engine did (STATS): operations by kind (h2d, d2h, quantize, elementwise,
reduce), kernels run on non-finite input, and allocations, with the live and peak device and
pinned bytes.
"""

from __future__ import annotations

import sys
import threading
import types
import weakref
from collections import Counter

import numpy as np

_lock = threading.RLock()  # queues, execution and counters: the engine calls in from two threads
_local = threading.local()
STATS: Counter = Counter()


def reset() -> None:
    with _lock:
        STATS.clear()


def _allocated(kind: str, mem: np.ndarray) -> None:
    def freed(n: int = mem.nbytes) -> None:
        with _lock:
            STATS[f"{kind}_live"] -= n

    with _lock:
        STATS[f"{kind}_allocs"] += 1
        STATS[f"{kind}_live"] += mem.nbytes
        STATS[f"{kind}_peak"] = max(STATS[f"{kind}_peak"], STATS[f"{kind}_live"])
    weakref.finalize(mem, freed)


# ---------------------------------------------------------------- device arrays


class ndarray:  # noqa: N801 (cupy's name)
    """A device array: a NumPy view of fake device memory that host code cannot read directly."""

    def __init__(self, memory: np.ndarray) -> None:
        self._a = memory

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    ndim = property(lambda self: self._a.ndim)
    flags = property(lambda self: self._a.flags)

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed (fake cupy)")

    def __getitem__(self, key) -> ndarray:
        return ndarray(self._a[key])

    def view(self, dtype) -> ndarray:
        return ndarray(self._a.view(dtype))

    def reshape(self, *shape) -> ndarray:
        return ndarray(self._a.reshape(*shape))

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
            raise RuntimeError("the fake copies C-contiguous arrays only")
        src = self._a
        stream = _stream(stream)
        stream._queue("d2h", lambda: np.copyto(out, src))
        if blocking:
            stream.synchronize()
        return out

    def all(self, axis=None, out=None, keepdims=False) -> ndarray:
        if axis is not None or out is not None or keepdims:
            raise NotImplementedError("the fake reduces whole arrays only")
        result, src = empty((), dtype=np.bool_), self._a
        get_current_stream()._queue("reduce", lambda: result._a.__setitem__((), bool(src.all())))
        return result


float32, uint8 = np.float32, np.uint8  # cupy's dtype names are NumPy's


def asarray(arr, dtype=None) -> ndarray:
    """A device copy of a host array (synchronous, as cupy.asarray of a NumPy array is)."""
    host = np.asarray(arr, dtype=dtype)
    memory = np.array(host, copy=True)
    _allocated("device", memory)
    return ndarray(memory)


def empty(shape, dtype=np.float64) -> ndarray:
    memory = np.empty(shape, dtype=dtype)
    memory.reshape(-1).view(np.uint8)[...] = 0xCD
    _allocated("device", memory)
    return ndarray(memory)


class _MemoryPool:
    """CuPy's pool caches freed device memory; the fake frees it at once, so there is nothing to release."""

    def free_all_blocks(self, stream: Stream | None = None) -> None:
        with _lock:
            STATS["pool_releases"] += 1


_POOL = _MemoryPool()


def get_default_memory_pool() -> _MemoryPool:
    return _POOL


def isfinite(x: ndarray) -> ndarray:
    result, src = empty(x.shape, dtype=np.bool_), x._a
    get_current_stream()._queue("elementwise", lambda: np.isfinite(src, out=result._a))
    return result


# ---------------------------------------------------------------- streams and events


class Stream:
    def __init__(self, null: bool = False, non_blocking: bool = False) -> None:
        self._pending: list = []  # queued operations, oldest first
        self._ran = 0  # how many operations have run
        self._queued = 0  # how many were ever queued

    def _queue(self, kind: str, operation) -> None:
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
    _allocated("pinned", memory)
    return memory


def _get_device() -> int:
    return getattr(_local, "device", 0)


def _set_device(device: int) -> None:
    if device != 0:
        raise ValueError(f"the fake has one device, 0; asked for {device}")
    _local.device = device


cuda = types.SimpleNamespace(
    Stream=Stream,
    Event=Event,
    alloc_pinned_memory=alloc_pinned_memory,
    get_current_stream=get_current_stream,
    runtime=types.SimpleNamespace(getDevice=_get_device, setDevice=_set_device, getDeviceCount=lambda: 1,
                                  memGetInfo=lambda: (DEVICE_FREE_BYTES, DEVICE_FREE_BYTES)),
)

# What the fake device reports as free (memGetInfo); tests lower it to see the bound reduced.
DEVICE_FREE_BYTES = 80 << 30


class OutOfMemoryError(MemoryError):
    """cupy.cuda.memory.OutOfMemoryError's name, for fault tests."""


class CUDADriverError(RuntimeError):
    """cupy.cuda.driver.CUDADriverError's name, for fault tests."""


class CompileException(Exception):
    """cupy.cuda.compiler.CompileException's name, for fault tests."""


# ---------------------------------------------------------------- the kernels, through the host build


def _quantize_device(x: ndarray, t, imatrix: ndarray | None, out: ndarray, stream: Stream) -> None:
    from gpuquant import hostkernels

    src, dst = x._a, out._a.reshape(-1)
    weights = None if imatrix is None else imatrix._a

    def kernel() -> None:
        if not np.isfinite(src).all():
            with _lock:
                STATS["quantize_nonfinite"] += 1  # kernels that saw NaN or Inf input (the engine should not let them)
        q = src.view(np.uint8) if t.name == "F32" else hostkernels.quantize(src, t.name, weights)
        dst[...] = q.reshape(-1)

    stream._queue("quantize", kernel)


def _dequantize_device(q: ndarray, t, n_per_row: int, out: ndarray, stream: Stream) -> None:
    from gpuquant import hostkernels

    src, dst = q._a, out._a.reshape(-1)

    def kernel() -> None:
        rows = src.size // t.row_bytes(n_per_row)
        y = src.view(np.float32) if t.name == "F32" else hostkernels.dequantize(
            src.reshape(rows, -1), t.name, n_per_row)
        dst[...] = y.reshape(-1)

    stream._queue("dequantize", kernel)


def install(monkeypatch) -> types.ModuleType:
    """Make `import cupy` give this module and the CuPy backend's kernels run on the host, for one test."""
    from gpuquant.backends.cupy import _FAMILIES

    reset()
    module = sys.modules[__name__]
    monkeypatch.setitem(sys.modules, "cupy", module)
    for family in set(_FAMILIES.values()):
        monkeypatch.setattr(family, "quantize_device", _quantize_device)
        monkeypatch.setattr(family, "dequantize_device", _dequantize_device)
    return module
