"""Kokoro: TTS.cpp's `kokoro_is_quantizable`.

Quantized: tensors that pass TTS.cpp's F16 name test (no `voice_tensors`, `bias`, `gamma`,
`beta`, `alpha` in the name, no `embd` or `norm` ending; see tts_cpp.py) and that belong to
- `kokoro.albert*` (the ALBERT text encoder's matrices),
- `kokoro.text_encoder.lstm*`,
- `kokoro.duration_predictor.<part>*` with <part> one of duration_proj, encode, shared_lstm,
  duration_lstm, layers.
Everything else (the decoder and generator, conv kernels, voices, embeddings, norms, biases) is
kept as it is. No flag changes the verdicts: -qh, -qe and -qkv do nothing here.
The 40 duration-predictor LSTM weights have rows of 640: fine for 32-blocks, not for 256-blocks.
"""

from __future__ import annotations

from . import tts_cpp
from .base import ArchRules, OptIns, Verdict, kept, quantized

_DURATION_PREDICTOR_PARTS = ("duration_proj", "encode", "shared_lstm", "duration_lstm", "layers")


def verdict(name: str, opt_ins: OptIns) -> Verdict:
    incompatibility = tts_cpp.f16_incompatibility(name)
    if incompatibility is not None:
        return kept(f"{incompatibility} kept")
    if name.startswith(("kokoro.albert", "kokoro.text_encoder.lstm")):
        return quantized()
    if name.startswith("kokoro.duration_predictor."):
        # TTS.cpp's split() drops empty parts; the third part names the predictor's block
        parts = [part for part in name.split(".") if part]
        if len(parts) > 2 and parts[2] in _DURATION_PREDICTOR_PARTS:
            return quantized()
    return kept("not a quantizable Kokoro block: kept")


RULES = ArchRules("kokoro", verdict, tts_cpp.f16_compatible, tts_cpp.dac_to_f16)
