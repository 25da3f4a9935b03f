"""--target-size and --target-bpw on a llama.cpp model: the lowest-error types that fit a budget.

The search hands the planner per-tensor types and nothing else:
1. The base plan (the mix given, with the user's options) says which tensors are quantized. Those
   the user did not pin (--tensor-type and --tensor-type-file patterns, --output-tensor-type,
   --token-embedding-type; --leave-output-tensor keeps the output unquantized) are free.
2. A free tensor's candidates are the candidate types whose block divides its rows (elsewhere
   llama.cpp would store a fallback type instead) and that can run there: the types that need an
   importance matrix only where the matrix has the tensor's entry.
3. Each candidate is measured on a seeded sample of the tensor's rows (the same rows for every
   candidate): quantized and dequantized by the running backend, its importance-weighted squared
   error (plain without an imatrix) scaled from the sample to all rows. The measurements are cached
   per input file, imatrix file, candidate set and sample (target_size.MeasurementCache): another
   budget on the same input quantizes nothing.
4. The objective (OBJECTIVES, --target-objective) is, by default, the sum over tensors of each
   tensor's relative squared error, importance-weighted: sum_j w_j sum_i (x_ij - y_ij)^2 over
   sum_j w_j sum_i x_ij^2, with w the importance matrix (mean squared activations per input
   column; 1 without one): the relative error that the tensor's matrix product passes on, one term
   per matrix product, weighted by what a unit of it costs in KL divergence for its kind of matrix
   (KIND_WEIGHTS, measured); the matrix that makes the logits counts DEFAULT_OUTPUT_WEIGHT. The
   absolute sum (the squared errors themselves) gives a tensor's term in proportion to its size
   and weights' scale: on gemma-3-270m it spends the budget on the 168M weights of the token
   embedding, and by llama.cpp's KL divergence it lost to the relative objective at Q4_K_M's size
   (0.114 against 0.024; README, "Target size: quality"). target_size.allocate minimises it
   exactly under the budget: the whole output (header, pinned and unquantized tensors, padding) for
   --target-size, all tensors' data for --target-bpw (as `gpuquant inspect` counts bits per weight).
5. The choice becomes one --tensor-type pattern per free tensor (its exact name): the planner writes
   exactly those types, and so does llama-quantize given the same patterns as a --tensor-type-file
   (--recipe-out), with the same type and imatrix.
"""

from __future__ import annotations

import math
import re
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .backends import Chunk
from .gguf_io import SourceModel, header_bytes, padded
from .imatrix import Imatrix, weights_for
from .model_plan import LlamaRequest, ModelPlan, PlannedEntry
from .qtypes import QTYPES, QType
from .target_size import (
    Allocation,
    CacheKey,
    Candidate,
    MeasurementCache,
    TensorCandidates,
    allocate,
    file_fingerprint,
    human_size,
    tensor_pattern,
)

DEFAULT_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL")
IMATRIX_TYPES = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS")
DEFAULT_SAMPLE_ROWS = 64
DEFAULT_BASE = "Q4_K_M"  # the base mix when only IN and OUT are given
OBJECTIVES = {
    # each tensor's importance-weighted squared error relative to its weighted squared weights: the
    # relative error its matrix product's outputs take on, one term per tensor
    "relative": "sum over tensors of the importance-weighted relative squared error, each weighted by "
                "its kind's measured cost in KL divergence",
    # the squared errors themselves: a tensor's term grows with its size and the scale of its weights
    "absolute": "sum over tensors of the importance-weighted squared error",
}
DEFAULT_OBJECTIVE = "relative"
# The matrix that makes the logits (output.weight, or a tied token embedding) counts this many times:
# its error reaches the logits directly, where a layer's is diluted in the residual stream. Measured
# with KIND_WEIGHTS below (37 on their scale); before those, 16 was chosen over 1 and 4 by the quality
# table's KLD on dithered gemma-3-270m (at Q6_K's size 1 and 4 left the embedding at Q5_1, KLD
# 0.0235, where 16 kept it at Q8_0, 0.0135).
DEFAULT_OUTPUT_WEIGHT = 37.0
# What a unit of relative squared error costs in each kind of matrix, by llama.cpp's KL divergence:
# measured on dithered gemma-3-270m against its own calibration text (not the evaluation text of the
# quality table), with every weight at Q8_0 and one kind at a time at Q4_0, as the rise in mean KLD
# over the rise in the kind's summed relative squared error (benchmarks/kind_sensitivity.py), then
# scaled so that the layers' kinds average 1. The logits' matrix (the tied token embedding there)
# came out at 37 on that scale: DEFAULT_OUTPUT_WEIGHT. The values (the value matrix and the
# feed-forward up and down projections count most, the query and key ones least) are the order
# llama.cpp's own mixes give more bits in; a kind not listed counts 1.
KIND_WEIGHTS = {
    "attn_q": 0.27, "attn_k": 0.32, "attn_v": 1.67, "attn_output": 0.71,
    "ffn_gate": 0.67, "ffn_up": 1.59, "ffn_down": 1.76,
}
TARGET_REASON = "target size"


