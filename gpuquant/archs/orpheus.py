"""Orpheus: gpuquant's own rule. TTS.cpp refuses to quantize Orpheus (its `is_quantizable` aborts).

Orpheus is a Llama 3.2 3B language model (`orpheus.*`) followed by the SNAC codec (`snac.*`).
The rule is an allow-list, as llama.cpp quantizes a Llama, adjusted to TTS.cpp's conventions:
- quantized: the attention and feed-forward matrices of every layer,
  `orpheus.layers.N.self_attn.{q,k,v,o}_proj` and `orpheus.layers.N.mlp.{gate,up,down}_proj`,
  and the token embedding `orpheus.embed_tokens` (llama.cpp quantizes token_embd by default,
  and so do TTS.cpp's Parler and Dia rules for their embeddings);
- quantized only with -qh: the output head `orpheus.lm_head`. llama.cpp would quantize it, but
  TTS.cpp keeps every architecture's output heads unless -qh, and we follow TTS.cpp;
- kept as they are: the RMS norms, `orpheus.rope_frequencies` and every `snac.*` tensor
  (codec convolutions, codebooks, biases, alphas), plus any name not listed above.
-qe and -qkv do nothing here. -nqf applies TTS.cpp's F16 name rule (tts_cpp.py) as for the
other architectures, except to the rope factors: ggml's rope reads its frequency factors as
F32 only. -df touches `audio_encoder*` names only, and Orpheus has none (SNAC is not DAC).
"""

from __future__ import annotations

import re

from . import tts_cpp
from .base import ArchRules, OptIns, Verdict, kept, quantized

_LAYER_MATRIX = re.compile(r"orpheus\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)")
_ROPE_FACTORS = "orpheus.rope_frequencies"


def verdict(name: str, opt_ins: OptIns) -> Verdict:
    if name.startswith("snac."):
        return kept("SNAC codec kept")
    if _LAYER_MATRIX.fullmatch(name):
        return quantized()
    if name == "orpheus.embed_tokens":
        return quantized("token embedding quantized")
    if name == "orpheus.lm_head":
        return quantized("output head quantized (-qh)") if opt_ins.output_heads else kept("output head kept")
    if name.endswith("norm"):
        return kept("norm kept")
    if name == _ROPE_FACTORS:
        return kept("rope factors kept")
    return kept("not a Llama weight matrix: kept")


def f16_with_nqf(name: str) -> bool:
    return name != _ROPE_FACTORS and tts_cpp.f16_compatible(name)


RULES = ArchRules("orpheus", verdict, f16_with_nqf, tts_cpp.dac_to_f16)
