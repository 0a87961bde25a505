"""``python -m bench.compare`` (``make report``): every method on the embedded default, several seeds.

One extraction (``customkd extract`` on ELPV with the EfficientNet-Lite0 teacher) serves every run;
each run is a ``customkd distill`` subprocess, as a user would type it. The report then aggregates
the runs' ``metrics.json`` files, draws the figures (:mod:`bench.figures`) and writes
``docs/results.md``, ``docs/results/`` (figures, ``summary.json``, each run's ``config.json`` and
``metrics.json``) and the README's headline table.

Runs live under ``--out`` (default ``runs/report``): ``<setting>/<variant>/seed<k>/``. A finished
run whose command line is unchanged is reused; an interrupted one resumes from its checkpoint, so
an interrupted report picks up where it stopped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import results_page
from bench.config import GLIBC_TUNABLES
from bench.results_page import mean_std
from trainer.distill import write_json

log = logging.getLogger("bench.compare")

DOCS = Path("docs")
README = Path("README.md")


@dataclass(frozen=True)
class Variant:
    """One row of the table: a method plus the distill flags that make it an ablation."""

    name: str
    slug: str
    method: str
    flags: tuple[str, ...] = ()


VARIANTS = (
    Variant("student", "student", "student"),
    Variant("fitnet", "fitnet", "fitnet"),
    Variant("kd", "kd", "kd"),
    Variant("dkd", "dkd", "dkd"),
    Variant("customkd", "customkd", "customkd"),
    Variant("customkd+dkd", "customkd+dkd", "customkd+dkd"),
    Variant("customkd, random head", "customkd-random-head", "customkd", ("--customize-head", "random")),
    Variant("customkd, λ_s = 0", "customkd-no-specific", "customkd", ("--lambda-specific", "0")),
)
BY_SLUG = {v.slug: v for v in VARIANTS}
# Bump when a change to customkd's defaults or to this report makes finished runs stale.
REPORT_VERSION = 2


@dataclass(frozen=True)
class Job:
    setting: str
    variant: Variant
    seed: int
    run_dir: Path
    argv: tuple[str, ...]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0])
    p.add_argument("--cache", default="caches/elpv-efficientnet_lite0.zarr", help="the store every run reads")
    p.add_argument("--teacher", default="efficientnet_lite0")
    p.add_argument("--data", default="elpv")
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--teacher-weights", default=None, help="passed to extract --weights (tests use 'random')")
    p.add_argument("--student", default=None, help="student for every run (default: distill's default)")
    p.add_argument("--out", type=Path, default=Path("runs/report"), help="the report's run folder")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (each seed also draws its label subset)")
    p.add_argument("--epochs", type=int, default=6,
                   help="KD epochs per run (6, not distill's 8, keeps the report near 1 h on 2 cores)")
    p.add_argument("--image-size", type=int, default=None, help="student resolution (default: distill's default)")
    p.add_argument("--label-fraction", type=float, default=0.1, help="SSL label budget")
    p.add_argument("--ssl-variants", default=",".join(v.slug for v in VARIANTS))
    p.add_argument("--supervised-variants", default="student,customkd",
                   help="variants also run with every label, for reference ('' for none)")
    p.add_argument("--parallel", type=int, default=2, help="runs at once; the cores are split between them")
    p.add_argument("--extra", default="", help="more distill flags for every run, e.g. '--lr 1e-3'")
    p.add_argument("--docs", type=Path, default=DOCS, help="where results.md and results/ are written")
    p.add_argument("--readme", type=Path, default=README, help="README whose headline block is rewritten")
    p.add_argument("--no-docs", action="store_true", help="write nothing outside --out")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1 epoch, 2 variants, no docs")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.no_docs = "0", 1, True
        args.ssl_variants, args.supervised_variants = "student,customkd", ""
    return args


def parse_variants(text: str) -> list[Variant]:
    unknown = [s for s in text.split(",") if s and s not in BY_SLUG]
    if unknown:
        sys.exit(f"error: unknown variant {unknown[0]!r}; choose from {', '.join(BY_SLUG)}")
    return [BY_SLUG[s] for s in text.split(",") if s]


def plan(args: argparse.Namespace) -> list[Job]:
    """Every run of the report, SSL first, in seed-major order so partial reports are balanced."""
    seeds = [int(s) for s in args.seeds.split(",")]
    common = [*(["--epochs", str(args.epochs)] if args.epochs else []),
              *(["--student", args.student] if args.student else []),
              *(["--image-size", str(args.image_size)] if args.image_size else []), *args.extra.split()]
    jobs = []
    for setting, variants in (("ssl", parse_variants(args.ssl_variants)),
                              ("supervised", parse_variants(args.supervised_variants))):
        budget = ["--label-fraction", str(args.label_fraction)] if setting == "ssl" else []
        for seed in seeds:
            for v in variants:
                run_dir = args.out / setting / v.slug / f"seed{seed}"
                argv = ("distill", "--cache", args.cache, "--method", v.method, "--setting", setting, *budget,
                        "--seed", str(seed), *v.flags, *common, "--workers", "1", "--out", str(run_dir))
                jobs.append(Job(setting, v, seed, run_dir, argv))
    if not jobs:
        sys.exit("error: no runs planned; give --ssl-variants and/or --supervised-variants and --seeds")
    return jobs


def cli_argv(*argv: str) -> list[str]:
    return [sys.executable, "-m", "cli", *argv]


def store_state(cache: str) -> str:
    """``absent``, ``partial`` or ``complete`` — decided before extracting, so the timing label is right."""
    from featcache import store as fs

    if not fs.store_exists(cache):
        return "absent"
    return "complete" if fs.read_manifest(fs.open_store(cache)).get("status") == fs.STATUS_COMPLETE else "partial"


def extract(args: argparse.Namespace) -> dict:
    """Run (or confirm) the one extraction and say how long it took: timed here when it ran here, else
    the store's own completed − created stamps."""
    from featcache import store as fs

    before = store_state(args.cache)
    argv = cli_argv("extract", "--teacher", args.teacher, "--data", args.data, "--out", args.cache,
                    "--views", str(args.views), *(["--weights", args.teacher_weights] if args.teacher_weights else []))
    log.info("extract (store %s): %s", before, " ".join(argv[2:]))
    started = time.perf_counter()
    if subprocess.run(argv, env={**os.environ, "GLIBC_TUNABLES": GLIBC_TUNABLES}).returncode != 0:
        sys.exit("error: the extraction failed (its message is above); fix it and rerun make report")
    seconds = time.perf_counter() - started
    group = fs.open_complete_store(args.cache)
    manifest = fs.read_manifest(group)
    held_out = np.asarray(group["labels"][:])[(np.asarray(group["split"][:]) == 1) & (np.asarray(group["valid"][:]) > 0)]
    record = {"command": " ".join(["customkd", *argv[3:]]), "shape": manifest["shape"],
              "majority_class_eval": float(np.bincount(held_out).max() / len(held_out)) if len(held_out) else 0.0,
              "fingerprint": {k: v["hash"] for k, v in manifest["fingerprint"].items()},
              "created": manifest.get("created"), "completed": manifest.get("completed")}
    if before == "absent":
        return {**record, "seconds": round(seconds, 1), "measured": "timed by this report, from an empty cache path"}
    if before == "partial":
        return {**record, "seconds": round(seconds, 1), "measured": "timed by this report, resuming a partial store"}
    if not manifest.get("completed"):
        return {**record, "seconds": None, "measured": "not measured: the store already existed, from a version of "
                "customkd that did not stamp completion; delete it to time a fresh extraction"}
    stored = dt.datetime.fromisoformat(manifest["completed"]) - dt.datetime.fromisoformat(manifest["created"])
    return {**record, "seconds": round(stored.total_seconds(), 1),
            "measured": "the store already existed: its own created → completed stamps"}


