"""Importance matrices written by llama.cpp's llama-imatrix, read the way llama-quantize reads them.

Two file formats exist (tools/imatrix/imatrix.cpp writes both):

- GGUF (the default since mid 2025): per weight tensor `<name>.in_sum2`, F32 with ggml shape
  [n_per_row, n_mat], the sums of squared activations, and `<name>.counts`, F32 [1, n_mat], how
  many activation rows each matrix (each expert of a 3-D tensor) saw; metadata `imatrix.datasets`
  (array of strings), `imatrix.chunk_count` and `imatrix.chunk_size` (uint32). The importance of a
  row is in_sum2 / count, and 1.0 for a matrix whose count is 0 (an expert never routed to).
- legacy `.dat`: little-endian int32 n_entries, then per entry int32 name length, the name bytes,
  int32 ncall, int32 nval and nval float32 values; then optionally int32 chunk count, int32
  dataset-name length and the dataset name. The importance is value / ncall (the raw values when
  ncall is 0). A 3-D (expert) entry is one flat vector of n_expert * n_per_row values.

The divisions are float32 by float32, as in C, so the values are bit-identical to llama-quantize's.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType


class ImatrixError(ValueError):
    """The importance matrix cannot be used; the message is one line for the user."""


@dataclass
class Imatrix:
    path: str  # as given: llama-quantize records it so in quantize.imatrix.file
    entries: dict[str, np.ndarray]  # float32, read-only: [n_per_row], [n_mat, n_per_row], or flat (legacy)
    datasets: list[str]
    chunks_count: int | None  # None: a legacy file without the trailing chunk count
    format: str  # "gguf" or "legacy"


def load_imatrix(path: str | os.PathLike[str]) -> Imatrix:
    """Read an imatrix file of either format (a GGUF magic decides) into per-tensor importances."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ImatrixError(f"{path}: is a directory, not an imatrix file")
    if not os.path.isfile(path):
        raise ImatrixError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    imatrix = _load_gguf(path) if magic == b"GGUF" else _load_legacy(path)
    if not imatrix.entries:
        raise ImatrixError(f"{path}: the imatrix has no entries")
    for name, values in imatrix.entries.items():
        check_importances(values, f"{path}: entry {name}")
        values.flags.writeable = False  # shared by every caller of weights_for
    return imatrix


def check_importances(values: np.ndarray, what: str) -> None:
    """Importances must be finite and >= 0 (ggml's weighted searches assume so); one-line error."""
    if not np.all(np.isfinite(values)):
        raise ImatrixError(f"{what} has non-finite values")
    if np.any(values < 0):
        raise ImatrixError(f"{what} has negative values; importances are >= 0")


# llama-quantize quantizes these without an imatrix when the entry's size does not fit,
# instead of failing (src/llama-quant.cpp, "tok_embd should be ignored in this case").
_SIZE_MISMATCH_IGNORED = ("token_embd.weight", "per_layer_token_embd.weight")


def weights_for(imatrix: Imatrix, name: str, shape_gguf: tuple[int, ...]) -> np.ndarray | None:
    """The importance of each column of tensor `name` (ggml shape, ne0 first), or None without an entry.

    [n_per_row] for a 1-D or 2-D tensor; [n_expert, n_per_row] for a 3-D tensor (ne2 experts), one row
    of importances per expert, as llama-quantize slices its flat vector.
    """
    values = imatrix.entries.get(name)
    if values is None:
        return None
    if not 1 <= len(shape_gguf) <= 3:
        raise ImatrixError(f"tensor {name}: an imatrix applies to 2-D or 3-D tensors, not shape {tuple(shape_gguf)}")
    n_per_row = int(shape_gguf[0])
    n_expert = int(shape_gguf[2]) if len(shape_gguf) == 3 else 1
    # llama-quantize compares only the total size with ne0 * ne2, whatever rows the file had.
    if values.size != n_per_row * n_expert:
        if name in _SIZE_MISMATCH_IGNORED:
            return None
        raise ImatrixError(
            f"tensor {name}: imatrix entry has {values.size} values, the tensor needs "
            f"{n_per_row * n_expert} ({n_expert} x {n_per_row})"
        )
    if len(shape_gguf) == 3:
        return values.reshape(n_expert, n_per_row)
    return values.reshape(n_per_row)


