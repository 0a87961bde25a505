"""``customkd report`` (``make report``): every regime × method × seed on the embedded default.

A *regime* is a student and a teacher (:data:`REGIMES`); a *variant* is a method plus the distill flags
that make it an ablation (:data:`VARIANTS`). The report extracts once per teacher it needs
(``customkd extract``), then runs each (regime, variant, seed) as a ``customkd distill`` subprocess, as a
user would type it. It aggregates the runs' ``metrics.json``, measures how each CustomKD-type run's
student lines up with its customized target (:mod:`report.alignment`), pairs every method with CustomKD
seed by seed (:mod:`report.results_page`), draws the figures (:mod:`report.figures`) and writes
``docs/results.md``, ``docs/results/`` (figures, ``summary.json``, each run's ``config.json``,
``metrics.json``, ``timing.json`` and ``alignment.json``) and the README's headline table.

Runs live under ``--out`` (default ``runs/report``): ``<regime>/<variant>/seed<k>/``. A finished run
whose command line is unchanged is reused; an interrupted one resumes from its checkpoint, so the
report can be run in parts (``--regimes``, ``--variants``, ``--seeds``) and picks up where it stopped.
"""

from __future__ import annotations

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

from customkd.common.devices import GLIBC_TUNABLES
from customkd.common.errors import UserError
from customkd.common.files import write_json, write_text
from customkd.report import results_page
from customkd.report.alignment import run_alignment
from customkd.report.config import ReportConfig, default_cache
from customkd.report.results_page import mean_std
from customkd.trainer import run_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """One row of a table: a method plus the distill flags that make it an ablation."""

    name: str
    slug: str
    method: str
    flags: tuple[str, ...] = ()


VARIANTS: dict[str, Variant] = {v.slug: v for v in (
    Variant("student", "student", "student"),
    # λ_g = 3: FitNet's best of {0.3, 1, 3} on the digits development split (docs/tuning.md §8)
    Variant("fitnet", "fitnet", "fitnet", ("--lambda-general", "3")),
    Variant("kd", "kd", "kd"),
    Variant("kd+fitnet", "kd+fitnet", "kd+fitnet"),
    Variant("dkd", "dkd", "dkd"),
    Variant("customkd", "customkd", "customkd"),
    Variant("customkd+kd", "customkd+kd", "customkd+kd"),
    Variant("customkd+dkd", "customkd+dkd", "customkd+dkd"),
    Variant("customkd, random head", "customkd-random-head", "customkd", ("--customize-head", "random")),
    Variant("customkd, jointly trained random head", "customkd-random-trained", "customkd",
            ("--customize-head", "random-trained")),
    Variant("customkd, λ_s = 0", "customkd-no-specific", "customkd", ("--lambda-specific", "0")),
)}


@dataclass(frozen=True)
class Store:
    """A regime's own teacher store: dataset, teacher and extract flags (``None`` in a regime = the
    report's ``--data`` / ``--teacher`` store)."""

    data: str
    teacher: str
    flags: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        size = self.flags[self.flags.index("--teacher-size") + 1] if "--teacher-size" in self.flags else ""
        return default_cache(self.data, self.teacher).removesuffix(".zarr") + (f"-{size}px" if size else "") + ".zarr"


# digits, efficientnet_lite2 at 128 px (its ImageNet probe on digits is within a point of 260 px), 8 views
DIGITS_LITE2 = Store("digits", "efficientnet_lite2", ("--teacher-size", "128", "--views", "8"))
ALL_VARIANTS = ("student", "fitnet", "kd", "kd+fitnet", "dkd", "customkd", "customkd+kd", "customkd+dkd",
                "customkd-random-head", "customkd-random-trained", "customkd-no-specific")


