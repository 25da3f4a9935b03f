"""GGUF input and output: a memory-mapped reader over gguf.GGUFReader and a streaming, atomic writer.

The reader hands out tensors as views of the mapped file; the writer lays out the header and
tensor infos first (all types and sizes are known from the plan), then appends tensor data in
order, in pieces, into a temporary file that is renamed over the destination only at the end.
"""

from __future__ import annotations

import errno
import hashlib
import io
import mmap
import os
import queue
import re
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUFReader, GGUFValueType, GGUFWriter

from .gguf_header import describe_damage
from .qtypes import BY_ID, FAMILIES, QType, copy_only_type


@dataclass(frozen=True)
class RawArray:
    """A long metadata array kept as its encoded bytes (a view of the input), copied to the output
    as it is: a 262144-token vocabulary is never decoded into 786k Python objects and encoded again."""

    sub_type: GGUFValueType
    count: int
    payload: np.ndarray  # uint8: the items as the file stores them

    def __len__(self) -> int:
        return self.count


# Arrays longer than this stay encoded (per-layer arrays of hyperparameters are decoded).
RAW_ARRAY_MIN_ITEMS = 1024
_FIXED_ITEM_BYTES = {
    GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.BOOL: 1, GGUFValueType.UINT16: 2,
    GGUFValueType.INT16: 2, GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4,
    GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8,
}


class _Reader(GGUFReader):
    """gguf's reader, slicing a plain ndarray view of its map while parsing the header, and keeping
    long arrays encoded (RawArray).

    np.memmap's per-slice bookkeeping made parsing a 32k-string tokenizer take most of a second;
    a plain view of the same mapping parses it several times faster. gguf builds one part per array
    item: gemma-3's 262144-token vocabulary took 5 s to parse and 1.4 s to write back. Same bytes.
    """

    def _get_field_parts(self, orig_offs, raw_type):
        if raw_type != GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        raw_itype = self._get(orig_offs, np.uint32)
        alen = self._get(orig_offs + 4, np.uint64)
        count = int(alen[0])
        if count < RAW_ARRAY_MIN_ITEMS:
            return super()._get_field_parts(orig_offs, raw_type)
        itype = GGUFValueType(int(raw_itype[0]))
        start = orig_offs + 12
        if itype in _FIXED_ITEM_BYTES:
            end = start + _FIXED_ITEM_BYTES[itype] * count
        elif itype == GGUFValueType.STRING:
            end = self._skip_strings(start, count)
        else:
            return super()._get_field_parts(orig_offs, raw_type)
        if end > len(self.data):
            raise ValueError("metadata array ends past the file")
        payload = self._get(start, np.uint8, end - start)
        self.__dict__.setdefault("_raw_arrays", {})[orig_offs] = RawArray(itype, count, payload)
        return end - orig_offs, [raw_itype, alen, payload], [], [GGUFValueType.ARRAY, itype]

    def _skip_strings(self, offset: int, count: int) -> int:
        view = memoryview(self.data.view(np.ndarray))
        size = len(view)
        for _ in range(count):
            if offset + 8 > size:
                raise ValueError("metadata string ends past the file")
            offset += 8 + int.from_bytes(view[offset : offset + 8], "little")
        return offset

    def raw_array(self, field) -> RawArray | None:
        """The RawArray of a field kept encoded, else None."""
        value_offset = field.offset + 8 + len(field.name.encode()) + 4
        return self.__dict__.get("_raw_arrays", {}).get(value_offset)

    def _get(self, offset, dtype, count=1, override_order=None):
        plain = self.__dict__.get("_plain")
        if plain is None:
            plain = self._plain = self.data.view(np.ndarray)
        count = int(count)
        end = offset + np.dtype(dtype).itemsize * count
        arr = plain[offset:end].view(dtype=dtype)[:count]
        return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))


class GGUFInputError(ValueError):
    """The input file is not a usable GGUF file; the message is one line for the user."""


@dataclass
class SourceTensor:
    name: str
    qtype: QType
    shape_gguf: tuple[int, ...]  # ggml order: ne0 (the row length) first
    data_offset: int  # absolute, in its file
    n_bytes: int
    split: int = 0  # which file of a split model holds it (0-based)

    @property
    def n_per_row(self) -> int:
        return self.shape_gguf[0]

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape_gguf, dtype=np.int64))

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.n_per_row

    @property
    def shape_numpy(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape_gguf))


@dataclass
class MetadataEntry:
    key: str
    value: Any
    vtype: GGUFValueType
    sub_type: GGUFValueType | None


_NUMPY_SOURCE_DTYPES = {"F32": np.float32, "F16": np.uint16, "BF16": np.uint16}


