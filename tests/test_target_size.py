"""gpuquant.target_size: size/bpw parsing, the allocator against brute force, the cache, the recipe."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re

import pytest

from gpuquant import target_size as ts
from gpuquant.llama_cli import read_tensor_type_file
from gpuquant.target_size import (
    Allocation,
    BudgetError,
    CacheKey,
    Candidate,
    MeasurementCache,
    TensorCandidates,
    allocate,
    parse_bpw,
    parse_size,
    size_range,
)

# ------------------------------------------------------------------------------------ sizes


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1B", 1),
        ("4096b", 4096),
        ("512B", 512),
        ("4G", 4_000_000_000),
        ("4g", 4_000_000_000),
        ("7.5G", 7_500_000_000),
        ("3.2GB", 3_200_000_000),
        ("512MiB", 512 * 2**20),
        ("512mib", 512 * 2**20),
        ("2Gi", 2 * 2**30),
        ("1.5GiB", 3 * 2**29),
        ("10K", 10_000),
        ("10kB", 10_000),
        ("10KiB", 10_240),
        ("1T", 10**12),
        ("1TiB", 2**40),
        (" 8 GB ", 8 * 10**9),
        ("0.3KiB", 307),  # 307.2 rounded down: a budget stays a ceiling
        ("1e3B", 1000),
        (".5K", 500),
        ("3.B", 3),
    ],
)
def test_parse_size_good(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text, words",
    [
        ("-1G", "positive"),
        ("-5", "positive"),
        ("0", "give a unit"),
        ("4096", "give a unit"),
        ("7.5", "give a unit"),
        ("0G", "at least 1 byte"),
        ("0.0001B", "at least 1 byte"),
        ("", "expected a number"),
        ("G", "expected a number"),
        ("GiB", "expected a number"),
        (".", "expected a number"),
        ("4X", "expected a number"),
        ("4 PB", "expected a number"),
        ("4iB", "expected a number"),
        ("nan", "expected a number"),
        ("inf", "expected a number"),
        ("4G5", "expected a number"),
        ("1e30B", "larger than"),
        ("9999999T", "larger than"),
    ],
)
def test_parse_size_bad(text, words):
    with pytest.raises(ValueError) as e:
        parse_size(text)
    message = str(e.value)
    assert words in message
    assert repr(text) in message
    assert "\n" not in message


@pytest.mark.parametrize("text, expected", [("4.5", 4.5), ("2", 2.0), (" 8.5 ", 8.5), ("32", 32.0), ("0.01", 0.01)])
def test_parse_bpw_good(text, expected):
    assert parse_bpw(text) == expected


@pytest.mark.parametrize("text", ["0", "-1", "32.5", "100", "nan", "inf", "-inf", "", "four", "4.5G"])
def test_parse_bpw_bad(text):
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_bpw(text)


def test_human_size():
    assert ts.human_size(999) == "999 bytes"
    assert ts.human_size(7_500_000_000) == "7500000000 bytes (7.50 GB, 6.98 GiB)"
    assert ts.human_size(2**20) == "1048576 bytes (1.05 MB, 1.00 MiB)"


# ------------------------------------------------------------------------------------ allocator


def _brute(tensors, budget, fixed):
    """(best error, sizes of all optimal solutions) by enumeration."""
    best, sols = None, []
    for combo in itertools.product(*[range(len(t.candidates)) for t in tensors]):
        size = fixed + sum(t.candidates[j].size for t, j in zip(tensors, combo, strict=True))
        if size > budget:
            continue
        err = math.fsum(t.candidates[j].error for t, j in zip(tensors, combo, strict=True))
        if best is None or err < best - 1e-12:
            best, sols = err, [combo]
        elif abs(err - best) <= 1e-12:
            sols.append(combo)
    return best, sols


def _random_instance(rng: random.Random, n_max=6, k_max=5, size_max=20):
    tensors = []
    for i in range(rng.randint(1, n_max)):
        cands = []
        for j in range(rng.randint(1, k_max)):
            size = rng.choice([rng.randint(0, size_max), rng.randint(0, 4)])  # small ranges: equal sizes
            error = rng.choice([0.0, float(rng.randint(0, 6)), rng.random() * 10])  # ties and zeros
            cands.append(Candidate(f"T{j}", size, error))
        if rng.random() < 0.3:  # an exact duplicate and a dominated candidate
            c = rng.choice(cands)
            cands.append(Candidate("DUP", c.size, c.error))
            cands.append(Candidate("DOM", c.size + 1, c.error + 1))
        tensors.append(TensorCandidates(f"t{i}", cands))
    return tensors


def _check(a: Allocation, tensors, budget, fixed):
    """The allocation's own numbers are those of the candidates it names, and it fits."""
    chosen = [t.candidates[j] for t, j in zip(tensors, a.indices, strict=True)]
    assert a.types == {t.name: c.qtype for t, c in zip(tensors, chosen, strict=True)}
    assert a.total_size == fixed + sum(c.size for c in chosen)
    assert a.total_error == pytest.approx(math.fsum(c.error for c in chosen), rel=1e-12, abs=1e-12)
    assert a.total_size <= budget
    assert a.lower_bound <= a.total_error + 1e-9


