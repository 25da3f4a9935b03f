"""Parler TTS (mini and large): TTS.cpp's `parler_is_quanitizable`.

Quantized: every tensor but these, which are kept as they are:
- `audio_encoder*` (the DAC codec), names ending `norm.weight` or `norm.bias`,
  `text_encoding` (the T5 encoding of the voice prompt) and `positional_embed`;
- names ending `weight.head` (the output heads) unless -qh;
- names ending `embed_prompts` (the prompt's text embedding) unless -qe;
- names ending `encoder_attn.k_proj.weight` or `encoder_attn.v_proj.weight` unless -qkv.
Parler files store the position table twice: `decoder.positional_embed` stays F32 while
`decoder.embed_positions.weights` is quantized like any weight.
"""

from __future__ import annotations

from . import tts_cpp
from .base import ArchRules, OptIns, Verdict, kept, quantized


def verdict(name: str, opt_ins: OptIns) -> Verdict:
    # The opt-in endings below exclude one another, so returning early keeps TTS.cpp's AND of all tests.
    if name.startswith("audio_encoder"):
        return kept("DAC codec kept")
    if name.endswith(("norm.weight", "norm.bias")):
        return kept("norm kept")
    if name.endswith("text_encoding"):
        return kept("text encoding kept")
    if name.endswith("positional_embed"):
        return kept("position table kept")
    if name.endswith("weight.head"):
        return quantized("output head quantized (-qh)") if opt_ins.output_heads else kept("output head kept")
    if name.endswith("embed_prompts"):
        if opt_ins.text_embeddings:
            return quantized("text embedding quantized (-qe)")
        return kept("text embedding kept")
    if name.endswith(("encoder_attn.k_proj.weight", "encoder_attn.v_proj.weight")):
        if opt_ins.cross_attn_kv:
            return quantized("cross-attention k/v quantized (-qkv)")
        return kept("cross-attention k/v kept")
    return quantized()


RULES = ArchRules("parler-tts", verdict, tts_cpp.f16_compatible, tts_cpp.dac_to_f16)
