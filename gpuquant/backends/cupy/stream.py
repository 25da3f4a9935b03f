"""The file pipeline on the GPU: chunks stream through pinned host buffers and CUDA streams.

`quantize_chunks(backend, chunks, check_finite)` is CupyBackend's Backend-protocol entry. A few
*slots* (default 4) each own a pinned input buffer, a device input buffer, a device output buffer,
a pinned output buffer, a CUDA stream and an event. For each piece of work:

    main thread      take the next chunk, split it into row pieces that fit a slot, hand each
                     piece to a free slot; when no slot is free, finish the oldest piece
    staging thread   copy the piece's rows into the slot's pinned input (several threads: one
                     thread copying is the bottleneck), then queue on the slot's stream: host to
                     device and the finite check (waited for: kernels never see NaN or Inf), the
                     kernels, device to host, the event
    main thread      finishing a piece waits for its event only when its output is due, and
                     yields the chunk's output (a view of the pinned output buffer)

So while the caller writes output k, the staging thread fills the pinned buffers of the next
pieces and the GPU copies and computes them. A yielded array is valid until the next one is asked
for: its slot is reused only then.

Device memory: each slot takes at most `slot_input_bytes` of float32 input a piece, and its device
buffers (input, output, importance matrix, the finite check's mask and the kernels' scratch) never
exceed 3.5 times that, so all slots together stay within the `device_memory_bytes` setting
(CupyBackend(device_memory_bytes=...), else $GPUQUANT_GPU_MEMORY, else DEFAULT_DEVICE_MEMORY, 2 GiB),
whatever the model size. Pinned host memory is at most twice the slots' input bytes.

CuPy surface used (the CUDA simulator, gpuquant/cudasim/cupy.py, provides it for CI): cupy.empty, cupy.isfinite,
ndarray slicing/view/reshape/.all()/.set(arr, stream=)/.get(stream=, out=[, blocking=False]),
cupy.get_default_memory_pool().free_all_blocks(stream=), cupy.cuda.Stream(non_blocking=True) as a
context manager and .synchronize(), cupy.cuda.Event(block=True, disable_timing=True) .record(stream)
and .synchronize(), cupy.cuda.alloc_pinned_memory, cupy.cuda.runtime.getDevice / setDevice; and
the backend's quantize_device (launch.py: the kernels).
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass

import numpy as np

from ...qtypes import QType, resolve
from .. import Chunk, NonFiniteError
from .device import cupy_module

DEVICE_MEMORY_ENV = "GPUQUANT_GPU_MEMORY"
DEFAULT_DEVICE_MEMORY = 2 << 30
DEFAULT_SLOTS = 4
# Device bytes a slot may hold per byte of its input capacity: input 1, output <= 1 (F32 targets),
# importance matrix <= 1 (one row), finite-check mask 1/4 (a bool per float32), kernel scratch.
_DEVICE_BYTES_PER_INPUT_BYTE = 3.5
# Below this many bytes per thread, splitting a host copy costs more than it saves.
_MIN_COPY_BYTES_PER_THREAD = 512 << 10
_MAX_COPY_THREADS = 8

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def device_memory_setting(value: int | str | None = None) -> int:
    """The device memory bound in bytes: `value`, else $GPUQUANT_GPU_MEMORY, else 2 GiB.

    Strings may carry a binary unit: "4G", "512MiB", "1.5g"; plain numbers are bytes.
    """
    source = "device_memory_bytes"
    if value is None:
        value = os.environ.get(DEVICE_MEMORY_ENV) or DEFAULT_DEVICE_MEMORY
        source = DEVICE_MEMORY_ENV
    if isinstance(value, str):
        m = _SIZE.match(value)
        if not m:
            raise ValueError(f"{source}={value!r}: expected bytes, optionally with a unit K, M, G or T (as 4G)")
        value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    value = int(value)
    if value <= 0:
        raise ValueError(f"{source} must be positive, got {value}")
    return value


def slot_input_bytes(device_memory_bytes: int, slots: int) -> int:
    """The float32 input bytes one slot takes a piece, so that all slots fit the memory bound."""
    return int(device_memory_bytes / (slots * _DEVICE_BYTES_PER_INPUT_BYTE))


def _grown(needed: int, limit: int) -> int:
    """A buffer size for `needed` bytes: the next power of two (fewer reallocations), within `limit`."""
    return max(needed, min(1 << (max(needed, 1) - 1).bit_length(), limit))


class _Slot:
    """One unit of work in flight: its buffers, grown on demand up to the slot's limits, its stream
    and event. Only the staging thread touches the buffers, and only while the slot is idle."""

    def __init__(self, cupy, input_limit: int) -> None:
        self._cupy = cupy
        self.input_limit = input_limit
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.done = cupy.cuda.Event(block=True, disable_timing=True)
        self.host_in = self.host_out = self.device_in = self.device_out = None
        self.device_imatrix = None
        self.imatrix_values: np.ndarray | None = None  # what device_imatrix holds (a private copy)
        self.host_finite = self._pinned(1).view(np.bool_).reshape(())

    def _pinned(self, n_bytes: int) -> np.ndarray:
        memory = self._cupy.cuda.alloc_pinned_memory(n_bytes)
        return np.frombuffer(memory, dtype=np.uint8, count=n_bytes)

    def _device(self, n_bytes: int):
        # Allocated on the slot's stream: CuPy's pool then reuses the memory only in that stream's order.
        with self.stream:
            return self._cupy.empty(n_bytes, dtype=np.uint8)

    def _release_cached(self) -> None:
        # CuPy's pool keeps freed buffers for reuse on this stream; outgrown ones would only add up.
        self._cupy.get_default_memory_pool().free_all_blocks(stream=self.stream)

    def reserve(self, in_bytes: int, out_bytes: int) -> None:
        grew = False
        if self.host_in is None or self.host_in.size < in_bytes:
            size = _grown(in_bytes, self.input_limit)
            self.host_in, self.device_in = None, None  # free the old ones before taking the new
            self.host_in, self.device_in = self._pinned(size), self._device(size)
            grew = True
        if self.host_out is None or self.host_out.size < out_bytes:
            size = _grown(out_bytes, self.input_limit)
            self.host_out, self.device_out = None, None
            self.host_out, self.device_out = self._pinned(size), self._device(size)
            grew = True
        if grew:
            self._release_cached()

    def imatrix_on_device(self, imatrix: np.ndarray | None):
        """The importance matrix as a device array, uploaded on the slot's stream when its values
        differ from what the slot holds (once per tensor and slot in the file pipeline)."""
        if imatrix is None:
            return None
        held = self.imatrix_values
        if held is None or held.size != imatrix.size or not np.array_equal(held.view(np.uint32),
                                                                            imatrix.view(np.uint32)):
            values = imatrix.copy()  # the caller may change its array; the copy must outlive the upload
            if self.device_imatrix is None or self.device_imatrix.size < values.nbytes:
                self.device_imatrix = None
                self.device_imatrix = self._device(values.nbytes)
                self._release_cached()
            self._imatrix_view(values.size).set(values, stream=self.stream)
            self.imatrix_values = values
        return self._imatrix_view(imatrix.size)

    def _imatrix_view(self, n: int):
        return self.device_imatrix[: 4 * n].view(np.float32)


@dataclass
class _ChunkOutput:
    """Where a chunk's pieces land when there are several: one host array, yielded once full."""

    rows: int
    row_bytes: int
    pieces: int
    buffer: np.ndarray | None = None