def test_allocator_matches_brute_force():
    rng = random.Random(19)
    dp_used = 0
    for _ in range(1500):
        tensors = _random_instance(rng)
        fixed = rng.randint(0, 5)
        lo, hi = size_range(tensors, fixed)
        budget = rng.randint(lo, hi)
        a = allocate(tensors, budget, fixed)
        best, sols = _brute(tensors, budget, fixed)
        _check(a, tensors, budget, fixed)
        assert a.optimal
        assert a.total_error == pytest.approx(best, rel=1e-9, abs=1e-9)
        assert a.lower_bound <= best + 1e-9
        dp_used += a.core_tensors > 0
    assert dp_used > 100  # the exact search, not only the LP rounding, was exercised


def test_allocator_matches_brute_force_large_sizes():
    """Sizes like real tensors' (1e6..1e11 bytes), where the float arithmetic is stressed."""
    rng = random.Random(7)
    for _ in range(300):
        tensors = []
        for i in range(rng.randint(2, 7)):
            base = rng.randint(10**6, 10**11)
            cands = [
                Candidate(f"Q{b}", base * b // 8, base * rng.uniform(0.5, 2) * 2.0 ** (-2 * b))
                for b in rng.sample(range(2, 9), rng.randint(2, 4))
            ]
            tensors.append(TensorCandidates(f"blk.{i}.w", cands))
        lo, hi = size_range(tensors, 123_456)
        budget = rng.randint(lo, hi)
        a = allocate(tensors, budget, 123_456)
        best, _ = _brute(tensors, budget, 123_456)
        _check(a, tensors, budget, 123_456)
        assert a.optimal
        assert a.total_error == pytest.approx(best, rel=1e-9)


def test_allocator_is_deterministic_and_breaks_ties_by_order():
    # two candidates alike in size and error: the first listed wins
    tensors = [TensorCandidates("a", [Candidate("X", 4, 1.0), Candidate("Y", 4, 1.0)])]
    assert allocate(tensors, 4).types == {"a": "X"}
    tensors = [TensorCandidates("a", [Candidate("Y", 4, 1.0), Candidate("X", 4, 1.0)])]
    assert allocate(tensors, 4).types == {"a": "Y"}
    # equal error, different size: the smaller one
    tensors = [TensorCandidates("a", [Candidate("BIG", 8, 1.0), Candidate("SMALL", 4, 1.0)])]
    assert allocate(tensors, 8).types == {"a": "SMALL"}
    rng = random.Random(3)
    for _ in range(50):
        tensors = _random_instance(rng)
        lo, hi = size_range(tensors)
        budget = (lo + hi) // 2
        assert allocate(tensors, budget) == allocate(tensors, budget)


def test_allocator_budget_edges():
    tensors = [
        TensorCandidates("a", [Candidate("Q4", 10, 5.0), Candidate("Q8", 20, 1.0), Candidate("F16", 40, 0.0)]),
        TensorCandidates("b", [Candidate("Q4", 30, 9.0), Candidate("Q8", 60, 2.0)]),
    ]
    fixed = 100
    assert size_range(tensors, fixed) == (140, 200)
    # exactly the minimum: every tensor's smallest
    a = allocate(tensors, 140, fixed)
    assert a.types == {"a": "Q4", "b": "Q4"} and a.total_size == 140 and a.total_error == 14.0 and a.optimal
    # exactly the maximum: every tensor's best
    a = allocate(tensors, 200, fixed)
    assert a.types == {"a": "F16", "b": "Q8"} and a.total_size == 200 and a.total_error == 2.0
    assert a.lagrange_multiplier == 0.0 and a.lower_bound == 2.0
    # in between: 170 allows b's upgrade (saves 7 for 30 bytes) but then a stays at Q4
    a = allocate(tensors, 170, fixed)
    assert a.types == {"a": "Q4", "b": "Q8"} and a.total_size == 170 and a.total_error == 7.0
    # 169: neither b's upgrade (30 bytes) nor a's F16 (30 bytes) fits beside the other's minimum: a's Q8
    a = allocate(tensors, 169, fixed)
    assert a.types == {"a": "Q8", "b": "Q4"} and a.total_error == 10.0 and a.total_size == 150
    # one byte below the minimum, one above the maximum: one-line errors naming both ends
    for budget in (139, 201):
        with pytest.raises(BudgetError) as e:
            allocate(tensors, budget, fixed)
        message = str(e.value)
        assert "\n" not in message
        assert "smallest 140 bytes" in message and "largest 200 bytes" in message
        assert f"target size {budget} bytes" in message
        assert (e.value.smallest, e.value.largest) == (140, 200)
    # the fixed bytes count: the same budget without them reaches further
    assert allocate(tensors, 100, 0).types == {"a": "F16", "b": "Q8"}


def test_allocator_budget_error_human_units():
    tensors = [TensorCandidates("w", [Candidate("Q4", 4 * 10**9, 1.0), Candidate("Q8", 8 * 10**9, 0.5)])]
    with pytest.raises(BudgetError, match=r"smallest 4000000000 bytes \(4\.00 GB, 3\.73 GiB\), "
                                          r"largest 8000000000 bytes \(8\.00 GB, 7\.45 GiB\)"):
        allocate(tensors, parse_size("3G"))


def test_allocator_rejects_bad_input():
    good = TensorCandidates("a", [Candidate("Q4", 1, 1.0)])
    with pytest.raises(ValueError, match="no candidate"):
        allocate([TensorCandidates("a", [])], 10)
    with pytest.raises(ValueError, match="listed twice"):
        allocate([good, good], 10)
    with pytest.raises(ValueError, match="error nan"):
        allocate([TensorCandidates("a", [Candidate("Q4", 1, float("nan"))])], 10)
    with pytest.raises(ValueError, match="error -1"):
        allocate([TensorCandidates("a", [Candidate("Q4", 1, -1.0)])], 10)
    with pytest.raises(ValueError, match="size -1"):
        allocate([TensorCandidates("a", [Candidate("Q4", -1, 1.0)])], 10)
    with pytest.raises(ValueError, match="fixed_bytes"):
        allocate([good], 10, -1)


def test_allocator_zero_errors_and_single_candidates():
    tensors = [
        TensorCandidates("only", [Candidate("F32", 100, 0.0)]),
        TensorCandidates("z", [Candidate("Q4", 10, 0.0), Candidate("Q8", 20, 0.0)]),
        TensorCandidates("w", [Candidate("Q4", 10, 3.0), Candidate("Q8", 20, 0.0)]),
    ]
    a = allocate(tensors, 130)  # z's Q8 saves nothing: w gets the bytes
    assert a.types == {"only": "F32", "z": "Q4", "w": "Q8"} and a.total_error == 0.0 and a.total_size == 130


def _hard_instance(n=40, seed=5):
    """Many near-identical tensors: lots of near-ties at the multiplier, a real search."""
    rng = random.Random(seed)
    tensors = []
    for i in range(n):
        cands = [Candidate(f"Q{b}", 1000 * b + rng.randint(0, 9), 2.0 ** (-b) * rng.uniform(0.99, 1.01))
                 for b in range(2, 9)]
        tensors.append(TensorCandidates(f"t{i}", cands))
    return tensors


def test_allocator_fallback_when_the_search_is_cut():
    tensors = _hard_instance()
    lo, hi = size_range(tensors)
    budget = lo + (hi - lo) * 37 // 100
    exact = allocate(tensors, budget)
    assert exact.optimal and exact.core_tensors > 5
    cut = allocate(tensors, budget, max_states=2, node_limit=10)
    assert not cut.optimal
    _check(cut, tensors, budget, 0)
    assert cut.total_error >= exact.total_error - 1e-12
    assert cut.gap == pytest.approx(cut.total_error - cut.lower_bound)
    assert cut.lower_bound == pytest.approx(exact.lower_bound)
    assert exact.gap == 0.0


def test_allocator_hard_instance_against_exhaustive_search_of_a_subset():
    """On the near-tie instance, fixing all but 6 tensors at the result and searching those 6
    exhaustively finds nothing better (a brute-force check of a 40-tensor result)."""
    tensors = _hard_instance()
    lo, hi = size_range(tensors)
    for frac in (10, 37, 81):
        budget = lo + (hi - lo) * frac // 100
        a = allocate(tensors, budget)
        assert a.optimal
        for start in (0, 17, 34):
            free = range(start, start + 6)
            others = [(t, j) for k, (t, j) in enumerate(zip(tensors, a.indices, strict=True)) if k not in free]
            fixed = sum(t.candidates[j].size for t, j in others)
            fixed_err = math.fsum(t.candidates[j].error for t, j in others)
            best, _ = _brute([tensors[k] for k in free], budget, fixed)
            assert fixed_err + best >= a.total_error - 1e-12


def test_allocator_lower_bound_is_the_lp_optimum():
    # one tensor, hull (0, 10) -> (10, 0): budget 5 is half way; LP bound 5, integral best 10
    tensors = [TensorCandidates("a", [Candidate("S", 0, 10.0), Candidate("L", 10, 0.0)])]
    a = allocate(tensors, 5)
    assert a.types == {"a": "S"} and a.total_error == 10.0 and a.optimal
    assert a.lagrange_multiplier == 1.0
    assert a.lower_bound == pytest.approx(5.0)


def test_allocator_speed_on_a_model_sized_instance():
    """2000 tensors x 12 candidates, like a large model; generous limit (shared 2-core machine)."""
    import time

    rng = random.Random(0)
    bpws = [1.5625, 2.0625, 2.3125, 2.5625, 2.625, 3.0625, 3.4375, 4.25, 4.5, 5.5, 6.5625, 8.5]
    tensors = []
    for i in range(2000):
        rows, cols = rng.choice([(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)])
        importance = rng.lognormvariate(0, 1)
        cands = [Candidate(f"Q{q}", rows * int(cols * b / 8), rows * cols * importance * 2 ** (-2 * b)
                           * rng.uniform(0.8, 1.2)) for q, b in enumerate(bpws)]
        tensors.append(TensorCandidates(f"blk.{i}.w", cands))
    lo, hi = size_range(tensors, 10**7)
    budget = (lo + hi) // 2
    t0 = time.perf_counter()
    a = allocate(tensors, budget, 10**7)
    elapsed = time.perf_counter() - t0
    assert a.optimal and a.total_size <= budget
    assert a.total_error >= a.lower_bound
    assert elapsed < 5.0


# ------------------------------------------------------------------------------------ cache


def _key(**changes):
    fields = dict(input="in-fp", imatrix="im-fp", candidates=("Q4_K", "Q6_K"), sampling={"rows": 64, "seed": 0})
    fields.update(changes)
    return CacheKey(**fields)


_DATA = {
    "blk.0.attn_q.weight": {
        "Q4_K": {"bytes": 9437184, "errors": {"sq": 1.25, "weighted_sq": 0.5}},
        "Q6_K": {"bytes": 13762560, "errors": {"sq": 0.0625, "weighted_sq": 0.03125}},
    },
}


def test_cache_hit_and_miss(tmp_path):
    cache = MeasurementCache(tmp_path / "c")
    assert cache.load(_key()) is None  # no folder yet
    assert cache.store(_key(), _DATA)
    assert cache.load(_key()) == _DATA
    assert MeasurementCache(tmp_path / "c").load(_key()) == _DATA  # another instance, same folder
    assert [p.name for p in (tmp_path / "c").iterdir()] == [cache.path(_key()).name]  # no temporary left


@pytest.mark.parametrize(
    "change",
    [
        {"input": "other"},
        {"imatrix": None},
        {"imatrix": "other"},
        {"candidates": ("Q6_K", "Q4_K")},
        {"candidates": ("Q4_K",)},
        {"sampling": {"rows": 128, "seed": 0}},
        {"sampling": {"rows": 64}},
        {"version": ts.CACHE_FORMAT + 1},
    ],
)
def test_cache_invalidation(tmp_path, change):
    cache = MeasurementCache(tmp_path)
    cache.store(_key(), _DATA)
    assert cache.load(_key(**change)) is None
    assert cache.load(_key()) == _DATA


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{",
        '{"key": 1}',
        "\xff\xfe",
        json.dumps({"key": _key().as_json(), "tensors": {"t": {"Q4_K": {"bytes": "9", "errors": {}}}}}),
        json.dumps({"key": _key().as_json(), "tensors": {"t": {"Q4_K": {"bytes": 9}}}}),
        json.dumps({"key": _key().as_json(), "tensors": []}),
    ],
)
def test_cache_corrupt_file_is_a_miss(tmp_path, content):
    cache = MeasurementCache(tmp_path)
    cache.store(_key(), _DATA)
    path = cache.path(_key())
    path.write_text(content, encoding="latin-1")
    assert cache.load(_key()) is None
    cache.store(_key(), _DATA)  # and a store repairs it
    assert cache.load(_key()) == _DATA


