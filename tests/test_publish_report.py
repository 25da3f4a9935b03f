"""publish_report: the figures kept in each output's manifest, the table across a publish's outputs,
the model card and the plot of error against size, from Summary objects built by hand."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from gpuquant.publish import PublishedOutput
from gpuquant.publish_report import model_card, output_figures, plot_error_vs_size, publish_table
from gpuquant.quant_error import ErrorFigures, exact_figures
from gpuquant.summary import Summary, TensorRecord

PNG = b"\x89PNG\r\n\x1a\n"


def err(rel: float, weighted: float | None = None) -> ErrorFigures:
    return ErrorFigures(rel, 0.5, 30.0, weighted, 8, 8)


def rec(name: str, src: str, dst: str, n: int, bytes_in: int, bytes_out: int,
        error: ErrorFigures | None = None) -> TensorRecord:
    return TensorRecord(name, src, dst, n, bytes_in, bytes_out, "test", error=error)


def summary(mix: str, records: list[TensorRecord], outputs: list[str] | None = None) -> Summary:
    return Summary("llama-F16.gguf", f"llama-{mix}.gguf", mix, "llama", "native", 2, records=records,
                   outputs=outputs or [], error_measured=any(r.error is not None for r in records))


def small() -> Summary:
    """Two converted tensors (one imatrix-weighted) and a copy, in binary-exact figures."""
    return summary("Q4_K_M", [
        rec("blk.0.attn_q.weight", "F16", "Q4_K", 1000, 2000, 563, err(0.25, 0.125)),
        rec("blk.0.ffn_down.weight", "F16", "Q6_K", 3000, 6000, 2460, err(0.0625)),
        rec("output_norm.weight", "F32", "F32", 100, 400, 400, exact_figures(1)),
    ])


def test_figures_of_a_written_output(tmp_path):
    s = small()
    (tmp_path / "a.gguf").write_bytes(b"x" * 5000)
    s.outputs = [str(tmp_path / "a.gguf")]
    figures = output_figures(s)
    assert figures == {
        "bytes": 5000,  # the file, not the tensors' data
        "tensor_bytes": 3423,
        "n_elements": 4100,
        "bits_per_weight": 3423 * 8 / 4100,
        "mean_rel_rmse": 0.109375,  # (0.25 * 1000 + 0.0625 * 3000) / 4000: the copy is not counted
        "mean_weighted_error": 0.125,  # only the tensor the imatrix weighted
        "worst_tensor": "blk.0.attn_q.weight",
        "worst_rel_rmse": 0.25,
        "types": {
            "Q6_K": {"tensors": 1, "n_elements": 3000, "bytes_in": 6000, "bytes_out": 2460},
            "Q4_K": {"tensors": 1, "n_elements": 1000, "bytes_in": 2000, "bytes_out": 563},
            "F32": {"tensors": 1, "n_elements": 100, "bytes_in": 400, "bytes_out": 400},
        },
        "requested": "Q4_K_M",
    }
    assert list(figures["types"]) == ["Q6_K", "Q4_K", "F32"]  # the most bytes first
    assert json.loads(json.dumps(figures)) == figures  # as the manifest keeps it


def test_figures_sizes_and_missing_errors(tmp_path):
    s = small()
    for i, size in enumerate((3000, 1234)):  # --keep-split: every shard counts
        (tmp_path / f"s{i}.gguf").write_bytes(b"x" * size)
    s.outputs = [str(tmp_path / "s0.gguf"), str(tmp_path / "s1.gguf")]
    assert output_figures(s)["bytes"] == 4234
    s.outputs = [str(tmp_path / "s0.gguf"), str(tmp_path / "gone.gguf")]
    assert output_figures(s)["bytes"] == 3423  # not all there: the tensors' bytes
    s.outputs = []
    assert output_figures(s)["bytes"] == 3423  # a dry run
    for r in s.records:
        r.error = None
    f = output_figures(s)
    assert (f["mean_rel_rmse"], f["mean_weighted_error"], f["worst_tensor"], f["worst_rel_rmse"]) == (None,) * 4
    assert json.loads(json.dumps(f)) == f


GB = 1_000_000_000


def outputs(tmp_path: Path) -> list[PublishedOutput]:
    """Q4_K_M skipped (its figures from its manifest), Q2_K without error figures, Q8_0; not in size order."""
    q4 = summary("Q4_K_M", [
        rec("blk.0.attn_q.weight", "F16", "Q4_K", 2 * GB, 4 * GB, 1_125_000_000, err(0.0390625)),
        rec("blk.0.ffn_down.weight", "F16", "Q6_K", 5 * GB, 10 * GB, 4_101_562_500, err(0.01171875)),
    ])
    q2 = summary("Q2_K", [rec("blk.0.attn_q.weight", "F16", "Q2_K", 7 * GB, 14 * GB, 2_800_000_000)])
    q8 = summary("Q8_0", [
        rec("blk.0.ffn_down.weight", "F16", "Q8_0", 7 * GB, 14 * GB, 7_437_500_000, err(0.0078125)),
        rec("output_norm.weight", "F32", "F32", 4096, 16384, 16384, exact_figures(1)),
    ])
    manifest_figures = json.loads(json.dumps(output_figures(q4)))
    return [
        PublishedOutput("Q4_K_M", tmp_path / "llama-Q4_K_M.gguf", True, 5_226_562_500, "a", manifest_figures),
        PublishedOutput("Q2_K", tmp_path / "llama-Q2_K.gguf", False, 2_800_000_000, "b", output_figures(q2), q2),
        PublishedOutput("Q8_0", tmp_path / "llama-Q8_0.gguf", False, 7_437_516_384, "c", output_figures(q8), q8),
    ]


def cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def test_table_rows(tmp_path):
    lines = publish_table(outputs(tmp_path)).splitlines()
    assert len(lines) == 5
    assert cells(lines[0]) == ["mix", "file", "GB", "bits/weight", "rel. RMSE", "worst tensor", "worst RMSE"]
    assert cells(lines[1]) == ["Q4_K_M", "llama-Q4_K_M.gguf", "5.227", "5.97", "1.95%", "blk.0.attn_q.weight",
                               "3.91%", "skipped (up to date)"]
    assert cells(lines[2]) == ["Q2_K", "llama-Q2_K.gguf", "2.800", "3.20", "-", "-", "-", "written"]
    assert cells(lines[3]) == ["Q8_0", "llama-Q8_0.gguf", "7.438", "8.50", "0.78%", "blk.0.ffn_down.weight",
                               "0.78%", "written"]
    assert lines[4] == "total: 3 files, 15.464 GB (1 skipped, up to date)"
    # columns line up: each row's status starts where the others' do
    assert len({line.index(status) for line, status in zip(lines[1:4], ("skipped", "written", "written"),
                                                             strict=True)}) == 1


def test_table_of_an_output_without_figures(tmp_path):
    old = PublishedOutput("Q5_K_M", tmp_path / "m-Q5_K_M.gguf", True, 3_500_000_000, "d", {})
    lines = publish_table([old]).splitlines()
    assert cells(lines[1]) == ["Q5_K_M", "m-Q5_K_M.gguf", "3.500", "-", "-", "-", "-", "skipped (up to date)"]
    assert lines[2] == "total: 1 file, 3.500 GB (1 skipped, up to date)"


def test_model_card(tmp_path):
    card = model_card("llama", outputs(tmp_path))
    lines = card.splitlines()
    assert lines[0] == "## llama: GGUF quantizations"
    header = lines.index("| Filename | Quant type | File size | Bits/weight | Rel. RMSE | Worst tensor |")
    assert lines[header + 1].startswith("| --- |")
    rows = lines[header + 2: header + 5]
    assert [r.split(" | ")[0] for r in rows] == ["| llama-Q8_0.gguf", "| llama-Q4_K_M.gguf", "| llama-Q2_K.gguf"]
    assert rows[1] == "| llama-Q4_K_M.gguf | Q4_K_M | 5.23 GB | 5.97 | 1.95% | `blk.0.attn_q.weight` (3.91%) |"
    assert rows[2] == "| llama-Q2_K.gguf | Q2_K | 2.80 GB | 3.20 | - | - |"
    assert lines[header + 5] == ""
    note = [line for line in lines if "lower is better" in line]
    assert len(note) == 1 and "relative RMSE" in note[0] and "element count" in note[0]


def test_plot_error_vs_size(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "llama-error-vs-size.png"
    assert plot_error_vs_size(outputs(tmp_path), path, "llama: error against size") == path
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 1000
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_no_plot_without_error_figures(tmp_path):
    unmeasured = [o for o in outputs(tmp_path) if o.label == "Q2_K"]
    assert unmeasured[0].figures["mean_rel_rmse"] is None
    assert plot_error_vs_size(unmeasured, tmp_path / "p.png", "t") is None
    assert plot_error_vs_size([], tmp_path / "p.png", "t") is None
    assert list(tmp_path.iterdir()) == []


def test_no_plot_without_matplotlib(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert plot_error_vs_size(outputs(tmp_path), tmp_path / "p.png", "t") is None
    assert list(tmp_path.iterdir()) == []
