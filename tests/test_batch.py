"""`gpuquant batch JOBS.toml` on this machine (gpuquant/batch.py): the job file is checked whole before
any job runs (one line naming the job and the key), each output equals a `gpuquant quantize IN OUT
MIX` run, a failing job does not stop the others and makes the exit status 1, a second run skips what
the first wrote, and progress is aggregated across jobs. The same batches on a real local Ray:
tests/test_batch_ray.py."""

from __future__ import annotations

import _thread
import io
import json
import os
import sys
import threading
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from gpuquant import batch as b
from gpuquant.batch_cli import batch
from gpuquant.cli import main
from gpuquant.synthetic_llama import write_llama_model, write_synthetic_imatrix

LAYOUT = "llama-70b-depth"  # the smallest layout: 12 tensors, 0.12 MiB of F32 with one layer
MIXES = ("Q4_K_M", "Q8_0")


# ---------------------------------------------------------------- helpers (test_batch_ray.py uses them too)


def make_model(path: Path, seed: int) -> Path:
    return write_llama_model(LAYOUT, path, n_layer=1, seed=seed)


def make_nan_model(path: Path) -> Path:
    """A model whose blk.0.attn_q.weight holds a NaN: refused while its tensors are read."""
    make_model(path, seed=3)
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == "blk.0.attn_q.weight")
    with open(path, "r+b") as f:
        f.seek(int(t.data_offset) + 4 * 5)
        f.write(np.array([np.nan], dtype=np.float32).tobytes())
    return path


def single_run(src: Path, out: Path, mix: str, *options: str) -> bytes:
    """What `gpuquant quantize IN OUT MIX` writes, run in src's folder (a relative --imatrix is recorded
    as given, in quantize.imatrix.file: a batch passes its imatrix as the job file writes it)."""
    before = os.getcwd()
    os.chdir(src.parent)
    try:
        r = CliRunner().invoke(main, ["quantize", "--backend", "native", "-q", *options, str(src), str(out), mix])
    finally:
        os.chdir(before)
    assert r.exit_code == 0, r.output
    return out.read_bytes()


def write_jobs(path: Path, jobs: list[dict]) -> Path:
    """A TOML job file (JSON strings and arrays of strings are TOML's too)."""
    lines = []
    for job in jobs:
        lines.append("[[job]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in job.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def invoke(*args: str):
    return CliRunner().invoke(batch, ["--backend", "native", *args])


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert "Traceback" not in result.output and lines[0].startswith("gpuquant: error: "), result.output
    return lines[0]


def ggufs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".gguf")) if folder.exists() else []


