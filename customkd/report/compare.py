"""``customkd report`` (``make report``): every regime × method × seed on the embedded default.

A *regime* is a student and a teacher (:data:`REGIMES`); a *variant* is a method plus the distill flags
that make it an ablation (:data:`VARIANTS`). The report extracts once per teacher it needs
(``customkd extract``), then runs each (regime, variant, seed) as a ``customkd distill`` subprocess, as a
user would type it, with the machinery ``customkd compare`` uses on any store (:mod:`report.jobs`,
:mod:`report.runner`, :mod:`report.collect`). It aggregates the runs' ``metrics.json``, measures how each CustomKD-type run's
student lines up with its customized target (:mod:`report.alignment`), pairs every method with CustomKD
seed by seed (:mod:`report.results_page`), draws the figures (:mod:`report.figures`) and writes
``docs/results.md``, ``docs/results/`` (figures, ``summary.json``, each run's ``config.json``,
``metrics.json``, ``timing.json`` and ``alignment.json``) and the README's headline table.

Runs live under ``--out`` (default ``runs/report``): ``<regime>/<variant>/seed<k>/``. A finished run
whose command line is unchanged is reused; an interrupted one resumes from its checkpoint, so the
report can be run in parts (``--regimes``, ``--variants``, ``--seeds``) and picks up where it stopped.
``--out`` is the report's own folder (:data:`MARK`): a folder holding anything else is refused before anything
is written. With ``--no-docs`` the page and ``results/`` are written there too, and nothing outside it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from customkd.common.devices import GLIBC_TUNABLES
from customkd.common.errors import UserError
from customkd.common.files import write_json, write_text
from customkd.report import results_page
from customkd.report.collect import measure_alignment, summarize
from customkd.report.config import ReportConfig
from customkd.report.jobs import Job, Regime, Store, Variant, distill_argv, names
from customkd.report.runner import cli_argv, run_all, store_record
from customkd.trainer import run_folder

log = logging.getLogger(__name__)


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


DIGITS_LITE2 = Store("digits", "efficientnet_lite2", ("--teacher-size", "128", "--views", "8"))
ALL_VARIANTS = ("student", "fitnet", "kd", "kd+fitnet", "dkd", "customkd", "customkd+kd", "customkd+dkd",
                "customkd-random-head", "customkd-random-trained", "customkd-no-specific")


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
    setup = ("--setting", regime.setting, *budget, *regime.distill_flags)
    common = (*student, *(["--epochs", str(cfg.epochs)] if cfg.epochs else []),
              *(["--min-steps", str(cfg.min_steps)] if cfg.min_steps is not None else []),
              *(["--image-size", str(cfg.image_size)] if cfg.image_size else []),
              *(["--eval-split", cfg.eval_split] if cfg.eval_split != "test" else []), *cfg.extra.split())
    return Job(regime, variant, seed, run_dir, distill_argv(cache_of(regime, cfg), variant, seed, run_dir, setup, common))


def store_state(cache: str) -> str:
    """``absent``, ``partial`` or ``complete`` — decided before extracting, so the timing label is right."""
    from customkd.featcache import store as fs

    if not fs.store_exists(cache):
        return "absent"
    return "complete" if fs.read_status(fs.open_store(cache), cache) == fs.STATUS_COMPLETE else "partial"


def extract(store: Store, cache: str, cfg: ReportConfig) -> dict:
    """Run (or confirm) one teacher's extraction and say how long it took: timed here when it ran here,
    else the store's own completed − created stamps."""
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
    stored = store_record(cache, teacher)
    record = {"teacher": teacher, "data": store.data, "cache": cache, "command": " ".join(["customkd", *argv[3:]]),
              **{k: stored[k] for k in ("shape", "majority_class_eval", "store_fingerprint", "created", "completed")}}
    if before == "absent":
        return {**record, "seconds": round(seconds, 1), "measured": "timed by this report, from an empty cache path"}
    if before == "partial":
        return {**record, "seconds": round(seconds, 1), "measured": "timed by this report, resuming a partial store"}
    if not record["completed"]:
        return {**record, "seconds": None, "measured": "not measured: the store already existed, from a version of "
                "customkd that did not stamp completion; delete it to time a fresh extraction"}
    took = dt.datetime.fromisoformat(record["completed"]) - dt.datetime.fromisoformat(record["created"])
    return {**record, "seconds": round(took.total_seconds(), 1),
            "measured": "the store already existed: its own created → completed stamps"}


