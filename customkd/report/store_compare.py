"""``customkd compare`` / ``customkd.compare``: chosen methods × seeds on any complete store, each run with the same
distill flags, written up as one self-contained page.

It is the report's machinery with one regime, the user's store: jobs are ``customkd distill`` command lines
(:mod:`report.jobs`), run, reused and resumed by :mod:`report.runner`, collected by :mod:`report.collect`, compared
seed by seed with :mod:`report.results_page`'s paired intervals and drawn by :mod:`report.figures`. Everything it
writes lies under ``--out``:

    OUT/compare.json                 what was asked (marks the folder as compare's own)
    OUT/runs/<method>/seed<k>/       each run's folder (as distill writes it) and, beside it, its request
    OUT/logs/                        each run's log
    OUT/results.md                   the page (:mod:`report.store_page`)
    OUT/results/                     summary.json (every number of the page) and the figures

The store is only read.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import time
from pathlib import Path

from customkd.common.errors import UserError
from customkd.common.files import check_path, write_json, write_text
from customkd.contract.datasets import check_outside_data
from customkd.report import results_page, store_page
from customkd.report.collect import summarize
from customkd.report.compare import VARIANTS, draw_figures
from customkd.report.config import CompareConfig
from customkd.report.jobs import Job, Regime, Variant, distill_argv, names
from customkd.report.runner import run_all, store_record

log = logging.getLogger(__name__)

REGIME = "compare"  # the one regime of a compare summary
MARK = "compare.json"


def method_table() -> dict[str, Variant]:
    """Every distill method with distill's own defaults, then the report's ablation variants (customkd with a
    random head, …) by their slugs."""
    from customkd.trainer.methods import METHODS

    table = {name: Variant(name, name, name) for name in METHODS}
    return {**table, **{slug: v for slug, v in VARIANTS.items() if slug not in table}}


def customizes(variant: Variant) -> bool:
    """A CustomKD-family method (it trains θ^h_t)."""
    from customkd.trainer.methods import method_class

    return method_class(variant.method).customizes


def check_places(cfg: CompareConfig) -> None:
    """Before anything runs: the store exists and --out is a folder compare may write (new, empty or its own,
    and not inside the store)."""
    from customkd.contract import location, store

    check_path(cfg.out, "--out")
    if not store.store_exists(cfg.cache):
        raise UserError(f"no store at {cfg.cache}; make one with customkd extract --data DATA --teacher TEACHER "
                        f"--out {cfg.cache}, or pass --cache the path of an existing store")
    check_outside_data(store.Store.open_complete(cfg.cache).manifest.data_spec, cfg.out, "--out",
                       results_page.FIGURES_IN_DATA)
    out = cfg.out.resolve()
    if not location.is_remote(cfg.cache):
        root = Path(location.to_local(cfg.cache)).resolve()
        if out == root or root in out.parents:
            raise UserError(f"--out {cfg.out} is inside the store {cfg.cache}, which compare only reads; pass a "
                            "folder outside it, e.g. --out runs/compare")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {cfg.out} is a file; pass a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARK).is_file():
        raise UserError(f"--out {cfg.out} is not empty and not a customkd compare folder (no {MARK}); pass a new "
                        "or empty folder, so nothing of yours is overwritten")


def setup_flags(cfg: CompareConfig) -> tuple[str, ...]:
    """The teacher choice, setting and label budget, only as given: what is not given is distill's default."""
    flags = []
    for flag, value in (("--teacher", cfg.teacher), ("--setting", cfg.setting), ("--labels-per-class", cfg.labels_per_class),
                        ("--label-fraction", cfg.label_fraction)):
        if value is not None:
            flags += [flag, str(value)]
    return tuple(flags)


def common_flags(cfg: CompareConfig) -> tuple[str, ...]:
    """The flags every run shares: student, schedule, resolution, evaluation split and ``--extra``."""
    flags = []
    for flag, value in (("--student", cfg.student), ("--epochs", cfg.epochs), ("--min-steps", cfg.min_steps),
                        ("--image-size", cfg.image_size)):
        if value is not None:
            flags += [flag, str(value)]
    if cfg.eval_split != "test":
        flags += ["--eval-split", cfg.eval_split]
    return (*flags, *shlex.split(cfg.extra))


def plan(cfg: CompareConfig, store: dict) -> list[Job]:
    """Every method × seed, seed-major (a compare stopped halfway has whole seeds), into OUT/runs/<method>/seed<k>."""
    variants = names(",".join(cfg.methods), method_table(), "method")
    regime = Regime(REGIME, title(store), tuple(v.slug for v in variants), setting=cfg.setting or "")
    setup, common = setup_flags(cfg), common_flags(cfg)
    jobs = []
    for seed in cfg.seeds:
        for variant in variants:
            run_dir = cfg.out / "runs" / variant.slug / f"seed{seed}"
            jobs.append(Job(regime, variant, seed, run_dir,
                            distill_argv(cfg.cache, variant, seed, run_dir, setup, common)))
    return jobs