def leftovers(folder: Path) -> list[str]:
    """Anything a dead or failed writer could leave: .partial files, hidden temporaries."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".partial") or p.name.startswith("."))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """alpha-f32.gguf and beta-f32.gguf (two seeds), an imatrix for alpha, and the single runs:
    refs/<model>-<MIX>.gguf (alpha's with `--imatrix alpha.imatrix.gguf`, beta's with
    --leave-output-tensor)."""
    root = tmp_path_factory.mktemp("batch-models")
    make_model(root / "alpha-f32.gguf", seed=1)
    make_model(root / "beta-f32.gguf", seed=2)
    write_synthetic_imatrix(root / "alpha-f32.gguf", root / "alpha.imatrix.gguf")
    refs = root / "refs"
    refs.mkdir()
    for mix in MIXES:
        single_run(root / "alpha-f32.gguf", refs / f"alpha-{mix}.gguf", mix, "--imatrix", "alpha.imatrix.gguf")
        single_run(root / "beta-f32.gguf", refs / f"beta-{mix}.gguf", mix, "--leave-output-tensor")
    return root


def two_jobs(root: Path, out: Path) -> list[dict]:
    """alpha and beta in both mixes, with paths relative to the job file (in `root`)."""
    return [
        {"input": "alpha-f32.gguf", "outdir": f"{out.name}/alpha", "mixes": list(MIXES),
         "imatrix": "alpha.imatrix.gguf"},
        {"input": "beta-f32.gguf", "outdir": f"{out.name}/beta", "mixes": list(MIXES),
         "options": ["--leave-output-tensor"]},
    ]


def assert_equal_to_single_runs(root: Path, out: Path) -> None:
    for model in ("alpha", "beta"):
        assert ggufs(out / model) == sorted(f"{model}-{mix}.gguf" for mix in MIXES)
        for mix in MIXES:
            got = (out / model / f"{model}-{mix}.gguf").read_bytes()
            assert got == (root / "refs" / f"{model}-{mix}.gguf").read_bytes(), f"{model} {mix}"
    assert leftovers(out) == []


# ---------------------------------------------------------------- the job file


def test_load_jobs_resolves_paths_against_the_files_folder(models, tmp_path):
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "recipe.txt").write_text("attn_q=Q8_0\n")
    path = write_jobs(folder / "jobs.toml", [{
        "input": str(models / "alpha-f32.gguf"), "outdir": "out", "mixes": ["q4_k_m", "Q8_0"],
        "target_sizes": ["40K"], "imatrix": "../../" + models.name + "/alpha.imatrix.gguf",
        "options": ["--leave-output-tensor", "--tensor-type-file", "recipe.txt"],
    }])
    (job,) = b.load_jobs(path)
    assert job.index == 1 and job.given_input == str(models / "alpha-f32.gguf")
    assert job.input == models / "alpha-f32.gguf" and job.outdir == folder.resolve() / "out"
    assert job.mixes == ("q4_k_m", "Q8_0") and job.target_sizes == ("40K",)
    assert job.imatrix == "../../" + models.name + "/alpha.imatrix.gguf" and job.folder == folder.resolve()
    assert job.options == ("--leave-output-tensor", "--tensor-type-file", str(folder.resolve() / "recipe.txt"))
    assert job.publish_args(3, "native") == [
        str(job.input), str(job.outdir), "--mix", "q4_k_m", "--mix", "Q8_0", "--target-size", "40K",
        "--imatrix", job.imatrix, *job.options, "--n-threads", "3", "--backend", "native", "--quiet",
    ]


GOOD = '[[job]]\ninput = "alpha-f32.gguf"\noutdir = "good"\nmixes = ["Q8_0"]\n\n'


@pytest.mark.parametrize("second, expected", [
    ('[[job]]\ninput = "beta-f32.gguf"\noutdir = "o"\nmix = ["Q8_0"]\n',
     "job 2 (beta-f32.gguf): mix: unknown key"),
    ('[[job]]\ninput = "beta-f32.gguf"\noutdir = "o"\nmixes = "Q8_0"\n',
     "job 2 (beta-f32.gguf): mixes: must be an array of strings, not a string"),
    ('[[job]]\ninput = "beta-f32.gguf"\noutdir = 3\nmixes = ["Q8_0"]\n',
     "job 2 (beta-f32.gguf): outdir: must be a string, not an integer"),
    ('[[job]]\ninput = "missing-f32.gguf"\noutdir = "o"\nmixes = ["Q8_0"]\n',
     "job 2 (missing-f32.gguf): input: no such file"),
    ('[[job]]\noutdir = "o"\nmixes = ["Q8_0"]\n', "job 2: input: missing"),
    ('[[job]]\ninput = "beta-f32.gguf"\nmixes = ["Q8_0"]\n', "job 2 (beta-f32.gguf): outdir: missing"),
    ('[[job]]\ninput = "beta-f32.gguf"\noutdir = "o"\nmixes = ["Q8_0", "Q4_K_M", "q8_0"]\n',
     "job 2 (beta-f32.gguf): mixes: 'q8_0' is given twice"),
    ('[[job]]\ninput = "beta-f32.gguf"\noutdir = "o"\nmixes = ["Q4_K_Q"]\n',
     "job 2 (beta-f32.gguf): mixes: "),
    ('[[job]]\ninput = "beta-f32.gguf"\noutdir = "o"\nmixes = []\n',
     "job 2 (beta-f32.gguf): mixes: no output"),
    ('[[job]]\ninput = "beta-f32.gguf"\noutdir = "o"\ntarget_sizes = ["4"]\n',
     "job 2 (beta-f32.gguf): target_sizes: invalid size '4'"),
    ('[[job]]\ninput = "beta-f32.gguf"\noutdir = "afile"\nmixes = ["Q8_0"]\n',
     "job 2 (beta-f32.gguf): outdir: "),
    ('[[job]]\ninput = "beta-f32.gguf"\noutdir = "afile/o"\nmixes = ["Q8_0"]\n',
     "job 2 (beta-f32.gguf): outdir: "),
    ('[[job]]\ninput = "beta-f32.gguf"\noutdir = "o"\nmixes = ["Q8_0"]\nimatrix = "none.gguf"\n',
     "job 2 (beta-f32.gguf): imatrix: no such file"),
    ('[[job]]\ninput = "beta-f32.gguf"\noutdir = "o"\nmixes = ["Q8_0"]\noptions = "--pure"\n',
     "job 2 (beta-f32.gguf): options: must be an array of strings"),
    ('[[job]]\ninput = "beta-f32.gguf"\noutdir = "o"\nmixes = ["Q8_0"]\noptions = ["--prune-layers", 0]\n',
     "job 2 (beta-f32.gguf): options: item 2 must be a string, not an integer"),
    ('[[job]]\ninput = "beta-f32.gguf"\noutdir = "o"\nmixes = ["Q8_0"]\noptions = ["--n-threads", "4"]\n',
     "job 2 (beta-f32.gguf): options: --n-threads: the batch sets the threads"),
    ('[[job]]\ninput = "beta-f32.gguf"\noutdir = "o"\nmixes = ["Q8_0"]\noptions = ["--no-such-option"]\n',
     "job 2 (beta-f32.gguf): options: "),
    ('[[job]]\ninput = "beta-f32.gguf"\noutdir = "good"\nmixes = ["Q4_K_M"]\n\n'
     '[[job]]\ninput = "alpha-f32.gguf"\noutdir = "good/"\nmixes = ["Q8_0"]\n',
     "job 3 (alpha-f32.gguf): outdir: "),
    ("[[job]\n", "jobs.toml: not valid TOML"),
    ("TOP jobs = 1\n", "jobs.toml: unknown key 'jobs'"),
    ("TOP job = 1\n", "jobs.toml: job must be an array of tables"),
])
def test_a_bad_job_file_is_refused_in_one_line_before_any_job_runs(models, tmp_path, second, expected):
    for name in ("alpha-f32.gguf", "beta-f32.gguf"):
        (tmp_path / name).symlink_to(models / name)
    (tmp_path / "afile").write_text("not a folder")
    path = tmp_path / "jobs.toml"
    path.write_text(second[4:] if second.startswith("TOP ") else GOOD + second)  # TOP: top-level keys
    line = one_line_error(invoke(str(path)))
    assert expected in line, line
    assert not (tmp_path / "good").exists()  # job 1 is fine, and did not run


def test_an_empty_job_file_is_refused(tmp_path):
    (tmp_path / "jobs.toml").write_text("# nothing yet\n")
    assert "no job" in one_line_error(invoke(str(tmp_path / "jobs.toml")))
    assert "cannot read" in one_line_error(invoke(str(tmp_path / "none.toml")))


# ---------------------------------------------------------------- embedded runs


def test_a_batch_writes_what_single_runs_write(models):
    out = models / "out-embedded"
    path = write_jobs(models / "embedded.toml", two_jobs(models, out))
    r = invoke(str(path))
    assert r.exit_code == 0, r.output
    assert_equal_to_single_runs(models, out)
    table = r.stdout.splitlines()
    assert table[0].split()[:5] == ["job", "input", "status", "written", "skipped"]
    assert table[1].split()[:5] == ["1", "alpha-f32.gguf", "ok", "2", "0"]
    assert table[2].split()[:5] == ["2", "beta-f32.gguf", "ok", "2", "0"]
    assert table[3].startswith("2 jobs: 2 ok, 0 failed; 4 outputs written, 0 skipped")
    assert "batch: 2/2 jobs" in r.stderr  # the aggregated progress line


def test_jobs_at_once_write_the_same_files(models):
    out = models / "out-parallel"
    path = write_jobs(models / "parallel.toml", two_jobs(models, out))
    r = invoke("--jobs", "2", "--n-threads", "1", "--quiet", str(path))
    assert r.exit_code == 0, r.output
    assert r.stderr == ""
    assert_equal_to_single_runs(models, out)


def test_a_failing_job_is_reported_and_the_others_run(models, tmp_path):
    make_nan_model(tmp_path / "broken-f32.gguf")
    (tmp_path / "beta-f32.gguf").symlink_to(models / "beta-f32.gguf")
    path = write_jobs(tmp_path / "jobs.toml", [
        {"input": "broken-f32.gguf", "outdir": "out/broken", "mixes": list(MIXES)},
        {"input": "beta-f32.gguf", "outdir": "out/beta", "mixes": list(MIXES), "options": ["--leave-output-tensor"]},
    ])
    r = invoke(str(path))
    assert r.exit_code == 1, r.output
    rows = r.stdout.splitlines()
    assert rows[1].split()[:3] == ["1", "broken-f32.gguf", "failed"] and "NaN" in rows[1], rows[1]
    assert rows[2].split()[:3] == ["2", "beta-f32.gguf", "ok"]
    assert rows[3].startswith("2 jobs: 1 ok, 1 failed")
    assert "job 1 (broken-f32.gguf): failed: " in r.stderr
    assert ggufs(tmp_path / "out" / "broken") == [] and leftovers(tmp_path / "out") == []
    for mix in MIXES:
        assert (tmp_path / "out/beta" / f"beta-{mix}.gguf").read_bytes() == \
            (models / "refs" / f"beta-{mix}.gguf").read_bytes()


def test_a_second_run_skips_finished_outputs_unless_forced(models, tmp_path):
    for name in ("alpha-f32.gguf", "beta-f32.gguf", "alpha.imatrix.gguf"):
        (tmp_path / name).symlink_to(models / name)
    out = tmp_path / "out"
    path = write_jobs(tmp_path / "jobs.toml", two_jobs(tmp_path, out))
    assert invoke("-q", str(path)).exit_code == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.gguf")}
    r = invoke("-q", str(path))
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-1].startswith("2 jobs: 2 ok, 0 failed; 0 outputs written, 4 skipped")
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # not rewritten
    (out / "beta" / "beta-Q8_0.gguf").unlink()
    r = invoke("-q", str(path))
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-1].startswith("2 jobs: 2 ok, 0 failed; 1 outputs written, 3 skipped")
    r = invoke("-q", "--force", str(path))
    assert r.stdout.splitlines()[-1].startswith("2 jobs: 2 ok, 0 failed; 4 outputs written, 0 skipped")
    assert_equal_to_single_runs(models, out)


def test_ctrl_c_stops_the_jobs_running_at_once_and_leaves_nothing_partial(models, tmp_path):
    class Interrupting(b.BatchProgress):
        once = threading.Lock()

        def add(self, index: int, n_bytes: int) -> None:
            super().add(index, n_bytes)
            if self.once.acquire(blocking=False):
                _thread.interrupt_main()  # Ctrl-C, as the main thread sees it, after the first bytes

    for name in ("alpha-f32.gguf", "beta-f32.gguf", "alpha.imatrix.gguf"):
        (tmp_path / name).symlink_to(models / name)
    jobs = b.load_jobs(write_jobs(tmp_path / "jobs.toml", two_jobs(tmp_path, tmp_path / "out")))
    runner = b.EmbeddedRunner(b.BatchSettings(n_threads=1, backend="native"), parallel=2)
    before = os.getcwd()
    with pytest.raises(KeyboardInterrupt):
        runner.run(jobs, Interrupting(jobs, stream=io.StringIO()))
    assert leftovers(tmp_path / "out") == []
    assert os.getcwd() == before  # the jobs ran in the job file's folder; the working folder is back


def test_ray_not_installed_says_how_to_install_it(models, monkeypatch):
    path = write_jobs(models / "ray-missing.toml", two_jobs(models, models / "out-never"))
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    for args in ([str(path), "--ray"], ["--ray", str(path)], [str(path), "--ray", "ray://head:10001"]):
        line = one_line_error(invoke(*args))
        assert "pip install 'gpuquant[ray]'" in line, line
    assert not (models / "out-never").exists()


def test_options_that_do_not_go_together(models):
    path = write_jobs(models / "options.toml", two_jobs(models, models / "out-never"))
    assert "--jobs" in one_line_error(invoke(str(path), "--ray", "--jobs", "2"))
    assert "--jobs must be 1 or more" in one_line_error(invoke(str(path), "--jobs", "0"))
    assert "--n-threads must be 1 or more" in one_line_error(invoke(str(path), "--n-threads", "0"))
    assert "missing the job file" in one_line_error(invoke())


# ---------------------------------------------------------------- progress and the table


def fake_jobs(tmp_path: Path, sizes: list[int]) -> list[b.BatchJob]:
    jobs = []
    for i, size in enumerate(sizes, start=1):
        src = tmp_path / f"m{i}.gguf"
        src.write_bytes(b"\0" * size)
        jobs.append(b.BatchJob(i, src.name, src, tmp_path, ("Q8_0",)))
    return jobs


def test_progress_counts_jobs_and_bytes_across_the_batch(tmp_path):
    stream = io.StringIO()
    progress = b.BatchProgress(fake_jobs(tmp_path, [4_000_000, 6_000_000]), stream=stream, interval=0)
    progress.add(1, 1_000_000)
    progress.add(2, 3_000_000)
    f = progress.figures()
    assert (f["jobs_done"], f["bytes_done"], f["bytes_total"]) == (0, 4_000_000, 10_000_000)
    assert f["rate"] > 0 and 0 < f["left"] < float("inf")
    progress.set(2, 500_000)  # a retried Ray task starts again
    assert progress.figures()["bytes_done"] == 1_500_000
    # job 1's outputs were there already: it read 1 MB of its 4, and the total says so
    progress.job_done(b.JobResult(1, "m1.gguf", True, skipped=("a",), bytes_read=1_000_000))
    progress.job_done(b.JobResult(2, "m2.gguf", False, error="boom", bytes_read=0))
    f = progress.figures()
    assert (f["jobs_done"], f["failed"], f["bytes_total"]) == (2, 1, 1_500_000)
    progress.close()
    text = stream.getvalue()
    assert "job 1 (m1.gguf): 0 written, 1 skipped" in text and "job 2 (m2.gguf): failed: boom" in text
    last = text.splitlines()[-1]
    assert last.startswith("batch: 2/2 jobs, 1 failed, 1.5/1.5 MB, ") and "MB/s" in last and "left" in last


def test_quiet_progress_writes_nothing(tmp_path):
    stream = io.StringIO()
    progress = b.BatchProgress(fake_jobs(tmp_path, [100]), stream=stream, quiet=True, interval=0)
    progress.add(1, 50)
    progress.job_done(b.JobResult(1, "m1.gguf", True))
    progress.close()
    assert stream.getvalue() == ""


def test_the_table_has_a_row_per_job_and_the_totals():
    results = [b.JobResult(1, "a.gguf", True, written=("x", "y"), bytes_written=2_000_000, bytes_read=4_000_000,
                           seconds=2.0),
               b.JobResult(2, "models/b.gguf", False, error="not a GGUF file", seconds=0.1)]
    lines = b.results_table(results, 2.0).splitlines()
    assert len(lines) == 4
    assert lines[1].split() == ["1", "a.gguf", "ok", "2", "0", "2.0", "4.0", "2.0"]
    assert lines[2].split()[:3] == ["2", "models/b.gguf", "failed"] and lines[2].endswith("not a GGUF file")
    assert lines[3] == ("2 jobs: 1 ok, 1 failed; 2 outputs written, 0 skipped; 2.0 MB written, 4.0 MB read "
                        "in 2.0 s (2.0 MB/s)")


def test_default_ray_threads_fit_the_smallest_node():
    nodes = [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0}},
             {"Alive": True, "Resources": {"CPU": 8.0}},
             {"Alive": False, "Resources": {"CPU": 2.0}}]
    assert b.default_ray_threads(nodes, gpu=False) == 8
    assert b.default_ray_threads(nodes, gpu=True) == 8  # 16 CPUs for 2 GPUs
    assert b.ray_fits(nodes, 16, gpu=True) and not b.ray_fits(nodes, 17, gpu=False)
    assert not b.ray_fits(nodes[1:], 4, gpu=True)
