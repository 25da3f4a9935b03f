"""The README's type table is the output of `gpuquant types`; the table's imatrix column is true."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import MANIFEST, golden

from gpuquant.cli import types_table
from gpuquant.mixes import mixes_table
from gpuquant.qtypes import QTYPES

README = Path(__file__).parents[1] / "README.md"


def test_readme_type_table_matches_the_types_command():
    text = README.read_text()
    begin, end = "<!-- types:begin -->\n```\n", "\n```\n<!-- types:end -->"
    assert begin in text and end in text, "README lost its type table markers"
    table = text[text.index(begin) + len(begin): text.index(end)]
    assert table == types_table()


def test_readme_mix_table_matches_the_mixes_command():
    text = README.read_text()
    begin, end = "<!-- mixes:begin -->\n```\n", "\n```\n<!-- mixes:end -->"
    assert begin in text and end in text, "README lost its mix table markers"
    assert text[text.index(begin) + len(begin): text.index(end)] == mixes_table()


def test_imatrix_column_agrees_with_ggml_reference_bytes():
    for name, info in MANIFEST["types"].items():
        t = QTYPES[name]
        ref = golden(name)
        cases = [k for k in ref if not k.endswith(("__imatrix", "__dequant")) and f"{k}__imatrix" in ref]
        if info["requires_imatrix"]:
            assert t.imatrix_use == "required"
            continue
        same = all(np.array_equal(ref[c], ref[f"{c}__imatrix"]) for c in cases)
        assert same == (t.imatrix_use == "ignored"), name