def extract_all(jobs: list[Job], cfg: ReportConfig) -> dict[str, dict]:
    """One extraction per teacher the planned runs need, keyed by the store path their argv names."""
    stores = {cache_of(job.regime, cfg): store_of(job.regime, cfg) for job in jobs}
    return {cache: extract(store, cache, cfg) for cache, store in stores.items()}


def regimes_of(jobs: list[Job], cfg: ReportConfig) -> dict[str, dict]:
    """Each planned regime's title, teacher, data, store and setting, for :func:`report.collect.summarize`."""
    regimes: dict[str, dict] = {}
    for job in jobs:
        store = store_of(job.regime, cfg)
        regimes.setdefault(job.regime.slug, {"title": job.regime.title, "teacher": store.teacher, "data": store.data,
                                             "cache": cache_of(job.regime, cfg), "setting": job.regime.setting,
                                             "compare_to": job.regime.compare_to})
    return regimes


MARK = "report.json"  # in --out: the folder is a report's run folder, which later reports may write
_REPORT_FILES = {"summary.json", "results.md"}  # what an older report, which wrote no mark, left at the top of --out
_REPORT_FOLDERS = {"logs", "figures", "results"}


def claim_out(cfg: ReportConfig) -> None:
    """Refuse, before anything is written, an ``--out`` that is a file, or a folder that is not empty and not the
    report's own: marked with :data:`MARK`, or an older report's (nothing at its top but what a report writes,
    no link). Only the check: :func:`mark_out` marks it once every other check has passed."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a new or empty folder for the report's runs")
    if not out.is_dir() or (out / MARK).is_file():
        return
    foreign = next((entry.name for entry in sorted(out.iterdir()) if not _written_by_a_report(entry)), None)
    if foreign is not None:
        raise UserError(f"--out {out} is not empty and not a customkd report folder (no {MARK}; it holds "
                        f"{foreign}); pass a new or empty folder as --out, so nothing of yours is overwritten")


def _written_by_a_report(entry: Path) -> bool:
    if entry.is_symlink():
        return False
    if entry.is_dir():
        return entry.name in _REPORT_FOLDERS or entry.name in REGIMES
    return entry.is_file() and entry.name in _REPORT_FILES


def mark_out(cfg: ReportConfig) -> None:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARK).is_file():
        write_json(out / MARK, {"created_by": "customkd report", "created": dt.datetime.now(dt.UTC).isoformat()})


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
    claim_out(cfg)
    results_page.check_writable(cfg)
    mark_out(cfg)
    extractions = extract_all(jobs, cfg)
    ran = run_all(jobs, cfg.parallel, cfg.out / "logs", extractions)
    aligned = time.perf_counter()
    alignments = measure_alignment(jobs)
    summary = summarize(jobs, extractions, alignments, regimes_of(jobs, cfg), cfg.eval_split, results_page.comparisons)
    summary["command"] = command
    summary["parallel"], summary["runs_run_here"] = cfg.parallel, ran
    summary["alignment_seconds"] = round(time.perf_counter() - aligned, 1)
    figure_dir = cfg.docs / "results"  # with --no-docs, under --out
    figure_dir.mkdir(parents=True, exist_ok=True)
    summary["figures"] = draw_figures(summary, jobs, figure_dir)
    summary["invocation_seconds"] = round(time.perf_counter() - started, 1)
    summary["budget"] = results_page.budget(summary)
    write_json(cfg.out / "summary.json", summary)
    copy_run_records(jobs, cfg.out, figure_dir)
    write_json(figure_dir / "summary.json", summary)
    write_text(cfg.docs / "results.md", results_page.render(summary, cfg))
    if cfg.readme is not None:
        results_page.update_readme(cfg.readme, summary)
    log.info("wrote %s and %s/%s", cfg.docs / "results.md", figure_dir,
             f", and the headline table in {cfg.readme}" if cfg.readme is not None else "")
    log.info("report done in %.0f s (run folder %s)", time.perf_counter() - started, cfg.out)
    return summary
