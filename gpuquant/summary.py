"""What a file run did: one record per tensor, totals, and the table printed at the end."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .quant_error import ErrorFigures, format_figure, weighted_mean

# The layer of a tensor: llama.cpp's blk.N, TTS.cpp's layers.N (encoder and decoder stacks alike).
_LAYER = re.compile(r"(?:^|\.)(?:blk|layers)\.(\d+)(?=\.|$)")


def tensor_layer(name: str) -> tuple[int | None, str]:
    """(layer number or None, the tensor's kind: its name with the layer number as *)."""
    m = _LAYER.search(name)
    if not m:
        return None, name
    return int(m.group(1)), name[: m.start(1)] + "*" + name[m.end(1):]


@dataclass
class TensorRecord:
    name: str
    src_type: str
    dst_type: str
    n_elements: int
    bytes_in: int
    bytes_out: int
    reason: str
    fallback_from: str | None = None
    imatrix_used: bool = False
    shape: tuple[int, ...] = ()  # GGUF order: n_per_row first
    error: ErrorFigures | None = None  # None when not measured (dry run, --no-error)

    @property
    def layer(self) -> int | None:
        return tensor_layer(self.name)[0]

    @property
    def kind(self) -> str:
        return tensor_layer(self.name)[1]

    @property
    def bits_per_weight(self) -> float:
        return self.bytes_out * 8 / max(1, self.n_elements)


@dataclass
class Summary:
    src: str
    dst: str
    requested_type: str
    architecture: str
    backend: str
    n_threads: int
    records: list[TensorRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    imatrix_file: str | None = None
    backend_reason: str = ""  # why this backend ran (auto's choice)
    backend_description: str = ""  # what the backend is, when its name does not say: "CuPy (CUDA simulator)"
    family: str = "tts.cpp"  # whose rules planned the tensors: "tts.cpp" or "llama.cpp"
    dry_run: bool = False
    outputs: list[str] = field(default_factory=list)  # the files written (several with --keep-split)
    error_measured: bool = False
    report_sample: int | None = None  # rows per tensor measured; None: every row
    reports: list[str] = field(default_factory=list)  # the report files written
    target: Any = None  # --target-size / --target-bpw: the size search's TargetChoice
    target_actual_bytes: int | None = None  # what the choice is judged by, measured after the run
    recipe: str | None = None  # --recipe-out: the llama-quantize --tensor-type-file written
    sha256: list[str] = field(default_factory=list)  # of each output file, with RunOptions.digest

    def _converted(self) -> list[TensorRecord]:
        return [r for r in self.records if r.error is not None and r.dst_type != r.src_type]

    @property
    def mean_rel_rmse(self) -> float | None:
        """Relative RMSE of the converted tensors, averaged weighting each by its element count."""
        return weighted_mean([(r.error.rel_rmse, r.n_elements) for r in self._converted()])

    @property
    def mean_weighted_error(self) -> float | None:
        """The same for the importance-weighted error, over the tensors an imatrix weighted."""
        return weighted_mean([(r.error.weighted_rel_error, r.n_elements) for r in self._converted()])

    def rel_rmse_of_type(self, dst_type: str) -> float | None:
        """The tensors written as dst_type (copies count as exact): relative RMSE by element count."""
        return weighted_mean([(r.error.rel_rmse, r.n_elements) for r in self.records
                              if r.dst_type == dst_type and r.error is not None])

    def worst(self, n: int = 1) -> list[TensorRecord]:
        rated = [r for r in self._converted() if r.error.rel_rmse is not None]
        return sorted(rated, key=lambda r: -r.error.rel_rmse)[:n]

    @property
    def bytes_in(self) -> int:
        return sum(r.bytes_in for r in self.records)

    @property
    def bytes_out(self) -> int:
        return sum(r.bytes_out for r in self.records)

    @property
    def n_elements(self) -> int:
        return sum(r.n_elements for r in self.records)

    @property
    def bits_per_weight(self) -> float:
        return self.bytes_out * 8 / max(1, self.n_elements)

    @property
    def gb_per_s(self) -> float:
        return self.bytes_in / 1e9 / max(self.seconds, 1e-9)

    @property
    def n_fallbacks(self) -> int:
        return sum(1 for r in self.records if r.fallback_from)

    @property
    def n_quantized_without_imatrix(self) -> int:
        from .qtypes import QTYPES

        return sum(
            1 for r in self.records
            if r.dst_type != r.src_type and not QTYPES[r.dst_type].is_float and not r.imatrix_used
        )

    def by_type(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in self.records:
            row = out.setdefault(r.dst_type, {"tensors": 0, "n_elements": 0, "bytes_in": 0, "bytes_out": 0})
            row["tensors"] += 1
            row["n_elements"] += r.n_elements
            row["bytes_in"] += r.bytes_in
            row["bytes_out"] += r.bytes_out
        return out

    def table(self) -> str:
        lines = [
            f"{self.src} -> {self.dst}",
            f"architecture {self.architecture} ({self.family} rules), requested {self.requested_type}, "
            f"backend {self.backend_description or self.backend} "
            f"({self.n_threads} thread{'s' if self.n_threads != 1 else ''}"
            + (f"; {self.backend_reason}" if self.backend_reason and self.backend_reason != "requested" else "") + ")",
            "",
            f"{'type':<8} {'tensors':>7} {'MB before':>11} {'MB after':>11} {'bits/weight':>11}"
            + (f" {'rel. RMSE':>10}" if self.error_measured else ""),
        ]
        for name, row in sorted(self.by_type().items(), key=lambda kv: -kv[1]["bytes_in"]):
            bpw = row["bytes_out"] * 8 / max(1, row["n_elements"])
            err = self.rel_rmse_of_type(name)
            lines.append(
                f"{name:<8} {row['tensors']:>7} {row['bytes_in'] / 1e6:>11.2f} "
                f"{row['bytes_out'] / 1e6:>11.2f} {bpw:>11.3f}"
                + (f" {format_figure(err):>10}" if self.error_measured else "")
            )
        lines.append(
            f"{'total':<8} {len(self.records):>7} {self.bytes_in / 1e6:>11.2f} {self.bytes_out / 1e6:>11.2f} "
            f"{self.bits_per_weight:>11.3f}"
        )
        lines.append("")
        extra = []
        if self.n_fallbacks:
            extra.append(f"{self.n_fallbacks} row-length fallbacks")
        if self.imatrix_file:
            used = sum(1 for r in self.records if r.imatrix_used)
            extra.append(f"imatrix {self.imatrix_file}: {used} tensors weighted, "
                         f"{self.n_quantized_without_imatrix} quantized without an entry")
        if self.warnings:
            extra.append(f"{len(self.warnings)} warnings")
        lines.append(
            f"{self.seconds:.2f} s, {self.gb_per_s:.2f} GB/s of input"
            + (f"; {'; '.join(extra)}" if extra else "")
        )
        lines.extend(f"report: {path}" for path in self.reports)
        if self.target is not None:
            lines.append(self.target_line())
        if self.error_measured:
            lines.append(self.error_line())
        return "\n".join(lines)

    def target_line(self) -> str:
        """The size search: the budget, the predicted and actual sizes, what was chosen."""
        text = self.target.line()
        if self.target_actual_bytes is not None and not self.dry_run:
            text += f"; actual {self.target_actual_bytes} bytes"
        if self.recipe:
            text += f"; recipe {self.recipe}"
        return text

    def error_line(self) -> str:
        """The overall error: per-tensor relative RMSE averaged by element count, the worst tensor."""
        mean = self.mean_rel_rmse
        if mean is None:
            return "error: no tensor was converted"
        rows = (f"{self.report_sample} sampled rows per tensor" if self.report_sample else "every row")
        text = f"error: rel. RMSE {format_figure(mean)} (weighted by tensor size, {rows})"
        if self.mean_weighted_error is not None:
            text += f", importance-weighted {format_figure(self.mean_weighted_error)}"
        worst = self.worst()
        if worst:
            text += f"; worst {worst[0].name} {format_figure(worst[0].error.rel_rmse)} ({worst[0].dst_type})"
        return text

    def dry_run_table(self) -> str:
        """--dry-run: each tensor's type and size, then the sizes llama-quantize reports."""
        width = max((len(r.name) for r in self.records), default=4)
        lines = [
            f"{self.src}: {self.requested_type} ({self.family} rules, architecture {self.architecture})",
            f"{'tensor':<{width}}  {'from':<7} {'to':<7} {'MiB before':>11} {'MiB after':>11}",
        ]
        for r in self.records:
            lines.append(
                f"{r.name:<{width}}  {r.src_type:<7} {r.dst_type:<7} {r.bytes_in / 2**20:>11.3f} "
                f"{r.bytes_out / 2**20:>11.3f}  {r.reason}"
            )
        n = max(1, self.n_elements)
        lines.append(f"model size = {self.bytes_in / 2**20:.2f} MiB ({self.bytes_in * 8 / n:.2f} BPW)")
        lines.append(f"quant size = {self.bytes_out / 2**20:.2f} MiB ({self.bytes_out * 8 / n:.2f} BPW)")
        if self.target is not None:
            lines.append(self.target_line())
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)
