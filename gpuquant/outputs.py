"""What a run is made of: one source, N outputs (each an OutputSpec), and the run's own options.

An output is its path, what decides its tensors' types (a ggml type or a llama-quantize mix, with
llama-quantize's or TTS.cpp's options, or a size budget) and its reports. The run options are how
the work is done (backend, threads, error measurement, progress) and never change an output's bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .mixes import Mix, resolve_type_or_mix
from .model_plan import LlamaRequest
from .plan import PlanOptions
from .qtypes import QType
from .size_search import TargetRequest


@dataclass(frozen=True)
class TtsRequest:
    """TTS.cpp quantize's options beyond the type (its -df -qh -qe -qkv -nqf flags)."""

    convert_dac_to_f16: bool = False  # -df
    quantize_output_heads: bool = False  # -qh
    quantize_text_embeddings: bool = False  # -qe
    quantize_cross_attn_kv: bool = False  # -qkv
    convert_non_quantized_to_f16: bool = False  # -nqf

    def plan_options(self, qtype: QType) -> PlanOptions:
        return PlanOptions(
            qtype=qtype,
            convert_dac_to_f16=self.convert_dac_to_f16,
            quantize_output_heads=self.quantize_output_heads,
            quantize_text_embeddings=self.quantize_text_embeddings,
            quantize_cross_attn_kv=self.quantize_cross_attn_kv,
            convert_non_quantized_to_f16=self.convert_non_quantized_to_f16,
        )


@dataclass(frozen=True)
class OutputSpec:
    """One output file: `path` (None only in a dry run), its type or mix, the options that plan it,
    and the reports (.json/.html) written after it. `label` is what tables call it (publish's mix)."""

    path: Path | None
    qtype: QType | Mix
    llama: LlamaRequest = LlamaRequest()
    tts: TtsRequest = TtsRequest()
    target: TargetRequest | None = None
    reports: tuple[Path, ...] = ()
    label: str = ""

    @classmethod
    def make(cls, path: str | os.PathLike[str] | None, qtype: str | int | QType | Mix, *,
             llama: LlamaRequest | None = None, tts: TtsRequest | None = None,
             target: TargetRequest | None = None, reports: tuple[str | os.PathLike[str], ...] = (),
             label: str = "") -> OutputSpec:
        """An output from what a user types: names resolved (ValueError, one line, otherwise)."""
        resolved = resolve_type_or_mix(qtype)
        return cls(
            path=Path(path) if path is not None else None,
            qtype=resolved,
            llama=llama or LlamaRequest(),
            tts=tts or TtsRequest(),
            target=target,
            reports=tuple(Path(p) for p in reports),
            label=label or resolved.name,
        )

    @property
    def base_type(self) -> QType:
        """The type TTS.cpp's rules quantize to: a mix's base type, or the type itself."""
        return self.qtype.base if isinstance(self.qtype, Mix) else self.qtype


@dataclass(frozen=True)
class RunOptions:
    """How a run works; nothing here changes an output's bytes.

    `measure_error`: each converted tensor's error, over every row or `report_sample` seeded rows per
    tensor. `progress`: a progress line on stderr; `on_progress(n)` is told each n input bytes done
    (a batch driver's aggregate). `dry_run`: plan only, read no tensor data (a size search still
    samples rows), write nothing.
    """

    backend: str = "auto"
    n_threads: int = 1
    measure_error: bool = True
    report_sample: int | None = None
    progress: bool = False
    dry_run: bool = False
    allow_requantize: bool = False
    max_buffer_bytes: int | None = None
    digest: bool = False  # each output file's sha256, taken as it is written (Summary.sha256)
    on_progress: Callable[[int], None] | None = None

    def check(self) -> None:
        """ValueError (one line) for options no run can take."""
        n = self.n_threads
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n_threads must be an integer of 1 or more, not {n!r}")
        s = self.report_sample
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 1):
            raise ValueError(f"the report sample must be a row count of 1 or more, not {s!r}")
