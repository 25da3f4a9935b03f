"""Per-tensor decisions: the output type of each tensor of a model file, and why.

The architecture's rule set (gpuquant/archs/) says which tensors to quantize, as TTS.cpp's own
`quantize` does for Parler TTS, Dia and Kokoro. This module adds what is not about names:
- only tensors of two or more dimensions are quantized (TTS.cpp's name rules never pick a 1-D one);
- a requested float type replaces quantization: F16 or BF16 turn the chosen tensors into that
  type, F32 keeps them as they are;
- a row length that the requested type's block does not divide falls back as llama.cpp does
  (row_fallback); where no block fits, the tensor is kept as it is;
- tensors left unquantized become F16 under -nqf or -df where the rule set says so, and
  otherwise keep their source type.
"""

from __future__ import annotations

from dataclasses import dataclass

from .archs import RULES, ArchRules, OptIns
from .qtypes import QTYPES, QType

F16 = QTYPES["F16"]
F32 = QTYPES["F32"]

# TTS.cpp: "only parler-tts gguf files should lack an explicit architecture"
DEFAULT_ARCHITECTURE = "parler-tts"


class UnknownArchitecture(ValueError):
    """A `general.architecture` that no rule set covers."""


@dataclass(frozen=True)
class PlanOptions:
    qtype: QType  # the requested type
    convert_dac_to_f16: bool = False  # -df
    quantize_output_heads: bool = False  # -qh
    quantize_text_embeddings: bool = False  # -qe
    quantize_cross_attn_kv: bool = False  # -qkv
    convert_non_quantized_to_f16: bool = False  # -nqf


@dataclass(frozen=True)
class Decision:
    qtype: QType  # output type of the tensor (may equal its source type: kept as it is)
    reason: str  # a few words, e.g. "quantized", "norm kept", "-df"
    fallback_from: QType | None = None  # the planned type when a row-length fallback replaced it
    kept_unquantizable: bool = False  # meant to be quantized, but no block divides its rows


def model_architecture(arch: str | None) -> str:
    """The rule set's name for a file's `general.architecture` (None: Parler TTS), or UnknownArchitecture."""
    if arch is None:
        return DEFAULT_ARCHITECTURE
    name = arch.strip().lower()
    if name not in RULES:
        raise UnknownArchitecture(f"unsupported architecture {arch!r}: gpuquant knows {', '.join(RULES)}")
    return name


def row_fallback(qtype: QType, n_per_row: int) -> QType | None:
    """The type that can hold rows of n_per_row: qtype itself, its fallback, or None (keep as it is)."""
    current = qtype
    while n_per_row % current.block_size:
        next_name = current.fallback("tts.cpp")
        if next_name is None:
            return None
        current = QTYPES[next_name]
    return current


def plan_tensor(
    name: str, shape_gguf: tuple[int, ...], src_type: QType, arch: str | None, options: PlanOptions
) -> Decision:
    """The output type of one tensor. shape_gguf is in ggml order (row length first)."""
    if not src_type.is_float:  # already quantized, or integer: gpuquant converts F32/F16/BF16 only
        return Decision(src_type, f"{src_type.name} source kept as it is")
    rules = RULES[model_architecture(arch)]
    opt_ins = OptIns(
        output_heads=options.quantize_output_heads,
        text_embeddings=options.quantize_text_embeddings,
        cross_attn_kv=options.quantize_cross_attn_kv,
    )
    verdict = rules.verdict(name, opt_ins)
    if verdict.quantize and len(shape_gguf) < 2:
        return _unquantized(name, src_type, rules, options, "1-D kept")
    if not verdict.quantize:
        return _unquantized(name, src_type, rules, options, verdict.why)

    requested = options.qtype
    if requested == F32:
        return Decision(src_type, "F32 requested: kept")
    if requested.is_float:
        return Decision(requested, f"{verdict.why} as {requested.name}")
    n_per_row = shape_gguf[0]
    chosen = row_fallback(requested, n_per_row)
    if chosen == requested:
        return Decision(requested, verdict.why)
    not_divided = f"row {n_per_row} not a multiple of {requested.block_size}"
    if chosen is not None:
        return Decision(chosen, f"{not_divided}: fallback", fallback_from=requested)
    unquantized = _unquantized(name, src_type, rules, options, "kept")
    return Decision(
        unquantized.qtype, f"{not_divided}, no fallback fits: {unquantized.reason}", kept_unquantizable=True
    )


def _unquantized(
    name: str, src_type: QType, rules: ArchRules, options: PlanOptions, why_kept: str
) -> Decision:
    # TTS.cpp tests -nqf before -df; both give F16
    if options.convert_non_quantized_to_f16 and rules.f16_with_nqf(name):
        return Decision(F16, "-nqf")
    if options.convert_dac_to_f16 and rules.f16_with_df(name):
        return Decision(F16, "-df")
    return Decision(src_type, why_kept)
