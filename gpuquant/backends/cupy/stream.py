"""The file pipeline on the GPU: chunks stream through pinned host buffers and CUDA streams.

`quantize_chunks(backend, chunks, check_finite)` is CupyBackend's Backend-protocol entry. A few
*slots* (default 4) each own pinned host buffers, device buffers, a CUDA stream and an event. For
each piece of work (rows of a chunk that fit a slot):

    main thread      take the next chunk, split it into row pieces that fit a slot, hand each
                     piece to a free slot; when no slot is free, finish the oldest piece (or,
                     when every slot is lent to the writer, wait for one to come back)
    staging thread   copy the piece's rows as the file stores them (F16/BF16 at 2 bytes a weight)
                     into the slot's pinned input (several threads), then queue on the slot's
                     stream, without waiting for anything: host to device; float32 made on the
                     device (F16/BF16 widened, a quantized source dequantized: the same
                     conversions as the host's, bit for bit); the finite check, which zeroes NaN
                     and Inf so the quantizers never see them and flags the rows; the quantizer;
                     with error measurement, the round trip and the rows' error sums; device to
                     host of the output, the flags and the sums; the event
    main thread      finishing a piece waits for its event only when its output is due, raises
                     NonFiniteError for a flagged row, and yields the chunk's output: a view of
                     the slot's pinned output, lent to the consumer until it calls release()

So while the writer writes outputs k-1 and k straight from pinned memory, the staging thread fills
the next pieces and the GPU copies and computes them. Nothing on the host waits per piece.

Memory stays bounded whatever the model size: a slot takes at most `slot_bytes` of device memory
(device_memory_bytes / slots): one allocation for its pieces' stored rows, float32 rows, output,
flags, sums, round-trip rows and importance matrix together, and 1/32 of it for what kernels
allocate while they run. Its pinned host memory is one allocation of at most as much. The setting is
CupyBackend(device_memory_bytes=...), else $GPUQUANT_GPU_MEMORY, else DEFAULT_DEVICE_MEMORY, 2 GiB.

Error figures: each row's sums come back as float64 (kernels/stream.cu: a fixed reduction tree per
row), and the rows measured are added with math.fsum, exactly rounded: the figures depend on
neither the thread order nor how the rows were split into pieces.

CuPy surface used (the CUDA simulator, gpuquant/cudasim/cupy.py, provides it for CI): cupy.empty,
ndarray slicing/view/reshape/.set(arr, stream=)/.get(stream=, out=, blocking=False),
MemoryPointer.copy_from_device_async, cupy.get_default_memory_pool().free_all_blocks(stream=),
cupy.cuda.Stream(non_blocking=True) as a context manager and .synchronize(),
cupy.cuda.Event(block=True, disable_timing=True) .record(stream) and .synchronize(),
cupy.cuda.alloc_pinned_memory, cupy.cuda.runtime.getDevice / setDevice; the kernels through
device.get_kernel and launch.py.
"""

from __future__ import annotations

import math
import os
import re
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from ...qtypes import QType, resolve
from ...quant_error import ErrorSums
from .. import Chunk, NonFiniteError, Quantized
from . import launch
from .device import cupy_module, get_kernel

DEVICE_MEMORY_ENV = "GPUQUANT_GPU_MEMORY"
DEFAULT_DEVICE_MEMORY = 2 << 30
DEFAULT_SLOTS = 6
# Slots kept for computing: the others may be lent to the consumer (its writer) at once. An output
# due while that many are lent is copied out instead, so a consumer that holds on to its outputs
# never stalls the engine. The pipeline's writer holds at most WriteBehind's depth + 1 (3 + 1).
_SLOTS_NOT_LENT = 2
# Below this many bytes per thread, splitting a host copy costs more than it saves.
_MIN_COPY_BYTES_PER_THREAD = 512 << 10
_MAX_COPY_THREADS = 8
ROW_THREADS = 32  # kernels/stream.cu's GQ_ROW_THREADS: one block of them per row
_SUMS = 5  # per row: x^2, (x-y)^2, w x^2, w (x-y)^2, max |x-y| (float64 each)
_ALIGNMENT = 256  # each region of a slot's memory starts where CuPy's allocations would
_REGIONS = 8  # regions a piece takes at most: room for their alignment is kept in every slot
# The part of a slot kept for what kernels allocate while they run: the weighted legacy kernels'
# float32 row statistic (sigma2), 4 bytes a row of at least 32 float32 (128 bytes): at most 1/32.
_SCRATCH_SHARE = 32

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