@dataclass(frozen=True)
class TargetRequest:
    """What --target-size / --target-bpw / --target-types / --recipe-out ask for (one of size, bpw)."""

    size: int | None = None  # bytes of the whole output (all shards together)
    bpw: float | None = None  # bits per weight over all tensors' data
    types: tuple[QType, ...] | None = None  # the candidates; None: DEFAULT_TYPES (+ IMATRIX_TYPES)
    sample_rows: int = DEFAULT_SAMPLE_ROWS  # rows measured per tensor
    recipe_out: Path | None = None
    cache_dir: Path | None = None  # None: the default cache folder
    objective: str = DEFAULT_OBJECTIVE  # a key of OBJECTIVES
    output_weight: float = DEFAULT_OUTPUT_WEIGHT  # the logits' matrix counts this many times (see OBJECTIVES)

    def __post_init__(self) -> None:
        if (self.size is None) == (self.bpw is None):
            raise ValueError("give one of --target-size and --target-bpw")
        if self.sample_rows < 1:
            raise ValueError(f"the target sample must be 1 row or more, not {self.sample_rows}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}: {', '.join(OBJECTIVES)}")

    def candidate_types(self, has_imatrix: bool) -> tuple[QType, ...]:
        if self.types is not None:
            return self.types
        names = DEFAULT_TYPES + (IMATRIX_TYPES if has_imatrix else ())
        return tuple(QTYPES[n] for n in names)


@dataclass
class TargetChoice:
    """The search's result: the request to plan with and what the summary reports."""

    request: LlamaRequest  # the user's request plus one pattern per free tensor
    types: dict[str, QType]  # free tensor (output name) -> its type
    allocation: Allocation
    budget: int
    fixed_bytes: int  # what the choice cannot change: header, pinned and unquantized tensors
    predicted_bytes: int  # the whole output (--target-size) or all tensors' data (--target-bpw)
    by_bpw: bool
    objective: str
    candidates: tuple[str, ...]
    sample_rows: int
    measured: int  # free tensors
    cache_hit: bool
    seconds: float
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        counts = Counter(t.name for t in self.types.values())
        return {
            "budget": self.budget, "unit": "tensor data bytes" if self.by_bpw else "file bytes",
            "predicted": self.predicted_bytes, "fixed": self.fixed_bytes, "optimal": self.allocation.optimal,
            "gap": self.allocation.gap, "objective": OBJECTIVES[self.objective],
            "total_error": self.allocation.total_error,
            "candidates": list(self.candidates), "sample_rows": self.sample_rows, "free_tensors": self.measured,
            "cache_hit": self.cache_hit, "seconds": self.seconds, "chosen": dict(sorted(counts.items())),
            "types": {name: t.name for name, t in self.types.items()},
        }

    def line(self) -> str:
        counts = Counter(t.name for t in self.types.values())
        chosen = ", ".join(f"{n} {name}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        what = "tensor data" if self.by_bpw else "file"
        proven = "optimal" if self.allocation.optimal else f"not proven optimal (gap {self.allocation.gap:.3g})"
        return (f"target: {what} {human_size(self.predicted_bytes)} predicted for a budget of "
                f"{human_size(self.budget)}; {self.measured} tensors chosen among {len(self.candidates)} types "
                f"({chosen}), {proven}; measured on {self.sample_rows} rows per tensor"
                + (" (cached)" if self.cache_hit else f" in {self.seconds:.1f} s"))


def pinned(e: PlannedEntry, request: LlamaRequest) -> bool:
    """Whether the user fixed this tensor's type (llama_tensor_get_type's overrides)."""
    name = e.name
    if request.token_embedding_type is not None and name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return True
    if request.output_tensor_type is not None and name == "output.weight":
        return True
    return any(re.search(pattern, name) for pattern, _ in request.tensor_types)


def free_entries(plan: ModelPlan, request: LlamaRequest) -> list[PlannedEntry]:
    """The tensors the search chooses types for: quantized by the base plan and not pinned."""
    return [e for e in plan.entries
            if e.decision.qtype != e.source.qtype and not e.decision.qtype.is_float and not pinned(e, request)]


def _candidates_for(e: PlannedEntry, types: tuple[QType, ...], w) -> list[QType]:
    n = e.source.n_per_row
    return [t for t in types if n % t.block_size == 0 and (w is not None or not t.requires_imatrix)]


def sample_of(name: str, n_rows: int, k: int) -> np.ndarray:
    """The rows measured: k of them (all if fewer), drawn by numpy's default_rng(crc32(name)), sorted."""
    if k >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(zlib.crc32(name.encode())).choice(n_rows, size=k, replace=False))


