"""The file job: plan every tensor, then stream each one from the mapped input through a backend
into the output, in row chunks, with progress and a summary."""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path

import numpy as np

from .backends import NonFiniteError, get_backend
from .gguf_io import AtomicGGUFWriter, MetadataEntry, PlannedTensor, SourceModel, WriteBehind
from .imatrix import Imatrix, load_imatrix, metadata_entries, weights_for
from .plan import Decision, PlanOptions, model_architecture, plan_tensor
from .progress import Progress
from .qtypes import QType, resolve
from .summary import Summary, TensorRecord

# float32 input per chunk: big enough to amortize per-call overhead, small enough to bound memory
CHUNK_BYTES = 32 << 20
QUANTIZATION_VERSION = 2  # ggml's GGML_QNT_VERSION, as TTS.cpp and llama.cpp record it


def _check_output_path(src: Path, dst: Path) -> None:
    """Refuse an output that cannot be written before any work is done."""
    if _same_file(src, dst):
        raise ValueError(f"output path {dst} is the input file; choose another")
    if dst.is_dir():
        raise ValueError(f"output path {dst} is a directory")
    parent = dst.parent
    if not parent.is_dir():
        raise ValueError(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"output directory {parent} is not writable")


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def quantize_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    qtype: str | int | QType = "Q4_0",
    *,
    backend: str = "auto",
    n_threads: int = 1,
    convert_dac_to_f16: bool = False,
    quantize_output_heads: bool = False,
    quantize_text_embeddings: bool = False,
    quantize_cross_attn_kv: bool = False,
    convert_non_quantized_to_f16: bool = False,
    imatrix: str | os.PathLike[str] | Imatrix | None = None,
    progress: bool = False,
) -> Summary:
    """Quantize a GGUF file; raises ValueError (one-line message) on bad input, leaving no output.

    `imatrix` is a llama.cpp importance-matrix file (GGUF or legacy .dat) or a loaded Imatrix.
    """
    src, dst = Path(src), Path(dst)
    _check_output_path(src, dst)
    target = resolve(qtype)
    if imatrix is not None and not isinstance(imatrix, Imatrix):
        imatrix = load_imatrix(imatrix)
    model = SourceModel(src)
    try:
        return _run(model, dst, target, backend, n_threads, imatrix, progress, PlanOptions(
            qtype=target,
            convert_dac_to_f16=convert_dac_to_f16,
            quantize_output_heads=quantize_output_heads,
            quantize_text_embeddings=quantize_text_embeddings,
            quantize_cross_attn_kv=quantize_cross_attn_kv,
            convert_non_quantized_to_f16=convert_non_quantized_to_f16,
        ))
    finally:
        model.close()


def _run(model, dst, target, backend_name, n_threads, imatrix, show_progress, options) -> Summary:
    start = time.perf_counter()
    arch = model_architecture(model.architecture)
    be = get_backend(backend_name, n_threads=n_threads)
    decisions, weights = _plan_tensors(model, arch, be, imatrix, options)

    summary = Summary(str(model.path), str(dst), target.name, arch, be.name, n_threads)
    if imatrix is not None:
        summary.imatrix_file = imatrix.path
    report = Progress(sum(t.n_bytes for t in model.tensors), len(model.tensors)) if show_progress else None
    _note_plan_warnings(model.tensors, decisions, summary, report)

    metadata = [e for e in model.metadata if e.key not in _OWN_KEYS]
    metadata += _imatrix_keys(imatrix) + _quantization_keys(target)
    planned = [
        PlannedTensor(t.name, t.shape_numpy, d.qtype, t.n_rows * d.qtype.row_bytes(t.n_per_row))
        for t, d in zip(model.tensors, decisions, strict=True)
    ]
    # One chunk stream for every converted tensor of the file, so that a backend working ahead
    # (the GPU engine) overlaps tensors too, not only the chunks of one tensor.
    conversions = [(t, d.qtype, w) for t, d, w in zip(model.tensors, decisions, weights, strict=True)
                   if d.qtype != t.qtype]
    chunk_ranges = {t.name: list(_row_chunks(t, w)) for t, _, w in conversions}
    chunks = (
        (model.rows_as_float32(t, r0, r1), qtype, wc)
        for t, qtype, _ in conversions for r0, r1, wc in chunk_ranges[t.name]
    )
    outputs = be.quantize_chunks(chunks, check_finite=True)
    try:
        with AtomicGGUFWriter(dst, metadata, planned, model.alignment) as file_writer:
            writer = WriteBehind(file_writer, outputs_owned=getattr(be, "outputs_owned", False))
            try:
                for i, (t, d, p, w) in enumerate(zip(model.tensors, decisions, planned, weights, strict=True)):
                    if report:
                        report.tensor_started(i, t.name, t.qtype.name, d.qtype.name)
                    if d.qtype == t.qtype:
                        _copy_tensor(model, t, writer)
                        if report:
                            report.advance(t.n_bytes)
                    else:
                        _write_converted(model, t, chunk_ranges[t.name], outputs, writer, report)
                    summary.records.append(TensorRecord(
                        t.name, t.qtype.name, d.qtype.name, t.n_elements, t.n_bytes, p.n_bytes, d.reason,
                        d.fallback_from.name if d.fallback_from else None,
                        imatrix_used=w is not None,
                    ))
                writer.drain()
            finally:
                writer.close()
            file_writer.commit()
    finally:
        outputs.close()  # stops a backend working ahead (GPU streams, staging threads)
    summary.seconds = time.perf_counter() - start
    return summary


