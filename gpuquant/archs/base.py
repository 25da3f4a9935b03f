"""What an architecture's rule set looks like: per-tensor verdicts by name, and the F16 name rules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class OptIns:
    """The TTS.cpp flags that opt groups of tensors into quantization."""

    output_heads: bool = False  # -qh
    text_embeddings: bool = False  # -qe
    cross_attn_kv: bool = False  # -qkv


@dataclass(frozen=True)
class Verdict:
    """Whether a tensor's name marks it for quantization, and a few words on why."""

    quantize: bool
    why: str


def quantized(why: str = "quantized") -> Verdict:
    return Verdict(True, why)


def kept(why: str) -> Verdict:
    return Verdict(False, why)


@dataclass(frozen=True)
class ArchRules:
    """One architecture's name rules. Shapes, flags and requested types are plan.py's business."""

    name: str
    verdict: Callable[[str, OptIns], Verdict]
    # -nqf / -df: whether a tensor left unquantized becomes F16
    f16_with_nqf: Callable[[str], bool]
    f16_with_df: Callable[[str], bool]