def title(store: dict) -> str:
    return f"{store['data']}, teacher {store['teacher']}, {len(store['classes'])} classes"


def pairs(jobs: list[Job], baseline: str | None) -> list[tuple[str, str]]:
    """Row keys ``(a, b)`` to compare as ``a − b``: every method against ``baseline`` when one is given, else every
    CustomKD-family method against every other method, else (one family only) every pair in the given order."""
    variants = list(dict.fromkeys(job.variant for job in jobs))
    key = {v.slug: f"{REGIME}/{v.slug}" for v in variants}
    if baseline is not None:
        return [(key[v.slug], key[baseline]) for v in variants if v.slug != baseline]
    ours = [v for v in variants if customizes(v)]
    others = [v for v in variants if not customizes(v)]
    if ours and others:
        return [(key[a.slug], key[b.slug]) for a in ours for b in others]
    return [(key[a.slug], key[b.slug]) for i, a in enumerate(variants) for b in variants[i + 1:]]


def comparisons(summary: dict, wanted: list[tuple[str, str]]) -> list[dict]:
    """Paired per-seed differences ``a − b`` of accuracy and balanced accuracy with 95 % t-intervals; with more than
    one comparison the accuracy intervals are Holm-corrected over all of them (family-wise α = 0.05)."""
    rows, found = summary["rows"], []
    for a, b in wanted:
        c = {"regime": REGIME, "kind": "paired", "a": a, "b": b,
             **{m: results_page.paired(results_page.by_seed(rows[a], m), results_page.by_seed(rows[b], m))
                for m in ("accuracy", "balanced_accuracy")}}
        c["accuracy"]["p"] = results_page.p_value(c["accuracy"])
        found.append(c)
    if len(found) > 1:
        results_page.holm(found)
    return found


def command_line(cfg: CompareConfig) -> str:
    """The command that makes this page (and reuses its runs)."""
    defaults = CompareConfig(cache=cfg.cache, out=cfg.out)
    argv = ["customkd", "compare", "--cache", str(cfg.cache), "--methods", ",".join(cfg.methods),
            "--seeds", ",".join(map(str, cfg.seeds)), "--out", str(cfg.out)]
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if field.name not in ("cache", "methods", "seeds", "out") and value != getattr(defaults, field.name):
            argv += [f"--{field.name.replace('_', '-')}", str(value)]
    return shlex.join(argv)


def compare(cfg: CompareConfig | None = None, /, **settings) -> dict:
    """Run (or reuse) every method × seed of ``cfg`` on its store and write OUT/results.md, OUT/results/ and the
    runs under OUT; returns the summary (OUT/results/summary.json), whose ``"advice"`` is the page's answer.

        customkd.compare(cache="caches/pets.zarr", methods="kd,customkd", seeds="0,1,2", out="runs/compare-pets")
    """
    if cfg is None:
        cfg = CompareConfig(**settings)
    elif settings:
        raise UserError("pass either a CompareConfig or keyword settings, not both")
    started = time.perf_counter()
    check_places(cfg)
    store = store_record(cfg.cache, cfg.teacher)
    jobs = plan(cfg, store)
    source = jobs[0].source  # the store, or one teacher choice of it
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_json(cfg.out / MARK, {"command": command_line(cfg), **{k: str(v) if isinstance(v, Path) else v
                                                                 for k, v in dataclasses.asdict(cfg).items()}})
    ran = run_all(jobs, cfg.parallel, cfg.out / "logs", {source: store})
    regime = {"title": title(store), "teacher": store["teacher"], "data": store["data"], "cache": cfg.cache,
              "source": source, "setting": cfg.setting, "compare_to": None}
    wanted = pairs(jobs, cfg.baseline)
    summary = summarize(jobs, {source: store}, {}, {REGIME: regime}, cfg.eval_split,
                        lambda s: comparisons(s, wanted))
    summary["regimes"][REGIME]["setting"] = summary["regimes"][REGIME]["config"]["setting"]  # as the runs used it
    figure_dir = cfg.out / "results"
    figure_dir.mkdir(exist_ok=True)
    summary["figures"] = draw_figures(summary, jobs, figure_dir)
    summary.update(command=command_line(cfg), runs_run_here=ran, parallel=cfg.parallel,
                   invocation_seconds=round(time.perf_counter() - started, 1), advice=store_page.advice(summary))
    write_json(figure_dir / "summary.json", summary)
    write_text(cfg.out / "results.md", store_page.render(summary))
    log.info("wrote %s (%d runs, %d run here)", cfg.out / "results.md", len(jobs), ran)
    return summary
