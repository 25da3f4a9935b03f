"""The one way a NumPy family module offers its types: a quantize and a dequantize function per type,
registered under the type's name.

    FAMILY = Family("ternary")
    QUANTIZERS, DEQUANTIZERS = FAMILY.quantizers, FAMILY.dequantizers

    @FAMILY.quantizer("TQ1_0")
    def quantize_tq1_0(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray: ...

    @FAMILY.dequantizer("TQ1_0")
    def dequantize_tq1_0(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray: ...

A registered function gets the type's row of gpuquant.qtypes.QTYPES first, so that weights per block
and bytes per block always come from the type table, never from the module; the registries hold it
bound: `QUANTIZERS[name](x, imatrix)` and `DEQUANTIZERS[name](q, n_per_row)`. One function may serve
several types of its family (list them all). A family registers exactly the table's types of that
family (the backend checks it on import), and only those.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from ...qtypes import FAMILIES, QTYPES, QType

# x float32 [rows, n_per_row], imatrix float32 [n_per_row] or None -> uint8 [rows, row_bytes]
Quantizer = Callable[[np.ndarray, np.ndarray | None], np.ndarray]
# q uint8 [rows, row_bytes], n_per_row -> float32 [rows, n_per_row]
Dequantizer = Callable[[np.ndarray, int], np.ndarray]
_Fn = TypeVar("_Fn", bound=Callable[..., np.ndarray])


class Family:
    """The registries of one family module (named after the family, one of qtypes.FAMILIES)."""

    def __init__(self, name: str) -> None:
        if name not in FAMILIES:
            raise ValueError(f"unknown family {name!r}; the families are {', '.join(FAMILIES)}")
        self.name = name
        self.quantizers: dict[str, Quantizer] = {}
        self.dequantizers: dict[str, Dequantizer] = {}

    @property
    def type_names(self) -> tuple[str, ...]:
        """The type table's types of this family, in its order."""
        return tuple(t.name for t in QTYPES.values() if t.family == self.name)

    def check_complete(self) -> None:
        """Raises unless every type of the family has a quantizer and a dequantizer."""
        for what, registry in (("quantizer", self.quantizers), ("dequantizer", self.dequantizers)):
            missing = [name for name in self.type_names if name not in registry]
            if missing:
                raise RuntimeError(f"the {self.name} family registers no {what} for {', '.join(missing)}")

    def quantizer(self, *type_names: str) -> Callable[[_Fn], _Fn]:
        """Registers `fn(t, x, imatrix)` as the quantizer of each named type (the function itself is
        returned unchanged)."""
        return self._registrar(self.quantizers, type_names)

    def dequantizer(self, *type_names: str) -> Callable[[_Fn], _Fn]:
        """Registers `fn(t, q, n_per_row)` as the dequantizer of each named type."""
        return self._registrar(self.dequantizers, type_names)

    def _registrar(self, registry: dict, type_names: tuple[str, ...]) -> Callable[[_Fn], _Fn]:
        rows = [self._row(name) for name in type_names]

        def register(fn: _Fn) -> _Fn:
            for t in rows:
                if t.name in registry:
                    raise ValueError(f"{t.name} registered twice in the {self.name} family")
                # named, documented and placed (__module__) as the function itself
                registry[t.name] = functools.update_wrapper(functools.partial(fn, t), fn)
            return fn

        return register

    def _row(self, name: str) -> QType:
        t = QTYPES[name]
        if t.family != self.name:
            raise ValueError(f"{name} belongs to the {t.family} family, not {self.name}")
        return t
