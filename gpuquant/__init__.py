"""gpuquant: GGUF quantization on NVIDIA GPUs (CuPy), on CPUs with the same kernels built for the host
(native) or with NumPy, byte-identical to ggml."""

from __future__ import annotations

from .api import dequantize, quantize
from .qtypes import QTYPES, QType, resolve

__version__ = "0.1.0"


def quantize_file(src, dst, qtype="Q4_0", **options):
    """Quantize the GGUF file `src` into `dst`; returns the run's summary (see pipeline.Summary)."""
    from .pipeline import quantize_file as _quantize_file

    return _quantize_file(src, dst, qtype, **options)


__all__ = ["quantize", "dequantize", "quantize_file", "QTYPES", "QType", "resolve", "__version__"]
