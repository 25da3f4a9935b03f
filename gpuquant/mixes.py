"""llama-quantize's mixes ("file types"): name, LLAMA_FTYPE number, base ggml type, description.

A mix is what llama-quantize's TYPE argument names: a base type plus llama.cpp's per-tensor rules
(gpuquant/archs/llama_cpp.py) that give some tensors more bits. The table is llama-quantize's own
(tools/quantize/quantize.cpp, QUANT_OPTIONS, llama.cpp 3aa0ce9), in its order, so that parsing
by name or number finds what llama-quantize finds.
"""

from __future__ import annotations

from dataclasses import dataclass

from .qtypes import QTYPES, QType, resolve


@dataclass(frozen=True)
class Mix:
    name: str  # as llama-quantize prints it (aliases keep their own name: "Q4_K")
    ftype: int  # LLAMA_FTYPE_*, written as general.file_type
    base: QType  # llama_ftype_get_default_type
    description: str

    @property
    def is_copy(self) -> bool:
        """COPY: every tensor copied, general.file_type taken from the input."""
        return self.name == "COPY"


# name, LLAMA_FTYPE, base type, description (llama-quantize's)
_TABLE = [
    ("Q1_0", 40, "Q1_0", "1.125 bpw quantization"),
    ("Q2_0", 41, "Q2_0", "2.25 bpw quantization (group 64)"),
    ("Q4_0", 2, "Q4_0", "4.34G, +0.4685 ppl @ Llama-3-8B"),
    ("Q4_1", 3, "Q4_1", "4.78G, +0.4511 ppl @ Llama-3-8B"),
    ("MXFP4_MOE", 38, "MXFP4", "MXFP4 MoE"),
    ("Q5_0", 8, "Q5_0", "5.21G, +0.1316 ppl @ Llama-3-8B"),
    ("Q5_1", 9, "Q5_1", "5.65G, +0.1062 ppl @ Llama-3-8B"),
    ("IQ2_XXS", 19, "IQ2_XXS", "2.06 bpw quantization"),
    ("IQ2_XS", 20, "IQ2_XS", "2.31 bpw quantization"),
    ("IQ2_S", 28, "IQ2_XS", "2.5  bpw quantization"),
    ("IQ2_M", 29, "IQ2_S", "2.7  bpw quantization"),
    ("IQ1_S", 24, "IQ1_S", "1.56 bpw quantization"),
    ("IQ1_M", 31, "IQ1_M", "1.75 bpw quantization"),
    ("TQ1_0", 36, "TQ1_0", "1.69 bpw ternarization"),
    ("TQ2_0", 37, "TQ2_0", "2.06 bpw ternarization"),
    ("Q2_K", 10, "Q2_K", "2.96G, +3.5199 ppl @ Llama-3-8B"),
    ("Q2_K_S", 21, "Q2_K", "2.96G, +3.1836 ppl @ Llama-3-8B"),
    ("IQ3_XXS", 23, "IQ3_XXS", "3.06 bpw quantization"),
    ("IQ3_S", 26, "IQ3_S", "3.44 bpw quantization"),
    ("IQ3_M", 27, "IQ3_S", "3.66 bpw quantization mix"),
    ("Q3_K", 12, "Q3_K", "alias for Q3_K_M"),
    ("IQ3_XS", 22, "IQ3_S", "3.3 bpw quantization"),
    ("Q3_K_S", 11, "Q3_K", "3.41G, +1.6321 ppl @ Llama-3-8B"),
    ("Q3_K_M", 12, "Q3_K", "3.74G, +0.6569 ppl @ Llama-3-8B"),
    ("Q3_K_L", 13, "Q3_K", "4.03G, +0.5562 ppl @ Llama-3-8B"),
    ("IQ4_NL", 25, "IQ4_NL", "4.50 bpw non-linear quantization"),
    ("IQ4_XS", 30, "IQ4_XS", "4.25 bpw non-linear quantization"),
    ("Q4_K", 15, "Q4_K", "alias for Q4_K_M"),
    ("Q4_K_S", 14, "Q4_K", "4.37G, +0.2689 ppl @ Llama-3-8B"),
    ("Q4_K_M", 15, "Q4_K", "4.58G, +0.1754 ppl @ Llama-3-8B"),
    ("Q5_K", 17, "Q5_K", "alias for Q5_K_M"),
    ("Q5_K_S", 16, "Q5_K", "5.21G, +0.1049 ppl @ Llama-3-8B"),
    ("Q5_K_M", 17, "Q5_K", "5.33G, +0.0569 ppl @ Llama-3-8B"),
    ("Q6_K", 18, "Q6_K", "6.14G, +0.0217 ppl @ Llama-3-8B"),
    ("Q8_0", 7, "Q8_0", "7.96G, +0.0026 ppl @ Llama-3-8B"),
    ("F16", 1, "F16", "14.00G, +0.0020 ppl @ Mistral-7B"),
    ("BF16", 32, "BF16", "14.00G, -0.0050 ppl @ Mistral-7B"),
    ("F32", 0, "F32", "26.00G              @ 7B"),
    ("COPY", 0, "F32", "only copy tensors, no quantizing"),
]

MIXES: list[Mix] = [Mix(n, f, QTYPES[b], d) for n, f, b, d in _TABLE]
_BY_UPPER = {m.name: m for m in MIXES}
# The name each LLAMA_FTYPE number stands for (the first row with it, as llama-quantize searches).
_BY_FTYPE: dict[int, Mix] = {}
for _m in MIXES:
    _BY_FTYPE.setdefault(_m.ftype, _m)
# Each LLAMA_FTYPE's own mix (not the aliases Q3_K, Q4_K, Q5_K, nor COPY), as `inspect` names it.
CANONICAL: dict[int, Mix] = {m.ftype: m for m in MIXES if not m.description.startswith("alias") and not m.is_copy}


def find_mix(text: str) -> Mix | None:
    """The mix llama-quantize's TYPE argument names (a name in any case, or an LLAMA_FTYPE number)."""
    key = text.strip().upper()
    if key in _BY_UPPER:
        return _BY_UPPER[key]
    try:
        number = int(key, 10)
    except ValueError:
        return None
    return _BY_FTYPE.get(number)


def resolve_type_or_mix(qtype: str | int | QType | Mix) -> QType | Mix:
    """A ggml type (a name in any case, or a ggml id: TTS.cpp's form), else a llama-quantize mix name."""
    if isinstance(qtype, (QType, Mix)):
        return qtype
    try:
        return resolve(qtype)
    except ValueError:
        mix = find_mix(qtype) if isinstance(qtype, str) and not qtype.strip().isdigit() else None
        if mix is None:
            raise
        return mix


def mix_for_type(qtype: QType) -> Mix | None:
    """The mix named like a ggml type (Q8_0 -> Q8_0, Q4_K -> Q4_K, i.e. Q4_K_M), if llama-quantize has one."""
    return _BY_UPPER.get(qtype.name)


def mixes_table() -> str:
    """llama-quantize's list of allowed quantization types, in its layout."""
    lines = []
    for m in MIXES:
        number = "        " if m.is_copy else f"{m.ftype:>2}  or  "
        lines.append(f"  {number}{m.name:<9} : {m.description}")
    return "\n".join(lines)
