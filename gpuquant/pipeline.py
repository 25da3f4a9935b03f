"""The file job: plan every tensor, then stream each one from the mapped input through a backend
into the output, in row chunks, with progress and a summary."""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import numpy as np

from .backends import Chunk, NonFiniteError, get_backend
from .gguf_io import AtomicGGUFWriter, MetadataEntry, PlannedTensor, SourceModel, WriteBehind
from .imatrix import Imatrix, check_importances, load_imatrix, select_entries, weights_for
from .mixes import Mix, resolve_type_or_mix
from .model_plan import LlamaRequest, ModelPlan, PlannedEntry, plan_model
from .output_paths import check_new_file, same_file
from .plan import Decision, PlanOptions
from .progress import Progress
from .qtypes import QType
from .quant_error import ErrorSums, exact_figures, sample_rows
from .report import check_report_path, write_report
from .size_search import TARGET_REASON, TargetChoice, TargetRequest, choose, write_recipe
from .summary import Summary, TensorRecord

# float32 input per chunk: big enough to amortize per-call overhead, small enough to bound memory
CHUNK_BYTES = 32 << 20


def _check_output_path(src: Path, dst: Path) -> None:
    """Refuse an output that cannot be written before any work is done."""
    if same_file(src, dst):
        raise ValueError(f"output path {dst} is the input file; choose another")
    check_new_file(dst, "output")


def quantize_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None,
    qtype: str | int | QType | Mix = "Q4_0",
    *,
    backend: str = "auto",
    n_threads: int = 1,
    convert_dac_to_f16: bool = False,
    quantize_output_heads: bool = False,
    quantize_text_embeddings: bool = False,
    quantize_cross_attn_kv: bool = False,
    convert_non_quantized_to_f16: bool = False,
    imatrix: str | os.PathLike[str] | Imatrix | None = None,
    include_weights: tuple[str, ...] = (),
    exclude_weights: tuple[str, ...] = (),
    llama: LlamaRequest | None = None,
    allow_requantize: bool = False,
    dry_run: bool = False,
    max_buffer_bytes: int | None = None,
    progress: bool = False,
    measure_error: bool = True,
    report_sample: int | None = None,
    reports: tuple[str | os.PathLike[str], ...] = (),
    target_size: TargetRequest | None = None,
) -> Summary:
    """Quantize a GGUF file; raises ValueError (one-line message) on bad input, leaving no output.

    `qtype` is a ggml type (TTS.cpp's form: a name or a ggml id) or a llama-quantize mix (Q4_K_M, a
    Mix). `imatrix` is a llama.cpp importance-matrix file (GGUF or legacy .dat) or a loaded Imatrix.
    `llama` holds llama-quantize's options for llama.cpp models. With `dry_run` nothing is written
    and no tensor data is read; `dst` may then be None.

    With `measure_error` every converted tensor's error figures (gpuquant.quant_error) are measured
    over every row, or over `report_sample` rows per tensor; `reports` are .json or .html paths
    written after the output (gpuquant.report).

    With `target_size` (--target-size / --target-bpw, gpuquant.size_search) each quantized tensor's
    type is chosen to fit the budget with the least error; `qtype` is then the base mix (the file's
    type and the rules for what is not chosen). Choosing reads a sample of rows even in a dry run.
    """
    src = Path(src)
    dst = Path(dst) if dst is not None else None
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
        raise ValueError(f"n_threads must be an integer of 1 or more, not {n_threads!r}")
    if not dry_run:
        if dst is None:
            raise ValueError("missing the output path")
        _check_output_path(src, dst)
    if report_sample is not None and (isinstance(report_sample, bool) or not isinstance(report_sample, int)
                                      or report_sample < 1):
        raise ValueError(f"the report sample must be a row count of 1 or more, not {report_sample!r}")
    report_paths = [check_report_path(Path(p), src, dst) for p in reports]
    target = resolve_type_or_mix(qtype)
    if include_weights and exclude_weights:
        raise ValueError("--include-weights and --exclude-weights cannot be used together")
    if imatrix is not None and not isinstance(imatrix, Imatrix):
        imatrix = load_imatrix(imatrix)
    elif imatrix is not None:  # a caller's own Imatrix: the checks a loaded file gets
        for name, values in imatrix.entries.items():
            check_importances(np.asarray(values), f"imatrix entry {name}")
    if imatrix is not None:
        imatrix = select_entries(imatrix, include_weights, exclude_weights)
    tts_options = PlanOptions(
        qtype=target.base if isinstance(target, Mix) else target,
        convert_dac_to_f16=convert_dac_to_f16,
        quantize_output_heads=quantize_output_heads,
        quantize_text_embeddings=quantize_text_embeddings,
        quantize_cross_attn_kv=quantize_cross_attn_kv,
        convert_non_quantized_to_f16=convert_non_quantized_to_f16,
    )
    model = SourceModel(src)
    try:
        plan = plan_model(model, target, tts_options, llama, imatrix)
        choice = None
        if target_size is not None:
            llama = llama or LlamaRequest()
            searcher = get_backend(backend, n_threads=n_threads,
                                   needed=target_size.candidate_types(imatrix is not None))
            shards = _output_shards(plan, dst or Path("dry-run.gguf"), llama)
            choice = choose(model, plan, llama, target_size, imatrix, searcher, shards)
            llama = choice.request
            plan = plan_model(model, target, tts_options, llama, imatrix)
            _label_choice(plan, choice)
        chunk_bytes = min(CHUNK_BYTES, max_buffer_bytes) if max_buffer_bytes else CHUNK_BYTES
        summary = _run(model, dst, plan, backend, n_threads, imatrix, progress, allow_requantize, dry_run,
                       chunk_bytes, llama or LlamaRequest(), measure_error, report_sample)
    finally:
        model.close()
    if choice is not None:
        summary.target = choice
        summary.target_actual_bytes = _actual_bytes(summary, choice)
        if target_size.recipe_out is not None:
            write_recipe(target_size.recipe_out, choice.request, plan.requested)
            summary.recipe = str(target_size.recipe_out)
    for path in report_paths:
        write_report(summary, path)
        summary.reports.append(str(path))
    return summary


