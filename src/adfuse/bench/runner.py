"""Running a plan's jobs: locally in a process pool, or as Ray tasks on a cluster.

Every job is an ordinary run folder ``OUT/runs/<job name>`` trained by ``adfuse.train.fit``. A
folder whose ``run.json`` says "complete" for the same config is skipped, an interrupted one is
resumed (``adfuse.sweep``'s rule), so a killed benchmark continues where it stopped. A job that
fails is recorded (``jobs.csv``: status and the error's one line) and the others go on.

- ``local``: a pool of ``workers`` processes (default: the usable cores, at most the number of
  jobs), started with ``spawn`` (a forked torch can hang in OpenMP); each worker gets
  ``cores // workers`` torch threads (at least one) and no progress bars.
- ``ray``: ``ray.init(address)`` (``None``: a local instance with ``workers`` CPUs), one task per
  job asking for ``threads`` CPUs; the dataset, cache and output paths must be visible to every
  node (a shared file system), as with any Ray cluster reading files.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from adfuse.errors import ConfigError

BACKENDS = ("local", "ray")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _quiet_worker(threads: int) -> None:
    """Per worker: torch threads and no progress bars (the rest of the environment is the
    parent's: spawned processes and Ray workers inherit it)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["TQDM_DISABLE"] = "1"
    import torch

    torch.set_num_threads(threads)


def run_job(
    dataset: str, config: dict, run_dir: str, cache_dir: str | None, explain: bool, threads: int
) -> dict:
    """Train (or skip, or resume) one run, then explain it if asked; never raises.

    Returns ``{"run", "status": complete|skipped|failed, "seconds", "error", "explained"}``.
    """
    _quiet_worker(threads)
    from adfuse.runs import RUN_FILE, read_run
    from adfuse.sweep import _train_unless_done
    from adfuse.train import TrainConfig

    started = time.perf_counter()
    out = {"run": Path(run_dir).name, "status": "complete", "error": "", "explained": ""}
    try:
        path = Path(run_dir)
        train_config = TrainConfig.build(**config)
        if (path / RUN_FILE).exists() and read_run(path).get("status") == "complete":
            out["status"] = "skipped"
        _train_unless_done(dataset, train_config, path, cache_dir, False)
        if explain:
            out["explained"] = _explain(path, dataset, cache_dir)
    except Exception as error:  # one failing model must not stop the benchmark; it is reported
        out["status"] = "failed"
        message = str(error).splitlines()[0] if str(error) else ""
        out["error"] = f"{type(error).__name__}: {message}"[:500]
    out["seconds"] = round(time.perf_counter() - started, 2)
    return out


def _explain(run_dir: Path, dataset: str, cache_dir: str | None) -> str:
    """Explain a finished run once (``RUN/explain/summary.json``) when its model has an explainer."""
    from adfuse import explain
    from adfuse.runs import read_run

    if (run_dir / "explain" / "summary.json").exists():
        return "yes"
    if read_run(run_dir)["model"] not in explain.available():
        return "no explainer"
    try:
        explain.explain_run(run_dir, dataset, cache_dir=cache_dir)
    except ConfigError as error:  # e.g. an ablation without the mapped attention
        return f"not explained: {error}"
    return "yes"


def run_jobs(
    calls: list[dict[str, Any]],
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    on_result: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run ``run_job(**call)`` for every call (without its ``threads``); results in call order."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}: choose from {', '.join(BACKENDS)}")
    if not calls:
        return []
    cores = usable_cores()
    workers = max(1, min(workers or cores, len(calls)))
    threads = max(1, cores // workers)
    calls = [{**call, "threads": threads} for call in calls]
    if backend == "ray":
        return _run_ray(calls, workers, threads, address, on_result)
    return _run_local(calls, workers, on_result)


def _run_local(calls, workers: int, on_result) -> list[dict]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    if workers == 1:  # no pool: simpler to debug, and no second torch import
        import torch

        saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "TQDM_DISABLE")}
        threads = torch.get_num_threads()
        results = []
        try:
            for call in calls:
                results.append(run_job(**call))
                if on_result:
                    on_result(results[-1])
        finally:  # this process's own settings back
            torch.set_num_threads(threads)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        return results
    results: list[dict | None] = [None] * len(calls)
    context = multiprocessing.get_context("spawn")
    with (
        _terminate_as_interrupt(),
        ProcessPoolExecutor(workers, mp_context=context, initializer=_silence_stderr) as pool,
    ):
        futures = {pool.submit(run_job, **call): index for index, call in enumerate(calls)}
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if on_result:
                    on_result(results[futures[future]])
        except BaseException:
            for future in futures:
                future.cancel()
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()  # a killed benchmark leaves no worker training on
            raise
    return [r for r in results if r is not None]


def _silence_stderr() -> None:
    """A pool worker's stderr (progress bars of N workers at once) goes nowhere; a failing job
    still reports its error through its result."""
    import sys

    sys.stderr = open(os.devnull, "w")  # kept open for the worker's whole life


@contextmanager
def _terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt while the pool runs, so its workers are terminated too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_ray(calls, workers: int, threads: int, address: str | None, on_result) -> list[dict]:
    from adfuse.config import require

    ray = require("ray", "bench", "the Ray backend")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            options["address"] = address
        else:
            options["num_cpus"] = workers * threads
        try:
            ray.init(**options)
        except (ConnectionError, RuntimeError) as error:
            raise ConfigError(
                f"ray: cannot start or reach a cluster at {address!r} ({error})"
            ) from None
    try:
        remote = ray.remote(num_cpus=threads, max_retries=0)(run_job)
        pending = {remote.remote(**call): index for index, call in enumerate(calls)}
        results: list[dict | None] = [None] * len(calls)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for reference in done:
                index = pending.pop(reference)
                results[index] = ray.get(reference)
                if on_result:
                    on_result(results[index])
        return [r for r in results if r is not None]
    finally:
        if started_here:
            ray.shutdown()
