"""gpuquant/qtypes.py is the one place that states a type's facts; every layer reads them there (the
C++ side through kernels/types.h, generated from it)."""

from __future__ import annotations

from gpuquant import hostkernels
from gpuquant.qtypes import FAMILIES, IMATRIX_USES, QTYPES, c_header


def test_kernels_types_h_is_generated_from_the_table():
    written = (hostkernels.kernels_dir() / "types.h").read_text()
    assert written == c_header(), "kernels/types.h is stale: run `python -m gpuquant.qtypes`"


def test_every_row_is_consistent():
    for name, t in QTYPES.items():
        assert t.family in FAMILIES and t.imatrix_use in IMATRIX_USES, name
        assert (t.kernel == "") == (name == "F32"), name  # F32 is a copy; every other type has kernels
        assert t.kernel in ("", name.lower()), name
        for rules in ("tts.cpp", "llama.cpp"):
            fallback = t.fallback(rules)
            if fallback is not None:
                f = QTYPES[fallback]
                assert f.block_size == 32 and f.bits_per_weight >= t.bits_per_weight, (name, rules)
        assert t.is_float == (name in ("F32", "F16", "BF16"))
