"""Error figures, --report JSON/HTML and the summary's error line, checked against an independent
computation: the files read back with gguf's reader, dequantized with gguf's own dequantizers, and
the figures computed in float64 here."""

from __future__ import annotations

import json
import re
import sys
import zlib

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

import gpuquant
from gpuquant.backends import BackendBase
from gpuquant.backends.numpy_backend import NumpyBackend
from gpuquant.cli import main
from gpuquant.quant_error import chunk_sums, sample_rows
from gpuquant.synthetic_llama import write_llama_model, write_synthetic_imatrix


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    src = write_llama_model("llama-gqa", d / "f32.gguf")
    return {"dir": d, "src": src, "imatrix": write_synthetic_imatrix(src, d / "imatrix.gguf")}


def _float_rows(t) -> np.ndarray:
    """A tensor of gguf's reader as float32 [rows, n_per_row], dequantized by gguf itself."""
    n_per_row = int(t.shape[0])
    if t.tensor_type == gguf.GGMLQuantizationType.F32:
        return np.asarray(t.data, dtype=np.float32).reshape(-1, n_per_row)
    if t.tensor_type == gguf.GGMLQuantizationType.F16:
        return np.asarray(t.data).astype(np.float32).reshape(-1, n_per_row)
    return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32).reshape(-1, n_per_row)