def _plan_tensors(model, arch, be, imatrix, options) -> tuple[list[Decision], list[np.ndarray | None]]:
    """Every tensor's output type and importance weights, all checked before any output exists."""
    decisions: list[Decision] = []
    weights: list[np.ndarray | None] = []
    for t in model.tensors:
        d = plan_tensor(t.name, t.shape_gguf, t.qtype, arch, options)
        w = None
        if d.qtype != t.qtype:
            if not be.supports(d.qtype):
                raise ValueError(f"type {d.qtype.name} is not supported yet by the {be.name} backend")
            if imatrix is not None and not d.qtype.is_float:
                w = weights_for(imatrix, t.name, t.shape_gguf)
            if w is None and d.qtype.requires_imatrix:
                raise ValueError(f"tensor {t.name}: type {d.qtype.name} requires an importance matrix entry")
        decisions.append(d)
        weights.append(w)
    return decisions, weights


_OWN_KEYS = ("general.quantization_version", "general.quantization_type")


def _quantization_keys(target: QType) -> list[MetadataEntry]:
    from gguf import GGUFValueType

    return [
        MetadataEntry("general.quantization_version", QUANTIZATION_VERSION, GGUFValueType.UINT32, None),
        MetadataEntry("general.quantization_type", target.ggml_id, GGUFValueType.UINT32, None),
    ]


def _imatrix_keys(imatrix: Imatrix | None) -> list[MetadataEntry]:
    from gguf import GGUFValueType

    if imatrix is None:
        return []
    return [MetadataEntry(k, v, GGUFValueType[vt], None) for k, v, vt in metadata_entries(imatrix)]


def _note_plan_warnings(tensors, decisions, summary: Summary, report: Progress | None) -> None:
    kept = [t.name for t, d in zip(tensors, decisions, strict=True) if d.kept_unquantizable]
    fallbacks: dict[tuple[str, str], list[str]] = {}
    for t, d in zip(tensors, decisions, strict=True):
        if d.fallback_from:
            fallbacks.setdefault((d.fallback_from.name, d.qtype.name), []).append(t.name)
    messages = [
        f"{len(names)} tensors with rows not a multiple of {a}'s block quantized as {b} instead "
        f"(e.g. {names[0]})"
        for (a, b), names in fallbacks.items()
    ]
    if kept:
        messages.append(
            f"{len(kept)} tensors kept as they are: no block size divides their rows (e.g. {kept[0]})"
        )
    not_float = [t for t in tensors if not t.qtype.is_float]
    if not_float:
        kinds = ", ".join(sorted({t.qtype.name for t in not_float}))
        messages.append(
            f"{len(not_float)} {kinds} tensors kept as they are: gpuquant converts F32, F16 and BF16 "
            f"tensors only (e.g. {not_float[0].name})"
        )
    summary.warnings.extend(messages)
    if report:
        for m in messages:
            report.warn(m)


def _copy_tensor(model: SourceModel, t, writer: WriteBehind) -> None:
    for a in range(0, t.n_bytes, CHUNK_BYTES):
        b = min(t.n_bytes, a + CHUNK_BYTES)
        writer.write(model.raw_bytes(t, a, b), partial(model.release, t, a, b))


def _row_chunks(t, weights: np.ndarray | None):
    """(first row, last row + 1, weights) chunks; with per-expert weights a chunk never spans two experts."""
    rows_per_chunk = max(1, CHUNK_BYTES // (4 * t.n_per_row))
    per_expert = weights is not None and weights.ndim == 2
    span = t.n_rows // weights.shape[0] if per_expert else t.n_rows
    for e0 in range(0, t.n_rows, span):
        w = weights[e0 // span] if per_expert else weights
        for r0 in range(e0, e0 + span, rows_per_chunk):
            yield r0, min(e0 + span, r0 + rows_per_chunk), w


def _write_converted(model: SourceModel, t, ranges, outputs, writer: WriteBehind, report: Progress | None) -> None:
    """Writes the outputs of one tensor's chunks, in order, and drops their input pages."""
    src_row_bytes = t.n_bytes // t.n_rows
    for r0, r1, _ in ranges:
        try:
            q = next(outputs)
        except NonFiniteError as e:
            raise ValueError(
                f"tensor {t.name}: NaN or Inf weight in row {r0 + e.row}; refusing to quantize it"
            ) from None
        writer.write(q, partial(model.release, t, r0 * src_row_bytes, r1 * src_row_bytes), from_backend=True)
        if report:
            report.advance((r1 - r0) * src_row_bytes)