def reusable(job: Job, fingerprint: dict) -> bool:
    """A finished run made by the same command, report version and store: it is not run again."""
    timing, metrics, config = (job.run_dir / name for name in ("timing.json", "metrics.json", "config.json"))
    if not (timing.is_file() and metrics.is_file() and config.is_file()):
        return False
    record = json.loads(timing.read_text())
    return (record.get("argv") == list(job.argv) and record.get("report_version") == REPORT_VERSION
            and json.loads(config.read_text()).get("store_fingerprint") == fingerprint
            and "final" in json.loads(metrics.read_text()))


def start(job: Job, threads: int, logs: Path) -> subprocess.Popen:
    """Launch one run; an interrupted run of the same command resumes, anything else starts over."""
    argv = list(job.argv)
    request = job.run_dir / "request.json"
    same = request.is_file() and json.loads(request.read_text()) == {"argv": argv, "report_version": REPORT_VERSION}
    if same and (job.run_dir / "checkpoint.pt").is_file() and (job.run_dir / "config.json").is_file():
        argv.append("--resume")
    else:
        if job.run_dir.exists():  # the report's own folder: a run of another command or an empty start
            shutil.rmtree(job.run_dir)
        job.run_dir.mkdir(parents=True)
        write_json(request, {"argv": argv, "report_version": REPORT_VERSION})
    env = {**os.environ, "GLIBC_TUNABLES": GLIBC_TUNABLES, "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    with open(log_path(job, logs), "w") as fh:
        return subprocess.Popen(cli_argv(*argv), stdout=fh, stderr=subprocess.STDOUT, env=env)


def log_path(job: Job, logs: Path) -> Path:
    return logs / f"{job.setting}-{job.variant.slug}-seed{job.seed}.log"


def stop(running: dict) -> None:
    for proc in running:
        proc.terminate()
    for proc in running:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def record_finished(job: Job, seconds: float, threads: int, parallel: int) -> None:
    """timing.json marks a run finished for :func:`reusable`, so it is written atomically."""
    write_json(job.run_dir / "timing.json",
               {"argv": list(job.argv), "report_version": REPORT_VERSION, "wall_seconds": round(seconds, 1),
                "threads": threads, "concurrent_runs": parallel})
    final = json.loads((job.run_dir / "metrics.json").read_text())["final"]
    log.info("done %-10s %-22s seed %d: acc %.3f  bal acc %.3f  (%.0f s)", job.setting, job.variant.slug,
             job.seed, final["accuracy"], final["balanced_accuracy"], seconds)


def run_all(jobs: list[Job], parallel: int, logs: Path, fingerprint: dict) -> None:
    """Run the jobs not already finished, ``parallel`` at a time, each with ``cores // parallel`` threads.
    On any failure or signal the running children are stopped before this returns."""
    logs.mkdir(parents=True, exist_ok=True)
    todo = [j for j in jobs if not reusable(j, fingerprint)]
    log.info("%d runs planned, %d already finished, %d to run, %d at a time", len(jobs), len(jobs) - len(todo),
             len(todo), parallel)
    threads = max(1, len(os.sched_getaffinity(0)) // parallel)
    running: dict[subprocess.Popen, tuple[Job, float]] = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("error: make report was terminated; rerun it to continue"))
    try:
        while todo or running:
            while todo and len(running) < parallel:
                job = todo.pop(0)
                running[start(job, threads, logs)] = (job, time.perf_counter())
            time.sleep(1.0)
            for proc in [p for p in running if p.poll() is not None]:
                job, began = running.pop(proc)
                if proc.returncode != 0:
                    tail = "\n".join(log_path(job, logs).read_text(errors="replace").splitlines()[-15:])
                    sys.exit(f"{tail}\nerror: {job.setting} {job.variant.slug} seed {job.seed} failed (exit "
                             f"{proc.returncode}); its log is {log_path(job, logs)}; rerun make report to continue")
                record_finished(job, time.perf_counter() - began, threads, parallel)
    finally:
        stop(running)


SHARED_KEYS = ("student", "student_pretrained", "student_weights", "epochs", "image_size", "batch_size", "optimizer",
               "effective_lr", "weight_decay", "lambda_general", "customizer", "customizer_lr", "pseudo_threshold",
               "alternate_every", "kd_temperature", "feature_norm", "device", "n_train", "n_eval", "classes")


def summarize(jobs: list[Job], extraction: dict) -> dict:
    """Per (setting, variant): mean ± sample std over seeds of the final metrics, the curves, the times.
    Refuses runs whose shared settings differ, since the page describes them as one setup."""
    rows: dict[str, dict] = {}
    reference = json.loads((jobs[0].run_dir / "config.json").read_text())
    timings = set()
    for job in jobs:
        metrics = json.loads((job.run_dir / "metrics.json").read_text())
        timing = json.loads((job.run_dir / "timing.json").read_text())
        config = json.loads((job.run_dir / "config.json").read_text())
        differ = [k for k in SHARED_KEYS if config.get(k) != reference.get(k)]
        if differ:
            sys.exit(f"error: {job.run_dir} differs from {jobs[0].run_dir} in {', '.join(differ)}; delete the report's "
                     "run folder (or the odd run) and rerun make report")
        timings.add((timing["threads"], timing["concurrent_runs"]))
        row = rows.setdefault(f"{job.setting}/{job.variant.slug}", {
            "setting": job.setting, "variant": job.variant.name, "slug": job.variant.slug, "seeds": [],
            "accuracy": [], "balanced_accuracy": [], "probe_accuracy": [], "curves": [], "wall_seconds": [],
            "train_seconds": [], "runs": [], "label_fraction": config["effective_label_fraction"]})
        row["seeds"].append(job.seed)
        row["accuracy"].append(metrics["final"]["accuracy"])
        row["balanced_accuracy"].append(metrics["final"]["balanced_accuracy"])
        row["probe_accuracy"].append(metrics["teacher_probe"]["accuracy"])
        row["curves"].append([e["eval"]["accuracy"] for e in metrics["epochs"]])
        row["wall_seconds"].append(timing["wall_seconds"])
        row["train_seconds"].append(sum(e["train"]["seconds"] + e.get("customize", {}).get("seconds", 0.0)
                                        for e in metrics["epochs"]))
        row["runs"].append(str(job.run_dir))
    for row in rows.values():
        for key in ("accuracy", "balanced_accuracy", "probe_accuracy", "wall_seconds", "train_seconds"):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(row[key])
    return {"generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "extraction": extraction,
            "rows": rows, "shared_config": {k: reference.get(k) for k in (*SHARED_KEYS, "lambda_specific")},
            "run_threads": [{"threads": t, "concurrent_runs": c} for t, c in sorted(timings)]}


def copy_run_records(jobs: list[Job], out: Path, dest: Path) -> None:
    """Each run's config.json, metrics.json and timing.json, next to the table (checkpoints stay in ``out``)."""
    target = dest / "runs"
    if target.exists():
        shutil.rmtree(target)
    for job in jobs:
        to = target / job.run_dir.relative_to(out)
        to.mkdir(parents=True)
        for name in ("config.json", "metrics.json", "timing.json"):
            shutil.copy2(job.run_dir / name, to / name)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    started = time.perf_counter()
    jobs = plan(args)
    extraction = extract(args)
    run_all(jobs, args.parallel, args.out / "logs", extraction["fingerprint"])
    summary = summarize(jobs, extraction)
    summary["invocation_seconds"] = round(time.perf_counter() - started, 1)
    summary["teacher_name"], summary["data"] = args.teacher, args.data
    summary["command"] = "python -m bench.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    from bench import figures

    figure_dir = args.out / "figures" if args.no_docs else args.docs / "results"
    figure_dir.mkdir(parents=True, exist_ok=True)
    summary["figures"] = {
        "learning_curves": str(figures.learning_curves(summary, figure_dir / "learning_curves.png")),
        "feature_space": figures.feature_space(
            [j for j in jobs if j.setting == "ssl" and j.seed == jobs[0].seed and j.variant.slug in
             ("customkd", "customkd-random-head")], figure_dir / "feature_space.png"),
    }
    write_json(args.out / "summary.json", summary)
    if not args.no_docs:
        copy_run_records(jobs, args.out, figure_dir)
        write_json(figure_dir / "summary.json", summary)
        (args.docs / "results.md").write_text(results_page.render(summary, args))
        results_page.update_readme(args.readme, summary)
        log.info("wrote %s, %s/ and the headline table in %s", args.docs / "results.md", figure_dir, args.readme)
    log.info("report done in %.0f s (run folder %s)", time.perf_counter() - started, args.out)


if __name__ == "__main__":
    main()
