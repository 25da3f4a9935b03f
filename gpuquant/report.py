"""A run's report: every tensor with its type, size and error figures, as JSON or as one HTML page.

The page is self-contained (styles inline, plots as inline PNG through gpuquant.report_plots);
without matplotlib it still has every table and says what to install.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from . import __version__
from .output_paths import check_new_file, same_file, write_text_atomic
from .quant_error import SAMPLE_SEED_DOC
from .summary import Summary, TensorRecord

REPORT_SUFFIXES = (".json", ".html", ".htm")


def check_report_path(path: Path, src: Path, dst: Path | None) -> Path:
    """The report path, or a one-line ValueError before any work is done."""
    if path.suffix.lower() not in REPORT_SUFFIXES:
        raise ValueError(f"report {path}: the name must end in .json or .html")
    for model in (src, dst):
        if model is not None and same_file(model, path):
            raise ValueError(f"report {path} would overwrite the model file {model}")
    check_new_file(path, "report")
    return path


def _tensor(r: TensorRecord) -> dict:
    return {
        "name": r.name, "layer": r.layer, "kind": r.kind, "shape": list(r.shape),
        "source_type": r.src_type, "output_type": r.dst_type, "n_elements": r.n_elements,
        "bytes_in": r.bytes_in, "bytes_out": r.bytes_out, "bits_per_weight": r.bits_per_weight,
        "reason": r.reason, "fallback_from": r.fallback_from, "imatrix_used": r.imatrix_used,
        "converted": r.src_type != r.dst_type,
        "error": r.error.as_dict() if r.error is not None else None,
    }


def report_dict(s: Summary) -> dict:
    """Everything the report shows, as plain JSON values (None where a figure does not exist)."""
    types = {}
    for name, row in s.by_type().items():
        types[name] = {
            **row, "bits_per_weight": row["bytes_out"] * 8 / max(1, row["n_elements"]),
            "rel_rmse": s.rel_rmse_of_type(name),
        }
    return {
        "gpuquant": __version__,
        "input": s.src, "outputs": s.outputs, "requested_type": s.requested_type,
        "architecture": s.architecture, "rules": s.family,
        "backend": s.backend, "backend_description": s.backend_description, "backend_reason": s.backend_reason,
        "threads": s.n_threads,
        "seconds": s.seconds, "dry_run": s.dry_run, "imatrix": s.imatrix_file,
        "error_measured": s.error_measured,
        "error_rows": ({"sample_rows_per_tensor": s.report_sample, "sample": SAMPLE_SEED_DOC}
                       if s.report_sample else "every row"),
        "totals": {
            "tensors": len(s.records), "n_elements": s.n_elements, "bytes_in": s.bytes_in,
            "bytes_out": s.bytes_out, "bits_per_weight": s.bits_per_weight,
            "rel_rmse": s.mean_rel_rmse, "weighted_rel_error": s.mean_weighted_error,
            "averaging": "per-tensor figures of the converted tensors, weighted by element count",
        },
        "types": types,
        "target": ({**s.target.as_dict(), "actual": s.target_actual_bytes, "recipe": s.recipe}
                   if s.target is not None else None),
        "warnings": s.warnings,
        "tensors": [_tensor(r) for r in s.records],
    }


def write_report(s: Summary, path: str | os.PathLike[str]) -> None:
    """Writes the report (JSON or HTML by the name's suffix) whole or not at all."""
    path = Path(path)
    data = report_dict(s)
    text = json.dumps(data, indent=1) if path.suffix.lower() == ".json" else report_html(data)
    write_text_atomic(path, text)


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return html.escape(str(v))


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:80em}
table{border-collapse:collapse;margin:1em 0}th,td{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}td.l{text-align:left}img{max-width:100%;display:block;margin:1em 0}
.note{background:#fff6d5;padding:.5em 1em}code{background:#f3f3f3;padding:0 .2em}
"""


def report_html(data: dict) -> str:
    from . import report_plots

    t = data["totals"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>gpuquant report: {html.escape(Path(data['input']).name)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(Path(data['input']).name)} &rarr; {html.escape(data['requested_type'])}</h1>",
        f"<p>{html.escape(data['input'])} &rarr; {html.escape(', '.join(data['outputs']) or '(nothing written)')}"
        f"<br>architecture {html.escape(str(data['architecture']))} ({html.escape(data['rules'])} rules), "
        f"backend {html.escape(data.get('backend_description') or data['backend'])} ({data['threads']} threads), "
        f"{data['seconds']:.2f} s, "
        f"gpuquant {html.escape(data['gpuquant'])}"
        + (f"<br>importance matrix {html.escape(data['imatrix'])}" if data["imatrix"] else "") + "</p>",
        "<h2>Summary</h2><table><tr><th>type</th><th>tensors</th><th>MB before</th><th>MB after</th>"
        "<th>bits/weight</th><th>rel. RMSE</th></tr>",
    ]
    for name, row in sorted(data["types"].items(), key=lambda kv: -kv[1]["bytes_in"]):
        parts.append(f"<tr><td>{html.escape(name)}</td><td>{row['tensors']}</td><td>{row['bytes_in'] / 1e6:.2f}</td>"
                     f"<td>{row['bytes_out'] / 1e6:.2f}</td><td>{row['bits_per_weight']:.3f}</td>"
                     f"<td>{_fmt(row['rel_rmse'])}</td></tr>")
    parts.append(f"<tr><th>total</th><th>{t['tensors']}</th><th>{t['bytes_in'] / 1e6:.2f}</th>"
                 f"<th>{t['bytes_out'] / 1e6:.2f}</th><th>{t['bits_per_weight']:.3f}</th>"
                 f"<th>{_fmt(t['rel_rmse'])}</th></tr></table>")
    if data["error_measured"]:
        rows = data["error_rows"]
        how = "every row" if rows == "every row" else (f"{rows['sample_rows_per_tensor']} rows per tensor, "
                                                       f"{html.escape(rows['sample'])}")
        parts.append(f"<p>Overall relative RMSE {_fmt(t['rel_rmse'])}"
                     + (f", importance-weighted {_fmt(t['weighted_rel_error'])}" if t["weighted_rel_error"] else "")
                     + f" ({html.escape(t['averaging'])}; measured over {how}).</p>")
    else:
        parts.append("<p class='note'>Error figures were not measured in this run.</p>")
    target = data["target"]
    if target is not None:
        chosen = ", ".join(f"{n} {html.escape(name)}" for name, n in target["chosen"].items())
        proven = "optimal" if target["optimal"] else "not proven optimal"
        parts.append(
            f"<h2>Target size</h2><p>Budget {target['budget']} {html.escape(target['unit'])}; predicted "
            f"{target['predicted']}, actual {target['actual']}. Chosen among {len(target['candidates'])} types on "
            f"{target['sample_rows']} rows per tensor: {chosen} ({proven} for the "
            f"{html.escape(target['objective'])}). The tensors' table says which type each got.</p>")
    if data["warnings"]:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in data["warnings"])
                     + "</ul>")
    parts.append("<h2>Plots</h2>")
    try:
        images = report_plots.plots(data["tensors"])
    except ImportError:
        images = None
        parts.append("<p class='note'>The plots need matplotlib: <code>pip install 'gpuquant[report]'</code>, "
                     "then run again. The tables below are complete without it.</p>")
    for title, png in images or ():
        parts.append(f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' "
                     f"src='data:image/png;base64,{png}'>")
    parts.append("<h2>Tensors, worst first</h2><table><tr><th>tensor</th><th>from</th><th>to</th><th>shape</th>"
                 "<th>bits/weight</th><th>rel. RMSE</th><th>max abs</th><th>SNR dB</th><th>weighted</th>"
                 "<th>rows measured</th><th>why</th></tr>")
    for r in sorted(data["tensors"], key=_worst_first):
        e = r["error"] or {}
        parts.append(
            f"<tr><td>{html.escape(r['name'])}</td><td>{r['source_type']}</td><td>{r['output_type']}</td>"
            f"<td>{html.escape('x'.join(map(str, r['shape'])))}</td><td>{r['bits_per_weight']:.3f}</td>"
            f"<td>{_fmt(e.get('rel_rmse'))}</td><td>{_fmt(e.get('max_abs'))}</td>"
            f"<td>{'exact' if e.get('exact') else _fmt(e.get('snr_db'), 3)}</td>"
            f"<td>{_fmt(e.get('weighted_rel_error'))}</td>"
            f"<td>{e.get('rows_measured', '&ndash;')}/{e.get('rows_total', '&ndash;')}</td>"
            f"<td class='l'>{html.escape(r['reason'])}</td></tr>"
        )
    parts.append("</table></body></html>\n")
    return "\n".join(parts)


def _worst_first(r: dict):
    e = r["error"]
    rel = e["rel_rmse"] if e and e["rel_rmse"] is not None else -1.0
    return (-rel, r["name"])