def _run(model, dst, plan: ModelPlan, backend_name, n_threads, imatrix, show_progress, allow_requantize,
         dry_run, chunk_bytes, llama_request, measure_error, report_sample) -> Summary:
    start = time.perf_counter()
    needed = {e.decision.qtype for e in plan.entries if e.decision.qtype != e.source.qtype}
    be = get_backend(backend_name, n_threads=n_threads, needed=needed)
    weights = _check_plan(plan, be, imatrix, allow_requantize, dry_run)

    summary = Summary(str(model.path), str(dst) if dst else "(dry run)", plan.requested, plan.architecture,
                      be.name, n_threads)
    summary.family = plan.family
    summary.backend_reason = be.reason
    summary.backend_description = be.description
    summary.dry_run = dry_run
    summary.report_sample = report_sample if measure_error else None
    summary.error_measured = measure_error and not dry_run
    if imatrix is not None:
        summary.imatrix_file = imatrix.path
    entries = plan.entries
    if dry_run and imatrix is None and any(e.requires_imatrix and e.decision.qtype != e.source.qtype for e in entries):
        plan.notes.append("dry run completed, but this quantization will require an importance matrix (--imatrix)")
    total = sum(e.source.n_bytes for e in entries)
    report = Progress(total, len(entries)) if show_progress and not dry_run else None
    _note_plan_warnings(plan, summary, report)

    records = [
        TensorRecord(
            e.name, e.source.qtype.name, e.decision.qtype.name, e.source.n_elements, e.source.n_bytes,
            _output_bytes(e), e.decision.reason,
            e.decision.fallback_from.name if e.decision.fallback_from else None,
            imatrix_used=w is not None, shape=tuple(e.source.shape_gguf),
        )
        for e, w in zip(entries, weights, strict=True)
    ]
    if dry_run:
        summary.records = records
        summary.seconds = time.perf_counter() - start
        return summary

    shards = _output_shards(plan, dst, llama_request)
    # One chunk stream for every converted tensor of the file, so that a backend working ahead
    # (the GPU engine) overlaps tensors too, not only the chunks of one tensor. Chunks hold the rows
    # as the file stores them: each backend makes float32 of them where it computes.
    conversions = [(e, w) for e, w in zip(entries, weights, strict=True) if e.decision.qtype != e.source.qtype]
    chunk_ranges = {id(e): list(row_chunks(e.source, w, chunk_bytes)) for e, w in conversions}

    def chunks():
        for e, _ in conversions:
            t = e.source
            sample = sample_rows(e.name, t.n_rows, report_sample) if measure_error else None
            for r0, r1, wc in chunk_ranges[id(e)]:
                local = None if sample is None else sample[(sample >= r0) & (sample < r1)] - r0
                yield Chunk(model.stored_rows(t, r0, r1), e.decision.qtype, wc, t.qtype, measure_error, local)

    outputs = be.quantize_chunks(chunks(), check_finite=True)
    index = 0
    try:
        with ExitStack() as stack:
            writers = [stack.enter_context(AtomicGGUFWriter(path, metadata, planned, model.alignment))
                       for path, metadata, planned in shards]
            for file_writer, (_, _, planned) in zip(writers, shards, strict=True):
                writer = WriteBehind(file_writer, depth=3)  # the GPU engine lends 4 outputs at once
                try:
                    for _ in planned:
                        e, record = entries[index], records[index]
                        t = e.source
                        if report:
                            report.tensor_started(index, e.name, t.qtype.name, e.decision.qtype.name)
                        if e.decision.qtype == t.qtype:
                            _copy_tensor(model, t, writer, chunk_bytes)
                            if report:
                                report.advance(t.n_bytes)
                            if measure_error:
                                record.error = exact_figures(t.n_rows)
                        else:
                            sums = _write_converted(model, e, chunk_ranges[id(e)], outputs, writer, report,
                                                    measure_error)
                            if sums is not None:
                                record.error = sums.figures(t.n_rows)
                        summary.records.append(record)
                        index += 1
                    writer.drain()
                finally:
                    writer.close()
            for file_writer in writers:
                file_writer.commit()
    finally:
        outputs.close()  # stops a backend working ahead (GPU streams, staging threads)
        if report:
            report.close()
    summary.outputs = [str(path) for path, _, _ in shards]
    for note in be.notes:  # what the backend found out while running
        summary.warnings.append(note)
        if report:
            report.warn(note)
    summary.seconds = time.perf_counter() - start
    return summary


