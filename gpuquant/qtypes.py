"""THE type table: every fact about a ggml type that any layer needs, in one row per type.

Every layer reads these facts from here: the NumPy quantizers, the host build and the CuPy backend
(by family and kernel stem), the planners (row-length fallbacks), the writer (llama file types).
The C++ side reads them from kernels/types.h, generated from this table (`python -m
gpuquant.qtypes`) and held equal to it by a test.
"""

from __future__ import annotations

from dataclasses import dataclass

# The families: one name per family in every layer (numpy/<family>.py, kernels/<family>.cuh and
# <family>.cu, kernels/host_<family>.cpp, the host build's and the CuPy backend's tables).
FAMILIES = ("floats", "legacy", "kquants", "lattice", "iq4", "ternary", "fp4", "lowbit")
IMATRIX_USES = ("used", "required", "ignored")
RULE_FAMILIES = ("tts.cpp", "llama.cpp")


@dataclass(frozen=True)
class QType:
    """Every fact about a ggml type that any layer needs (see _TABLE)."""

    name: str
    ggml_id: int
    block_size: int  # weights per block
    type_size: int  # bytes per block
    family: str = ""  # one of FAMILIES; "copy-only" for types gpuquant only sizes and copies
    imatrix_use: str = "ignored"  # "used", "required" (ggml refuses to run without one) or "ignored"
    kernel: str = ""  # the kernels' name stem: gq_quantize_<kernel>, gq_dequantize_<kernel>
    aliases: tuple[str, ...] = ()
    # The type stored instead when the block does not divide a row, per rule family: llama.cpp's
    # tensor_type_fallback, and the TTS.cpp rules' (gpuquant's: TTS.cpp writes a corrupt file there).
    tts_fallback: str | None = None
    llama_fallback: str | None = None
    llama_ftype: int | None = None  # LLAMA_FTYPE llama.cpp's loader guesses for a file mostly of this type

    @property
    def requires_imatrix(self) -> bool:
        return self.imatrix_use == "required"

    @property
    def ignores_imatrix(self) -> bool:
        """ggml accepts an imatrix for these block types but does not use it."""
        return self.imatrix_use == "ignored" and not self.is_float

    @property
    def bits_per_weight(self) -> float:
        return self.type_size * 8 / self.block_size

    @property
    def is_float(self) -> bool:
        """F32, F16, BF16: elementwise conversions, not block quantizers."""
        return self.family == "floats"

    def fallback(self, rules: str) -> str | None:
        """The row-length fallback's name under `rules` ("tts.cpp" or "llama.cpp"), or None."""
        if rules not in RULE_FAMILIES:
            raise ValueError(f"unknown rule family {rules!r}")
        return self.tts_fallback if rules == "tts.cpp" else self.llama_fallback

    def row_bytes(self, n_per_row: int) -> int:
        if n_per_row % self.block_size:
            raise ValueError(
                f"row length {n_per_row} is not a multiple of {self.name}'s block size {self.block_size}"
            )
        return n_per_row // self.block_size * self.type_size


