"""--target-size / --target-bpw: choose each tensor's type so that the file fits a budget with the least error.

This module is the part of issue 19 that needs no pipeline: the size and bpw arguments, the
allocator, the cache of per-tensor measurements and the recipe's patterns. The pipeline measures each
candidate type's error per tensor and its exact size (rows * row_bytes); `allocate` then picks one
candidate per tensor.

The allocator solves the multiple-choice knapsack exactly: minimise the sum of the per-tensor
errors subject to fixed_bytes + sum(sizes) <= budget.

1. Per tensor, dominated candidates go (another is no larger and no worse; among exact equals the
   first listed stays), leaving a front of strictly growing size and strictly falling error.
2. The lower convex hulls of the fronts give the LP relaxation: starting from every tensor's
   smallest candidate, the hull steps are taken in order of error saved per byte until the next
   one does not fit. That step's rate is the Lagrange multiplier `lam`; the steps taken, then any
   later step that still fits, give a feasible reference solution (the incumbent).
3. Lagrangian bound: for any feasible x and any lam >= 0,
   error(x) >= error(ref) + sum_i min_j d_ij - lam * slack + sum_i rc_i(x_i), with
   d_ij = (e_ij - e_i,ref) + lam * (s_ij - s_i,ref), rc_ij = d_ij - min_j d_ij and
   slack = budget - size(ref). The first three terms are the lower bound (at the LP multiplier,
   the LP optimum), so a candidate whose reduced cost rc_ij is not below the gap
   (incumbent - bound) is in no better solution and is dropped; tensors left with one candidate
   are fixed at the reference.
4. The remaining "core" tensors are solved by a dynamic programme over states (bytes, error)
   relative to the reference: Pareto-dominated states are merged away and a state is cut when its
   Lagrangian bound (the same inequality over the tensors still to come) is not below the best
   complete solution found, or when even the smallest remaining candidates overflow. Any state
   that fits is itself a complete solution (the tensors still to come at the reference), so the
   incumbent improves as the programme runs. Nothing better than the result is cut, so the result
   is optimal, up to the rounding of float sums of the errors.

The programme's size is bounded: at most `max_states` states are kept per tensor and `node_limit`
states are generated in all (beyond that, at most 256 per tensor); where states had to be
dropped, the best solution found is returned with `optimal=False`: it never hangs, and a result
that is not proven says so. Everything is deterministic: no randomness, stable sorts, ties of
equal size and error go to the first candidate listed, equal hull rates to the lower tensor
index, and a whole solution replaces the incumbent only when its error is strictly smaller (the
first found wins a tie; among the programme's states of equal error, the smaller size).

Budget limits: the sizes the candidates can reach run from every tensor's smallest candidate to
every tensor's largest (plus the fixed bytes). A budget outside that range is one `BudgetError`
(a ValueError) naming both ends, in bytes and in human units: below, because nothing fits; above,
too, as issue 19 words it ("a budget outside what the candidates can reach is a one-line error")
-- a budget larger than the largest candidates is almost always a mistyped unit, and the caller
who wants "best quality" can pass `largest` itself. Inside the range, a budget at or above the
size of every tensor's lowest-error candidate gives exactly that choice.

Sizes (`parse_size`): a number and a unit, B (bytes), K M G T (powers of 1000) or Ki Mi Gi Ti
(powers of 1024), in any case, with an optional trailing B ("4G", "512MiB", "3.2GB", "4gib",
"123456B"); a bare number is refused, as a forgotten unit. llama.cpp's own
parse_target_size (tools/quantize/quantize.cpp, the version with --target-size) reads k/m/g/t as
powers of 1024 and accepts neither "kb" nor "gb"; here "G" is 10^9 as issue 19 asks: "GiB" says
2^30.

The cache (`MeasurementCache`) keeps the measured candidates of one run in a JSON file per key.
The input's fingerprint (`file_fingerprint`) is its size, its mtime_ns and a SHA-256 of sampled
bytes (the first MiB, 32 evenly spaced 64 KiB blocks and the last 64 KiB), not its path: a moved
or renamed file (mv keeps mtime) still hits, a rewritten or touched one misses, and a file that
differs only where no sample reads and has the same size and mtime is the one case it cannot
tell, which needs deliberate effort. Hashing the whole data region would cost a full read of a
model the measuring pass only samples.

Recipe patterns (`tensor_pattern`): ^NAME$ written so that llama-quantize, which lowercases a
--tensor-type-file's patterns and splits its words at whitespace and '=', still matches exactly
that tensor. size_search.write_recipe writes the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------
# sizes

_SIZE = re.compile(r"^\s*(?P<num>[0-9]*\.?[0-9]*(?:[eE][+-]?[0-9]+)?)\s*(?P<unit>[a-zA-Z]*)\s*$")
_UNITS = {
    "b": 1,
    "k": 10**3, "kb": 10**3, "ki": 2**10, "kib": 2**10,
    "m": 10**6, "mb": 10**6, "mi": 2**20, "mib": 2**20,
    "g": 10**9, "gb": 10**9, "gi": 2**30, "gib": 2**30,
    "t": 10**12, "tb": 10**12, "ti": 2**40, "tib": 2**40,
}
_MAX_SIZE = 2**63 - 1  # int64: what the sizes in a GGUF file and in llama.cpp are
MAX_BPW = 32.0  # F32: nothing a candidate type stores is wider


def parse_size(text: str) -> int:
    """'7.5G' -> 7500000000: a file size as people write it, whole bytes (rounded down). A unit is
    required (B for bytes): a bare number is refused.

    Rounding down keeps the budget a ceiling: "0.3KiB" is 307 bytes, never 308.
    """
    m = _SIZE.match(text) if isinstance(text, str) else None
    unit = m.group("unit").lower() if m else ""
    if m is None or not m.group("num") or m.group("num") == "." or unit not in _UNITS:
        if isinstance(text, str) and text.strip().startswith("-"):
            raise ValueError(f"invalid size {text!r}: a size must be positive")
        if m is not None and m.group("num") and m.group("num") != "." and not unit:
            # "7.5" alone is a unit forgotten far more often than 7 bytes meant
            raise ValueError(f"invalid size {text!r}: give a unit: B (bytes), K, M, G, T or Ki, Mi, Gi, Ti")
        raise ValueError(
            f"invalid size {text!r}: expected a number with a unit B (bytes), "
            "K, M, G, T (1000s) or Ki, Mi, Gi, Ti (1024s), e.g. 7.5G or 4096MiB"
        )
    value = Decimal(m.group("num"))  # digits, a point and an exponent: always finite, exact
    if value > Decimal(_MAX_SIZE):  # before scaling: keeps "1e999999999" from building a huge integer
        raise ValueError(f"invalid size {text!r}: larger than {_MAX_SIZE} bytes")
    n = int(value * _UNITS[unit])  # int() of a non-negative Decimal rounds down
    if n <= 0:
        raise ValueError(f"invalid size {text!r}: a size must be at least 1 byte")
    if n > _MAX_SIZE:
        raise ValueError(f"invalid size {text!r}: larger than {_MAX_SIZE} bytes")
    return n


def parse_bpw(text: str) -> float:
    """'4.5' -> 4.5: bits per weight, positive, finite and at most MAX_BPW (F32's 32 bits)."""
    try:
        value = float(text.strip()) if isinstance(text, str) else float("nan")
    except ValueError:
        raise ValueError(f"invalid bits per weight {text!r}: expected a number such as 4.5") from None
    if not math.isfinite(value) or value <= 0 or value > MAX_BPW:
        raise ValueError(f"invalid bits per weight {text!r}: a number above 0 and at most {MAX_BPW:g}")
    return value


def human_size(n: int) -> str:
    """'7500000000 bytes (7.50 GB, 6.98 GiB)': the exact count and both kinds of unit, for messages."""
    if abs(n) < 1000:
        return f"{n} bytes"
    for si, iec, scale in (("TB", "TiB", 4), ("GB", "GiB", 3), ("MB", "MiB", 2), ("kB", "KiB", 1)):
        if abs(n) >= 1000**scale:
            return f"{n} bytes ({n / 1000**scale:.2f} {si}, {n / 1024**scale:.2f} {iec})"
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# the allocator


@dataclass(frozen=True)
class Candidate:
    """One type a tensor may get: its exact size in bytes and its measured error (>= 0)."""

    qtype: str
    size: int
    error: float


@dataclass(frozen=True)
class TensorCandidates:
    """A tensor and the types it may get, in the caller's order (the order breaks exact ties)."""

    name: str
    candidates: Sequence[Candidate]


@dataclass(frozen=True)
class Allocation:
    """The chosen type per tensor and what the allocator knows about the choice."""

    types: dict[str, str]  # tensor name -> chosen type, in the input's order
    indices: tuple[int, ...]  # the chosen candidate's index in each tensor's list
    total_size: int  # fixed bytes + the chosen candidates' sizes: the predicted file size
    total_error: float  # sum of the chosen candidates' errors
    budget: int
    optimal: bool  # proven optimal (False: the state limits cut the search; best found returned)
    lagrange_multiplier: float  # error saved per byte at the LP optimum (0: everything's best fits)
    lower_bound: float  # no choice within the budget has a smaller total error (the LP bound)
    core_tensors: int = 0  # tensors left to the exact search after reduced-cost fixing
    states: int = 0  # states the exact search generated

    @property
    def gap(self) -> float:
        """How much the result's error may exceed the optimum's (0 when proven optimal)."""
        return 0.0 if self.optimal else max(self.total_error - self.lower_bound, 0.0)


class BudgetError(ValueError):
    """The budget is outside the sizes the candidates can reach; the message is one line."""

    def __init__(self, budget: int, smallest: int, largest: int):
        self.budget, self.smallest, self.largest = budget, smallest, largest
        super().__init__(
            f"target size {human_size(budget)} is outside what the candidate types can reach: "
            f"smallest {human_size(smallest)}, largest {human_size(largest)}"
        )


def size_range(tensors: Sequence[TensorCandidates], fixed_bytes: int = 0) -> tuple[int, int]:
    """(smallest, largest) file size the candidates can reach, fixed bytes included."""
    lo = fixed_bytes + sum(min(c.size for c in t.candidates) for t in tensors)
    hi = fixed_bytes + sum(max(c.size for c in t.candidates) for t in tensors)
    return lo, hi


def _validate(tensors: Sequence[TensorCandidates], budget: int, fixed_bytes: int) -> None:
    for what, value in (("budget", budget), ("fixed_bytes", fixed_bytes)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{what} must be a whole number of bytes >= 0, not {value!r}")
    seen = set()
    for t in tensors:
        if t.name in seen:
            raise ValueError(f"tensor {t.name!r} is listed twice")
        seen.add(t.name)
        if not t.candidates:
            raise ValueError(f"tensor {t.name!r} has no candidate types")
        for c in t.candidates:
            if isinstance(c.size, bool) or not isinstance(c.size, (int, np.integer)) or c.size < 0:
                raise ValueError(f"tensor {t.name!r}, type {c.qtype}: size {c.size!r} is not a byte count >= 0")
            if not (isinstance(c.error, (int, float, np.floating)) and math.isfinite(c.error) and c.error >= 0):
                raise ValueError(f"tensor {t.name!r}, type {c.qtype}: error {c.error!r} is not a finite number >= 0")


def _front(cands: Sequence[Candidate]) -> list[int]:
    """Indices of the undominated candidates, by growing size (and strictly falling error)."""
    order = sorted(range(len(cands)), key=lambda j: (cands[j].size, cands[j].error, j))
    front, best = [], math.inf
    for j in order:
        if cands[j].error < best:
            front.append(j)
            best = cands[j].error
    return front


def _hull(cands: Sequence[Candidate], front: list[int]) -> list[int]:
    """The front's lower convex hull (collinear points kept): error saved per byte never grows."""
    hull: list[int] = []
    for j in front:
        sj, ej = cands[j].size, float(cands[j].error)
        while len(hull) >= 2:
            a, b = cands[hull[-2]], cands[hull[-1]]
            # b is above the chord a-j when a->b saves less per byte than b->j
            if (a.error - b.error) * (sj - b.size) < (b.error - ej) * (b.size - a.size):
                hull.pop()
            else:
                break
        hull.append(j)
    return hull


def allocate(
    tensors: Sequence[TensorCandidates],
    budget: int,
    fixed_bytes: int = 0,
    *,
    max_states: int = 50_000,
    node_limit: int = 5_000_000,
) -> Allocation:
    """One candidate per tensor, minimising the summed error with fixed_bytes + sizes <= budget.

    fixed_bytes: what the choice cannot change (pinned tensors, the GGUF header, alignment
    padding). Raises BudgetError when the budget is outside [smallest, largest] (see size_range).
    max_states / node_limit bound the exact search; past them the result has optimal=False.
    """
    _validate(tensors, budget, fixed_bytes)
    lo, hi = size_range(tensors, fixed_bytes)
    if not lo <= budget <= hi:
        raise BudgetError(budget, lo, hi)
    n = len(tensors)
    cap = budget - fixed_bytes
    cands = [list(t.candidates) for t in tensors]
    fronts = [_front(c) for c in cands]
    hulls = [_hull(c, f) for c, f in zip(cands, fronts, strict=True)]

    # LP relaxation over the hulls: every tensor at its smallest candidate, then the steps by rate
    pos = [0] * n  # hull position of each tensor's current choice
    used = sum(cands[i][h[0]].size for i, h in enumerate(hulls))
    steps = []
    for i, h in enumerate(hulls):
        for k in range(1, len(h)):
            a, b = cands[i][h[k - 1]], cands[i][h[k]]
            steps.append(((a.error - b.error) / (b.size - a.size), i, k))
    steps.sort(key=lambda s: (-s[0], s[1], s[2]))
    lam = 0.0
    break_at = None
    for at, (_rate, i, k) in enumerate(steps):
        grow = cands[i][hulls[i][k]].size - cands[i][hulls[i][k - 1]].size
        if used + grow > cap:
            break_at = at
            break
        used += grow
        pos[i] = k
    if break_at is not None:
        lam = steps[break_at][0]
        blocked = {steps[break_at][1]}
        for _rate, i, k in steps[break_at + 1:]:  # greedy fill: later steps that still fit
            if i in blocked or pos[i] != k - 1:
                blocked.add(i)
                continue
            grow = cands[i][hulls[i][k]].size - cands[i][hulls[i][k - 1]].size
            if used + grow <= cap:
                used += grow
                pos[i] = k
            else:
                blocked.add(i)
    ref = [hulls[i][pos[i]] for i in range(n)]
    slack = cap - used
    e_ref = math.fsum(cands[i][ref[i]].error for i in range(n))

    # Lagrangian reduced costs over each front, relative to the reference
    deltas = []  # per tensor: [(cand index, d_size, d_error, d)]
    m_sum = 0.0
    for i in range(n):
        r = cands[i][ref[i]]
        rows = []
        for j in fronts[i]:
            c = cands[i][j]
            ds, de = c.size - r.size, c.error - r.error
            rows.append((j, ds, de, de + lam * ds))
        m = min(row[3] for row in rows)
        m_sum += m
        deltas.append((rows, m))
    lower = e_ref + m_sum - lam * slack
    best_de = 0.0  # incumbent's error - e_ref
    gap = e_ref - lower  # only candidates whose reduced cost is below it can improve on the reference
    chosen = list(ref)
    optimal = True
    states_total = 0
    core: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, float]] = []
    if gap > 0:
        for i in range(n):
            rows, m = deltas[i]
            keep = [row for row in rows if row[3] - m < gap or row[0] == ref[i]]
            if len(keep) > 1:
                core.append((
                    i,
                    np.array([row[0] for row in keep], dtype=np.int64),
                    np.array([row[1] for row in keep], dtype=np.int64),
                    np.array([row[2] for row in keep], dtype=np.float64),
                    m,
                ))
    if core:
        # the tensors whose cheapest departure from their Lagrangian best costs most go first: their
        # departures cut the most states early (measured: 2-10x fewer states than the input order)
        core.sort(key=lambda c: (-float(np.sort(c[3] + lam * c[2] - c[4])[1]), c[0]))
        rest_m = np.cumsum([c[4] for c in core][::-1])[::-1].tolist() + [0.0]
        rest_min_ds = np.cumsum([int(c[2].min()) for c in core][::-1])[::-1].tolist() + [0]
        st_ds = np.zeros(1, dtype=np.int64)
        st_de = np.zeros(1, dtype=np.float64)
        trail: list[tuple[np.ndarray, np.ndarray]] = []  # per stage: (parent state, candidate index)
        best_at: tuple[int, int] | None = None  # (stage, state) of the incumbent; None: the reference
        for stage, (_i, idx, d_s, d_e, _m) in enumerate(core):
            ds = (st_ds[:, None] + d_s[None, :]).ravel()
            de = (st_de[:, None] + d_e[None, :]).ravel()
            parent = np.repeat(np.arange(len(st_ds)), len(d_s))
            choice = np.tile(idx, len(st_ds))
            states_total += len(ds)
            bound = de + rest_m[stage + 1] + lam * (ds - slack)
            alive = (bound < best_de) & (ds + rest_min_ds[stage + 1] <= slack)
            ds, de, bound, parent, choice = ds[alive], de[alive], bound[alive], parent[alive], choice[alive]
            if len(ds):
                order = np.lexsort((de, ds))  # by bytes, then error; stable
                ds, de, bound, parent, choice = ds[order], de[order], bound[order], parent[order], choice[order]
                prev_min = np.minimum.accumulate(np.concatenate(([np.inf], de[:-1])))
                pareto = de < prev_min
                ds, de, bound, parent, choice = ds[pareto], de[pareto], bound[pareto], parent[pareto], choice[pareto]
            limit = max_states if states_total <= node_limit else 256
            if len(ds) > limit:
                optimal = False
                cut = np.sort(np.argsort(bound, kind="stable")[:limit])
                ds, de, parent, choice = ds[cut], de[cut], parent[cut], choice[cut]
            trail.append((parent, choice))
            fits = np.nonzero(ds <= slack)[0]
            if len(fits):
                k = int(fits[np.argmin(de[fits])])
                if de[k] < best_de:
                    best_de, best_at = float(de[k]), (stage, k)
            st_ds, st_de = ds, de
            if not len(ds):
                break
        if best_at is not None:
            stage, k = best_at
            for s in range(stage, -1, -1):
                parent, choice = trail[s]
                chosen[core[s][0]] = int(choice[k])
                k = int(parent[k])
    total_size = fixed_bytes + sum(cands[i][chosen[i]].size for i in range(n))
    total_error = math.fsum(cands[i][chosen[i]].error for i in range(n))
    return Allocation(
        types={t.name: cands[i][chosen[i]].qtype for i, t in enumerate(tensors)},
        indices=tuple(chosen),
        total_size=total_size,
        total_error=total_error,
        budget=budget,
        optimal=optimal,
        lagrange_multiplier=lam,
        lower_bound=min(lower, total_error),
        core_tensors=len(core),
        states=states_total,
    )