def _label_choice(plan: ModelPlan, choice: TargetChoice) -> None:
    """The chosen tensors' reason says so; the planner must have given each the type chosen."""
    for e in plan.entries:
        chosen = choice.types.get(e.name)
        if chosen is None:
            continue
        if e.decision.qtype != chosen:  # the patterns are exact names: only a bug gets here
            raise RuntimeError(f"tensor {e.name}: planned as {e.decision.qtype.name}, chosen {chosen.name}")
        e.decision = Decision(chosen, TARGET_REASON)


def _actual_bytes(summary: Summary, choice: TargetChoice) -> int:
    """What the choice is judged by: the output files' bytes, or all tensors' data (--target-bpw)."""
    if choice.by_bpw or summary.dry_run:
        return summary.bytes_out if choice.by_bpw else choice.predicted_bytes
    return sum(Path(p).stat().st_size for p in summary.outputs)


def _output_bytes(e: PlannedEntry) -> int:
    return e.source.n_rows * e.decision.qtype.row_bytes(e.source.n_per_row)


def ggml_shape(shape_gguf: tuple[int, ...]) -> tuple[int, ...]:
    """The shape ggml writes (ggml_n_dims): trailing dimensions of 1 dropped, at least one kept."""
    n = len(shape_gguf)
    while n > 1 and shape_gguf[n - 1] == 1:
        n -= 1
    return tuple(shape_gguf[: max(n, 1)])