@dataclass(frozen=True)
class Regime:
    """One table: a teacher store (``store``; ``None`` = the report's ``--data`` with ``base`` = ``--teacher`` or
    ``large`` = ``--large-teacher``), a student (``student_flags``; empty = ``--student`` or distill's default),
    a setting, the regime's own distill flags (label budget, resolution, schedule; the report's ``--epochs``,
    ``--min-steps`` and ``--image-size`` override them) and its variants. ``compare_to`` names a regime whose
    runs of the same variants and seeds this one is read against (and are planned too)."""

    slug: str
    title: str
    variants: tuple[str, ...]
    teacher: str = "base"
    store: Store | None = None
    student_flags: tuple[str, ...] = ()
    distill_flags: tuple[str, ...] = ()
    setting: str = "ssl"
    compare_to: str | None = None


REGIMES: dict[str, Regime] = {r.slug: r for r in (
    Regime("headroom", "Headroom: digits, a small student from random initialisation", ALL_VARIANTS,
           store=DIGITS_LITE2, student_flags=("--student", "mobilenetv3_small_050"),
           distill_flags=("--labels-per-class", "10", "--image-size", "32", "--epochs", "30", "--min-steps", "0")),
    Regime("pretrained", "Pretrained: digits, the ImageNet-pretrained efficientnet_lite0 student", ALL_VARIANTS,
           store=DIGITS_LITE2, student_flags=("--student", "efficientnet_lite0", "--student-pretrained"),
           distill_flags=("--labels-per-class", "10", "--image-size", "48", "--epochs", "12", "--min-steps", "0")),
    Regime("main", "Main regime: the embedded default, a randomly initialised student",
           ("student", "kd", "customkd", "customkd+kd")),
    Regime("large-teacher", "A larger teacher, same student as the main regime (not in the default report)",
           ("kd", "customkd"), teacher="large", compare_to="main"),
    Regime("supervised", "Supervised, every label (reference; not in the default report)",
           ("student", "customkd"), setting="supervised"),
)}
# Bump when a change to customkd's defaults or to this report makes finished runs stale.
REPORT_VERSION = 4


@dataclass(frozen=True)
class Job:
    regime: Regime
    variant: Variant
    seed: int
    run_dir: Path
    argv: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.regime.slug}/{self.variant.slug}"


def names(text: str, table: dict, what: str) -> list:
    unknown = [s for s in text.split(",") if s and s not in table]
    if unknown:
        raise UserError(f"unknown {what} {unknown[0]!r}; choose from {', '.join(table)}")
    return [table[s] for s in text.split(",") if s]


def store_of(regime: Regime, cfg: ReportConfig) -> Store:
    """The teacher store a regime's runs read (its own, or the report's ``--data`` with its teacher)."""
    if regime.store is not None:
        return regime.store
    if regime.teacher == "large":
        return Store(cfg.data, cfg.large_teacher, ("--views", str(cfg.views)))
    return Store(cfg.data, cfg.teacher, ("--views", str(cfg.views)))


def cache_of(regime: Regime, cfg: ReportConfig) -> str:
    """The store path: ``--cache`` / ``--large-cache`` for the report's own data, else the regime store's."""
    if regime.store is not None:
        return regime.store.path
    return cfg.large_cache if regime.teacher == "large" else cfg.cache


def plan(cfg: ReportConfig) -> list[Job]:
    """Every run of the report, regime by regime in seed-major order so partial reports are balanced;
    a regime's ``compare_to`` runs are added once where they are not planned already."""
    keep = {v.slug for v in names(cfg.variants, VARIANTS, "variant")} or set(VARIANTS)
    wanted: list[tuple[Regime, list[Variant]]] = []
    for regime in names(cfg.regimes, REGIMES, "regime"):
        variants = [VARIANTS[s] for s in regime.variants if s in keep]
        wanted.append((regime, variants))
        if regime.compare_to and variants:
            wanted.append((REGIMES[regime.compare_to], variants))
    jobs: dict[Path, Job] = {}
    for regime, variants in wanted:
        for seed in cfg.seeds_of(regime.slug):
            for v in variants:
                job = make_job(regime, v, seed, cfg)
                jobs.setdefault(job.run_dir, job)
    if not jobs:
        raise UserError("no runs planned; check --regimes, --variants and --seeds")
    return list(jobs.values())