USED, REQ, IGN = "used", "required", "ignored"
# Row-length fallbacks (llama.cpp's tensor_type_fallback, src/llama-quant.cpp): a type whose block
# does not divide the row falls back to a 32-block type of as many bits per weight or more. Q1_0
# and NVFP4 are not in llama.cpp's table (llama-quantize refuses them there); the TTS.cpp rules
# send Q1_0 where Q2_0 goes and NVFP4 to Q4_0, as many bits per weight (MXFP4 would lose a quarter
# bit, and llama.cpp's fallbacks never lose bits). The 32-block types have nowhere smaller to go.
_TABLE = [
    # name, id, block, bytes, family, imatrix, kernel stem, aliases, TTS.cpp / llama.cpp fallback, llama ftype
    ("F32",     0,  1,   4,   "floats",  IGN,  "",        ("FP32",), None,     None,     0),
    ("F16",     1,  1,   2,   "floats",  IGN,  "f16",     ("FP16",), None,     None,     1),
    ("BF16",    30, 1,   2,   "floats",  IGN,  "bf16",    (),        None,     None,     32),
    ("Q4_0",    2,  32,  18,  "legacy",  USED, "q4_0",    ("Q4",),   None,     None,     2),
    ("Q4_1",    3,  32,  20,  "legacy",  USED, "q4_1",    (),        None,     None,     3),
    ("Q5_0",    6,  32,  22,  "legacy",  USED, "q5_0",    ("Q5",),   None,     None,     8),
    ("Q5_1",    7,  32,  24,  "legacy",  USED, "q5_1",    (),        None,     None,     9),
    ("Q8_0",    8,  32,  34,  "legacy",  IGN,  "q8_0",    ("Q8",),   None,     None,     7),
    ("Q2_K",    10, 256, 84,  "kquants", USED, "q2_k",    (),        "Q4_0",   "Q4_0",   10),
    ("Q3_K",    11, 256, 110, "kquants", USED, "q3_k",    (),        "Q4_0",   "Q4_0",   12),
    ("Q4_K",    12, 256, 144, "kquants", USED, "q4_k",    (),        "Q5_0",   "Q5_0",   15),
    ("Q5_K",    13, 256, 176, "kquants", USED, "q5_k",    (),        "Q5_1",   "Q5_1",   17),
    ("Q6_K",    14, 256, 210, "kquants", USED, "q6_k",    (),        "Q8_0",   "Q8_0",   18),
    ("IQ2_XXS", 16, 256, 66,  "lattice", REQ,  "iq2_xxs", (),        "IQ4_NL", "IQ4_NL", 19),
    ("IQ2_XS",  17, 256, 74,  "lattice", REQ,  "iq2_xs",  (),        "IQ4_NL", "IQ4_NL", 20),
    ("IQ3_XXS", 18, 256, 98,  "lattice", USED, "iq3_xxs", (),        "IQ4_NL", "IQ4_NL", 23),
    ("IQ1_S",   19, 256, 50,  "lattice", REQ,  "iq1_s",   (),        "IQ4_NL", "IQ4_NL", 24),
    ("IQ4_NL",  20, 32,  18,  "iq4",     USED, "iq4_nl",  (),        None,     None,     25),
    ("IQ3_S",   21, 256, 110, "lattice", USED, "iq3_s",   (),        "IQ4_NL", "IQ4_NL", 26),
    ("IQ2_S",   22, 256, 82,  "lattice", USED, "iq2_s",   (),        "IQ4_NL", "IQ4_NL", 28),
    ("IQ4_XS",  23, 256, 136, "iq4",     USED, "iq4_xs",  (),        "IQ4_NL", "IQ4_NL", 30),
    ("IQ1_M",   29, 256, 56,  "lattice", USED, "iq1_m",   (),        "IQ4_NL", "IQ4_NL", 31),
    ("TQ1_0",   34, 256, 54,  "ternary", IGN,  "tq1_0",   (),        "Q4_0",   "Q4_0",   36),
    ("TQ2_0",   35, 256, 66,  "ternary", IGN,  "tq2_0",   (),        "Q4_0",   "Q4_0",   37),
    ("MXFP4",   39, 32,  17,  "fp4",     IGN,  "mxfp4",   (),        None,     None,     None),
    ("NVFP4",   40, 64,  36,  "fp4",     IGN,  "nvfp4",   (),        "Q4_0",   None,     39),
    ("Q1_0",    41, 128, 18,  "lowbit",  IGN,  "q1_0",    (),        "Q4_0",   None,     40),
    ("Q2_0",    42, 64,  18,  "lowbit",  IGN,  "q2_0",    (),        "Q4_0",   "Q4_0",   41),
]  # fmt: skip

QTYPES: dict[str, QType] = {row[0]: QType(*row) for row in _TABLE}
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


def c_header() -> str:
    """kernels/types.h: the table's facts for the C++ side, as an X-macro (written by
    `python -m gpuquant.qtypes`; a test holds the file equal to this text)."""
    lines = [
        "// Generated from gpuquant/qtypes.py (`python -m gpuquant.qtypes`): do not edit; a test holds it",
        "// equal to the table. GQ_FOR_EACH_TYPE(X) calls X(NAME, ggml id, weights per block, bytes per",
        "// block, family, kernel stem) for every type that has kernels (all but F32, a plain copy).",
        "#pragma once",
        "",
        "#define GQ_FOR_EACH_TYPE(X) \\",
    ]
    rows = [t for t in QTYPES.values() if t.kernel]
    for i, t in enumerate(rows):
        end = " \\" if i < len(rows) - 1 else ""
        lines.append(f"    X({t.name}, {t.ggml_id}, {t.block_size}, {t.type_size}, {t.family}, {t.kernel}){end}")
    lines += [
        "",
        "// GQ_<NAME>: the ggml type id, for the host build's dispatch.",
        "#define GQ_TYPE_ID_ENUMERATOR(NAME, ID, BLOCK, BYTES, FAMILY, KERNEL) GQ_##NAME = ID,",
        "enum GqTypeId { GQ_FOR_EACH_TYPE(GQ_TYPE_ID_ENUMERATOR) };",
        "#undef GQ_TYPE_ID_ENUMERATOR",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    from pathlib import Path

    target = Path(__file__).resolve().parents[1] / "kernels" / "types.h"
    target.write_text(c_header())
    print(f"wrote {target}")
