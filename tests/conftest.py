"""Shared fixtures: the golden vectors (ggml v0.21.0 reference outputs, copied from shared/golden)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

GOLDEN_DIR = Path(__file__).parent / "golden"
MANIFEST = json.loads((GOLDEN_DIR / "manifest.json").read_text())
CASES = dict(np.load(GOLDEN_DIR / "cases.npz"))


def golden(type_name: str) -> dict[str, np.ndarray]:
    return dict(np.load(GOLDEN_DIR / f"{type_name}.npz"))


def golden_cases(type_name: str):
    """(case, x, imatrix-or-None, expected bytes) for every golden entry of a type."""
    ref = golden(type_name)
    for key, expected in sorted(ref.items()):
        if key.endswith("__dequant"):
            continue
        case = key.removesuffix("__imatrix")
        imatrix = CASES[f"imatrix__{case}"] if key.endswith("__imatrix") else None
        yield key, CASES[case], imatrix, expected


@pytest.fixture(scope="session")
def manifest():
    return MANIFEST