def make_job(regime: Regime, variant: Variant, seed: int, cfg: ReportConfig) -> Job:
    student = regime.student_flags or (("--student", cfg.student) if cfg.student else ())
    has_budget = "--labels-per-class" in regime.distill_flags or "--label-fraction" in regime.distill_flags
    budget = ("--label-fraction", str(cfg.label_fraction)) if regime.setting == "ssl" and not has_budget else ()
    run_dir = cfg.out / regime.slug / variant.slug / f"seed{seed}"
    argv = ("distill", "--cache", cache_of(regime, cfg), "--method", variant.method, "--setting",
            regime.setting, *budget, *regime.distill_flags, "--seed", str(seed), *variant.flags, *student,
            *(["--epochs", str(cfg.epochs)] if cfg.epochs else []),
            *(["--min-steps", str(cfg.min_steps)] if cfg.min_steps is not None else []),
            *(["--image-size", str(cfg.image_size)] if cfg.image_size else []),
            *(["--eval-split", cfg.eval_split] if cfg.eval_split != "test" else []), *cfg.extra.split(),
            "--workers", "1", "--out", str(run_dir))
    return Job(regime, variant, seed, run_dir, argv)


def cli_argv(*argv: str) -> list[str]:
    return [sys.executable, "-m", "customkd.cli", *argv]


def store_state(cache: str) -> str:
    """``absent``, ``partial`` or ``complete`` — decided before extracting, so the timing label is right."""
    from customkd.featcache import store as fs

    if not fs.store_exists(cache):
        return "absent"
    return "complete" if fs.read_status(fs.open_store(cache), cache) == fs.STATUS_COMPLETE else "partial"


def extract(store: Store, cache: str, cfg: ReportConfig) -> dict:
    """Run (or confirm) one teacher's extraction and say how long it took: timed here when it ran here,
    else the store's own completed − created stamps."""
    from customkd.featcache import store as fs

    before = store_state(cache)
    teacher = store.teacher
    argv = cli_argv("extract", "--teacher", teacher, "--data", store.data, "--out", cache, *store.flags,
                    *(["--weights", cfg.teacher_weights] if cfg.teacher_weights else []))
    log.info("extract (store %s): %s", before, " ".join(argv[2:]))
    started = time.perf_counter()
    if subprocess.run(argv, env={**os.environ, "GLIBC_TUNABLES": GLIBC_TUNABLES}).returncode != 0:
        raise UserError(f"the extraction with teacher {teacher} failed (its message is above); fix it and rerun "
                        "make report")
    seconds = time.perf_counter() - started
    group = fs.open_complete_store(cache)
    manifest = fs.read_manifest(group, cache)
    held_out = np.asarray(group["labels"][:])[(np.asarray(group["split"][:]) == 1) & (np.asarray(group["valid"][:]) > 0)]
    record = {"teacher": teacher, "data": store.data, "cache": cache, "command": " ".join(["customkd", *argv[3:]]),
              "shape": list(manifest.shape),
              "majority_class_eval": float(np.bincount(held_out).max() / len(held_out)) if len(held_out) else 0.0,
              "store_fingerprint": manifest.fingerprint.hashes(),  # as a run's config.json records it
              "created": manifest.created, "completed": manifest.completed}
    if before == "absent":
        return {**record, "seconds": round(seconds, 1), "measured": "timed by this report, from an empty cache path"}
    if before == "partial":
        return {**record, "seconds": round(seconds, 1), "measured": "timed by this report, resuming a partial store"}
    if not manifest.completed:
        return {**record, "seconds": None, "measured": "not measured: the store already existed, from a version of "
                "customkd that did not stamp completion; delete it to time a fresh extraction"}
    stored = dt.datetime.fromisoformat(manifest.completed) - dt.datetime.fromisoformat(manifest.created)
    return {**record, "seconds": round(stored.total_seconds(), 1),
            "measured": "the store already existed: its own created → completed stamps"}


