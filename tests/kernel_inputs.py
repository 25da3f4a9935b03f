"""Random inputs for kernel parity tests: ordinary weights plus the corners where C arithmetic is
easy to get wrong (ties, zeros, constant blocks, subnormals, fp16 overflow)."""

from __future__ import annotations

import numpy as np

KINDS = (
    "weights",      # normal, std 0.02
    "heavy_tail",   # Student t, 3 degrees of freedom
    "ties",         # half-integers: tied extremes and .5 roundings
    "sparse",       # mostly zeros, some all-zero blocks
    "constant",     # every block constant
    "tiny",         # 1e-21 scale: squares and products are subnormal
    "huge",         # 3e5 scale: block scales overflow fp16
    "skewed",       # shifted gamma, mostly positive
    "subnormal",    # the values themselves are subnormal
)


def _rows(kind: str, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    normal = rng.standard_normal(shape)
    if kind == "weights":
        return normal * 0.02
    if kind == "heavy_tail":
        return rng.standard_t(3, shape)
    if kind == "ties":
        return np.round(normal * 4) / 2
    if kind == "sparse":
        return np.where(rng.random(shape) < 0.7, 0.0, normal)
    if kind == "constant":
        return np.repeat(rng.standard_normal((shape[0], shape[1] // 32)), 32, axis=1)
    if kind == "tiny":
        return normal * 1e-21
    if kind == "huge":
        return normal * 3e5
    if kind == "skewed":
        return rng.gamma(2.0, 1.0, shape) - 0.5
    if kind == "subnormal":
        return normal * 1e-39
    raise ValueError(kind)


def random_rows(seed: int, kinds: tuple[str, ...] = KINDS, rows_per_kind: int = 4,
                n_per_row: int = 512) -> np.ndarray:
    """float32 [len(kinds) * rows_per_kind, n_per_row], rows_per_kind rows of each kind in turn."""
    rng = np.random.default_rng(seed)
    parts = [_rows(kind, rng, (rows_per_kind, n_per_row)) for kind in kinds]
    return np.ascontiguousarray(np.concatenate(parts).astype(np.float32))


def random_imatrix(seed: int, n_per_row: int = 512) -> np.ndarray:
    """float32 [n_per_row]: positive importances spread over decades, with some exact zeros."""
    rng = np.random.default_rng(seed)
    im = rng.exponential(1.0, n_per_row) * 10.0 ** rng.uniform(-2, 2, n_per_row)
    im[rng.random(n_per_row) < 0.05] = 0.0
    return im.astype(np.float32)
