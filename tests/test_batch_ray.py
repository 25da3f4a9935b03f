"""`gpuquant batch --ray` on a real local Ray (`ray.init(num_cpus=2)`, one per module), not a mock:
a batch of small synthetic models whose outputs equal single runs, a job that fails while the others
succeed, a worker killed mid-job and retried by Ray (complete outputs, nothing partial left), a
worker that dies with no retry left, and a resumed batch that skips finished outputs."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from test_batch import (
    MIXES,
    assert_equal_to_single_runs,
    ggufs,
    invoke,
    leftovers,
    make_nan_model,
    two_jobs,
    write_jobs,
)
from test_batch import models as models  # noqa: F401  (the module fixture: models and single runs)

from gpuquant import batch as b

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'gpuquant[ray]'): the Ray runner "
                                        "is tested with a real local Ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # address="local": a new local Ray even where `ray start` left a cluster's address behind
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 << 20)
    yield
    ray.shutdown()


def run(jobs_file: Path, **runner) -> list[b.JobResult]:
    jobs = b.load_jobs(jobs_file)
    settings = b.BatchSettings(n_threads=1, backend="native")
    b.prepare_jobs(jobs_file, jobs, settings.n_threads, settings.backend)
    return b.RayRunner(settings, **runner).run(jobs, b.BatchProgress(jobs, stream=io.StringIO()))


def test_a_ray_batch_writes_what_single_runs_write(models):
    out = models / "out-ray"
    path = write_jobs(models / "ray.toml", two_jobs(models, out))
    r = invoke(str(path), "--ray", "--n-threads", "1")  # joins the Ray this process started
    assert r.exit_code == 0, r.output
    assert_equal_to_single_runs(models, out)
    assert r.stdout.splitlines()[-1].startswith("2 jobs: 2 ok, 0 failed; 4 outputs written, 0 skipped")
    assert "batch: 2/2 jobs" in r.stderr


def test_a_failing_ray_job_does_not_stop_the_others(models, tmp_path):
    make_nan_model(tmp_path / "broken-f32.gguf")
    path = write_jobs(tmp_path / "jobs.toml", [
        {"input": "broken-f32.gguf", "outdir": "out/broken", "mixes": list(MIXES)},
        {"input": str(models / "beta-f32.gguf"), "outdir": "out/beta", "mixes": list(MIXES),
         "options": ["--leave-output-tensor"]},
    ])
    r = invoke(str(path), "--ray", "-nt", "1")
    assert r.exit_code == 1, r.output
    rows = r.stdout.splitlines()
    assert rows[1].split()[:3] == ["1", "broken-f32.gguf", "failed"] and "NaN" in rows[1], rows[1]
    assert rows[2].split()[:3] == ["2", str(models / "beta-f32.gguf"), "ok"]
    assert ggufs(tmp_path / "out" / "broken") == [] and leftovers(tmp_path / "out") == []
    for mix in MIXES:
        assert (tmp_path / "out/beta" / f"beta-{mix}.gguf").read_bytes() == \
            (models / "refs" / f"beta-{mix}.gguf").read_bytes()


def test_a_worker_killed_mid_job_is_retried_and_leaves_nothing_partial(models, tmp_path):
    for name in ("alpha-f32.gguf", "beta-f32.gguf", "alpha.imatrix.gguf"):
        (tmp_path / name).symlink_to(models / name)
    out = tmp_path / "out"
    marker = tmp_path / "killed"
    results = run(write_jobs(tmp_path / "jobs.toml", two_jobs(tmp_path, out)), kill_once=str(marker))
    assert marker.exists()  # a worker did kill itself (SIGKILL) after its first bytes
    assert [r.ok for r in results] == [True, True], [r.error for r in results]
    assert_equal_to_single_runs(models, out)  # complete, the same bytes, no .partial anywhere


def test_a_worker_that_dies_with_no_retry_left_fails_its_job(models, tmp_path):
    (tmp_path / "beta-f32.gguf").symlink_to(models / "beta-f32.gguf")
    path = write_jobs(tmp_path / "jobs.toml", [{"input": "beta-f32.gguf", "outdir": "out", "mixes": ["Q8_0"]}])
    (result,) = run(path, kill_once=str(tmp_path / "killed"), max_retries=0)
    assert not result.ok and "its worker died 1 time, no retry left" in result.error, result.error
    assert ggufs(tmp_path / "out") == [] and leftovers(tmp_path / "out") == []


def test_a_resumed_ray_batch_skips_finished_outputs(models, tmp_path):
    for name in ("alpha-f32.gguf", "beta-f32.gguf", "alpha.imatrix.gguf"):
        (tmp_path / name).symlink_to(models / name)
    out = tmp_path / "out"
    path = write_jobs(tmp_path / "jobs.toml", two_jobs(tmp_path, out))
    first = run(path)
    assert [len(r.written) for r in first] == [2, 2]
    (out / "alpha" / "alpha-Q4_K_M.gguf").unlink()
    stamp = (out / "beta" / "beta-Q8_0.gguf").stat().st_mtime_ns
    again = run(path)
    assert [(len(r.written), len(r.skipped)) for r in again] == [(1, 1), (0, 2)]
    assert (out / "beta" / "beta-Q8_0.gguf").stat().st_mtime_ns == stamp
    assert_equal_to_single_runs(models, out)
