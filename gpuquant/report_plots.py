"""The report's plots, drawn with matplotlib (the optional extra gpuquant[report]) as inline PNG.

Uses matplotlib's object API with the Agg canvas, never pyplot: a caller's own backend and global
figure state are left alone. ImportError when matplotlib is not installed.
"""

from __future__ import annotations

import base64
import io
from collections import defaultdict


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _colors(names: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return {n: cmap(i % 20) for i, n in enumerate(names)}


def error_per_layer(tensors: list[dict]):
    """Relative RMSE per layer, one line per tensor kind (the converted tensors that have a layer)."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for t in tensors:
        e = t["error"]
        if t["layer"] is not None and t["converted"] and e and e["rel_rmse"]:
            series[t["kind"]].append((t["layer"], e["rel_rmse"]))
    if not series:
        return None
    fig = _figure(10, 5)
    ax = fig.add_subplot()
    colors = _colors(sorted(series))
    for kind in sorted(series):
        points = sorted(series[kind])
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=kind,
                color=colors[kind])
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("relative RMSE")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def bits_per_tensor(tensors: list[dict]):
    """Bits per weight of every tensor in file order, coloured by output type."""
    if not tensors:
        return None
    fig = _figure(10, 3.5)
    ax = fig.add_subplot()
    types = sorted({t["output_type"] for t in tensors})
    colors = _colors(types)
    for name in types:
        idx = [i for i, t in enumerate(tensors) if t["output_type"] == name]
        ax.bar(idx, [tensors[i]["bits_per_weight"] for i in idx], width=1.0, color=colors[name], label=name)
    ax.set_xlabel("tensor (file order)")
    ax.set_ylabel("bits per weight")
    ax.set_yscale("log", base=2)  # 1.56 to 32 bits: each step of 2 the same height
    ax.set_xlim(-0.5, len(tensors) - 0.5)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def bytes_by_kind(tensors: list[dict], top: int = 15):
    """Output bytes per tensor kind (the largest kinds, the rest as one bar), split by output type."""
    if not tensors:
        return None
    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for t in tensors:
        by_kind[t["kind"]][t["output_type"]] += t["bytes_out"]
    ranked = sorted(by_kind, key=lambda k: -sum(by_kind[k].values()))
    if len(ranked) > top:
        other: dict[str, int] = defaultdict(int)
        for k in ranked[top - 1:]:
            for name, n in by_kind[k].items():
                other[name] += n
        ranked = ranked[: top - 1] + [f"{len(ranked) - top + 1} other kinds"]
        by_kind[ranked[-1]] = other
    types = sorted({name for k in ranked for name in by_kind[k]})
    colors = _colors(types)
    fig = _figure(10, 0.35 * len(ranked) + 1.2)
    ax = fig.add_subplot()
    left = [0.0] * len(ranked)
    for name in types:
        widths = [by_kind[k].get(name, 0) / 1e6 for k in ranked]
        ax.barh(range(len(ranked)), widths, left=left, color=colors[name], label=name)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_yticks(range(len(ranked)), ranked, fontsize="x-small")
    ax.invert_yaxis()
    ax.set_xlabel("MB in the output")
    ax.legend(fontsize="small", loc="lower right")
    return fig


def plots(tensors: list[dict]) -> list[tuple[str, str]]:
    """(title, base64 PNG) for each plot the tensors allow."""
    made = []
    for title, draw in (("Error per layer, by tensor kind", error_per_layer),
                        ("Bits per weight, per tensor", bits_per_tensor),
                        ("Where the bytes go", bytes_by_kind)):
        fig = draw(tensors)
        if fig is not None:
            made.append((title, _png(fig)))
    return made