def extract_all(jobs: list[Job], cfg: ReportConfig) -> dict[str, dict]:
    """One extraction per teacher the planned runs need, keyed by the store path their argv names."""
    stores = {cache_of(job.regime, cfg): store_of(job.regime, cfg) for job in jobs}
    return {cache: extract(store, cache, cfg) for cache, store in stores.items()}


def job_cache(job: Job) -> str:
    return job.argv[job.argv.index("--cache") + 1]


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
    raise UserError("the report was terminated; rerun it to continue (finished runs are kept)")


def run_all(jobs: list[Job], parallel: int, logs: Path, extractions: dict[str, dict]) -> int:
    """Run the jobs not already finished, ``parallel`` at a time, each with ``cores // parallel`` threads;
    returns how many ran. On any failure or signal the running children are stopped before this returns."""
    logs.mkdir(parents=True, exist_ok=True)
    todo = [j for j in jobs if not reusable(j, extractions[job_cache(j)]["store_fingerprint"])]
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
                    tail = "\n".join(log_path(job, logs).read_text(errors="replace").splitlines()[-15:])
                    print(tail, file=sys.stderr)
                    raise UserError(f"{job.key} seed {job.seed} failed (exit {proc.returncode}); its log is "
                                    f"{log_path(job, logs)} (last lines above); rerun the report to continue")
                record_finished(job, time.perf_counter() - began, threads, parallel)
    finally:
        stop(running)
    return ran


# What makes a regime one setup (every run of it must agree); method options may differ between variants.
SHARED_KEYS = ("student", "student_pretrained", "student_weights", "epochs", "image_size", "batch_size", "optimizer",
               "effective_lr", "weight_decay", "feature_norm", "device", "n_train", "n_eval", "classes", "teacher",
               "labels_per_class", "setting", "label_fraction", "eval_split")
# What the page prints of a regime: the setup, and the method options as its customkd run used them.
CONFIG_KEYS = (*SHARED_KEYS, "effective_lambda_general", "lambda_specific", "specific_space", "specific_loss", "customizer",
               "customizer_lr", "customizer_init", "customizer_optimizer", "customize_epochs", "pseudo_threshold",
               "alternate_every", "kd_temperature", "kd_weight", "customize_warmup", "customizer_activation",
               "customizer_weight_decay", "customize_smoothing", "customizer_reset", "min_steps")


def train_mechanism(metrics: run_folder.RunMetrics) -> dict:
    """CustomKD's per-epoch training-side numbers, when the run logged them: the task-specific MSE at the
    first epoch that has it (warm-up epochs have none) and at the last epoch, its unreachable part and RMS(θ^h_t(f_t)) ÷ RMS(f_s) at the last epoch."""
    logged = [e["train"] for e in metrics.epochs if "specific" in e["train"]] or [metrics.epochs[0]["train"]]
    first, last = logged[0], metrics.epochs[-1]["train"]
    unreachable = next((k for k in last if "unreachable" in k), None)
    values = {"specific_first": first.get("specific"), "specific_last": last.get("specific"),
              "specific_unreachable_last": last.get(unreachable) if unreachable else None,
              "train_rms_ratio_last": last.get("rms_ratio")}
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float)}


