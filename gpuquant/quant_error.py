"""What quantization cost, per tensor: x against deq(q(x)), summed over the rows measured.

The figures (all over the rows measured, every row unless a sample was asked for):
- relative RMSE  ||x - y|| / ||x||  (y = dequantize(quantize(x)))
- max absolute error  max |x - y|
- SNR in dB  10 log10(||x||^2 / ||x - y||^2); None when the tensor came back exact
- with an importance matrix w, the importance-weighted relative error
  sqrt(sum_j w_j sum_i (x_ij - y_ij)^2 / sum_j w_j sum_i x_ij^2): each column weighted by its
  imatrix value, the per-column weight ggml's quantizers scale their error terms by.

Sums are per column in float32 within a part of a chunk, then float64 across parts and chunks, in
row order. A part is a fixed number of rows (error_parts), whatever the thread count, so the same
input always gives the same figures, bit for bit.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

# A row sample is the same on every run: numpy's PCG64 seeded by the tensor name's CRC-32.
SAMPLE_SEED_DOC = "rows drawn without replacement by numpy's default_rng(crc32(tensor name))"


@dataclass
class ErrorSums:
    """Running sums for one tensor; `add` merges a chunk's."""

    rows: int = 0
    sum_sq_x: float = 0.0
    sum_sq_err: float = 0.0
    max_abs: float = 0.0
    w_sum_sq_x: float = 0.0
    w_sum_sq_err: float = 0.0
    weighted: bool = False

    def add(self, other: ErrorSums) -> None:
        self.rows += other.rows
        self.sum_sq_x += other.sum_sq_x
        self.sum_sq_err += other.sum_sq_err
        a, b = self.max_abs, other.max_abs
        self.max_abs = math.nan if math.isnan(a) or math.isnan(b) else max(a, b)
        self.w_sum_sq_x += other.w_sum_sq_x
        self.w_sum_sq_err += other.w_sum_sq_err
        self.weighted = self.weighted or other.weighted

    def figures(self, rows_total: int) -> ErrorFigures:
        return ErrorFigures(
            rel_rmse=_ratio(self.sum_sq_err, self.sum_sq_x),
            max_abs=_finite(self.max_abs),
            snr_db=_snr(self.sum_sq_x, self.sum_sq_err),
            weighted_rel_error=_ratio(self.w_sum_sq_err, self.w_sum_sq_x) if self.weighted else None,
            rows_measured=self.rows,
            rows_total=rows_total,
        )


@dataclass
class ErrorFigures:
    """One tensor's error figures; None where a figure does not exist (no imatrix, exact, NaN)."""

    rel_rmse: float | None
    max_abs: float | None
    snr_db: float | None
    weighted_rel_error: float | None
    rows_measured: int
    rows_total: int

    @property
    def exact(self) -> bool:
        return self.rel_rmse == 0.0 and self.max_abs == 0.0

    def as_dict(self) -> dict:
        return {
            "rel_rmse": self.rel_rmse, "max_abs": self.max_abs, "snr_db": self.snr_db,
            "weighted_rel_error": self.weighted_rel_error, "rows_measured": self.rows_measured,
            "rows_total": self.rows_total, "exact": self.exact,
        }


def exact_figures(rows: int) -> ErrorFigures:
    """A tensor copied as it is."""
    return ErrorFigures(0.0, 0.0, None, None, rows, rows)


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _ratio(err: float, ref: float) -> float | None:
    if err == 0.0:
        return 0.0
    if not (math.isfinite(err) and math.isfinite(ref)) or ref == 0.0:
        return None
    return math.sqrt(err / ref)


def _snr(ref: float, err: float) -> float | None:
    if err == 0.0 or ref == 0.0 or not (math.isfinite(err) and math.isfinite(ref)):
        return None
    return 10.0 * math.log10(ref / err)


def chunk_sums(x: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> ErrorSums:
    """Sums of float32 rows x [rows, n] against their round trip y, columns weighted by w [n]."""
    if x.size == 0:
        return ErrorSums(weighted=w is not None)
    with np.errstate(all="ignore"):  # an F16 overflow (Inf) or a NaN carried as a value
        d = np.subtract(x, y, dtype=np.float32)
        err_cols = np.einsum("ij,ij->j", d, d)
        x_cols = np.einsum("ij,ij->j", x, x)
        max_abs = max(float(d.max()), -float(d.min()))
    if not math.isfinite(max_abs):  # NaN propagates through max/min; an Inf difference does too
        max_abs = math.nan if np.isnan(d).any() else math.inf
    out = ErrorSums(rows=x.shape[0], sum_sq_x=float(x_cols.sum(dtype=np.float64)),
                    sum_sq_err=float(err_cols.sum(dtype=np.float64)), max_abs=max_abs, weighted=w is not None)
    if w is not None:
        w64 = np.asarray(w, dtype=np.float64)
        out.w_sum_sq_x = float(x_cols.astype(np.float64) @ w64)
        out.w_sum_sq_err = float(err_cols.astype(np.float64) @ w64)
    return out


# Rows per part of the error sums: about this many weights, at least one row.
ERROR_PART_WEIGHTS = 1 << 16


def error_parts(rows: int, n_per_row: int) -> list[tuple[int, int]]:
    """The row ranges [a, b) whose sums are taken apart and then added in order: fixed by the shape
    alone (never by the thread count), so the figures are the same on every run."""
    per_part = max(1, ERROR_PART_WEIGHTS // max(1, n_per_row))
    return [(a, min(rows, a + per_part)) for a in range(0, rows, per_part)]


def sum_in_order(parts, weighted: bool) -> ErrorSums:
    """ErrorSums of parts listed in row order, added in that order."""
    total = ErrorSums(weighted=weighted)
    for part in parts:
        total.add(part)
    return total


def sample_rows(name: str, n_rows: int, n_sample: int | None) -> np.ndarray | None:
    """The sorted rows measured of a tensor: None for every row."""
    if n_sample is None or n_sample >= n_rows:
        return None
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return np.sort(rng.choice(n_rows, size=n_sample, replace=False))


def weighted_mean(values: list[tuple[float | None, int]]) -> float | None:
    """Mean of figures weighted by element counts, over the figures that exist."""
    pairs = [(v, n) for v, n in values if v is not None]
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else None


def format_figure(v: float | None, digits: int = 4) -> str:
    """A figure for a table: `digits` significant digits, "-" where it does not exist."""
    return "-" if v is None else f"{v:.{digits}g}"
