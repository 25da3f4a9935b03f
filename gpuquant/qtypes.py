"""One table of ggml tensor types: name, ggml id, block geometry, imatrix needs, aliases."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QType:
    name: str
    ggml_id: int
    block_size: int  # weights per block
    type_size: int  # bytes per block
    requires_imatrix: bool = False
    aliases: tuple[str, ...] = ()
    family: str = ""
    ignores_imatrix: bool = False  # ggml accepts an imatrix for these but does not use it

    @property
    def imatrix_use(self) -> str:
        if self.is_float or self.ignores_imatrix:
            return "ignored"
        return "required" if self.requires_imatrix else "used"

    @property
    def bits_per_weight(self) -> float:
        return self.type_size * 8 / self.block_size

    @property
    def is_float(self) -> bool:
        """F32, F16, BF16: elementwise conversions, not block quantizers."""
        return self.family == "float"

    def row_bytes(self, n_per_row: int) -> int:
        if n_per_row % self.block_size:
            raise ValueError(
                f"row length {n_per_row} is not a multiple of {self.name}'s block size {self.block_size}"
            )
        return n_per_row // self.block_size * self.type_size


_TABLE = [
    # name, id, block, bytes, requires_imatrix, aliases, family
    ("F32", 0, 1, 4, False, ("FP32",), "float"),
    ("F16", 1, 1, 2, False, ("FP16",), "float"),
    ("BF16", 30, 1, 2, False, (), "float"),
    ("Q4_0", 2, 32, 18, False, ("Q4",), "legacy"),
    ("Q4_1", 3, 32, 20, False, (), "legacy"),
    ("Q5_0", 6, 32, 22, False, ("Q5",), "legacy"),
    ("Q5_1", 7, 32, 24, False, (), "legacy"),
    ("Q8_0", 8, 32, 34, False, ("Q8",), "legacy"),
    ("Q2_K", 10, 256, 84, False, (), "k"),
    ("Q3_K", 11, 256, 110, False, (), "k"),
    ("Q4_K", 12, 256, 144, False, (), "k"),
    ("Q5_K", 13, 256, 176, False, (), "k"),
    ("Q6_K", 14, 256, 210, False, (), "k"),
    ("IQ2_XXS", 16, 256, 66, True, (), "iq-grid"),
    ("IQ2_XS", 17, 256, 74, True, (), "iq-grid"),
    ("IQ3_XXS", 18, 256, 98, False, (), "iq-grid"),
    ("IQ1_S", 19, 256, 50, True, (), "iq-grid"),
    ("IQ4_NL", 20, 32, 18, False, (), "iq4"),
    ("IQ3_S", 21, 256, 110, False, (), "iq-grid"),
    ("IQ2_S", 22, 256, 82, False, (), "iq-grid"),
    ("IQ4_XS", 23, 256, 136, False, (), "iq4"),
    ("IQ1_M", 29, 256, 56, False, (), "iq-grid"),
    ("TQ1_0", 34, 256, 54, False, (), "ternary"),
    ("TQ2_0", 35, 256, 66, False, (), "ternary"),
    ("MXFP4", 39, 32, 17, False, (), "fp4"),
    ("NVFP4", 40, 64, 36, False, (), "fp4"),
    ("Q1_0", 41, 128, 18, False, (), "lowbit"),
    ("Q2_0", 42, 64, 18, False, (), "lowbit"),
]

# Block types whose ggml quantizer (v0.21.0) takes no notice of an importance matrix.
_IMATRIX_IGNORED = {"Q8_0", "TQ1_0", "TQ2_0", "MXFP4", "NVFP4", "Q1_0", "Q2_0"}

QTYPES: dict[str, QType] = {
    row[0]: QType(*row, ignores_imatrix=row[0] in _IMATRIX_IGNORED) for row in _TABLE
}
BY_ID: dict[int, QType] = {t.ggml_id: t for t in QTYPES.values()}
_BY_LOWER: dict[str, QType] = {}
for _t in QTYPES.values():
    _BY_LOWER[_t.name.lower()] = _t
    for _a in _t.aliases:
        _BY_LOWER[_a.lower()] = _t


def copy_only_type(ggml_id: int, name: str, block_size: int, type_size: int) -> QType:
    """A ggml type gpuquant never produces (I8..I64, F64, ...), known only to size and copy it."""
    return QType(name, ggml_id, block_size, type_size, family="copy-only")


def resolve(qtype: str | int | QType) -> QType:
    """A type from its name (any case, aliases too), its ggml id (int or digits) or itself."""
    if isinstance(qtype, QType):
        return qtype
    if isinstance(qtype, (int,)) and not isinstance(qtype, bool):
        if qtype in BY_ID:
            return BY_ID[qtype]
        raise ValueError(f"unknown ggml type id {qtype}")
    if isinstance(qtype, str):
        key = qtype.strip()
        if key.isdigit():
            return resolve(int(key))
        if key.lower() in _BY_LOWER:
            return _BY_LOWER[key.lower()]
        raise ValueError(f"unknown quantization type {qtype!r} (try `gpuquant types`)")
    raise ValueError(f"a quantization type is a name or a ggml id, not {type(qtype).__name__}")
