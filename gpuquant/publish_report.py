"""What a publish shows across its outputs: the figures kept in each manifest, the table on stderr,
the model card's Markdown table and a plot of error against size.

Everything is read from each output's figures (`output_figures`, stored in its manifest), so an
output that a resumed publish skipped is shown like one it wrote. The plot uses matplotlib (the
optional extra gpuquant[report]) as report_plots.py does: the object API on an Agg canvas, never
pyplot, imported only when a plot is drawn.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .summary import Summary

if TYPE_CHECKING:
    from .publish import PublishedOutput

ERROR_NOTE = ("Rel. RMSE: relative RMSE of the quantized weights against the source (||x - deq(q(x))|| / ||x|| "
              "per tensor), averaged over the tensors by element count; lower is better. Worst tensor: the "
              "tensor with the highest relative RMSE.")


def _float(v: float | None) -> float | None:
    return None if v is None else float(v)


def output_figures(summary: Summary) -> dict:
    """One written output's figures, JSON-serialisable: what the table, card and plot need.

    bytes: its files' sizes (the tensors' bytes when the files are not there, as in a dry run);
    tensor_bytes, n_elements, bits_per_weight: over all tensors' data, as `gpuquant inspect` reports;
    mean_rel_rmse / mean_weighted_error: None when not measured; worst_*: the converted tensor of the
    highest relative RMSE; types: summary.by_type() per output type, the most bytes first.
    """
    files = [Path(p) for p in summary.outputs]
    if files and all(f.is_file() for f in files):
        size = sum(f.stat().st_size for f in files)
    else:
        size = summary.bytes_out
    worst = summary.worst(1)
    types = sorted(summary.by_type().items(), key=lambda kv: (-kv[1]["bytes_out"], kv[0]))
    return {
        "bytes": int(size),
        "tensor_bytes": int(summary.bytes_out),
        "n_elements": int(summary.n_elements),
        "bits_per_weight": float(summary.bits_per_weight),
        "mean_rel_rmse": _float(summary.mean_rel_rmse),
        "mean_weighted_error": _float(summary.mean_weighted_error),
        "worst_tensor": worst[0].name if worst else None,
        "worst_rel_rmse": _float(worst[0].error.rel_rmse) if worst else None,
        "types": {name: {k: int(v) for k, v in row.items()} for name, row in types},
        "requested": summary.requested_type,
    }


def _percent(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def _size(out: PublishedOutput) -> int:
    """The output's size: its figures', else what the publish measured of its files."""
    return int(out.figures.get("bytes", out.bytes))


def _bpw(out: PublishedOutput) -> str:
    bpw = out.figures.get("bits_per_weight")
    return "-" if bpw is None else f"{bpw:.2f}"


def publish_table(outputs: list[PublishedOutput]) -> str:
    """The table across a publish's outputs, in their order: mix, file, GB, bits per weight, mean
    relative RMSE, the worst tensor and its relative RMSE, written or skipped; then the total."""
    header = ("mix", "file", "GB", "bits/weight", "rel. RMSE", "worst tensor", "worst RMSE", "")
    rows = []
    for out in outputs:
        f = out.figures
        worst = f.get("worst_tensor")
        rows.append((out.label, out.path.name, f"{_size(out) / 1e9:.3f}", _bpw(out), _percent(f.get("mean_rel_rmse")),
                     worst or "-", _percent(f.get("worst_rel_rmse")) if worst else "-",
                     "skipped (up to date)" if out.skipped else "written"))
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    right = {2, 3, 4, 6}  # the numbers

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    lines = [line(header), *(line(r) for r in rows)]
    total = sum(_size(out) for out in outputs)
    skipped = sum(1 for out in outputs if out.skipped)
    lines.append(f"total: {len(outputs)} file{'s' if len(outputs) != 1 else ''}, {total / 1e9:.3f} GB"
                 + (f" ({skipped} skipped, up to date)" if skipped else ""))
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def model_card(model: str, outputs: list[PublishedOutput]) -> str:
    """A Markdown table of the outputs for a model page, the largest file first, with a note on the
    error figure."""
    lines = [
        f"## {_cell(model)}: GGUF quantizations",
        "",
        "| Filename | Quant type | File size | Bits/weight | Rel. RMSE | Worst tensor |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for out in sorted(outputs, key=lambda o: -_size(o)):
        f = out.figures
        worst = f.get("worst_tensor")
        worst_text = f"`{worst}` ({_percent(f.get('worst_rel_rmse'))})" if worst else "-"
        lines.append(f"| {_cell(out.path.name)} | {_cell(out.label)} | {_size(out) / 1e9:.2f} GB | {_bpw(out)} | "
                     f"{_percent(f.get('mean_rel_rmse'))} | {_cell(worst_text)} |")
    lines += ["", ERROR_NOTE, ""]
    return "\n".join(lines)


def plot_error_vs_size(outputs: list[PublishedOutput], path: Path, title: str) -> Path | None:
    """A PNG of mean relative RMSE (log scale) against file size in GB, one labelled point per output
    that has an error figure, joined in order of size. None, writing nothing, when no output has one
    or matplotlib is not installed."""
    points = sorted((_size(out) / 1e9, float(err), out.label) for out in outputs
                    if (err := out.figures.get("mean_rel_rmse")) is not None and err > 0)
    if not points:
        return None
    try:
        from .report_plots import _figure

        fig = _figure(8, 5)
    except ImportError:
        return None
    ax = fig.add_subplot()
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    ax.plot(xs, ys, marker="o", color="tab:blue")
    for x, y, label in points:
        ax.annotate(label, (x, y), xytext=(5, 4), textcoords="offset points", fontsize="small")
    ax.set_yscale("log")
    ax.margins(0.1)  # room for the labels of the points at the ends
    ax.set_xlabel("file size (GB)")
    ax.set_ylabel("mean relative RMSE (by element count)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # whole or not at all
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
