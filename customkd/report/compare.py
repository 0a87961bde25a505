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
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from customkd.common.devices import GLIBC_TUNABLES
from customkd.common.errors import UserError
from customkd.common.files import check_path, write_json, write_text
from customkd.contract.datasets import check_outside_data
from customkd.report import results_page
from customkd.report.collect import measure_alignment, summarize
from customkd.report.config import ReportConfig
from customkd.report.jobs import Job, Regime, Store, Variant, distill_argv, names, source
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


HEADROOM_STUDENT = ("--student", "mobilenetv3_small_050")
HEADROOM_FLAGS = ("--labels-per-class", "10", "--image-size", "32", "--epochs", "30", "--min-steps", "0")
# the three bundled EfficientNet-Lite teachers over one view set (digits, 128 px, 8 views): the teacher comparison
DIGITS_LITES = Store("digits", "efficientnet_lite0", ("--teacher-size", "128", "--views", "8"),
                     added=("efficientnet_lite1", "efficientnet_lite2"))


def teacher_regime(slug: str, pick: str, title: str, compare_to: str | None = None) -> Regime:
    """kd and customkd distilled from one teacher choice of :data:`DIGITS_LITES`, as the headroom regime trains."""
    return Regime(slug, f"Teachers on one store: {title}, the headroom student and budget", ("kd", "customkd"),
                  store=DIGITS_LITES, student_flags=HEADROOM_STUDENT,
                  distill_flags=(*HEADROOM_FLAGS, "--teacher", pick), compare_to=compare_to, pick=pick)


