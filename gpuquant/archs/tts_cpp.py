"""The two F16 name rules of TTS.cpp's `quantize` (examples/quantize/quantize_impl.cpp).

TTS.cpp applies both to every architecture, whatever its name suggests:
- `-nqf` (`--convert-non-quantized-to-f16`) turns a tensor it does not quantize into F16 when
  `kokoro_is_f16_compatible(name)` holds: the name contains none of `voice_tensors`, `bias`,
  `gamma`, `beta`, `alpha` and ends with neither `embd` nor `norm`. Kokoro's quantization rule
  starts from the same test.
- `-df` (`--convert-dac-to-f16`) turns every tensor whose name starts with `audio_encoder` (the
  DAC codec of Parler TTS and Dia) into F16, except those ending with `alpha`; 1-D biases too.
TTS.cpp checks `-nqf` first, then `-df`; both give F16, so their order only shows in reasons.
"""

from __future__ import annotations

_F16_INCOMPATIBLE_PARTS = ("voice_tensors", "bias", "gamma", "beta", "alpha")
_F16_INCOMPATIBLE_ENDINGS = ("embd", "norm")


def f16_incompatibility(name: str) -> str | None:
    """Why TTS.cpp's F16 rule leaves this name alone (e.g. "bias"), or None when it may become F16."""
    for part in _F16_INCOMPATIBLE_PARTS:
        if part in name:
            return part
    for ending in _F16_INCOMPATIBLE_ENDINGS:
        if name.endswith(ending):
            return ending
    return None


def f16_compatible(name: str) -> bool:
    """TTS.cpp's `kokoro_is_f16_compatible`: the `-nqf` rule of every architecture."""
    return f16_incompatibility(name) is None


def dac_to_f16(name: str) -> bool:
    """TTS.cpp's `-df` rule: the DAC codec's tensors but its `alpha`s."""
    return name.startswith("audio_encoder") and not name.endswith("alpha")
