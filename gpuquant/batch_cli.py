"""`gpuquant batch JOBS.toml`: parsing and printing only; the work lives in gpuquant.batch."""

from __future__ import annotations

import logging
import os
import sys

import click

_RAY_HERE = "\0here"  # --ray without an address: the cluster ray.init() finds, or a new local one


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("jobs_file", metavar="JOBS.toml", required=False)
@click.option("--ray", "ray_address", is_flag=False, flag_value=_RAY_HERE, default=None, metavar="[ADDRESS]",
              help="Run each job as a Ray task: on the cluster ray.init() finds (RAY_ADDRESS, or one started "
                   "with `ray start` here), else on a new local one; with ADDRESS (ray://host:10001, or "
                   "host:6379) on that cluster. Needs gpuquant[ray].")
@click.option("--jobs", "-j", "parallel", type=int, default=None, metavar="N",
              help="Embedded runs: N jobs at once, each with its share of the cores (default 1: one after "
                   "another with all cores).")
@click.option("--n-threads", "-nt", "n_threads", type=int, default=None,
              help="Threads per job (default: the cores divided by --jobs; on Ray, the smallest node's CPUs, "
                   "or its CPUs per GPU with --backend cupy). A Ray task asks for this many CPUs.")
@click.option("--backend", type=click.Choice(["auto", "native", "numpy", "cupy"]), default="auto", show_default=True,
              help="Every job's backend; on Ray, cupy makes each task ask for one GPU.")
@click.option("--force", is_flag=True, help="Rewrite outputs whose file matches its manifest (they are skipped).")
@click.option("--max-retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="Ray: how many times a task whose worker died is run again.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines; the closing table only.")
def batch(jobs_file, ray_address, parallel, n_threads, backend, force, max_retries, quiet) -> None:
    """Run the jobs of a TOML file: each [[job]] is one model (input), its folder (outdir) and its mixes,
    with an optional imatrix and llama-quantize options; each output is OUTDIR/<model>-<MIX>.gguf,
    as `gpuquant publish` writes it, skipped when already there (its manifest matches) unless --force.
    Every job is checked first; a job that fails does not stop the others; the exit status is 1 if any
    failed. Ends with one table (stdout)."""
    from . import batch as b
    from .cli import _fail, _interrupt_on_termination, _quiet_compiler  # cli registers this command

    if jobs_file is None and ray_address not in (None, _RAY_HERE) and ray_address.endswith(".toml"):
        jobs_file, ray_address = ray_address, _RAY_HERE  # `batch --ray JOBS.toml`: the flag took the file
    if jobs_file is None:
        _fail("missing the job file (gpuquant batch JOBS.toml)")
    on_ray = ray_address is not None
    if parallel is not None and parallel < 1:
        _fail(f"--jobs must be 1 or more, not {parallel}")
    if parallel is not None and on_ray:
        _fail("--jobs is for runs on this machine; on Ray, --n-threads sets how many tasks fit a node")
    if n_threads is not None and n_threads < 1:
        _fail(f"--n-threads must be 1 or more, not {n_threads}")
    if ray_address is not None and ray_address != _RAY_HERE and not ray_address.strip():
        _fail("--ray: the address is empty")
    try:
        jobs = b.load_jobs(jobs_file)
        b.prepare_jobs(jobs_file, jobs, n_threads or 1, backend, force)  # reads no tensor
        ray = b.import_ray() if on_ray else None
    except ValueError as e:
        _fail(str(e))

    if on_ray:
        address = None if ray_address == _RAY_HERE else ray_address
        try:
            if not ray.is_initialized():
                ray.init(address=address, logging_level=logging.WARNING if quiet else logging.INFO)
            nodes = [n for n in ray.nodes() if n.get("Alive")]
        except Exception as e:  # Ray's own: a cluster that cannot be reached
            # Ray 2.59+ starts clusters with token authentication; a driver given an address only
            # sends the token (RAY_AUTH_TOKEN, or ~/.ray/auth_token) when RAY_AUTH_MODE=token
            hint = ("; if the cluster uses token authentication, set RAY_AUTH_MODE=token and give this "
                    "machine its token (ray get-auth-token on the head; RAY_AUTH_TOKEN or ~/.ray/auth_token)"
                    if address and os.environ.get("RAY_AUTH_MODE") != "token" else "")
            _fail(f"--ray: cannot join the Ray cluster{' at ' + address if address else ''}: "
                  f"{str(e).splitlines()[0] if str(e) else type(e).__name__}{hint}")
        gpu = backend == "cupy"
        threads = n_threads or b.default_ray_threads(nodes, gpu)
        if not b.ray_fits(nodes, threads, gpu):
            click.echo(f"gpuquant: warning: no Ray node has {threads} CPUs{' and a GPU' if gpu else ''} free "
                       "now: the tasks wait for one (lower --n-threads, or add nodes)", err=True)
        settings = b.BatchSettings(threads, backend, force)
        runner: b.Runner = b.RayRunner(settings, address=address, max_retries=max_retries)
    else:
        cores = os.cpu_count() or 1
        parallel = parallel or 1
        threads = n_threads or max(1, cores // parallel)
        settings = b.BatchSettings(threads, backend, force)
        runner = b.EmbeddedRunner(settings, parallel=parallel)

    _quiet_compiler(quiet)
    progress = b.BatchProgress(jobs, quiet=quiet)
    _interrupt_on_termination()
    try:
        run = b.run_batch(jobs, runner, progress)
    except KeyboardInterrupt:
        _fail("interrupted; the outputs being written were removed, finished ones stay", 130)
    click.echo(run.table())
    if not run.ok:
        sys.exit(1)