def _output_shards(plan: ModelPlan, dst: Path, request: LlamaRequest):
    """(path, metadata, tensors) per output file: one, or with --keep-split one per input shard."""
    planned = [
        PlannedTensor(e.name, tuple(reversed(ggml_shape(e.source.shape_gguf))), e.decision.qtype, _output_bytes(e))
        for e in plan.entries
    ]
    if not request.keep_split:
        return [(dst, plan.metadata, planned)]
    from gguf import GGUFValueType

    # llama-quantize names even a single shard PREFIX-00001-of-00001.gguf, and strips ".gguf"
    text = str(dst)
    prefix = Path(text[:-5] if ".gguf" in text else text)
    n_split = 1 + max((e.source.split for e in plan.entries), default=0)
    shards = []
    for i in range(n_split):
        metadata = list(plan.metadata) if i == 0 else []  # later shards start from an empty context
        if n_split > 1:
            metadata += [
                MetadataEntry("split.no", i, GGUFValueType.UINT16, None),
                MetadataEntry("split.count", n_split, GGUFValueType.UINT16, None),
                MetadataEntry("split.tensors.count", len(planned), GGUFValueType.INT32, None),
            ]
        shard = [p for p, e in zip(planned, plan.entries, strict=True) if e.source.split == i]
        shards.append((split_path(prefix, i, n_split), metadata, shard))
    return shards


def split_path(prefix: Path, index: int, count: int) -> Path:
    """llama_split_path: PREFIX-0000i-of-0000n.gguf (1-based)."""
    return prefix.with_name(f"{prefix.name}-{index + 1:05d}-of-{count:05d}.gguf")


def _check_plan(plan: ModelPlan, be, imatrix, allow_requantize: bool, dry_run: bool) -> list[np.ndarray | None]:
    """Every tensor's importance weights, with every refusal raised before any output exists."""
    weights: list[np.ndarray | None] = []
    for e in plan.entries:
        t, d = e.source, e.decision
        w = None
        if d.qtype != t.qtype:
            if not t.qtype.is_float and not allow_requantize and not dry_run:
                raise ValueError(
                    f"tensor {e.name} is {t.qtype.name}: requantizing is disabled (add --allow-requantize)"
                )
            if not be.supports(d.qtype):
                raise ValueError(f"type {d.qtype.name} is not supported yet by the {be.name} backend")
            if not t.qtype.is_float and not be.supports(t.qtype):
                raise ValueError(f"tensor {e.name}: cannot dequantize its type {t.qtype.name}")
            if imatrix is not None and not d.qtype.is_float:
                w = weights_for(imatrix, e.imatrix_name, t.shape_gguf)
            if w is None and e.requires_imatrix and not dry_run:
                if imatrix is None:
                    raise ValueError(
                        f"this quantization requires an imatrix (--imatrix): tensor {e.name} "
                        f"is planned as {d.qtype.name}"
                    )
                raise ValueError(f"tensor {e.name}: type {d.qtype.name} requires an importance matrix entry")
        weights.append(w)
    if imatrix is not None:
        _check_imatrix_coverage(plan, weights, imatrix)
    return weights