REGIMES: dict[str, Regime] = {r.slug: r for r in (
    Regime("headroom", "Headroom: digits, a small student from random initialisation", ALL_VARIANTS,
           store=DIGITS_LITE2, student_flags=HEADROOM_STUDENT, distill_flags=HEADROOM_FLAGS),
    Regime("pretrained", "Pretrained: digits, the ImageNet-pretrained efficientnet_lite0 student", ALL_VARIANTS,
           store=DIGITS_LITE2, student_flags=("--student", "efficientnet_lite0", "--student-pretrained"),
           distill_flags=("--labels-per-class", "10", "--image-size", "48", "--epochs", "12", "--min-steps", "0")),
    Regime("main", "Main regime: the embedded default, a randomly initialised student",
           ("student", "kd", "customkd", "customkd+kd")),
    Regime("large-teacher", "A larger teacher, same student as the main regime (not in the default report)",
           ("kd", "customkd"), teacher="large", compare_to="main"),
    Regime("supervised", "Supervised, every label (reference; not in the default report)",
           ("student", "customkd"), setting="supervised"),
    teacher_regime("teachers-lite0", "efficientnet_lite0", "efficientnet_lite0"),
    teacher_regime("teachers-lite2", "efficientnet_lite2", "efficientnet_lite2", compare_to="teachers-lite0"),
    teacher_regime("teachers-ensemble", "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2",
                   "the Lite0 + Lite1 + Lite2 ensemble (features concatenated)", compare_to="teachers-lite2"),
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


def store_state(cache: str, teacher: str | None = None) -> str:
    """``absent``, ``partial`` or ``complete`` (of ``teacher``, for a teacher added to an existing store) —
    decided before extracting, so the timing label is right."""
    from customkd.contract import store as fs

    if not fs.store_exists(cache):
        return "absent"
    opened = fs.Store.open(cache)
    if teacher is None:
        return "complete" if opened.status == fs.STATUS_COMPLETE else "partial"
    entry = opened.stored_manifest().teacher(teacher)
    return "absent" if entry is None else "complete" if entry.status == fs.STATUS_COMPLETE else "partial"


def extract_teacher(store: Store, cache: str, teacher: str, cfg: ReportConfig) -> dict:
    """Run (or confirm) one teacher's extraction — the store's first with ``--out``, an added one with ``--into`` —
    and say how long it took: timed here when it ran here (and remembered in ``<out>/extractions.json``), else
    that memory or the store's own stamps."""
    first = teacher == store.teacher
    before = store_state(cache, None if first else teacher)
    where = ("--data", store.data, "--out", cache, *store.flags) if first else ("--into", cache, *store.size_flags)
    argv = cli_argv("extract", "--teacher", teacher, *where,
                    *(["--weights", cfg.teacher_weights] if cfg.teacher_weights else []))
    log.info("extract (%s): %s", f"store {before}" if first else f"added teacher {before}", " ".join(argv[2:]))
    started = time.perf_counter()
    if subprocess.run(argv, env={**os.environ, "GLIBC_TUNABLES": GLIBC_TUNABLES}).returncode != 0:
        raise UserError(f"the extraction with teacher {teacher} failed (its message is above); fix it and rerun "
                        "make report")
    seconds = time.perf_counter() - started
    command, completed = " ".join(["customkd", *argv[3:]]), teacher_completed(cache, teacher)
    memory = cfg.out / EXTRACTIONS
    remembered = json.loads(memory.read_text()) if memory.is_file() else {}
    if before != "complete":
        how = {"partial": "resuming a partial store", "absent": "from an empty cache path" if first
               else "adding it to the store"}[before]
        timed = {"seconds": round(seconds, 1), "measured": f"timed by this report, {how}", "completed": completed}
        memory.parent.mkdir(parents=True, exist_ok=True)
        write_json(memory, {**remembered, source(cache, teacher): timed})
        return {"command": command, **timed}
    known = remembered.get(source(cache, teacher), {})
    if known.get("completed") == completed and completed is not None:
        return {"command": command, **known}
    return {"command": command, "completed": completed, **stamped_time(store, cache, teacher)}


EXTRACTIONS = "extractions.json"  # under --out: each extraction this report timed, by its completion stamp


def teacher_completed(cache: str, teacher: str) -> str | None:
    """When ``teacher``'s features were completed in ``cache`` (its own stamp; a version-2 store's, the store's)."""
    from customkd.contract import store as fs

    manifest = fs.Store.open(cache).stored_manifest()
    entry = manifest.teacher(teacher)
    return (entry.completed if entry is not None and entry.completed else None) or manifest.completed


def stamped_time(store: Store, cache: str, teacher: str) -> dict:
    """An extraction this report did not time: the store's created → completed stamps for its first teacher
    (that one extraction made the store), nothing for a teacher added later (its start is not stamped)."""
    stored = store_record(cache, teacher if store.added else None) if teacher == store.teacher else {}
    if not stored.get("completed"):
        return {"seconds": None, "measured": "not measured: it already existed and its start is not stamped; "
                "delete the store to time a fresh extraction"}
    took = dt.datetime.fromisoformat(stored["completed"]) - dt.datetime.fromisoformat(stored["created"])
    return {"seconds": round(took.total_seconds(), 1),
            "measured": "the store already existed: its own created → completed stamps"}


def extract(store: Store, cache: str, cfg: ReportConfig, picks: set[str | None]) -> dict[str, dict]:
    """Every teacher of one store extracted, and a record per teacher choice the runs read (keyed by
    :func:`report.jobs.source`): the store as the runs see it, the command and time of the extractions it
    needed, and the whole store's time (``store_seconds``, counted once in the budget)."""
    timings = {teacher: extract_teacher(store, cache, teacher, cfg) for teacher in store.teachers}
    known = [t["seconds"] for t in timings.values()]
    store_seconds = None if None in known else round(sum(known), 1)
    records = {}
    for pick in picks:
        used = [timings[t] for t in (pick.split(",") if pick else store.teachers)]
        seconds = [t["seconds"] for t in used]
        stored = store_record(cache, pick)
        records[source(cache, pick)] = {
            "teacher": stored["teacher"], "data": store.data, "cache": cache,
            "command": "; ".join(t["command"] for t in used),
            **{k: stored[k] for k in ("shape", "majority_class_eval", "store_fingerprint", "created", "completed")},
            "seconds": None if None in seconds else round(sum(seconds), 1),
            "measured": "; ".join(dict.fromkeys(t["measured"] for t in used)),
            "store": "+".join(store.teachers), "store_seconds": store_seconds}
    return records


def extract_all(jobs: list[Job], cfg: ReportConfig) -> dict[str, dict]:
    """One extraction per store the planned runs need; a record per teacher choice, keyed by ``Job.source``."""
    stores = {cache_of(job.regime, cfg): store_of(job.regime, cfg) for job in jobs}
    picks: dict[str, set] = {}
    for job in jobs:
        picks.setdefault(cache_of(job.regime, cfg), set()).add(job.regime.pick)
    return {key: record for cache, store in stores.items() for key, record in extract(store, cache, cfg,
                                                                                       picks[cache]).items()}


def regimes_of(jobs: list[Job], cfg: ReportConfig) -> dict[str, dict]:
    """Each planned regime's title, teacher, data, store and setting, for :func:`report.collect.summarize`."""
    regimes: dict[str, dict] = {}
    for job in jobs:
        store = store_of(job.regime, cfg)
        regimes.setdefault(job.regime.slug, {"title": job.regime.title, "teacher": job.regime.pick or store.teacher,
                                             "data": store.data, "cache": cache_of(job.regime, cfg),
                                             "source": job.source, "pick": job.regime.pick,
                                             "setting": job.regime.setting,
                                             "compare_to": job.regime.compare_to})
    return regimes


MARK = "report.json"  # in --out: the folder is a report's run folder, which later reports may write
_REPORT_FILES = {"summary.json", "results.md", EXTRACTIONS}  # what an older report, without the mark, left in --out
_REPORT_FOLDERS = {"logs", "figures", "results"}


def claim_out(cfg: ReportConfig) -> None:
    """Refuse, before anything is written, an ``--out`` that is a file, or a folder that is not empty and not the
    report's own: marked with :data:`MARK`, or an older report's (nothing at its top but what a report writes,
    no link). Only the check: :func:`mark_out` marks it once every other check has passed."""
    out = Path(cfg.out)
    check_path(out, "--out")
    check_outside_data(cfg.data, out, "--out", results_page.FIGURES_IN_DATA)
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