def collect(jobs: list[Job], alignments: dict[Path, dict]) -> dict[str, dict]:
    """Per (regime, variant): the per-seed final metrics, curves, times and mechanism numbers."""
    rows: dict[str, dict] = {}
    for job in jobs:
        metrics = run_folder.read_metrics(job.run_dir)
        timing = run_folder.read_timing(job.run_dir)
        config = run_folder.read_config(job.run_dir).values
        row = rows.setdefault(job.key, {
            "regime": job.regime.slug, "variant": job.variant.name, "slug": job.variant.slug,
            "method": job.variant.method, "seeds": [], "accuracy": [], "balanced_accuracy": [], "probe_accuracy": [],
            "curves": [], "wall_seconds": [], "train_seconds": [], "runs": [], "mechanism": {}, "alignment": {},
            "label_fraction": config["label_fraction"]})
        row["seeds"].append(job.seed)
        row["accuracy"].append(metrics.final["accuracy"])
        row.setdefault("per_class", []).append(metrics.final.get("per_class_accuracy"))
        row["balanced_accuracy"].append(metrics.final["balanced_accuracy"])
        row["probe_accuracy"].append(metrics.teacher_probe["accuracy"])
        row["curves"].append([e["eval" if "eval" in e else "val"]["accuracy"] for e in metrics.epochs])
        row["wall_seconds"].append(timing["wall_seconds"])
        row["train_seconds"].append(sum(e["train"]["seconds"] + e.get("customize", {}).get("seconds", 0.0)
                                        for e in metrics.epochs))
        row["runs"].append(str(job.run_dir))
        for group, values in (("mechanism", train_mechanism(metrics)), ("alignment", alignments.get(job.run_dir, {}))):
            for name, value in values.items():
                row[group].setdefault(name, []).append(value)
    for row in rows.values():
        for key in ("accuracy", "balanced_accuracy", "probe_accuracy", "wall_seconds", "train_seconds"):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(row[key])
    return rows


def regime_configs(jobs: list[Job]) -> dict[str, dict]:
    """Each regime's shared settings, from its first run; refuses a regime whose runs differ in them,
    since the page describes each regime as one setup."""
    configs: dict[str, tuple[Path, dict]] = {}
    for job in jobs:
        config = run_folder.read_config(job.run_dir).values
        first, reference = configs.setdefault(job.regime.slug, (job.run_dir, config))
        differ = [k for k in SHARED_KEYS if config.get(k) != reference.get(k)]
        if differ:
            raise UserError(f"{job.run_dir} differs from {first} in {', '.join(differ)}; delete the report's run "
                     "folder (or the odd run) and rerun make report")
        if job.variant.slug == "customkd":
            configs[job.regime.slug] = (first, config)
    return {slug: {k: config.get(k) for k in CONFIG_KEYS} for slug, (_, config) in configs.items()}


def summarize(jobs: list[Job], extractions: dict[str, dict], alignments: dict[Path, dict],
              cfg: ReportConfig) -> dict:
    """Everything the page shows: per-row numbers, per-regime setup, paired comparisons, budget inputs."""
    configs = regime_configs(jobs)
    regimes = {}
    for job in jobs:
        if job.regime.slug not in regimes:
            store, cache = store_of(job.regime, cfg), cache_of(job.regime, cfg)
            regimes[job.regime.slug] = {"title": job.regime.title, "teacher": store.teacher, "data": store.data,
                                        "cache": cache, "majority_class_eval": extractions[cache]["majority_class_eval"],
                                        "setting": job.regime.setting, "compare_to": job.regime.compare_to,
                                        "config": configs[job.regime.slug]}
    timing = [run_folder.read_timing(j.run_dir) for j in jobs]
    summary = {"generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "eval_split": cfg.eval_split,
               "extractions": extractions, "regimes": regimes, "rows": collect(jobs, alignments),
               "run_threads": [{"threads": t, "concurrent_runs": c}
                               for t, c in sorted({(r["threads"], r["concurrent_runs"]) for r in timing})]}
    summary["comparisons"] = results_page.comparisons(summary)
    return summary


RUNS_INDEX_TITLE = "# Run records of `make report`"