class SourceModel:
    """A GGUF file opened read-only: its metadata, its tensors, and float32 views of their rows."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._maps: list[np.memmap] = []
        first = _open_reader(self.path)
        self.alignment = int(first.alignment)
        self.metadata = [_entry(first, f) for k, f in first.fields.items() if not k.startswith("GGUF.")]
        self.paths = split_paths(self.path, self.metadata)
        readers = [first] + [_open_reader(p) for p in self.paths[1:]]
        self.tensors: list[SourceTensor] = []
        seen: set[str] = set()
        # gguf's reader has already checked that every tensor's data lies inside its file
        for index, reader in enumerate(readers):
            self._maps.append(reader.data)
            for t in reader.tensors:
                if t.name in seen:
                    raise GGUFInputError(f"{self.path}: tensor {t.name} appears twice")
                seen.add(t.name)
                qtype = BY_ID.get(int(t.tensor_type))
                if qtype is None:  # e.g. I32 or F64: copied as it is
                    block, size = GGML_QUANT_SIZES[t.tensor_type]
                    qtype = copy_only_type(int(t.tensor_type), t.tensor_type.name, block, size)
                shape = tuple(int(d) for d in t.shape)
                _check_tensor_shape(self.paths[index], t.name, shape, qtype)
                self.tensors.append(SourceTensor(t.name, qtype, shape, int(t.data_offset), int(t.n_bytes), index))

    @property
    def architecture(self) -> str | None:
        for e in self.metadata:
            if e.key == "general.architecture":
                return str(e.value)
        return None

    def raw_bytes(self, t: SourceTensor, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The tensor's stored bytes [start, stop) as a view of the mapped file."""
        stop = t.n_bytes if stop is None else stop
        return self._maps[t.split][t.data_offset + start : t.data_offset + stop]

    def rows_as_float32(self, t: SourceTensor, row_start: int, row_stop: int,
                        dequantize: Callable[[np.ndarray, QType, int], np.ndarray] | None = None) -> np.ndarray:
        """Rows [row_start, row_stop) of a tensor as float32 [rows, n_per_row]: an F32 tensor as a view,
        any other through `dequantize(rows, qtype, n_per_row)` (a backend's dequantize_rows: the running
        backend's own; the native backend widens F16 and BF16 in C over its threads). Without one, F16
        and BF16 are widened here with NumPy, to the same bits (ggml's: NaNs quiet, bf16 << 16)."""
        name = t.qtype.name
        if name not in _NUMPY_SOURCE_DTYPES or (name != "F32" and dequantize is not None):
            return self._dequantized(t, row_start, row_stop, dequantize)
        row_bytes = t.n_per_row * t.qtype.type_size
        raw = self.raw_bytes(t, row_start * row_bytes, row_stop * row_bytes).view(_NUMPY_SOURCE_DTYPES[name])
        raw = raw.reshape(row_stop - row_start, t.n_per_row)
        if name == "F32":
            return raw
        if name == "F16":  # not raw.astype: NumPy's cast keeps a signalling NaN signalling, ggml quiets it
            from .backends.numpy.rounding import fp16_bits_to_f32

            return fp16_bits_to_f32(raw)
        return (raw.astype(np.uint32) << np.uint32(16)).view(np.float32)

    def _dequantized(self, t: SourceTensor, row_start: int, row_stop: int, dequantize) -> np.ndarray:
        """Rows of a quantized tensor as ggml's to_float gives them (for --allow-requantize), or of an
        F16/BF16 one widened by the backend."""
        if dequantize is None or t.qtype.family not in FAMILIES:
            raise GGUFInputError(f"tensor {t.name}: source type {t.qtype.name} cannot be converted")
        row_bytes = t.qtype.row_bytes(t.n_per_row)
        raw = self.raw_bytes(t, row_start * row_bytes, row_stop * row_bytes).reshape(row_stop - row_start, row_bytes)
        return dequantize(np.ascontiguousarray(raw), t.qtype, t.n_per_row)

    def stored_rows(self, t: SourceTensor, row_start: int, row_stop: int) -> np.ndarray:
        """Rows [row_start, row_stop) as the file stores them, a view of the map: float32 [rows,
        n_per_row] for F32, else uint8 [rows, row_bytes] (what a backend's Chunk takes)."""
        row_bytes = t.qtype.row_bytes(t.n_per_row)
        raw = self.raw_bytes(t, row_start * row_bytes, row_stop * row_bytes)
        if t.qtype.name == "F32":
            return raw.view(np.float32).reshape(row_stop - row_start, t.n_per_row)
        return raw.reshape(row_stop - row_start, row_bytes)

    def release(self, t: SourceTensor, start: int = 0, stop: int | None = None) -> None:
        """Drop the mapped pages of a processed range so resident memory stays bounded (page cache stays)."""
        stop = t.n_bytes if stop is None else stop
        page = mmap.PAGESIZE
        a = (t.data_offset + start + page - 1) // page * page
        b = (t.data_offset + stop) // page * page
        mapped = self._maps[t.split]
        if b > a and hasattr(mapped, "_mmap") and hasattr(mmap, "MADV_DONTNEED"):
            mapped._mmap.madvise(mmap.MADV_DONTNEED, a, b - a)

    def close(self) -> None:
        maps, self._maps = self._maps, []
        for mapped in maps:
            mm = getattr(mapped, "_mmap", None)
            if mm is not None:
                try:
                    mm.close()
                except BufferError:  # a view is still alive somewhere; the GC will unmap it
                    pass


