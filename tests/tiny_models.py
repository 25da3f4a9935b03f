"""Small hand-made GGUF files for tests, written with gguf's own writer (independent of ours)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def write_tiny(path: Path, tensors: dict[str, np.ndarray], arch: str | None = "kokoro",
               extra: dict[str, object] | None = None) -> Path:
    """A GGUF with the given float tensors (numpy shapes) and a few metadata keys."""
    w = gguf.GGUFWriter(path, arch=arch or "")
    if arch is None:
        w.kv_data[0].pop("general.architecture")
    w.add_string("general.name", "tiny")
    for k, v in (extra or {}).items():
        if isinstance(v, str):
            w.add_string(k, v)
        else:
            w.add_uint32(k, int(v))
    for name, a in tensors.items():
        if a.dtype == np.uint16:  # BF16 bits
            w.add_tensor(name, a, raw_shape=a.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def kokoro_like(rng: np.random.Generator, n_per_row: int = 256, rows: int = 8) -> dict[str, np.ndarray]:
    """Kokoro tensor names that TTS.cpp quantizes (2-D linears) and keeps (norms, biases)."""
    def r(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    return {
        "kokoro.albert.layer.0.q": r(rows, n_per_row),
        "kokoro.albert.layer.0.q_bias": r(rows),
        "kokoro.albert.layer.0.ffn": r(rows * 2, n_per_row),
        "kokoro.albert.layer.0.attn_norm": r(n_per_row) + 1,
    }
