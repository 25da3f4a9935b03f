"""Dia: TTS.cpp's `dia_is_quantizable`.

Quantized: every tensor but `audio_encoder*` (the DAC codec) and names ending `norm`, which are
kept as they are, and `dia.decoder.heads*` (the output heads), quantized only with -qh.
-qe and -qkv do nothing here. The text encoder's embedding is quantized by default.
"""

from __future__ import annotations

from . import tts_cpp
from .base import ArchRules, OptIns, Verdict, kept, quantized


def verdict(name: str, opt_ins: OptIns) -> Verdict:
    if name.startswith("audio_encoder"):
        return kept("DAC codec kept")
    if name.endswith("norm"):
        return kept("norm kept")
    if name.startswith("dia.decoder.heads"):
        return quantized("output head quantized (-qh)") if opt_ins.output_heads else kept("output head kept")
    return quantized()


RULES = ArchRules("dia", verdict, tts_cpp.f16_compatible, tts_cpp.dac_to_f16)