@dataclass
class _Piece:
    """Rows [r0, r1) of one chunk, on one slot (None for an empty chunk)."""

    slot: _Slot | None
    output: _ChunkOutput
    x: np.ndarray
    qtype: QType
    imatrix: np.ndarray | None
    r0: int
    r1: int
    check_finite: bool
    staged: Future | None = None

    @property
    def rows(self) -> int:
        return self.r1 - self.r0

    @property
    def in_bytes(self) -> int:
        return self.rows * self.x.shape[1] * 4

    @property
    def out_bytes(self) -> int:
        return self.rows * self.output.row_bytes


class StreamEngine:
    """Slots, streams and threads for one quantize_chunks run at a time (reused across runs)."""

    def __init__(self, backend, device_memory_bytes: int, slots: int = DEFAULT_SLOTS,
                 copy_threads: int | None = None) -> None:
        cupy = cupy_module()

        if slots < 2:
            raise ValueError(f"the GPU pipeline needs at least 2 slots, got {slots}")
        self._cupy = cupy
        self._backend = backend
        self.device_memory_bytes = device_memory_bytes
        self.slot_input_bytes = slot_input_bytes(device_memory_bytes, slots)
        self.device = cupy.cuda.runtime.getDevice()
        self._slots = [_Slot(cupy, self.slot_input_bytes) for _ in range(slots)]
        self._copy_threads = copy_threads or max(1, min(_MAX_COPY_THREADS, os.cpu_count() or 1))
        # One staging thread keeps pieces in order; it works on this device like the caller.
        self._stager = ThreadPoolExecutor(1, thread_name_prefix="gpuquant-stage",
                                          initializer=cupy.cuda.runtime.setDevice, initargs=(self.device,))
        self._copier = ThreadPoolExecutor(self._copy_threads, thread_name_prefix="gpuquant-copy")
        self._last_staged: Future | None = None

    def close(self) -> None:
        self._stager.shutdown(wait=True)
        self._copier.shutdown(wait=True)
        self._slots = []

    # ------------------------------------------------------------ main thread

    def run(self, chunks: Iterable[Chunk], check_finite: bool) -> Iterator[np.ndarray]:
        free: deque[_Slot] = deque(self._slots)
        pending: deque[_Piece] = deque()  # staged or staging, in chunk order
        try:
            for x, qtype, imatrix in chunks:
                t, x, imatrix = self._checked(x, qtype, imatrix)
                rows, n_per_row = x.shape
                row_bytes = t.row_bytes(n_per_row)
                if rows == 0 or n_per_row == 0:  # nothing to compute, but its output keeps its place
                    pending.append(_Piece(None, _ChunkOutput(rows, row_bytes, 1), x, t, imatrix, 0, 0,
                                          check_finite and not t.is_float))
                    continue
                per_piece = self._rows_per_piece(n_per_row, row_bytes)
                output = _ChunkOutput(rows, row_bytes, pieces=-(-rows // per_piece))
                for r0 in range(0, rows, per_piece):
                    while not free:
                        yield from self._finish(pending.popleft(), free)
                    piece = _Piece(free.popleft(), output, x, t, imatrix, r0, min(rows, r0 + per_piece),
                                   check_finite and not t.is_float)
                    piece.staged = self._last_staged = self._stager.submit(self._stage, piece)
                    pending.append(piece)
            while pending:
                yield from self._finish(pending.popleft(), free)
        finally:
            self._quiesce(pending)

    def _checked(self, x, qtype, imatrix) -> tuple[QType, np.ndarray, np.ndarray | None]:
        t = resolve(qtype)
        if not self._backend.supports(t):
            raise ValueError(f"type {t.name} is not supported yet by the cupy backend")
        x = np.asarray(x)
        if x.dtype != np.float32 or x.ndim != 2:
            raise ValueError(f"chunks must be float32 [rows, n_per_row], got {x.dtype} {x.shape}")
        t.row_bytes(x.shape[1])  # raises for rows that are not whole blocks
        if imatrix is not None:
            imatrix = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
            if imatrix.size != x.shape[1]:
                raise ValueError(f"imatrix has {imatrix.size} values but rows have {x.shape[1]}")
        return t, x, imatrix

    def _rows_per_piece(self, n_per_row: int, row_bytes: int) -> int:
        # Output rows are never larger than input rows, nor an importance matrix than one row: a
        # slot's buffers then all hold at most slot_input_bytes.
        per_row = max(4 * n_per_row, row_bytes)
        rows = self.slot_input_bytes // per_row
        if rows == 0:
            raise ValueError(
                f"a row of {n_per_row} weights ({per_row} bytes) does not fit the GPU memory setting of "
                f"{self.device_memory_bytes} bytes ({self.slot_input_bytes} per slot); raise it with "
                f"{DEVICE_MEMORY_ENV} or CupyBackend(device_memory_bytes=...)"
            )
        return rows

    def _finish(self, piece: _Piece, free: deque[_Slot]) -> Iterator[np.ndarray]:
        """Wait for a piece and yield its chunk's output if this was the chunk's last piece."""
        output = piece.output
        if piece.slot is None:
            yield np.empty((output.rows, output.row_bytes), dtype=np.uint8)
            return
        piece.staged.result()  # the staging thread's errors surface here, in order
        slot = piece.slot
        slot.done.synchronize()
        if piece.check_finite and not bool(slot.host_finite[()]):
            raise NonFiniteError(piece.r0 + _first_nonfinite_row(piece.x[piece.r0 : piece.r1]))
        q = slot.host_out[: piece.out_bytes].reshape(piece.rows, output.row_bytes)
        if output.pieces == 1:
            yield q
        else:
            if output.buffer is None:
                output.buffer = np.empty((output.rows, output.row_bytes), dtype=np.uint8)
            output.buffer[piece.r0 : piece.r1] = q
            if piece.r1 == output.rows:
                yield output.buffer
        free.append(slot)  # only now: the caller is done with a yielded view of host_out

    def _quiesce(self, pending: deque[_Piece]) -> None:
        """After the last output, an error or an abandoned run: nothing may still write the buffers."""
        # The staging thread runs its tasks in order: once the last is done, every earlier one is.
        if self._last_staged is not None:
            wait_for([self._last_staged])
        for slot in self._slots:
            slot.stream.synchronize()
        pending.clear()

    # ------------------------------------------------------------ staging thread

    def _stage(self, piece: _Piece) -> None:
        cupy = self._cupy
        slot = piece.slot
        rows, n_per_row = piece.rows, piece.x.shape[1]
        slot.reserve(piece.in_bytes, piece.out_bytes)
        host_x = slot.host_in[: piece.in_bytes].view(np.float32).reshape(rows, n_per_row)
        self._fill(host_x, piece.x[piece.r0 : piece.r1])
        device_x = slot.device_in[: piece.in_bytes].view(np.float32).reshape(rows, n_per_row)
        device_q = slot.device_out[: piece.out_bytes]
        stream = slot.stream
        device_x.set(host_x, stream=stream)
        # The slot's stream is the current one here: CuPy's array functions run on it, and any
        # scratch memory (the finite check's mask, a kernel's row statistics) comes from its pool.
        with stream:
            if piece.check_finite:
                # Waited for here, before any kernel: like the numpy backend, the kernels never see
                # NaN or Inf (a NaN-derived table index could read out of bounds). It costs this
                # thread the host-to-device copy's time, not the GPU's.
                cupy.isfinite(device_x).all().get(stream=stream, out=slot.host_finite)
                if not slot.host_finite[()]:
                    slot.done.record(stream)
                    return  # the main thread raises NonFiniteError when this piece is due
            imatrix = slot.imatrix_on_device(piece.imatrix)
            self._backend.quantize_device(device_x, piece.qtype, imatrix, device_q, stream)
        device_q.get(stream=stream, out=slot.host_out[: piece.out_bytes], blocking=False)
        slot.done.record(stream)

    def _fill(self, dst: np.ndarray, src: np.ndarray) -> None:
        """dst[...] = src with up to copy_threads threads over row ranges (np.copyto drops the GIL)."""
        rows = src.shape[0]
        parts = min(self._copy_threads, rows, max(1, dst.nbytes // _MIN_COPY_BYTES_PER_THREAD))
        if parts <= 1:
            np.copyto(dst, src)
            return
        bounds = [rows * i // parts for i in range(parts + 1)]

        def copy(i: int) -> None:
            a, b = bounds[i], bounds[i + 1]
            np.copyto(dst[a:b], src[a:b])

        list(self._copier.map(copy, range(parts)))


def _first_nonfinite_row(x: np.ndarray) -> int:
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    return int(bad[0]) if bad.size else 0


# An idle engine per backend, so a file's tensors reuse the same pinned and device buffers.
_idle_engines: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_idle_lock = threading.Lock()


class GPUError(ValueError):
    """A device fault (out of memory, a failed launch or compile), in one line for the user."""


def gpu_error(e: BaseException) -> GPUError | None:
    """The user's words for a CuPy / CUDA exception, or None when e is no device fault. By class
    name, as CuPy's classes live in modules that need a GPU to import (and the tests' fake has its own)."""
    names = {c.__name__ for c in type(e).__mro__}
    detail = " ".join(str(e).split())[:300] or type(e).__name__
    if "OutOfMemoryError" in names:
        return GPUError(f"the GPU ran out of memory ({detail}); lower {DEVICE_MEMORY_ENV} or use --backend native")
    if "CompileException" in names:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return GPUError(f"the CUDA kernels did not compile with NVRTC ({first[:300]})")
    if names & {"CUDADriverError", "CUDARuntimeError", "CUDAError"}:
        return GPUError(f"a CUDA call failed ({detail}); the GPU run stopped, no output written")
    return None


def effective_device_memory(cupy, requested: int, notes: list[str] | None = None) -> int:
    """The memory bound actually used: the setting, reduced to 90% of the device's free memory when it
    asks for more than that (with a note), so that the setting never becomes an allocation error."""
    try:
        free, _total = cupy.cuda.runtime.memGetInfo()
    except Exception:  # a runtime that cannot say: the setting as it is
        return requested
    usable = int(free * 0.9)
    if requested <= usable:
        return requested
    if notes is not None:
        notes.append(f"{DEVICE_MEMORY_ENV}: {requested} bytes asked for, the device has {free} free; "
                     f"using {usable}")
    return usable


def quantize_chunks(backend, chunks: Iterable[Chunk], check_finite: bool) -> Iterator[np.ndarray]:
    """The Backend protocol's quantize_chunks for CupyBackend (see the module docstring); device
    faults come out as GPUError."""
    try:
        yield from _quantize_chunks(backend, chunks, check_finite)
    except Exception as e:
        error = gpu_error(e)
        if error is None:
            raise
        raise error from None


def _quantize_chunks(backend, chunks: Iterable[Chunk], check_finite: bool) -> Iterator[np.ndarray]:
    cupy = cupy_module()

    with _idle_lock:
        engine = _idle_engines.pop(backend, None)
    if engine is not None and engine.device != cupy.cuda.runtime.getDevice():
        engine.close()
        engine = None
    if engine is None:
        memory = effective_device_memory(cupy, backend.device_memory_bytes, backend.notes)
        engine = StreamEngine(backend, memory, backend.stream_slots)
    try:
        yield from engine.run(chunks, check_finite)
    finally:
        with _idle_lock:
            keep = backend not in _idle_engines
            if keep:
                _idle_engines[backend] = engine
        if not keep:  # another run of the same backend finished first: its engine stays
            engine.close()