def _check_tensor_shape(path: Path, name: str, shape: tuple[int, ...], qtype: QType) -> None:
    """ggml's limits on a tensor: 1 to 4 dimensions, none of them 0, whole blocks per row."""
    if not 1 <= len(shape) <= 4:
        raise GGUFInputError(f"{path}: tensor {name} has {len(shape)} dimensions (ggml allows 1 to 4)")
    if min(shape) < 1:
        raise GGUFInputError(f"{path}: tensor {name} has a dimension of 0 (shape {list(shape)})")
    if shape[0] % qtype.block_size:
        raise GGUFInputError(
            f"{path}: tensor {name}'s rows of {shape[0]} are not whole {qtype.name} blocks of {qtype.block_size}"
        )


def _open_reader(path: Path) -> _Reader:
    if path.is_dir():
        raise GGUFInputError(f"{path}: is a directory, not a GGUF file")
    if not path.is_file():
        raise GGUFInputError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise GGUFInputError(f"{path}: not a GGUF file (magic {magic!r})")
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # numpy's overflow notes on damaged counts and offsets
            reader = _Reader(path, "r")
    except Exception:  # the reader raises many kinds on a damaged header: say what is wrong
        raise GGUFInputError(f"{path}: {describe_damage(path)}") from None
    size = len(reader.data)
    for t in reader.tensors:
        relative = int(t.field.parts[-1][0])  # the offset as stored, before gguf adds the data start
        if relative % reader.alignment or relative > size or int(t.data_offset) + int(t.n_bytes) > size:
            raise GGUFInputError(
                f"{path}: tensor {t.name}'s data (offset {relative}, {int(t.n_bytes)} bytes) lies outside the file "
                f"or off its {reader.alignment}-byte alignment"
            )
    return reader