def copy_run_records(jobs: list[Job], out: Path, dest: Path) -> None:
    """Each run's config, metrics, timing (and alignment) JSON next to the table (weights stay in ``out``)."""
    target = dest / "runs"
    index = target / "README.md"
    if target.exists():
        if not index.is_file() or not index.read_text(errors="replace").startswith(RUNS_INDEX_TITLE):
            raise UserError(f"{target} exists and is not the report's run-record folder (no {RUNS_INDEX_TITLE!r} "
                            "index); pass --docs DIR for another folder")
        shutil.rmtree(target)
    for job in jobs:
        to = target / job.run_dir.relative_to(out)
        to.mkdir(parents=True)
        run_folder.copy_records(job.run_dir, to)
    # an index the page links to: a folder link is not a file a clone can check
    lines = [RUNS_INDEX_TITLE, "", "Generated with docs/results.md; do not edit by hand.", ""]
    for job in jobs:
        rel = job.run_dir.relative_to(out)
        files = sorted(p.name for p in (target / rel).iterdir())
        lines.append(f"- `{rel.as_posix()}`: " + ", ".join(f"[{n}]({rel.as_posix()}/{n})" for n in files))
    write_text(target / "README.md", "\n".join(lines) + "\n")


def measure_alignment(jobs: list[Job]) -> dict[Path, dict]:
    """:func:`report.alignment.run_alignment` for every run whose method declares θ^h_t (cached per run)."""
    from customkd.trainer.methods import method_class

    return {job.run_dir: run_alignment(job.run_dir) for job in jobs
            if method_class(job.variant.method).customizes}


def draw_figures(summary: dict, jobs: list[Job], figure_dir: Path) -> dict:
    from customkd.report import figures

    seed = min(job.seed for job in jobs)
    panels = ("customkd", "customkd-random-head", "customkd-random-trained")
    regime = next((j.regime.slug for j in jobs if j.variant.slug in panels), None)  # the first planned regime with them
    heads = [j for j in jobs if j.regime.slug == regime and j.seed == seed and j.variant.slug in panels]
    return {"learning_curves": str(figures.learning_curves(summary, figure_dir / "learning_curves.png")),
            "feature_space": figures.feature_space(heads, figure_dir / "feature_space.png")}


def make_report(cfg: ReportConfig, command: str = "customkd report") -> dict:
    """Plan, extract, run, collect, align, draw and write; returns the summary (also ``<out>/summary.json``)."""
    cfg = cfg.resolved()
    started = time.perf_counter()
    jobs = plan(cfg)
    if not cfg.no_docs:
        results_page.check_writable(cfg)
    extractions = extract_all(jobs, cfg)
    ran = run_all(jobs, cfg.parallel, cfg.out / "logs", extractions)
    aligned = time.perf_counter()
    alignments = measure_alignment(jobs)
    summary = summarize(jobs, extractions, alignments, cfg)
    summary["command"] = command
    summary["parallel"], summary["runs_run_here"] = cfg.parallel, ran
    summary["alignment_seconds"] = round(time.perf_counter() - aligned, 1)
    figure_dir = cfg.out / "figures" if cfg.no_docs else cfg.docs / "results"
    figure_dir.mkdir(parents=True, exist_ok=True)
    summary["figures"] = draw_figures(summary, jobs, figure_dir)
    summary["invocation_seconds"] = round(time.perf_counter() - started, 1)
    summary["budget"] = results_page.budget(summary)
    write_json(cfg.out / "summary.json", summary)
    if not cfg.no_docs:
        copy_run_records(jobs, cfg.out, figure_dir)
        write_json(figure_dir / "summary.json", summary)
        write_text(cfg.docs / "results.md", results_page.render(summary, cfg))
        if cfg.readme is not None:
            results_page.update_readme(cfg.readme, summary)
        log.info("wrote %s and %s/%s", cfg.docs / "results.md", figure_dir,
                 f", and the headline table in {cfg.readme}" if cfg.readme is not None else "")
    log.info("report done in %.0f s (run folder %s)", time.perf_counter() - started, cfg.out)
    return summary
