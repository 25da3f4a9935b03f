"""A GGUF header read without gguf's reader, over a read-only map of the file.

Two uses: the tensor infos of any file, whatever type ids it holds (gguf 0.19's reader refuses
Q2_0, id 42), and what exactly is wrong with a file gguf's reader refused, in the user's words
(which key, tensor info or tensor data ends past the file or holds an impossible value).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES

from .qtypes import BY_ID

_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_GGUF_BLOCKS = {int(t): sizes for t, sizes in GGML_QUANT_SIZES.items()}


class HeaderDamage(ValueError):
    """What is wrong with the header, one line."""


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order
    type_id: int
    offset: int  # relative to the data section


@dataclass
class Header:
    alignment: int
    data_start: int
    tensors: list[TensorInfo]


def _block(type_id: int) -> tuple[int, int] | None:
    """(weights, bytes) per block of a type id, gpuquant's table first (it has Q2_0), then gguf's."""
    t = BY_ID.get(type_id)
    if t is not None:
        return t.block_size, t.type_size
    return _GGUF_BLOCKS.get(type_id)


class _Cursor:
    def __init__(self, buf) -> None:
        self.buf, self.pos, self.size = buf, 0, len(buf)

    def need(self, n: int, what: str) -> None:
        if self.pos + n > self.size:
            raise HeaderDamage(f"truncated or damaged: {what} ends past the end of the file ({self.size} bytes)")

    def unpack(self, fmt: str, n: int, what: str) -> int:
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def string(self, what: str) -> str:
        n = self.unpack("<Q", 8, f"the length of {what}")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise HeaderDamage(f"{what} is not UTF-8 text") from None

    def skip_value(self, vtype: int, what: str) -> None:
        if vtype == _STRING:
            self.string(what)
        elif vtype == _ARRAY:
            sub = self.unpack("<I", 4, f"the item type of {what}")
            count = self.unpack("<Q", 8, f"the length of {what}")
            if sub in _SCALAR_BYTES:
                self.need(_SCALAR_BYTES[sub] * count, what)
                self.pos += _SCALAR_BYTES[sub] * count
            elif sub == _STRING:
                for i in range(count):
                    self.string(f"item {i} of {what}")
            else:
                raise HeaderDamage(f"{what} has an unsupported item type {sub}")
        elif vtype in _SCALAR_BYTES:
            self.need(_SCALAR_BYTES[vtype], what)
            self.pos += _SCALAR_BYTES[vtype]
        else:
            raise HeaderDamage(f"{what} has an unknown value type {vtype}")


def scan_header(buf) -> Header:
    """The header of a GGUF file held in buf (bytes or a map); HeaderDamage says what is wrong."""
    c = _Cursor(buf)
    magic = bytes(buf[:4])
    if magic != b"GGUF":
        raise HeaderDamage(f"not a GGUF file (magic {magic!r})")
    c.pos = 4
    version = c.unpack("<I", 4, "the version")
    if version not in (2, 3):
        raise HeaderDamage(f"GGUF version {version} is not supported (2 and 3 are)")
    n_tensors = c.unpack("<Q", 8, "the tensor count")
    n_kv = c.unpack("<Q", 8, "the key/value count")
    alignment = 32
    for i in range(n_kv):
        key = c.string(f"the name of key/value {i}")
        vtype = c.unpack("<I", 4, f"the type of key {key}")
        start = c.pos
        c.skip_value(vtype, f"the value of key {key}")
        if key == "general.alignment" and vtype == 4:
            (alignment,) = struct.unpack_from("<I", buf, start)
            if alignment == 0 or alignment & (alignment - 1):
                raise HeaderDamage(f"general.alignment is {alignment}, not a power of two")
    tensors, names = [], set()
    for i in range(n_tensors):
        name = c.string(f"the name of tensor {i}")
        if name in names:
            raise HeaderDamage(f"tensor {name} appears twice")
        names.add(name)
        n_dims = c.unpack("<I", 4, f"the dimension count of tensor {name}")
        if not 1 <= n_dims <= 4:
            raise HeaderDamage(f"tensor {name} has {n_dims} dimensions (ggml allows 1 to 4)")
        shape = tuple(c.unpack("<Q", 8, f"dimension {j} of tensor {name}") for j in range(n_dims))
        type_id = c.unpack("<I", 4, f"the type of tensor {name}")
        offset = c.unpack("<Q", 8, f"the data offset of tensor {name}")
        tensors.append(TensorInfo(name, shape, type_id, offset))
    return Header(alignment, c.pos + (-c.pos % alignment), tensors)


def _mapped(path: str | os.PathLike[str]):
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def tensor_infos(path: str | os.PathLike[str]) -> list[tuple[str, tuple[int, ...], int]]:
    """(name, ggml shape, ggml type id) of every tensor of a GGUF file, from its header alone."""
    buf = _mapped(path)
    try:
        return [(t.name, t.shape, t.type_id) for t in scan_header(buf).tensors]
    except HeaderDamage as e:
        raise ValueError(f"{path}: {e}") from None
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()


def describe_damage(path: str | os.PathLike[str]) -> str:
    """What is wrong with a GGUF file that gguf's reader refused: a header part or a tensor's data
    that ends past the file, or an impossible value."""
    buf = _mapped(path)
    try:
        header = scan_header(buf)
        for t in header.tensors:
            block = _block(t.type_id)
            if block is None:
                return f"tensor {t.name} has an unknown type id {t.type_id}"
            if t.shape[0] % block[0]:
                return f"tensor {t.name}'s rows of {t.shape[0]} are not whole blocks of {block[0]}"
            n = 1
            for d in t.shape:
                n *= d
            end = header.data_start + t.offset + n // block[0] * block[1]
            if end > len(buf):
                return (f"truncated or damaged: tensor {t.name}'s data ends at byte {end}, past the end of the "
                        f"file ({len(buf)} bytes)")
    except HeaderDamage as e:
        return str(e)
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()
    return "damaged GGUF header"