def measure(model: SourceModel, e: PlannedEntry, types: list[QType], w, k: int, backend) -> dict:
    """{type: {"bytes", "errors": {"weighted_sq", "sq", "sq_x"}}} for one tensor, the sums scaled to
    all rows. NaN or Inf in the sample (or an overflow to them) is refused: the objective needs
    finite errors, and the run itself would refuse such a tensor anyway."""
    t = e.source
    rows = sample_of(e.name, t.n_rows, k)
    data = np.stack([model.stored_rows(t, int(r), int(r) + 1)[0] for r in rows])
    model.release(t)  # the rows read mapped whole pages (and their neighbours): unmap them again
    x = backend.chunk_as_float32(Chunk(data, QTYPES["F32"], None, t.qtype))
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise ValueError(f"tensor {e.name}: NaN or Inf weight in row {int(rows[bad[0]])}; refusing to quantize it")
    experts = w is not None and w.ndim == 2
    span = t.n_rows // w.shape[0] if experts else t.n_rows
    scale = t.n_rows / len(rows)
    out = {}
    for qtype in types:
        sq = weighted_sq = sq_x = weighted_sq_x = 0.0
        for group in (np.unique(rows // span) if experts else [0]):
            local = np.flatnonzero(rows // span == group) if experts else np.arange(len(rows))
            wg = w[group] if experts else w
            xg = np.ascontiguousarray(x[local])
            # the same bytes on every backend; the sums in float64 here, so that the choice never
            # depends on a backend's order of summation
            y = backend.dequantize(backend.quantize(xg, qtype, wg), qtype, t.n_per_row)
            x64 = xg.astype(np.float64)
            d2 = np.square(x64 - y)
            columns = d2.sum(axis=0)
            sq += float(columns.sum())
            sq_x += float(np.square(x64).sum())
            x_columns = np.square(x64).sum(axis=0)
            if wg is not None:
                w64 = wg.astype(np.float64)
                weighted_sq += float(columns @ w64)
                weighted_sq_x += float(x_columns @ w64)
            else:
                weighted_sq += float(columns.sum())
                weighted_sq_x += float(x_columns.sum())
        if not all(math.isfinite(v) for v in (sq, sq_x, weighted_sq, weighted_sq_x)):
            raise ValueError(f"tensor {e.name}: NaN or Inf weights or errors in its rows; refusing to quantize it")
        out[qtype.name] = {"bytes": t.n_rows * qtype.row_bytes(t.n_per_row),
                           "errors": {"weighted_sq": weighted_sq * scale, "sq": sq * scale, "sq_x": sq_x * scale,
                                      "weighted_sq_x": weighted_sq_x * scale}}
    return out


def objective_term(errors: dict, objective: str) -> float:
    """A candidate's term in the objective, from its measured sums."""
    if objective == "absolute":
        return errors["weighted_sq"]
    reference = errors["weighted_sq_x"]
    return errors["weighted_sq"] / reference if reference > 0 else 0.0


def logits_matrix(plan: ModelPlan) -> str:
    """The matrix that makes the logits: output.weight, or the token embedding standing in for it."""
    return "output.weight" if any(e.name == "output.weight" for e in plan.entries) else "token_embd.weight"


def tensor_weight(name: str, logits: str, target: TargetRequest) -> float:
    """How much a tensor's term counts: the logits' matrix output_weight, a layer's matrix its kind's
    KIND_WEIGHTS (the relative objective; MoE experts as their dense kind), anything else 1."""
    if name == logits:
        return target.output_weight
    if target.objective != "relative":
        return 1.0
    kind = name.split(".")[2] if name.startswith("blk.") and name.count(".") >= 3 else ""
    kind = re.sub(r"_(exps|shexp|chexps)$", "", kind)
    return KIND_WEIGHTS.get(kind, 1.0)


def choose(model: SourceModel, plan: ModelPlan, request: LlamaRequest, target: TargetRequest,
           imatrix: Imatrix | None, backend, shards: list) -> TargetChoice:
    """Measure the free tensors' candidates (or read them from the cache), allocate, and return the
    request that plans the choice. `shards` are the output files' (path, metadata, planned tensors)."""
    start = time.perf_counter()
    if plan.family != "llama.cpp":
        raise ValueError("--target-size and --target-bpw apply to llama.cpp models; this is a TTS.cpp model")
    if plan.mix is None or plan.mix.is_copy or plan.mix.base.is_float:
        raise ValueError(f"--target-size needs a quantized base type, not {plan.requested}")
    types = target.candidate_types(imatrix is not None)
    free = free_entries(plan, request)
    if not free:
        raise ValueError("no tensor is left for --target-size to choose (every quantized tensor is pinned)")
    weights = {}
    for e in free:
        weights[e.name] = None if imatrix is None else weights_for(imatrix, e.imatrix_name, e.source.shape_gguf)
    options = {e.name: _candidates_for(e, types, weights[e.name]) for e in free}
    for e in free:
        if not options[e.name]:
            raise ValueError(f"tensor {e.name}: none of the target types ({', '.join(t.name for t in types)}) "
                             f"can store its rows of {e.source.n_per_row}")
    key = CacheKey(file_fingerprint(model.paths), file_fingerprint(imatrix.path) if imatrix else None,
                   tuple(t.name for t in types), {"rows": target.sample_rows, "names": [e.name for e in free]})
    cache = MeasurementCache(target.cache_dir)
    measured = cache.load(key)
    cache_hit = measured is not None and all(e.name in measured for e in free)
    if not cache_hit:
        measured = {e.name: measure(model, e, options[e.name], weights[e.name], target.sample_rows, backend)
                    for e in free}
        cache.store(key, measured)

    alignment = model.alignment
    by_bpw = target.bpw is not None
    free_names = {e.name for e in free}
    size_of = (lambda n: n) if by_bpw else (lambda n: padded(n, alignment))
    fixed = sum(size_of(e.source.n_rows * e.decision.qtype.row_bytes(e.source.n_per_row))
                for e in plan.entries if e.name not in free_names)
    if by_bpw:
        elements = sum(e.source.n_elements for e in plan.entries)
        budget = math.floor(target.bpw * elements / 8)
    else:
        fixed += sum(header_bytes(metadata, planned, alignment) for _, metadata, planned in shards)
        budget = target.size
    logits = logits_matrix(plan)
    tensors = [TensorCandidates(e.name, [Candidate(t.name, size_of(measured[e.name][t.name]["bytes"]),
                                                   objective_term(measured[e.name][t.name]["errors"], target.objective)
                                                   * tensor_weight(e.name, logits, target))
                                         for t in options[e.name]])
               for e in free]
    allocation = allocate(tensors, budget, fixed)
    chosen = {name: QTYPES[t] for name, t in allocation.types.items()}
    patterns = tuple((tensor_pattern(name), chosen[name]) for name in (e.name for e in free))
    return TargetChoice(
        request=replace(request, tensor_types=request.tensor_types + patterns), types=chosen,
        allocation=allocation, budget=budget, fixed_bytes=fixed, predicted_bytes=allocation.total_size,
        by_bpw=by_bpw, objective=target.objective, candidates=tuple(t.name for t in types),
        sample_rows=target.sample_rows, measured=len(free), cache_hit=cache_hit, seconds=time.perf_counter() - start)


RECIPE_HEADER = "#gpuquant-recipe:"


def recipe_words(request: LlamaRequest, base: str) -> list[str]:
    """The run's --tensor-type patterns as llama-quantize's --tensor-type-file words, headed by what
    the file goes with. llama-quantize reads that file as PATTERN=TYPE words and nothing else (a
    comment line would be refused), so the header is words of that form whose patterns match no
    tensor (no tensor name holds '#'): the type to give with it and the options it needs."""
    words = [f"{RECIPE_HEADER}use-with-llama-quantize-type-{base.lower()}-and-the-same-imatrix=f32"]
    if request.output_tensor_type is not None:
        words.append(f"{RECIPE_HEADER}needs:--output-tensor-type={request.output_tensor_type.name.lower()}")
    if request.token_embedding_type is not None:
        words.append(f"{RECIPE_HEADER}needs:--token-embedding-type={request.token_embedding_type.name.lower()}")
    return words + [f"{pattern}={qtype.name.lower()}" for pattern, qtype in request.tensor_types]


def write_recipe(path: str | Path, request: LlamaRequest, base: str) -> None:
    """--recipe-out: every pattern the run planned with (the user's, then one per chosen tensor), so
    that llama-quantize given the file, the same type and imatrix (and the user's options, which the
    header names) writes the same file."""
    Path(path).write_text("\n".join(recipe_words(request, base)) + "\n", encoding="utf-8")