def test_cache_truncated_file_is_a_miss(tmp_path):
    cache = MeasurementCache(tmp_path)
    cache.store(_key(), _DATA)
    path = cache.path(_key())
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    assert cache.load(_key()) is None


def test_cache_key_collision_guard(tmp_path):
    """A file stored under another key at this key's name (a hash collision, a copied file) misses."""
    cache = MeasurementCache(tmp_path)
    cache.store(_key(input="A"), _DATA)
    os.replace(cache.path(_key(input="A")), cache.path(_key(input="B")))
    assert cache.load(_key(input="B")) is None


def test_cache_unwritable_folder_is_not_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = MeasurementCache(blocker / "sub")  # a folder under a file cannot exist
    assert cache.store(_key(), _DATA) is False
    assert cache.load(_key()) is None


def test_cache_refuses_malformed_data(tmp_path):
    with pytest.raises(ValueError):
        MeasurementCache(tmp_path).store(_key(), {"t": {"Q4_K": {"bytes": 1.5, "errors": {}}}})


def test_cache_default_folder_follows_gpuquant_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUQUANT_CACHE_DIR", str(tmp_path))
    assert MeasurementCache().directory == tmp_path / "measurements"


def test_file_fingerprint(tmp_path):
    big = tmp_path / "model.gguf"
    big.write_bytes(bytes(range(256)) * 20000)  # 5 MB: head, samples and tail
    fp = ts.file_fingerprint(big)
    assert fp == ts.file_fingerprint(str(big))
    moved = tmp_path / "renamed.gguf"
    os.replace(big, moved)  # keeps mtime: the same file
    assert ts.file_fingerprint(moved) == fp
    st = moved.stat()
    data = bytearray(moved.read_bytes())
    data[-1] ^= 1  # the last byte, same size, same mtime
    moved.write_bytes(bytes(data))
    os.utime(moved, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ts.file_fingerprint(moved) != fp
    os.utime(moved, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # touched
    fp2 = ts.file_fingerprint(moved)
    assert fp2 != fp
    assert ts.file_fingerprint([moved, moved]) != fp2  # split models: every file counts
    assert ts.file_fingerprint(None) is None
    small = tmp_path / "imatrix.dat"
    small.write_bytes(b"abc")
    assert len(ts.file_fingerprint(small)) == 64


# ------------------------------------------------------------------------------------ recipe patterns


@pytest.mark.parametrize(
    "name",
    ["blk.0.attn_q.weight", "Blk.0.ATTN.weight", "a b=c#d.weight", "x(1)+[2]*?^$|{3}\\y/z", "enc.blk-1.w", "ßé.weight"],
)
def test_tensor_pattern_names_exactly_one_tensor(tmp_path, name):
    pattern = ts.tensor_pattern(name)
    (tmp_path / "r.txt").write_text(f"{pattern}=Q8_0\n", encoding="utf-8")
    [(read, qtype)] = read_tensor_type_file(str(tmp_path / "r.txt"))  # lowercased, split as llama.cpp does
    assert qtype.name == "Q8_0"
    assert re.search(read, name)
    for other in (name + "x", "x" + name, name.swapcase(), name[:-1]):
        if other != name:
            assert not re.search(read, other)


def test_tensor_pattern_refuses_what_lowercasing_would_break():
    with pytest.raises(ValueError, match="cannot be written"):
        ts.tensor_pattern("ÄBC.weight")


def test_cache_key_with_tuples_in_sampling_hits(tmp_path):
    key = _key(sampling={"rows": (0, 64, 128), "imatrix_weighted": True})
    cache = MeasurementCache(tmp_path)
    cache.store(key, _DATA)
    assert cache.load(key) == _DATA
    with pytest.raises(ValueError, match="plain JSON"):
        _key(sampling={"rows": object()})
    with pytest.raises(ValueError, match="plain JSON"):
        _key(sampling={"scale": float("nan")})


def test_allocator_no_tensors():
    a = allocate([], 64, 64)
    assert a.types == {} and a.total_size == 64 and a.total_error == 0.0 and a.optimal
    with pytest.raises(BudgetError):
        allocate([], 65, 64)