def _check_imatrix_coverage(plan: ModelPlan, weights, imatrix: Imatrix) -> None:
    """An imatrix for another model (no entry for any tensor to quantize) is an error; one that
    misses some tensors is a note, said once."""
    quantized = [e for e in plan.entries if e.decision.qtype != e.source.qtype and not e.decision.qtype.is_float]
    missing = [e.name for e, w in zip(plan.entries, weights, strict=True)
               if w is None and e.decision.qtype != e.source.qtype and not e.decision.qtype.is_float]
    if quantized and len(missing) == len(quantized):
        raise ValueError(
            f"importance matrix {imatrix.path} has no entry for any of the {len(quantized)} tensors to quantize "
            "(is it for another model?)"
        )
    if missing:
        plan.notes.append(
            f"importance matrix {imatrix.path} has no entry for {len(missing)} of the {len(quantized)} tensors to "
            f"quantize (e.g. {missing[0]}): those are quantized without one"
        )


def _note_plan_warnings(plan: ModelPlan, summary: Summary, report: Progress | None) -> None:
    entries = plan.entries
    kept = [e.name for e in entries if e.decision.kept_unquantizable]
    fallbacks: dict[tuple[str, str], list[str]] = {}
    for e in entries:
        if e.decision.fallback_from:
            fallbacks.setdefault((e.decision.fallback_from.name, e.decision.qtype.name), []).append(e.name)
    messages = list(plan.notes) + [
        f"{len(names)} tensors with rows not a multiple of {a}'s block quantized as {b} instead "
        f"(e.g. {names[0]})"
        for (a, b), names in fallbacks.items()
    ]
    if kept:
        messages.append(
            f"{len(kept)} tensors kept as they are: no block size divides their rows (e.g. {kept[0]})"
        )
    copied = [e for e in entries if e.source.qtype.family == "copy-only"]
    if copied:
        kinds = ", ".join(sorted({e.source.qtype.name for e in copied}))
        messages.append(f"{len(copied)} {kinds} tensors kept as they are: integer tensors are copied (e.g. "
                        f"{copied[0].name})")
    summary.warnings.extend(messages)
    if report:
        for m in messages:
            report.warn(m)


def _copy_tensor(model: SourceModel, t, writer: WriteBehind, chunk_bytes: int) -> None:
    for a in range(0, t.n_bytes, chunk_bytes):
        b = min(t.n_bytes, a + chunk_bytes)
        writer.write(model.raw_bytes(t, a, b), partial(model.release, t, a, b))


def row_chunks(t, weights: np.ndarray | None, chunk_bytes: int):
    """(first row, last row + 1, weights) chunks; with per-expert weights a chunk never spans two experts."""
    rows_per_chunk = max(1, chunk_bytes // (4 * t.n_per_row))
    per_expert = weights is not None and weights.ndim == 2
    span = t.n_rows // weights.shape[0] if per_expert else t.n_rows
    for e0 in range(0, t.n_rows, span):
        w = weights[e0 // span] if per_expert else weights
        for r0 in range(e0, e0 + span, rows_per_chunk):
            yield r0, min(e0 + span, r0 + rows_per_chunk), w


def _write_converted(model: SourceModel, e: PlannedEntry, ranges, outputs, writer: WriteBehind,
                     report: Progress | None, measure_error: bool) -> ErrorSums | None:
    """Writes the outputs of one tensor's chunks, in order, then hands their buffers back and drops
    their input pages; with measure_error, returns the tensor's error sums (added in chunk order)."""
    t = e.source
    src_row_bytes = t.n_bytes // t.n_rows
    sums = ErrorSums(weighted=bool(ranges) and ranges[0][2] is not None) if measure_error else None
    for r0, r1, _ in ranges:
        try:
            out = next(outputs)
        except NonFiniteError as err:
            raise ValueError(
                f"tensor {e.name}: NaN or Inf weight in row {r0 + err.row}; refusing to quantize it"
            ) from None
        if sums is not None:
            sums.add(out.error)
        writer.write(out.q, partial(_written, out.release, model, t, r0 * src_row_bytes, r1 * src_row_bytes))
        if report:
            report.advance((r1 - r0) * src_row_bytes)
    return sums


def _written(release, model: SourceModel, t, start: int, stop: int) -> None:
    release()
    model.release(t, start, stop)