def _aligned(n_bytes: int) -> int:
    return -(-n_bytes // _ALIGNMENT) * _ALIGNMENT


class _Arena:
    """One allocation (device or pinned), carved into the named regions of the piece at hand. It grows
    only when a piece needs more than it holds (to the next power of two, within `limit`), so a run
    allocates a few times per slot, whatever the tensors' shapes."""

    def __init__(self, allocate, limit: int) -> None:
        self._allocate = allocate
        self.limit = limit
        self._memory = None
        self._offsets: dict[str, int] = {}

    def lay_out(self, sizes: dict[str, int]) -> bool:
        """Regions of these sizes, in this order; True when the memory was allocated anew."""
        self._offsets, total = {}, 0
        for name, n in sizes.items():
            self._offsets[name] = total
            total += _aligned(n)
        if self._memory is not None and self._memory.size >= total:
            return False
        self._memory = None  # the old one is freed before the new one is taken
        self._memory = self._allocate(max(total, min(1 << (total - 1).bit_length(), self.limit)))
        return True

    def get(self, name: str, n_bytes: int):
        offset = self._offsets[name]
        return self._memory[offset : offset + n_bytes]


class _Slot:
    """One unit of work in flight: its memory, its stream and event. Only the staging thread touches
    the memory, and only while the slot is neither computing nor lent to the consumer."""

    def __init__(self, cupy, slot_bytes: int) -> None:
        self._cupy = cupy
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.done = cupy.cuda.Event(block=True, disable_timing=True)
        self.device = _Arena(self._device_bytes, slot_bytes)
        self.pinned = _Arena(self._pinned_bytes, slot_bytes)
        self.imatrix_values: np.ndarray | None = None  # what the device "imatrix" region holds

    def _pinned_bytes(self, n_bytes: int) -> np.ndarray:
        memory = self._cupy.cuda.alloc_pinned_memory(n_bytes)
        return np.frombuffer(memory, dtype=np.uint8, count=n_bytes)

    def _device_bytes(self, n_bytes: int):
        # Allocated on the slot's stream: CuPy's pool then reuses the memory only in that stream's order.
        with self.stream:
            return self._cupy.empty(n_bytes, dtype=np.uint8)

    def lay_out(self, piece: _Piece) -> None:
        device = piece.device_sizes()
        grown = self.device.lay_out(device)
        # The importance matrix region is first, so that it stays in place while pieces of the same
        # tensor come and go; a piece without one may overwrite it.
        if grown or not device["imatrix"]:
            self.imatrix_values = None
        self.pinned.lay_out(piece.pinned_sizes())
        if grown:  # CuPy's pool keeps freed buffers for reuse on this stream; outgrown ones would add up
            self._cupy.get_default_memory_pool().free_all_blocks(stream=self.stream)

    def imatrix_on_device(self, imatrix: np.ndarray | None):
        """The importance matrix as a device array, uploaded on the slot's stream when its values
        differ from what the slot holds (once per tensor and slot in the file pipeline)."""
        if imatrix is None:
            return None
        device = self.device.get("imatrix", imatrix.nbytes).view(np.float32)
        held = self.imatrix_values
        if held is None or held.size != imatrix.size or not np.array_equal(held.view(np.uint32),
                                                                            imatrix.view(np.uint32)):
            values = imatrix.copy()  # the caller may change its array; the copy must outlive the upload
            device.set(values, stream=self.stream)
            self.imatrix_values = values
        return device

class _SlotPool:
    """The free slots. The main thread takes them and gives back the slots of pieces it is done
    with; the consumer (the writer's thread) gives back those lent with an output. At most
    `lendable` are lent at once, so a slot is always free or computing: taking never waits for the
    consumer."""

    def __init__(self, slots: list[_Slot]) -> None:
        self._free = deque(slots)
        self._lock = threading.Lock()
        self.lendable = len(slots) - _SLOTS_NOT_LENT
        self.lent = 0

    def take(self) -> _Slot | None:
        with self._lock:
            return self._free.popleft() if self._free else None

    def give(self, slot: _Slot) -> None:
        with self._lock:
            self._free.append(slot)

    def lend(self, slot: _Slot) -> Callable[[], None] | None:
        """The release of an output lent from `slot`, or None when no more may be lent now."""
        with self._lock:
            if self.lent >= self.lendable:
                return None
            self.lent += 1
        returned = threading.Event()

        def release() -> None:
            with self._lock:
                if returned.is_set():  # a second release must not free the slot twice
                    return
                returned.set()
                self.lent -= 1
                self._free.append(slot)

        return release


@dataclass
class _ChunkOutput:
    """What a chunk's pieces add up to: its rows' flags and error sums, and with several pieces one
    host array for the output, yielded once full."""

    chunk: Chunk
    row_bytes: int
    pieces: int
    check_finite: bool = False  # its type is a block type: a NaN or Inf row stops the run
    buffer: np.ndarray | None = None
    row_sums: np.ndarray | None = None  # float64 [rows, _SUMS] when the chunk is measured
    done: int = 0

    def error(self) -> ErrorSums | None:
        if not self.chunk.measure:
            return None
        return row_error_sums(self.row_sums, self.chunk.sample, self.chunk.imatrix is not None)


@dataclass
class _Piece:
    """Rows [r0, r1) of a group of chunks on one slot (None for an empty chunk): the chunks of a
    group hold the same rows (the same array) for several output types, so the rows are copied to
    the device and made float32 once, then quantized (and measured) once per type."""

    slot: _Slot | None
    outputs: list[_ChunkOutput]
    r0: int
    r1: int
    check_finite: bool  # some type of the group checks its rows
    staged: Future | None = field(default=None)

    @property
    def chunk(self) -> Chunk:
        return self.outputs[0].chunk

    @property
    def imatrix(self) -> np.ndarray | None:
        """The group's importance matrix (the chunks that have one have the same)."""
        return next((o.chunk.imatrix for o in self.outputs if o.chunk.imatrix is not None), None)

    @property
    def rows(self) -> int:
        return self.r1 - self.r0

    def device_sizes(self) -> dict[str, int]:
        return piece_bytes(self.chunk, self._types(), self.rows, self.check_finite, True, self.imatrix is not None)

    def pinned_sizes(self) -> dict[str, int]:
        return piece_bytes(self.chunk, self._types(), self.rows, self.check_finite, False, self.imatrix is not None)

    def _types(self) -> list[QType]:
        return [o.chunk.qtype for o in self.outputs]


def piece_bytes(chunk: Chunk, qtypes: Sequence[QType], rows: int, check_finite: bool, device: bool,
                weighted: bool) -> dict[str, int]:
    """Each buffer's bytes for `rows` rows of a chunk quantized to each of `qtypes` (out0, sums0, out1,
    ...), on the device or in pinned host memory."""
    n = chunk.n_per_row
    stored = chunk.data.shape[1] * chunk.data.itemsize
    sizes = {"stored": rows * stored, "flags": rows if check_finite else 0}
    for i, t in enumerate(qtypes):
        sizes[f"out{i}"] = rows * t.row_bytes(n)
        sizes[f"sums{i}"] = rows * 8 * _SUMS if chunk.measure else 0
    if device:
        if chunk.source.name == "F32":
            sizes["stored"] = 0  # copied straight into x
        sizes["x"] = rows * 4 * n
        sizes["y"] = rows * 4 * n if chunk.measure else 0  # each type's round trip in turn
        sizes = {"imatrix": 4 * n if weighted else 0, **sizes}
    return sizes


def _same_rows(group: list[Chunk], chunk: Chunk) -> bool:
    """Whether a chunk of the group's rows joins it: the same source, measurement and importance."""
    first = group[0]
    if chunk.source != first.source or chunk.measure != first.measure:
        return False
    if (chunk.sample is None) != (first.sample is None) or (
            chunk.sample is not None and not np.array_equal(chunk.sample, first.sample)):
        return False
    if chunk.imatrix is None:
        return True
    held = next((c.imatrix for c in group if c.imatrix is not None), None)
    return held is None or np.array_equal(held.view(np.uint32), chunk.imatrix.view(np.uint32))


def row_error_sums(row_sums: np.ndarray, sample: np.ndarray | None, weighted: bool) -> ErrorSums:
    """ErrorSums of the rows measured from their per-row sums [rows, 5] (float64): math.fsum is
    exactly rounded, so neither the order nor the split into pieces changes a bit of the figures."""
    sums = row_sums if sample is None else row_sums[sample]
    if sums.shape[0] == 0:
        return ErrorSums(weighted=weighted)
    top = sums[:, 4]
    max_abs = math.nan if np.isnan(top).any() else float(top.max())
    total = [math.fsum(sums[:, k]) for k in range(4)]
    return ErrorSums(rows=sums.shape[0], sum_sq_x=total[0], sum_sq_err=total[1], max_abs=max_abs,
                     w_sum_sq_x=total[2] if weighted else 0.0, w_sum_sq_err=total[3] if weighted else 0.0,
                     weighted=weighted)


class _AfterEach:
    """Calls `then` once each of n outputs lent from one slot is released (each counted once)."""

    def __init__(self, n: int, then: Callable[[], None]) -> None:
        self._left = set(range(n))
        self._then = then
        self._lock = threading.Lock()

    def __call__(self, index: int) -> None:
        with self._lock:
            if index not in self._left:  # a second release of the same output counts nothing
                return
            self._left.discard(index)
            last = not self._left
        if last:
            self._then()


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
        self.slot_bytes = device_memory_bytes // slots
        self.arena_bytes = self.slot_bytes - self.slot_bytes // _SCRATCH_SHARE  # a piece's regions
        self.device = cupy.cuda.runtime.getDevice()
        self._slots = [_Slot(cupy, self.arena_bytes) for _ in range(slots)]
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

    def run(self, chunks: Iterable[Chunk], check_finite: bool) -> Iterator[Quantized]:
        # A new run: whatever a consumer of the last one kept is its own business now.
        pool = _SlotPool(self._slots)
        pending: deque[_Piece] = deque()  # staged or staging, in chunk order
        try:
            for group in self._groups(chunks):
                first = group[0]
                rows, n_per_row = first.rows, first.n_per_row
                checks = [check_finite and not c.qtype.is_float for c in group]
                if rows == 0 or n_per_row == 0:  # nothing to compute, but each output keeps its place
                    for c, check in zip(group, checks, strict=True):
                        empty = _ChunkOutput(c, c.qtype.row_bytes(n_per_row), 1, check,
                                             row_sums=np.zeros((rows, _SUMS)))
                        pending.append(_Piece(None, [empty], 0, rows, check))
                    continue
                per_piece = self._rows_per_piece(group, any(checks))
                outputs = [_ChunkOutput(c, c.qtype.row_bytes(n_per_row), -(-rows // per_piece), check)
                           for c, check in zip(group, checks, strict=True)]
                for output in outputs:
                    if output.chunk.measure:
                        output.row_sums = np.empty((rows, _SUMS))
                for r0 in range(0, rows, per_piece):
                    while (slot := pool.take()) is None:  # then some piece is computing
                        yield from self._finish(pending.popleft(), pool)
                    piece = _Piece(slot, outputs, r0, min(rows, r0 + per_piece), any(checks))
                    piece.staged = self._last_staged = self._stager.submit(self._stage, piece)
                    pending.append(piece)
            while pending:
                yield from self._finish(pending.popleft(), pool)
        finally:
            self._quiesce(pending)

    def _groups(self, chunks: Iterable[Chunk]) -> Iterator[list[Chunk]]:
        """Consecutive chunks of the same rows (publish's outputs of one tensor), checked, as groups."""
        group: list[Chunk] = []
        rows = None  # the group's rows as the caller gave them (checking may view them anew)
        for raw in chunks:
            chunk, _ = self._checked(raw)
            if group and not (raw.data is rows and _same_rows(group, chunk)):
                yield group
                group = []
            if not group:
                rows = raw.data
            group.append(chunk)
        if group:
            yield group

    def _checked(self, chunk: Chunk) -> tuple[Chunk, QType]:
        t = resolve(chunk.qtype)
        if not self._backend.supports(t):
            raise ValueError(f"type {t.name} is not supported yet by the cupy backend")
        source = resolve(chunk.source)
        data = np.asarray(chunk.data)
        want = np.float32 if source.name == "F32" else np.uint8
        if data.dtype != want or data.ndim != 2:
            raise ValueError(f"a {source.name} chunk must be {np.dtype(want).name} [rows, "
                             f"{'n_per_row' if source.name == 'F32' else 'row_bytes'}], got {data.dtype} {data.shape}")
        chunk = chunk._replace(data=data, qtype=t, source=source)
        n_per_row = chunk.n_per_row
        if source.name != "F32" and source.row_bytes(n_per_row) != data.shape[1]:
            raise ValueError(f"rows of {data.shape[1]} bytes are not whole {source.name} blocks")
        t.row_bytes(n_per_row)  # raises for rows that are not whole blocks
        if chunk.imatrix is not None:
            imatrix = np.ascontiguousarray(chunk.imatrix, dtype=np.float32).reshape(-1)
            if imatrix.size != n_per_row:
                raise ValueError(f"imatrix has {imatrix.size} values but rows have {n_per_row}")
            chunk = chunk._replace(imatrix=imatrix)
        return chunk, t

    def _rows_per_piece(self, group: list[Chunk], check: bool) -> int:
        chunk = group[0]
        weighted = any(c.imatrix is not None for c in group)
        sizes = piece_bytes(chunk, [c.qtype for c in group], 1, check, True, weighted)
        fixed = 4 * chunk.n_per_row if weighted else 0  # the importance matrix: not per row
        per_row = sum(sizes.values()) - fixed
        regions = max(_REGIONS, len(sizes))
        rows = (self.arena_bytes - regions * _ALIGNMENT - fixed) // per_row
        if rows <= 0:
            raise ValueError(
                f"a row of {chunk.n_per_row} weights ({per_row + fixed} bytes of device buffers) does not fit "
                f"the GPU memory setting of {self.device_memory_bytes} bytes ({self.slot_bytes} per slot); "
                f"raise it with {DEVICE_MEMORY_ENV} or CupyBackend(device_memory_bytes=...)"
            )
        return rows

    def _finish(self, piece: _Piece, pool: _SlotPool) -> Iterator[Quantized]:
        """Wait for a piece and yield its chunks' outputs, in order, if this was their last piece."""
        outputs = piece.outputs
        if piece.slot is None:
            output = outputs[0]
            yield Quantized(np.empty((piece.rows, output.row_bytes), dtype=np.uint8), output.error())
            return
        piece.staged.result()  # the staging thread's errors surface here, in order
        slot = piece.slot
        slot.done.synchronize()
        if piece.check_finite:
            flags = slot.pinned.get("flags", piece.rows)
            bad = np.flatnonzero(flags)
            if bad.size:
                pool.give(slot)
                raise NonFiniteError(piece.r0 + int(bad[0]))
        results = []
        for i, output in enumerate(outputs):
            if output.row_sums is not None:
                sums = slot.pinned.get(f"sums{i}", piece.rows * 8 * _SUMS).view(np.float64)
                output.row_sums[piece.r0 : piece.r1] = sums.reshape(piece.rows, _SUMS)
            q = slot.pinned.get(f"out{i}", piece.rows * output.row_bytes).reshape(piece.rows, output.row_bytes)
            output.done += 1
            results.append(q)
        release = pool.lend(slot) if outputs[0].pieces == 1 else None
        if release is not None:  # written straight from the slot's pinned buffers, free once all released
            shared = _AfterEach(len(outputs), release)
            for i, (output, q) in enumerate(zip(outputs, results, strict=True)):
                yield Quantized(q, output.error(), partial(shared, i))
            return
        for output, q in zip(outputs, results, strict=True):
            if output.buffer is None:
                output.buffer = np.empty((output.chunk.rows, output.row_bytes), dtype=np.uint8)
            output.buffer[piece.r0 : piece.r1] = q
        pool.give(slot)
        for output in outputs:
            if output.done == output.pieces:
                yield Quantized(output.buffer, output.error())

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
        slot, chunk = piece.slot, piece.chunk
        rows, n = piece.rows, chunk.n_per_row
        slot.lay_out(piece)
        sizes = piece.pinned_sizes()
        stored = chunk.data[piece.r0 : piece.r1]
        host_stored = slot.pinned.get("stored", sizes["stored"]).view(stored.dtype).reshape(stored.shape)
        self._fill(host_stored, stored)
        stream = slot.stream
        device = piece.device_sizes()
        x = slot.device.get("x", device["x"]).view(np.float32).reshape(rows, n)
        if chunk.source.name == "F32":
            x.set(host_stored, stream=stream)
        else:  # made float32 on the device: F16/BF16 widened, a quantized source dequantized
            raw = slot.device.get("stored", device["stored"])
            raw.set(slot.pinned.get("stored", sizes["stored"]), stream=stream)
            launch.dequantize(raw, chunk.source, n, x, stream)
        # The slot's stream is the current one here: any scratch memory a launch takes (a kernel's row
        # statistics) comes from its pool, in its order.
        with stream:
            if piece.check_finite:
                # Zeroed here first: a benchmark's cost-free device skips the copy back, and then no
                # row is flagged.
                host_flags = slot.pinned.get("flags", rows)
                host_flags[...] = 0
                flags = slot.device.get("flags", rows)
                get_kernel("stream.cu", "gq_check_rows")(_row_grid(rows), (ROW_THREADS,),
                                                         (x, flags, np.int64(rows), np.int64(n)), stream=stream)
                flags.get(stream=stream, out=host_flags, blocking=False)
            imatrix = slot.imatrix_on_device(piece.imatrix)
            for i, output in enumerate(piece.outputs):
                c = output.chunk
                weights = imatrix if c.imatrix is not None else None
                q = slot.device.get(f"out{i}", device[f"out{i}"])
                self._backend.quantize_device(x, c.qtype, weights, q, stream)
                if c.measure:
                    self._measure(slot, x, q, c.qtype, weights, stream, i)
                q.get(stream=stream, out=slot.pinned.get(f"out{i}", sizes[f"out{i}"]), blocking=False)
        slot.done.record(stream)

    def _measure(self, slot: _Slot, x, q, t: QType, imatrix, stream, index: int) -> None:
        """Queues the round trip of q and the rows' error sums, and their copy to the host."""
        rows, n = x.shape
        y = slot.device.get("y", rows * 4 * n).view(np.float32).reshape(rows, n)
        launch.dequantize(q, t, n, y, stream)
        sums = slot.device.get(f"sums{index}", rows * 8 * _SUMS).view(np.float64)
        if imatrix is None:
            args = (x, y, sums, np.int64(rows), np.int64(n))
            kernel = get_kernel("stream.cu", "gq_error_rows_plain")
        else:
            args = (x, y, imatrix, sums, np.int64(rows), np.int64(n))
            kernel = get_kernel("stream.cu", "gq_error_rows_weighted")
        kernel(_row_grid(rows), (ROW_THREADS,), args, stream=stream)
        host_sums = slot.pinned.get(f"sums{index}", rows * 8 * _SUMS).view(np.float64)
        host_sums[...] = 0.0  # as the flags: what a benchmark's cost-free device leaves there
        sums.get(stream=stream, out=host_sums, blocking=False)

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


_MAX_ROW_BLOCKS = 1 << 16  # the row kernels loop over the rows past this many blocks


def _row_grid(rows: int) -> tuple[int]:
    return (max(1, min(rows, _MAX_ROW_BLOCKS)),)


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


def quantize_chunks(backend, chunks: Iterable[Chunk], check_finite: bool) -> Iterator[Quantized]:
    """The Backend protocol's quantize_chunks for CupyBackend (see the module docstring); device
    faults come out as GPUError."""
    try:
        yield from _quantize_chunks(backend, chunks, check_finite)
    except Exception as e:
        error = gpu_error(e)
        if error is None:
            raise
        raise error from None


def _quantize_chunks(backend, chunks: Iterable[Chunk], check_finite: bool) -> Iterator[Quantized]:
    cupy = cupy_module()

    with _idle_lock:
        engine = _idle_engines.pop(backend, None)
    if engine is not None and engine.device != cupy.cuda.runtime.getDevice():
        engine.close()
        engine = None
    if engine is None:
        memory = effective_device_memory(cupy, backend.device_memory_bytes, backend.notes)
        engine = StreamEngine(backend, memory, backend.stream_slots, backend.n_threads)
    try:
        yield from engine.run(chunks, check_finite)
    finally:
        with _idle_lock:
            keep = backend not in _idle_engines
            if keep:
                _idle_engines[backend] = engine
        if not keep:  # another run of the same backend finished first: its engine stays
            engine.close()