_SPLIT_NAME = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def split_paths(path: Path, metadata: list[MetadataEntry]) -> list[Path]:
    """The files of a model: the path alone, or with `split.count` > 1 every PREFIX-0000i-of-0000N.gguf."""
    count = next((int(e.value) for e in metadata if e.key == "split.count"), 0)
    if count <= 1:
        return [path]
    m = _SPLIT_NAME.match(path.name)
    if not m or int(m.group("no")) != 1 or int(m.group("count")) != count:
        raise GGUFInputError(
            f"{path}: a split model of {count} files is read from its first file, "
            f"named PREFIX-00001-of-{count:05d}.gguf"
        )
    return [path.with_name(f"{m.group('prefix')}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def _entry(reader: _Reader, field) -> MetadataEntry:
    vtype = field.types[0]
    sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
    if vtype == GGUFValueType.ARRAY and len(field.types) > 2:
        raise GGUFInputError(f"metadata key {field.name}: nested arrays are not supported")
    raw = reader.raw_array(field) if vtype == GGUFValueType.ARRAY else None
    return MetadataEntry(field.name, raw if raw is not None else field.contents(), vtype, sub_type)


class _Writer(GGUFWriter):
    """gguf's writer, writing a RawArray's encoded items as they are."""

    def _pack_val(self, val, vtype, add_vtype, sub_type=None):
        if isinstance(val, RawArray):
            head = self._pack("I", vtype) if add_vtype else b""
            return head + self._pack("I", val.sub_type) + self._pack("Q", val.count) + val.payload.tobytes()
        return super()._pack_val(val, vtype, add_vtype, sub_type)


@dataclass
class PlannedTensor:
    name: str
    shape_numpy: tuple[int, ...]
    qtype: QType
    n_bytes: int


def _header_writer(metadata: Iterable[MetadataEntry], tensors: list[PlannedTensor], alignment: int) -> _Writer:
    """gguf's writer holding the file's key/values and tensor infos, ready to write its header."""
    writer = _Writer(None, arch="")
    writer.kv_data[0].clear()  # drop the arch key the constructor adds; we copy the input's own
    writer.data_alignment = alignment
    for e in metadata:
        writer.add_key_value(e.key, e.value, e.vtype, e.sub_type)
    for t in tensors:
        # float32 as the nominal dtype makes gguf take the shape as elements, with raw_dtype as the type
        writer.add_tensor_info(t.name, t.shape_numpy, np.dtype(np.float32), t.n_bytes, raw_dtype=t.qtype.ggml_id)
    return writer


def header_bytes(metadata: Iterable[MetadataEntry], tensors: list[PlannedTensor], alignment: int) -> int:
    """The bytes before the first tensor's data in the file AtomicGGUFWriter writes (padding included):
    they depend on the names, shapes and key/values, not on the tensors' types or sizes."""
    from gguf.gguf_writer import WriterState

    writer = _header_writer(metadata, tensors, alignment)
    out = io.BytesIO()
    writer.fout = [out]
    writer.state = WriterState.EMPTY
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    return -(-out.tell() // alignment) * alignment


def padded(n_bytes: int, alignment: int) -> int:
    """A tensor's bytes in the file: its data padded to the alignment."""
    return -(-n_bytes // alignment) * alignment


class AtomicGGUFWriter:
    """Writes a GGUF file that appears at `dst` only when `commit()` succeeds.

    On Linux the file is written unnamed (O_TMPFILE) in dst's folder and linked into place at the
    end, so nothing at all remains when a run dies, SIGKILL and power cuts included (where the
    system refuses the link, the finished file is copied to a named one then). Where the file
    system has no unnamed files, it is written to `.NAME.PID.partial` next to dst, removed on any
    exit Python sees, and removed by the next run for the same output once its process is gone.
    """

    def __init__(
        self,
        dst: str | os.PathLike[str],
        metadata: Iterable[MetadataEntry],
        tensors: list[PlannedTensor],
        alignment: int,
        digest: bool = False,
    ) -> None:
        self.dst = Path(dst)
        self._hash = hashlib.sha256() if digest else None
        self.sha256 = ""  # with digest: the file's, once committed
        remove_stale_partials(self.dst)
        self.tmp = self.dst.with_name(f".{self.dst.name}.{os.getpid()}.partial")
        self._unnamed = False
        self._writer = _header_writer(metadata, tensors, alignment)
        self._expected = [t.n_bytes for t in tensors]
        self._index = 0
        self._written_in_tensor = 0
        self._committed = False
        try:
            self._open()
            self._writer.write_header_to_file()
            self._writer.write_kv_data_to_file()
            self._writer.write_ti_data_to_file()
            self._out = self._writer.fout[0]
            self._pad()
            self._header_bytes = self._out.tell()
            if self._hash is not None:
                self._out.flush()
                self._hash.update(os.pread(self._out.fileno(), self._header_bytes, 0))
            self._preallocate()
        except OSError as e:
            error = self._disk_error(e)
            self.abort()
            raise error from None
        except BaseException:
            self.abort()
            raise

    def _open(self) -> None:
        from gguf.gguf_writer import WriterState

        fd = None
        flag = getattr(os, "O_TMPFILE", None)
        if flag is not None:
            try:
                fd = os.open(self.dst.parent, flag | os.O_RDWR, 0o666)  # read back if it must be copied
                self._unnamed = True
            except OSError:  # e.g. a file system without O_TMPFILE: a named temporary file
                fd = None
        if fd is None:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self._writer.fout = [os.fdopen(fd, "wb")]
        self._writer.state = WriterState.EMPTY

    def _total_bytes(self) -> int:
        return self._header_bytes + sum(padded(n, self._writer.data_alignment) for n in self._expected)

    def _disk_error(self, e: OSError) -> OSError:
        """A full disk, in the user's words: which output, how many bytes it needs."""
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            header = getattr(self, "_header_bytes", None)
            needed = f"{self._total_bytes()} bytes" if header is not None else "more space"
            return OSError(f"no space left on the device for {self.dst} ({needed} needed)")
        return e

    def _preallocate(self) -> None:
        """Reserve the file's final size up front: appending to a growing file made ext4 write
        several times slower (measured: 800 MB in 2.1 s appending, 0.11 s preallocated), and a
        full disk is found before any work."""
        total = self._total_bytes()
        self._out.flush()
        try:
            os.posix_fallocate(self._out.fileno(), 0, total)
        except OSError as e:  # a file system without fallocate: plain appends still work
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise

    def _pad(self) -> None:
        pos = self._out.tell()
        pad = -pos % self._writer.data_alignment
        if pad:
            self._out.write(b"\0" * pad)
            if self._hash is not None and hasattr(self, "_header_bytes"):
                self._hash.update(b"\0" * pad)

    def write(self, data: np.ndarray) -> None:
        """Appends bytes of the current tensor; a tensor may arrive in any number of pieces."""
        data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        need = self._expected[self._index] - self._written_in_tensor
        if data.size > need:
            raise RuntimeError(f"tensor {self._index}: {data.size} bytes given, {need} expected")
        try:
            self._out.write(memoryview(data))
        except OSError as e:
            raise self._disk_error(e) from None
        if self._hash is not None:
            self._hash.update(memoryview(data))  # on the writer's thread: hashlib lets go of the GIL
        self._written_in_tensor += data.size
        if self._written_in_tensor == self._expected[self._index]:
            self._index += 1
            self._written_in_tensor = 0
            self._pad()

    def commit(self) -> None:
        if self._index != len(self._expected):
            raise RuntimeError(f"only {self._index} of {len(self._expected)} tensors were written")
        self._out.flush()
        if os.fstat(self._out.fileno()).st_size != self._out.tell():
            raise RuntimeError("output size differs from its layout")  # the preallocation was wrong
        if self._hash is not None:
            self.sha256 = self._hash.hexdigest()
        try:
            if self._unnamed:
                # link the unnamed file under the temporary name, then rename it over dst (a link
                # cannot replace an existing file); no fsync: like llama-quantize, durability is
                # left to the OS
                try:
                    _link_unnamed(self._out.fileno(), self.tmp)
                except OSError as e:
                    if e.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    _copy_to(self._out.fileno(), self.tmp)
            self._writer.close()
            os.replace(self.tmp, self.dst)
        except OSError as e:
            raise self._disk_error(e) from None
        self._committed = True

    def abort(self) -> None:
        if self._committed:
            return
        try:
            for f in self._writer.fout or []:
                f.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicGGUFWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._committed:
            self.abort()


_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000


def _link_unnamed(fd: int, path: Path) -> None:
    """Gives the O_TMPFILE file `fd` the name `path`: linkat(fd, "", AT_EMPTY_PATH), else through
    /proc/self/fd (the two ways open(2) documents; which one a system allows varies)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.linkat(fd, b"", _AT_FDCWD, os.fsencode(path), _AT_EMPTY_PATH) == 0:
        return
    os.link(f"/proc/self/fd/{fd}", path, follow_symlinks=True)


def _copy_to(fd: int, path: Path) -> None:
    """Copies the whole file `fd` to a new file `path`: for an unnamed file the system will not link
    (found only at the end: probing earlier would leave a name behind if the run were killed)."""
    size = os.fstat(fd).st_size
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        offset = 0
        while offset < size:
            piece = os.pread(fd, min(64 << 20, size - offset), offset)
            if not piece:
                raise OSError(errno.EIO, f"the output shrank while it was copied to {path}")
            view = memoryview(piece)
            while view:
                view = view[os.write(out, view):]
            offset += len(piece)
    except BaseException:
        os.close(out)
        path.unlink(missing_ok=True)
        raise
    os.close(out)


def remove_stale_partials(dst: Path) -> None:
    """Removes `.NAME.PID.partial` files of dst left by processes that no longer run."""
    prefix = f".{dst.name}."
    try:
        candidates = [p for p in dst.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(".partial")]
    except OSError:
        return
    for path in candidates:
        pid_text = path.name[len(prefix) : -len(".partial")]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # still running: its file, not ours to remove
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # another user's live process
        path.unlink(missing_ok=True)


class WriteBehind:
    """Writes on a background thread, so the next chunk is quantized while this one is written.

    Every write goes through a queue of `depth` items: views of the mapped input, and outputs that
    the backend lends until `then` runs (the GPU engine's pinned buffers). `then` runs after the
    data is written: it hands a backend's buffer back and drops the input pages the data came from.
    Memory stays bounded: at most `depth` writes wait.
    """

    def __init__(self, writer: AtomicGGUFWriter, depth: int = 4) -> None:
        self._writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="gpuquant-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            data, then = item
            if self._error is None:
                try:
                    self._writer.write(data)
                    then()
                except BaseException as e:  # reported to the caller at its next call
                    self._error = e
            self._queue.task_done()
        self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, data: np.ndarray, then) -> None:
        self._raise()
        self._queue.put((data, then))

    def drain(self) -> None:
        self._queue.join()
        self._raise()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
