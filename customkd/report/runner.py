"""Running jobs as a user would type them: each a ``customkd distill`` subprocess, ``parallel`` at a time, a finished
run (same command line, same :data:`REPORT_VERSION`, same store) reused, an interrupted one resumed from its checkpoint.
Shared by ``customkd report`` and ``customkd compare``."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from customkd.common.devices import GLIBC_TUNABLES
from customkd.common.errors import UserError
from customkd.common.files import write_json
from customkd.report.jobs import Job
from customkd.trainer import run_folder

log = logging.getLogger(__name__)

# Bump when a change to customkd's defaults or to this report makes finished runs stale.
REPORT_VERSION = 4


def cli_argv(*argv: str) -> list[str]:
    return [sys.executable, "-m", "customkd.cli", *argv]


def reusable(job: Job, fingerprint: dict) -> bool:
    """A finished run made by the same command, report version and store: it is not run again."""
    if not run_folder.exists(job.run_dir, run_folder.TIMING, run_folder.METRICS, run_folder.CONFIG):
        return False
    record = run_folder.read_timing(job.run_dir)
    return (record.get("argv") == list(job.argv) and record.get("report_version") == REPORT_VERSION
            and run_folder.read_config(job.run_dir).store_fingerprint == fingerprint
            and run_folder.read_metrics(job.run_dir).final is not None)


def start(job: Job, threads: int, logs: Path) -> subprocess.Popen:
    """Launch one run; an interrupted run of the same command resumes, anything else starts over."""
    argv = list(job.argv)
    # beside the run folder, not in it: distill refuses a folder holding files that are not its own
    request = job.run_dir.with_name(job.run_dir.name + ".request.json")
    same = request.is_file() and json.loads(request.read_text()) == {"argv": argv, "report_version": REPORT_VERSION}
    if same and run_folder.exists(job.run_dir, run_folder.CHECKPOINT, run_folder.CONFIG):
        argv.append("--resume")
    else:
        run_folder.remove_run(job.run_dir)  # a run of another command or an empty start; never a user's folder
        job.run_dir.parent.mkdir(parents=True, exist_ok=True)
        write_json(request, {"argv": argv, "report_version": REPORT_VERSION})
    env = {**os.environ, "GLIBC_TUNABLES": GLIBC_TUNABLES, "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    with open(log_path(job, logs), "w") as fh:
        return subprocess.Popen(cli_argv(*argv), stdout=fh, stderr=subprocess.STDOUT, env=env)


def log_path(job: Job, logs: Path) -> Path:
    return logs / f"{job.regime.slug}-{job.variant.slug}-seed{job.seed}.log"


def stop(running: dict) -> None:
    for proc in running:
        proc.terminate()
    for proc in running:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def record_finished(job: Job, seconds: float, threads: int, parallel: int) -> None:
    """timing.json marks a run finished for :func:`reusable`."""
    run_folder.write_timing(job.run_dir, {"argv": list(job.argv), "report_version": REPORT_VERSION,
                                          "wall_seconds": round(seconds, 1), "threads": threads,
                                          "concurrent_runs": parallel})
    final = run_folder.read_metrics(job.run_dir).final
    log.info("done %-38s seed %d: acc %.3f  bal acc %.3f  (%.0f s)", job.key, job.seed, final["accuracy"],
             final["balanced_accuracy"], seconds)


def _terminated(*_) -> None:
    raise UserError("terminated; rerun the same command to continue (finished runs are kept)")


def _failed(job: Job, code: int, logs: Path) -> UserError:
    """The error for a run that failed: its log's last lines shown indented (so the run's own ``error:`` line is not
    taken for this command's), then what to do: a run refused by distill (exit 2) needs its options or inputs fixed
    first, a crash or a kill only a rerun."""
    tail = log_path(job, logs).read_text(errors="replace").splitlines()[-15:]
    print("\n".join(f"  {line}" for line in tail), file=sys.stderr)
    then = ("fix what its last line says, then rerun the same command (finished runs are kept)" if code == 2
            else "rerun the same command to continue")
    return UserError(f"{job.key} seed {job.seed} failed (exit {code}); its log is {log_path(job, logs)} (last lines "
                     f"above); {then}")


def run_all(jobs: list[Job], parallel: int, logs: Path, extractions: dict[str, dict]) -> int:
    """Run the jobs not already finished, ``parallel`` at a time, each with ``cores // parallel`` threads;
    returns how many ran. On any failure or signal the running children are stopped before this returns."""
    logs.mkdir(parents=True, exist_ok=True)
    todo = [j for j in jobs if not reusable(j, extractions[j.source]["store_fingerprint"])]
    ran = len(todo)
    log.info("%d runs planned, %d already finished, %d to run, %d at a time", len(jobs), len(jobs) - len(todo),
             len(todo), parallel)
    threads = max(1, len(os.sched_getaffinity(0)) // parallel)
    running: dict[subprocess.Popen, tuple[Job, float]] = {}
    signal.signal(signal.SIGTERM, _terminated)
    try:
        while todo or running:
            while todo and len(running) < parallel:
                job = todo.pop(0)
                running[start(job, threads, logs)] = (job, time.perf_counter())
            time.sleep(1.0)
            for proc in [p for p in running if p.poll() is not None]:
                job, began = running.pop(proc)
                if proc.returncode != 0:
                    raise _failed(job, proc.returncode, logs)
                record_finished(job, time.perf_counter() - began, threads, parallel)
    finally:
        stop(running)
    return ran


def store_record(cache: str, teacher: str | None = None) -> dict:
    """What the page says about a complete store as its runs read it (``teacher``: one, ``A,B``, or None for the
    store's only teacher): data, teacher, shape ``[N, V, D]``, classes, the evaluation rows' majority class, and
    the fingerprint a run's config.json records of it, which :func:`reusable` checks."""
    from customkd.contract import store as fs

    store = fs.Store.open_complete(cache)
    manifest, group = store.for_teachers(teacher), store.group
    held_out = np.asarray(group["labels"][:])[(np.asarray(group["split"][:]) == 1) & (np.asarray(group["valid"][:]) > 0)]
    return {"teacher": manifest.fingerprint.teacher.name, "data": manifest.data_spec, "cache": cache,
            "shape": [*manifest.shape, manifest.feature_dim], "classes": list(manifest.classes),
            "majority_class_eval": float(np.bincount(held_out).max() / len(held_out)) if len(held_out) else 0.0,
            "store_fingerprint": manifest.fingerprint.hashes(),  # as a run's config.json records it
            "created": manifest.created, "completed": manifest.completed}