# ---------------------------------------------------------------------------------------------
# the measurement cache

CACHE_FORMAT = 2  # bump when what a measurement means changes: old files then miss
_SAMPLE_HEAD = 1 << 20
_SAMPLE_BLOCK = 1 << 16
_SAMPLE_COUNT = 32


def file_fingerprint(paths: str | os.PathLike | Sequence[str | os.PathLike] | None) -> str | None:
    """A path-independent fingerprint of a file (or of a split model's files, in order): size,
    mtime_ns and a SHA-256 of sampled bytes (see the module docstring). None gives None."""
    if paths is None:
        return None
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
        with open(p, "rb") as f:
            h.update(f.read(_SAMPLE_HEAD))
            if st.st_size > _SAMPLE_HEAD:
                span = st.st_size - _SAMPLE_BLOCK
                for k in range(_SAMPLE_COUNT + 1):  # k = _SAMPLE_COUNT: the last block
                    f.seek(span * k // _SAMPLE_COUNT)
                    h.update(f.read(_SAMPLE_BLOCK))
    return h.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """What a measurement depends on; any change is a miss."""

    input: str  # file_fingerprint of the model
    imatrix: str | None  # file_fingerprint of the importance matrix, None without one
    candidates: tuple[str, ...]  # the candidate types, in order
    sampling: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"rows": 256, "seed": 0}: JSON values
    version: int = CACHE_FORMAT

    def __post_init__(self) -> None:
        try:
            json.dumps(dict(self.sampling), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"cache key sampling parameters must be plain JSON values: {e}") from None

    def as_json(self) -> dict[str, Any]:
        """The key as it reads back from JSON (tuples as lists), so stored and asked keys compare equal."""
        return json.loads(json.dumps({
            "input": self.input, "imatrix": self.imatrix, "candidates": list(self.candidates),
            "sampling": dict(self.sampling), "version": self.version,
        }))

    def digest(self) -> str:
        text = json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


