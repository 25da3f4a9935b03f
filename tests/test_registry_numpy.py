"""The NumPy backend's one idiom: each family module (named after its family) registers a quantizer and a
dequantizer for exactly the type table's types of that family, each called with the type's row."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from gpuquant.backends.numpy import DEQUANTIZERS, QUANTIZERS
from gpuquant.backends.numpy.registry import Family
from gpuquant.qtypes import FAMILIES, QTYPES


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_module_registers_exactly_its_types(family):
    module = importlib.import_module(f"gpuquant.backends.numpy.{family}")
    types = {t.name for t in QTYPES.values() if t.family == family}
    assert module.FAMILY.name == family
    assert set(module.QUANTIZERS) == set(module.DEQUANTIZERS) == types
    for name in types:  # the functions are bound to the table's own row
        assert module.QUANTIZERS[name].args == (QTYPES[name],)
        assert module.DEQUANTIZERS[name].args == (QTYPES[name],)


def test_the_backend_has_every_type_of_every_family():
    assert set(QUANTIZERS) == set(DEQUANTIZERS) == {t.name for t in QTYPES.values() if t.family in FAMILIES}


@pytest.mark.parametrize("type_name", sorted(QUANTIZERS))
def test_sizes_come_from_the_table(type_name):
    t = QTYPES[type_name]
    n_per_row = 2 * t.block_size
    x = np.random.default_rng(1).standard_normal((3, n_per_row)).astype(np.float32)
    imatrix = np.ones(n_per_row, dtype=np.float32)
    q = QUANTIZERS[type_name](x, imatrix)
    assert q.shape == (3, t.row_bytes(n_per_row)) and q.dtype == np.uint8
    y = DEQUANTIZERS[type_name](q, n_per_row)
    assert y.shape == x.shape and y.dtype == np.float32


def test_a_family_takes_only_its_own_types_once():
    with pytest.raises(ValueError, match="unknown family"):
        Family("grids")
    family = Family("ternary")
    with pytest.raises(ValueError, match="belongs to the legacy family"):
        family.quantizer("Q4_0")
    family.quantizer("TQ1_0")(lambda t, x, imatrix: x)
    with pytest.raises(ValueError, match="registered twice"):
        family.quantizer("TQ1_0")(lambda t, x, imatrix: x)
    with pytest.raises(RuntimeError, match="no quantizer for TQ2_0"):
        family.check_complete()
