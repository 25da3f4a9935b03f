"""The lattice IQ types of gpuquant/backends/numpy/lattice.py against ggml's golden vectors, run
directly on the module (it is wired into the backend separately), and the tables it hands the kernels."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import assert_golden_dequantize, assert_golden_quantize

from gpuquant.backends.numpy import lattice as lattice_family
from gpuquant.hostkernels import kernels_dir, lattice_tables

# Every type the module registers must reproduce every golden case, with and without imatrix.
REGISTERED = sorted(lattice_family.QUANTIZERS)


@pytest.mark.parametrize("type_name", REGISTERED)
def test_golden_quantize(type_name: str) -> None:
    with np.errstate(all="ignore"):
        assert_golden_quantize(lattice_family.QUANTIZERS[type_name], type_name)


@pytest.mark.parametrize("type_name", REGISTERED)
def test_golden_dequantize(type_name: str) -> None:
    assert_golden_dequantize(lattice_family.DEQUANTIZERS[type_name], type_name)


def test_every_type_registered_both_ways() -> None:
    assert set(lattice_family.QUANTIZERS) == set(lattice_family.DEQUANTIZERS)


def test_kernel_tables_are_in_the_kernels_field_order() -> None:
    """LatticeTables' fields are GqLattice's, in its order: both hosts pass the tuple as it stands."""
    source = (kernels_dir() / "lattice.cuh").read_text()
    body = source[source.index("struct GqLattice {") :]
    fields = re.findall(r"\b(\w+);", body[: body.index("};")])
    assert lattice_family.LatticeTables._fields == tuple(fields)


@pytest.mark.parametrize("type_name", REGISTERED)
def test_kernel_tables_are_built_once_read_only(type_name: str) -> None:
    tables = lattice_tables(type_name)
    assert tables is lattice_family.kernel_tables(type_name)
    assert [a.dtype for a in tables[:7]] == [np.dtype(np.int32)] * 4 + [np.dtype(np.uint8)] * 3
    assert all(a.flags.c_contiguous and not a.flags.writeable for a in tables[:7])
    assert tables.level_index.shape == (tables.values.size // tables.dims, tables.dims)
    assert (type(tables.dims), type(tables.bits)) == (np.int32, np.int32)


def _best_neighbour_by_loop(lattice, code, xval, weight, scale, values) -> int:
    """ggml's search written out: each candidate's distance summed term by term in float32, the
    first strict minimum kept."""
    start = lattice.neighbour_start[code]
    best, best_d2 = -1, np.float32(np.inf)
    for candidate in lattice.neighbours[start : start + lattice.neighbour_count[code]]:
        d2 = np.float32(0)
        for i in range(lattice.dims):
            diff = scale * values[lattice.level_index[candidate, i]] - xval[i]
            d2 = np.float32(d2 + weight[i] * diff * diff)
        if d2 < best_d2:
            best, best_d2 = int(candidate), d2
    return best


@pytest.mark.parametrize(
    "lattice_of",
    [
        lambda: lattice_family._iq3_lattice(256),
        lambda: lattice_family._iq3_lattice(512),
        lambda: lattice_family._iq2_lattice(256),
        lambda: lattice_family._iq2_lattice(1024),
        lattice_family._iq1_lattice,
    ],
    ids=["iq3-256", "iq3-512", "iq2-256", "iq2-1024", "iq1-2048"],
)
def test_best_neighbours_match_a_plain_loop(lattice_of) -> None:
    """The term-table search picks exactly the candidate of the term-by-term loop, ties included
    (zero weights, repeated values, integer-valued inputs where many distances coincide)."""
    lattice = lattice_of()
    rng = np.random.default_rng(7)
    off_codes = np.flatnonzero((lattice.grid_of_code < 0) & (lattice.neighbour_count > 0))
    m = 300
    codes = rng.choice(off_codes, m)
    xval = (rng.standard_normal((m, lattice.dims)) * 3).astype(np.float32)
    xval[:50] = np.round(xval[:50])  # integer inputs: equal distances are common
    weight = rng.random((m, lattice.dims)).astype(np.float32)
    weight[50:100] = 0  # every distance 0: the first candidate wins
    weight[100:150, ::2] = 0
    scale = rng.uniform(0.5, 2, m).astype(np.float32)
    scale[:50] = 1
    if lattice is lattice_family._iq1_lattice():  # IQ1: the shifted level values of each query
        down = rng.random(m) < 0.5
        values = np.where(down[:, None], lattice_family._IQ1_DOWN, lattice_family._IQ1_UP)
        got = lattice.best_neighbours(codes, xval, weight, scale, values)
    else:
        values = np.broadcast_to(lattice.odd_level_values, (m, lattice.n_levels))
        got = lattice.best_neighbours(codes, xval, weight, scale)
    want = [_best_neighbour_by_loop(lattice, codes[j], xval[j], weight[j], scale[j], values[j]) for j in range(m)]
    np.testing.assert_array_equal(got, want)