# tensor name -> type -> {"bytes": int, "errors": {name: float}}
Measurements = dict[str, dict[str, dict[str, Any]]]


def default_cache_directory() -> Path:
    """gpuquant's cache folder ($GPUQUANT_CACHE_DIR or a per-user temporary one), measurements/ in it."""
    from .hostkernels import cache_dir

    return cache_dir() / "measurements"


class MeasurementCache:
    """Per-tensor candidate measurements, one JSON file per key; a broken file is a miss, never a crash."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory) if directory is not None else default_cache_directory()

    def path(self, key: CacheKey) -> Path:
        return self.directory / f"measure-{key.digest()[:40]}.json"

    def load(self, key: CacheKey) -> Measurements | None:
        """The measurements stored under key, or None (missing, unreadable, corrupt or another key's)."""
        try:
            doc = json.loads(self.path(key).read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("key") != key.as_json():
            return None
        data = doc.get("tensors")
        return data if _valid_measurements(data) else None

    def store(self, key: CacheKey, data: Measurements) -> bool:
        """Write atomically (temporary file, then os.replace); False when the folder is not writable.

        A cache that cannot be written costs the next run a measurement, so it is not an error.
        """
        if not _valid_measurements(data):
            raise ValueError("measurements must be {tensor: {type: {'bytes': int, 'errors': {name: float}}}}")
        text = json.dumps({"key": key.as_json(), "tensors": data}, sort_keys=True)
        tmp = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".measure-", suffix=".tmp", dir=self.directory)
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(key))
            return True
        except OSError:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            return False