def select_entries(imatrix: Imatrix, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> Imatrix | None:
    """--include-weights / --exclude-weights: entries whose name contains (or not) one of the strings.

    None when nothing is left: llama-quantize then quantizes as if no imatrix had been given.
    """
    entries = imatrix.entries
    if exclude:
        entries = {k: v for k, v in entries.items() if not any(part in k for part in exclude)}
    if include:
        entries = {k: v for k, v in entries.items() if any(part in k for part in include)}
    if not entries:
        return None
    if entries is imatrix.entries:
        return imatrix
    return Imatrix(imatrix.path, entries, imatrix.datasets, imatrix.chunks_count, imatrix.format)


def metadata_entries(imatrix: Imatrix) -> list[tuple[str, object, str]]:
    """The keys llama-quantize adds to its output: (key, value, gguf.GGUFValueType name).

    Integer keys are UINT32: llama-quantize passes them as INT overrides, which src/llama-quant.cpp
    writes with gguf_set_val_u32 (since llama.cpp PR #14182; INT32 before). Strings go through a
    char[128] (strncpy of 127 bytes): at most 127 bytes, cut before a split UTF-8 character.
    Only the first dataset is recorded; the chunk count only when it is positive.
    """
    entries: list[tuple[str, object, str]] = [("quantize.imatrix.file", _c_string(imatrix.path), "STRING")]
    if imatrix.datasets:
        entries.append(("quantize.imatrix.dataset", _c_string(imatrix.datasets[0]), "STRING"))
    entries.append(("quantize.imatrix.entries_count", len(imatrix.entries), "UINT32"))
    if imatrix.chunks_count:
        entries.append(("quantize.imatrix.chunks_count", imatrix.chunks_count, "UINT32"))
    return entries


def _c_string(text: str) -> str:
    raw = text.encode("utf-8").split(b"\0", 1)[0][:127]
    return raw.decode("utf-8", errors="ignore")


# ---- GGUF format -------------------------------------------------------------------------------

_SUMS_SUFFIX = ".in_sum2"
_COUNTS_SUFFIX = ".counts"
_INTEGER_TYPES = (
    GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
    GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64,
)


def _load_gguf(path: str) -> Imatrix:
    try:
        reader = GGUFReader(path, "r")
    except Exception as e:  # the reader raises many kinds on a damaged file
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImatrixError(f"{path}: unreadable or truncated GGUF imatrix ({detail})") from None

    # llama-quantize refuses a GGUF imatrix without these three keys ("missing imatrix metadata").
    datasets = _dataset_names(path, reader)
    chunks_count = _count_key(path, reader, "imatrix.chunk_count")
    _count_key(path, reader, "imatrix.chunk_size")

    pairs: dict[str, dict[str, object]] = {}
    for t in reader.tensors:
        for suffix in (_SUMS_SUFFIX, _COUNTS_SUFFIX):
            if t.name.endswith(suffix) and len(t.name) > len(suffix):
                pairs.setdefault(t.name[: -len(suffix)], {})[suffix] = t
        # other tensors (such as .in_sum, the plain activation sums) are not used for quantizing

    entries: dict[str, np.ndarray] = {}
    for name in sorted(pairs):
        sums, counts = pairs[name].get(_SUMS_SUFFIX), pairs[name].get(_COUNTS_SUFFIX)
        if sums is None or counts is None:
            missing = _COUNTS_SUFFIX if counts is None else _SUMS_SUFFIX
            raise ImatrixError(f"{path}: entry {name} has no {name}{missing} tensor")
        entries[name] = _gguf_entry(path, name, sums, counts)
    return Imatrix(path, entries, datasets, chunks_count, "gguf")


def _gguf_entry(path: str, name: str, sums, counts) -> np.ndarray:
    for t in (sums, counts):
        if t.tensor_type != GGMLQuantizationType.F32:
            raise ImatrixError(f"{path}: {t.name} is {t.tensor_type.name}, expected F32")
    ne = [int(d) for d in sums.shape]
    if len(ne) > 2 or sums.n_elements == 0:
        raise ImatrixError(f"{path}: {sums.name} has shape {ne}, expected [n_per_row, n_mat]")
    n_per_row = ne[0]
    n_mat = ne[1] if len(ne) == 2 else 1
    if counts.n_elements != n_mat:
        raise ImatrixError(f"{path}: {counts.name} has {counts.n_elements} counts for {n_mat} matrices")

    row_sums = np.asarray(sums.data, dtype=np.float32).reshape(n_mat, n_per_row)
    row_counts = np.asarray(counts.data, dtype=np.float32).reshape(n_mat)
    if not np.all(np.isfinite(row_counts)) or np.any(row_counts < 0):
        raise ImatrixError(f"{path}: entry {name} has a negative or non-finite count")
    if not np.all(np.isfinite(row_sums)):
        raise ImatrixError(f"{path}: entry {name} has non-finite values")

    with np.errstate(divide="ignore", invalid="ignore"):
        values = row_sums / row_counts[:, None]
    # a matrix that never saw an input (an unused expert): neutral weights, as llama-quantize
    values[row_counts == 0] = np.float32(1.0)
    if not np.all(np.isfinite(values)):
        raise ImatrixError(f"{path}: entry {name} overflows when divided by its counts")
    return values.reshape(n_per_row) if n_mat == 1 else values


def _dataset_names(path: str, reader: GGUFReader) -> list[str]:
    field = reader.fields.get("imatrix.datasets")
    if field is None:
        raise ImatrixError(f"{path}: missing imatrix metadata imatrix.datasets")
    if field.types == [GGUFValueType.ARRAY]:
        return []  # an empty array: gguf's reader records no item type then
    if field.types != [GGUFValueType.ARRAY, GGUFValueType.STRING]:
        raise ImatrixError(f"{path}: imatrix.datasets is not an array of strings")
    try:
        return list(field.contents())
    except UnicodeDecodeError:
        raise ImatrixError(f"{path}: imatrix.datasets holds a name that is not UTF-8") from None


def _count_key(path: str, reader: GGUFReader, key: str) -> int:
    field = reader.fields.get(key)
    if field is None:
        raise ImatrixError(f"{path}: missing imatrix metadata {key}")
    if len(field.types) != 1 or field.types[0] not in _INTEGER_TYPES:
        raise ImatrixError(f"{path}: {key} is not an integer")
    value = int(field.contents())
    if value < 0:
        raise ImatrixError(f"{path}: {key} is negative ({value})")
    return value


# ---- legacy .dat format ------------------------------------------------------------------------


class _LegacyFile:
    """Sequential little-endian reads that fail with one clear line instead of reading past the end."""

    def __init__(self, path: str, f: BinaryIO) -> None:
        self.path = path
        self.f = f
        self.size = os.fstat(f.fileno()).st_size

    def remaining(self) -> int:
        return self.size - self.f.tell()

    def _need(self, n_bytes: int, what: str) -> None:
        if n_bytes > self.remaining():
            raise ImatrixError(
                f"{self.path}: not a GGUF file, and a truncated or invalid legacy imatrix: "
                f"{what} needs {n_bytes} bytes at offset {self.f.tell()}, {self.remaining()} are left"
            )

    def int32(self, what: str) -> int:
        self._need(4, what)
        return struct.unpack("<i", self.f.read(4))[0]

    def raw(self, n_bytes: int, what: str) -> bytes:
        self._need(n_bytes, what)
        return self.f.read(n_bytes)

    def float32(self, count: int, what: str) -> np.ndarray:
        self._need(4 * count, what)
        return np.frombuffer(self.f.read(4 * count), dtype="<f4").astype(np.float32)

    def fail(self, message: str) -> ImatrixError:
        return ImatrixError(f"{self.path}: not a GGUF file, and an invalid legacy imatrix: {message}")


def _load_legacy(path: str) -> Imatrix:
    with open(path, "rb") as f:
        src = _LegacyFile(path, f)
        n_entries = src.int32("the entry count")
        if n_entries < 1:
            raise src.fail(f"entry count {n_entries}")
        entries: dict[str, np.ndarray] = {}
        for i in range(n_entries):
            name = _legacy_name(src, i)
            ncall = src.int32(f"entry {name}: the call count")
            nval = src.int32(f"entry {name}: the value count")
            if ncall < 0 or nval < 1:
                raise src.fail(f"entry {name}: call count {ncall}, value count {nval}")
            sums = src.float32(nval, f"entry {name}: {nval} values")
            if not np.all(np.isfinite(sums)):
                raise ImatrixError(f"{path}: entry {name} has non-finite values")
            # float /= int in C: the int converted to float, then a float32 division
            entries[name] = sums / np.float32(ncall) if ncall > 0 else sums
        chunks_count, datasets = _legacy_trailer(src)
    return Imatrix(path, entries, datasets, chunks_count, "legacy")


def _legacy_name(src: _LegacyFile, index: int) -> str:
    length = src.int32(f"entry {index + 1}: the name length")
    if length < 1:
        raise src.fail(f"entry {index + 1}: name length {length}")
    raw = src.raw(length, f"entry {index + 1}: the name")
    try:
        return raw.split(b"\0", 1)[0].decode("utf-8")  # C reads the name up to a NUL
    except UnicodeDecodeError:
        raise src.fail(f"entry {index + 1}: the name is not UTF-8") from None


def _legacy_trailer(src: _LegacyFile) -> tuple[int | None, list[str]]:
    """The optional chunk count and dataset name after the entries (newer legacy writers add them)."""
    if src.remaining() == 0:
        return None, []
    chunks_count = src.int32("the chunk count")
    if chunks_count < 0:
        raise src.fail(f"chunk count {chunks_count}")
    if src.remaining() == 0:
        return chunks_count, []
    length = src.int32("the dataset name length")
    if length < 0:
        raise src.fail(f"dataset name length {length}")
    raw = src.raw(length, "the dataset name")
    if src.remaining() != 0:
        raise src.fail(f"{src.remaining()} unexpected bytes after the dataset name")
    dataset = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    return chunks_count, [dataset] if dataset else []