def _expected(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> dict:
    """The figures, in float64, from their definitions."""
    x64, d = x.astype(np.float64), x.astype(np.float64) - y.astype(np.float64)
    with np.errstate(divide="ignore"):  # an exact round trip has no SNR
        out = {"rel_rmse": np.sqrt((d * d).sum() / (x64 * x64).sum()), "max_abs": np.abs(d).max(),
               "snr_db": 10 * np.log10((x64 * x64).sum() / (d * d).sum())}
    if w is not None:
        w64 = w.astype(np.float64)
        out["weighted_rel_error"] = np.sqrt(((d * d) * w64).sum() / ((x64 * x64) * w64).sum())
    return out


def _imatrix_weights(path) -> dict[str, np.ndarray]:
    r = gguf.GGUFReader(path)
    by = {t.name: np.asarray(t.data, dtype=np.float64) for t in r.tensors}
    return {n[: -len(".in_sum2")]: (by[n].reshape(-1) / by[n[: -len(".in_sum2")] + ".counts"].reshape(-1)[0])
            for n in by if n.endswith(".in_sum2")}


def _run(args) -> CliRunner:
    r = CliRunner().invoke(main, ["quantize", *map(str, args)])
    assert r.exit_code == 0, r.output
    return r


def _check_against_files(report: dict, src, out, weights=None, sample=None) -> int:
    """Every tensor's figures in the report against the two files; returns how many were converted."""
    a = {t.name: t for t in gguf.GGUFReader(src).tensors}
    b = {t.name: t for t in gguf.GGUFReader(out).tensors}
    converted = 0
    for t in report["tensors"]:
        e = t["error"]
        assert e is not None and e["rows_total"] == int(np.prod(t["shape"])) // t["shape"][0]
        if not t["converted"]:
            assert e["exact"] and e["rel_rmse"] == 0.0 and e["snr_db"] is None
            continue
        converted += 1
        x, y = _float_rows(a[t["name"]]), _float_rows(b[t["name"]])
        rows = sample_rows(t["name"], x.shape[0], sample)
        if sample is not None and sample < x.shape[0]:
            # the documented recipe, computed here again
            expect_rows = np.sort(np.random.default_rng(zlib.crc32(t["name"].encode())).choice(
                x.shape[0], size=sample, replace=False))
            assert np.array_equal(rows, expect_rows) and e["rows_measured"] == sample
            x, y = x[rows], y[rows]
        else:
            assert e["rows_measured"] == x.shape[0]
        w = weights.get(t["name"]) if weights else None
        want = _expected(x, y, w)
        for key, value in want.items():
            assert e[key] == pytest.approx(value, rel=1e-6, abs=0), (t["name"], key)
        if w is None:
            assert e["weighted_rel_error"] is None
    return converted


@pytest.mark.parametrize("backend", ["numpy", "native"])
@pytest.mark.parametrize("mix", ["Q4_K_M", "Q8_0", "IQ4_NL"])
def test_report_json_figures_match_an_independent_computation(model, tmp_path, backend, mix):
    out, rep = tmp_path / "out.gguf", tmp_path / "r.json"
    _run([model["src"], out, mix, 2, "--backend", backend, "--report", rep, "-q"])
    report = json.loads(rep.read_text())
    assert report["backend"] == backend and report["error_measured"] and report["error_rows"] == "every row"
    assert _check_against_files(report, model["src"], out) > 10
    names = [t.name for t in gguf.GGUFReader(out).tensors]
    assert [t["name"] for t in report["tensors"]] == names
    for t in report["tensors"]:
        assert t["bits_per_weight"] == pytest.approx(t["bytes_out"] * 8 / t["n_elements"])
        assert t["layer"] == (int(t["name"].split(".")[1]) if t["name"].startswith("blk.") else None)
        assert t["reason"]
    totals = report["totals"]
    conv = [t for t in report["tensors"] if t["converted"]]
    mean = sum(t["error"]["rel_rmse"] * t["n_elements"] for t in conv) / sum(t["n_elements"] for t in conv)
    assert totals["rel_rmse"] == pytest.approx(mean, rel=1e-12)
    assert totals["bytes_out"] == sum(int(t.n_bytes) for t in gguf.GGUFReader(out).tensors)


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_importance_weighted_error(model, tmp_path, backend):
    out, rep = tmp_path / "out.gguf", tmp_path / "r.json"
    _run([model["src"], out, "IQ3_XXS", 2, "--backend", backend, "--imatrix", model["imatrix"],
          "--report", rep, "-q"])
    report = json.loads(rep.read_text())
    weights = _imatrix_weights(model["imatrix"])
    assert _check_against_files(report, model["src"], out, weights) > 10
    weighted = [t for t in report["tensors"] if t["error"]["weighted_rel_error"] is not None]
    assert weighted and all(t["imatrix_used"] for t in weighted)
    assert report["totals"]["weighted_rel_error"] is not None


def test_report_sample_measures_the_documented_rows(model, tmp_path):
    out, rep = tmp_path / "out.gguf", tmp_path / "r.json"
    _run([model["src"], out, "Q4_K_M", 2, "--report-sample", 5, "--report", rep, "-q"])
    report = json.loads(rep.read_text())
    assert report["error_rows"]["sample_rows_per_tensor"] == 5 and "crc32" in report["error_rows"]["sample"]
    assert _check_against_files(report, model["src"], out, sample=5) > 10


def test_threads_and_chunks_do_not_change_the_figures():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((301, 256), dtype=np.float32)
    y = x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(0.01)
    w = rng.random(256).astype(np.float32)
    whole = chunk_sums(x, y, w).figures(301)
    parts = chunk_sums(x[:100], y[:100], w)
    parts.add(chunk_sums(x[100:], y[100:], w))
    split = parts.figures(301)
    want = _expected(x, y, w)
    for f in (whole, split):
        assert f.rel_rmse == pytest.approx(want["rel_rmse"], rel=1e-6)
        assert f.weighted_rel_error == pytest.approx(want["weighted_rel_error"], rel=1e-6)
        assert f.max_abs == want["max_abs"]

    class Echo(BackendBase):  # a backend whose dequantize returns y: the default error pass alone is tested
        def dequantize(self, q, qtype, n):
            return y[q[:, 0]]

    q = np.arange(301, dtype=np.int64).reshape(-1, 1)
    got = Echo().error_sums(x, q, None, w).figures(301)
    assert got.rel_rmse == pytest.approx(want["rel_rmse"], rel=1e-6) and got.max_abs == want["max_abs"]


def test_exact_and_nonfinite_figures():
    x = np.ones((2, 32), dtype=np.float32)
    f = chunk_sums(x, x.copy(), None).figures(2)
    assert f.exact and f.snr_db is None and f.rel_rmse == 0.0
    y = x.copy()
    y[1, 3] = np.inf  # an F16 overflow
    f = chunk_sums(x, y, None).figures(2)
    assert f.rel_rmse is None and f.max_abs is None and f.snr_db is None


def test_summary_ends_with_the_overall_error(model, tmp_path):
    r = _run([model["src"], tmp_path / "o.gguf", "Q4_K_M", 2, "--report", tmp_path / "r.json"])
    lines = r.output.strip().splitlines()
    report = json.loads((tmp_path / "r.json").read_text())
    assert lines[-1].startswith("error: rel. RMSE ")
    assert f"{report['totals']['rel_rmse']:.4g}" in lines[-1]
    assert f"report: {tmp_path / 'r.json'}" in r.output
    assert re.search(r"^Q4_K\s+\d+.*\d\.\d+\s*$", r.output, re.M)  # the per-type error column


def test_no_error_skips_the_figures(model, tmp_path):
    rep = tmp_path / "r.json"
    r = _run([model["src"], tmp_path / "o.gguf", "Q4_0", "--no-error", "--report", rep])
    report = json.loads(rep.read_text())
    assert not report["error_measured"] and all(t["error"] is None for t in report["tensors"])
    assert "error: " not in r.output


def test_dry_run_report_has_the_plan(model, tmp_path):
    rep = tmp_path / "plan.json"
    _run([model["src"], "Q4_K_M", "--dry-run", "--report", rep])
    report = json.loads(rep.read_text())
    assert report["dry_run"] and report["outputs"] == [] and len(report["tensors"]) > 10
    assert all(t["error"] is None for t in report["tensors"])


def test_html_report_is_self_contained_with_plots(model, tmp_path):
    rep = tmp_path / "r.html"
    _run([model["src"], tmp_path / "o.gguf", "Q4_K_M", "--report", rep, "-q"])
    page = rep.read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 3
    import base64

    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    # worst tensors first: the first tensor row has the largest relative RMSE in the JSON
    _run([model["src"], tmp_path / "o.gguf", "Q4_K_M", "--report", tmp_path / "r.json", "-q"])
    report = json.loads((tmp_path / "r.json").read_text())
    worst = max((t for t in report["tensors"] if t["converted"]), key=lambda t: t["error"]["rel_rmse"])
    first_row = page.split("Tensors, worst first")[1].split("<tr><td>")[1]
    assert first_row.startswith(worst["name"] + "</td>")


def test_html_without_matplotlib_says_what_to_install(model, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    rep, rep_json = tmp_path / "r.html", tmp_path / "r.json"
    _run([model["src"], tmp_path / "o.gguf", "Q4_0", "--report", rep, "--report", rep_json, "-q"])
    page = rep.read_text()
    assert "pip install 'gpuquant[report]'" in page and "data:image/png" not in page
    assert "Tensors, worst first" in page and json.loads(rep_json.read_text())["tensors"]


@pytest.mark.parametrize("name,message", [
    ("r.txt", "must end in .json or .html"),
    ("missing/r.json", "does not exist"),
])
def test_bad_report_path_fails_before_any_work(model, tmp_path, name, message):
    out = tmp_path / "o.gguf"
    r = CliRunner().invoke(main, ["quantize", str(model["src"]), str(out), "Q4_0", "--report", str(tmp_path / name)])
    assert r.exit_code == 1 and message in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_report_cannot_overwrite_the_model(model, tmp_path):
    out = tmp_path / "o.json"
    r = CliRunner().invoke(main, ["quantize", str(model["src"]), str(out), "Q4_0", "--report", str(out)])
    assert r.exit_code == 1 and "would overwrite" in r.output and not out.exists()


def test_diff_measures_against_the_float_source(model, tmp_path):
    out, rep = tmp_path / "o.gguf", tmp_path / "r.json"
    _run([model["src"], out, "Q4_K_M", "--report", rep, "-q"])
    report = {t["name"]: t["error"] for t in json.loads(rep.read_text())["tensors"]}
    for a, b, side in ((model["src"], out, "a"), (out, model["src"], "b")):
        r = CliRunner().invoke(main, ["diff", "--json", str(a), str(b)])
        d = json.loads(r.output)
        assert r.exit_code == 1 and d["error_source"] == side
        for t in d["tensors"]:
            want = report[t["name"]]
            assert t["error"]["exact"] == want["exact"]
            for key in ("rel_rmse", "max_abs", "snr_db"):
                if want[key] is None:  # SNR of a copied tensor
                    assert t["error"][key] is None
                else:
                    assert t["error"][key] == pytest.approx(want[key], rel=1e-6), (t["name"], key)
    r = CliRunner().invoke(main, ["diff", str(model["src"]), str(out)])
    assert "error against the float source" in r.output and "rel. RMSE" in r.output


def test_diff_of_two_quantizations_has_no_error_figures(model, tmp_path):
    for mix in ("Q4_K_M", "Q8_0"):
        _run([model["src"], tmp_path / f"{mix}.gguf", mix, "-q", "--no-error"])
    d = json.loads(CliRunner().invoke(main, ["diff", "--json", str(tmp_path / "Q4_K_M.gguf"),
                                             str(tmp_path / "Q8_0.gguf")]).output)
    assert d["error_source"] is None and all(t["error"] is None for t in d["tensors"])


def test_diff_sample(model, tmp_path):
    out = tmp_path / "o.gguf"
    _run([model["src"], out, "Q4_0", "-q", "--no-error"])
    d = json.loads(CliRunner().invoke(main, ["diff", "--json", "--sample", "3", str(model["src"]), str(out)]).output)
    converted = [t for t in d["tensors"] if not t["same_type"]]
    assert converted and all(t["error"]["rows_measured"] == min(3, t["error"]["rows_total"]) for t in converted)


def test_native_error_pass_matches_the_numpy_pass():
    """The native backend's one-sweep pass against dequantize + NumPy, on every type it has."""
    from gpuquant.backends import get_backend
    from gpuquant.qtypes import QTYPES

    native, numpy_be = get_backend("native", n_threads=2), get_backend("numpy")
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((24, 512)) * 0.05).astype(np.float32)
    x[3, 7] = 40.0  # an outlier: the max abs error
    w = rng.random(512).astype(np.float32)
    for name, t in QTYPES.items():
        if not native.supports(t) or not numpy_be.supports(t):
            continue
        q = numpy_be.quantize(x, t, w if t.requires_imatrix else None)
        y = numpy_be.dequantize(q, t, 512)
        want = _expected(x, y, w)
        got = native.error_sums(x, q, t, w).figures(24)
        if want["rel_rmse"] == 0:
            assert got.exact, name
            continue
        for key in ("rel_rmse", "max_abs", "weighted_rel_error"):
            assert getattr(got, key) == pytest.approx(want[key], rel=1e-6), (name, key)
        assert got.snr_db == pytest.approx(want["snr_db"], abs=1e-5), name  # dB: near 0 for Q1_0
        # sampled rows arrive as gathered copies of q: the same sums
        rows = np.array([1, 5, 6, 20])
        part = native.error_sums(x[rows], q[rows], t, None).figures(24)
        assert part.rel_rmse == pytest.approx(_expected(x[rows], y[rows])["rel_rmse"], rel=1e-6), name


def test_nan_survives_merging_sums():
    from gpuquant.quant_error import ErrorSums

    a, b = ErrorSums(max_abs=1.0), ErrorSums(max_abs=float("nan"))
    a.add(b)
    assert a.figures(1).max_abs is None


@pytest.mark.parametrize("layout", ["llama-gqa", "qwen3moe"])
def test_diff_with_imatrix_gives_the_runs_weighted_figures(tmp_path, layout):
    src = write_llama_model(layout, tmp_path / "f32.gguf")
    imatrix = write_synthetic_imatrix(src, tmp_path / "imatrix.gguf")
    out, rep = tmp_path / "o.gguf", tmp_path / "r.json"
    _run([src, out, "Q4_K_M", "--imatrix", imatrix, "--report", rep, "-q"])
    report = {t["name"]: t["error"] for t in json.loads(rep.read_text())["tensors"]}
    r = CliRunner().invoke(main, ["diff", "--json", "--imatrix", str(imatrix), str(src), str(out)])
    d = json.loads(r.output)
    weighted = [t for t in d["tensors"] if t["error"] and t["error"]["weighted_rel_error"] is not None]
    assert weighted and d["weighted_rel_error"] is not None and d["imatrix"] == str(imatrix)
    for t in d["tensors"]:
        want = report[t["name"]]["weighted_rel_error"]
        got = t["error"]["weighted_rel_error"]
        assert (got is None) == (want is None), t["name"]
        if want is not None:
            assert got == pytest.approx(want, rel=1e-6), t["name"]
    text = CliRunner().invoke(main, ["diff", "--imatrix", str(imatrix), str(src), str(out)]).output
    assert "importance-weighted" in text


def test_error_sums_are_the_same_bits_whatever_the_threads():
    # Parts of fixed row ranges added in row order: neither the thread count nor which thread
    # finishes first changes a bit (they did when parts were added as threads finished).
    from gpuquant.backends.native import NativeBackend

    rng = np.random.default_rng(17)
    x = (rng.standard_normal((1024, 4096)) * 0.02).astype(np.float32)
    w = rng.random(4096).astype(np.float32)
    t = gpuquant.resolve("Q4_0")
    q = NativeBackend(1).quantize(x, t, None)
    seen = set()
    for threads in (1, 2, 3, 8):
        backend = NativeBackend(threads)
        for _ in range(5 if threads == 8 else 1):
            s = backend.error_sums(x, q, t, w)
            seen.add((s.rows, s.sum_sq_x, s.sum_sq_err, s.w_sum_sq_x, s.w_sum_sq_err, s.max_abs))
    assert len(seen) == 1
    numpy_meters = set()
    for threads in (1, 3):
        s = NumpyBackend(threads).error_sums(x[:300], q[:300], t, w)
        numpy_meters.add((s.rows, s.sum_sq_x, s.sum_sq_err, s.w_sum_sq_x, s.w_sum_sq_err, s.max_abs))
    assert len(numpy_meters) == 1


@pytest.mark.parametrize("backend", ["native", "numpy"])
def test_report_is_the_same_whatever_the_threads(model, tmp_path, backend):
    # The same input, type and options: the same report, timings and the thread count aside.
    reports = []
    for i, threads in enumerate((1, 2, 3, 8, 8)):
        rep = tmp_path / f"r{i}.json"
        _run([model["src"], tmp_path / f"o{i}.gguf", "Q4_K_M", threads, "--imatrix", model["imatrix"],
              "--backend", backend, "--report", rep, "-q"])
        data = json.loads(rep.read_text())
        for key in ("seconds", "threads", "outputs"):
            data.pop(key)
        reports.append(json.dumps(data, sort_keys=True))
    assert len(set(reports)) == 1