def _valid_measurements(data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    for types in data.values():
        if not isinstance(types, dict):
            return False
        for m in types.values():
            if not isinstance(m, dict) or set(m) != {"bytes", "errors"}:
                return False
            if isinstance(m["bytes"], bool) or not isinstance(m["bytes"], int) or m["bytes"] < 0:
                return False
            errors = m["errors"]
            if not isinstance(errors, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in errors.values()
            ):
                return False
    return True


# ---------------------------------------------------------------------------------------------
# recipe patterns (size_search.write_recipe writes the file)

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def tensor_pattern(name: str) -> str:
    """^NAME$ as a regex that names exactly this tensor after llama-quantize reads it.

    llama-quantize lowercases the pattern and splits the file at whitespace and the word at its
    first '=', so '.' becomes '\\.', and upper-case letters, blanks, '=' and every other ASCII
    character outside [a-z0-9_-] become \\xHH (lower-case hex), which std::regex (ECMAScript) and
    Python's re read alike.
    """
    out = ["^"]
    for ch in name:
        if ch in _PLAIN:
            out.append(ch)
        elif ch == ".":
            out.append("\\.")
        elif ord(ch) < 128:
            out.append(f"\\x{ord(ch):02x}")
        elif ch.lower() == ch and not ch.isspace():
            out.append(ch)  # non-ASCII that lowercasing keeps: matched as itself
        else:
            raise ValueError(f"tensor name {name!r}: {ch!r} cannot be written in a --tensor-type-file pattern")
    out.append("$")
    return "".join(out)
