"""From finished run folders to the numbers a page shows: per-row metrics over seeds, each regime's shared setup
(refusing a regime whose runs disagree on it), CustomKD's training-side and alignment numbers. Shared by
``customkd report`` and ``customkd compare``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

from customkd.common.errors import UserError
from customkd.report.alignment import run_alignment
from customkd.report.jobs import Job
from customkd.report.results_page import mean_std
from customkd.trainer import run_folder

# What makes a regime one setup (every run of it must agree); method options may differ between variants.
SHARED_KEYS = ("student", "student_pretrained", "student_weights", "epochs", "image_size", "batch_size", "optimizer",
               "effective_lr", "effective_weight_decay", "decay_norm_bias", "warmup_epochs", "warmup_lr",
               "feature_norm", "device", "n_train", "n_eval", "classes", "teacher", "labels_per_class", "setting",
               "label_fraction", "eval_split")
# Settings a run recorded before they existed, as it used them (a run of a later version records its own).
RECORDED_LATER = {"decay_norm_bias": True, "warmup_epochs": 0.0, "warmup_lr": 1e-5}
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


def as_used(config: dict) -> dict:
    """A run's config.json with the settings added after it was recorded filled in as it used them (its weight decay
    was the one ``weight_decay`` held)."""
    return {**RECORDED_LATER, "effective_weight_decay": config.get("weight_decay"), **config}


def regime_configs(jobs: list[Job]) -> dict[str, dict]:
    """Each regime's shared settings, from its first run; refuses a regime whose runs differ in them,
    since the page describes each regime as one setup."""
    configs: dict[str, tuple[Path, dict]] = {}
    for job in jobs:
        config = as_used(run_folder.read_config(job.run_dir).values)
        first, reference = configs.setdefault(job.regime.slug, (job.run_dir, config))
        differ = [k for k in SHARED_KEYS if config.get(k) != reference.get(k)]
        if differ:
            raise UserError(f"{job.run_dir} differs from {first} in {', '.join(differ)}; delete the odd run "
                            "folder and rerun the same command")
        if job.variant.slug == "customkd":
            configs[job.regime.slug] = (first, config)
    return {slug: {k: config.get(k) for k in CONFIG_KEYS} for slug, (_, config) in configs.items()}


def summarize(jobs: list[Job], extractions: dict[str, dict], alignments: dict[Path, dict], regimes: dict[str, dict],
              eval_split: str, comparisons: Callable[[dict], list[dict]]) -> dict:
    """Everything the page shows: per-row numbers, per-regime setup (``regimes``: slug → title, teacher, data,
    cache, source (its record's key in ``extractions``), setting, compare_to; completed here from the store records
    and the runs' configs), the paired ``comparisons`` of the summary, budget inputs."""
    configs = regime_configs(jobs)
    regimes = {slug: {**{k: r[k] for k in ("title", "teacher", "data", "cache")},
                      "majority_class_eval": extractions[r["source"]]["majority_class_eval"],
                      "setting": r["setting"], "compare_to": r["compare_to"], "pick": r.get("pick"),
                      "config": configs[slug]}
               for slug, r in regimes.items()}
    timing = [run_folder.read_timing(j.run_dir) for j in jobs]
    summary = {"generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "eval_split": eval_split,
               "extractions": extractions, "regimes": regimes, "rows": collect(jobs, alignments),
               "run_threads": [{"threads": t, "concurrent_runs": c}
                               for t, c in sorted({(r["threads"], r["concurrent_runs"]) for r in timing})]}
    summary["comparisons"] = comparisons(summary)
    return summary


def measure_alignment(jobs: list[Job]) -> dict[Path, dict]:
    """:func:`report.alignment.run_alignment` for every run whose method declares θ^h_t (cached per run)."""
    from customkd.trainer.methods import method_class

    return {job.run_dir: run_alignment(job.run_dir) for job in jobs
            if method_class(job.variant.method).customizes}
