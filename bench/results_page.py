"""``docs/results.md`` and the README's headline table, rendered from the report's summary."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

README_START, README_END = "<!-- report:start -->", "<!-- report:end -->"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; NaN for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else float("nan"))


def pct(mean: float, std: float) -> str:
    return f"{100 * mean:.1f}" if math.isnan(std) else f"{100 * mean:.1f} ± {100 * std:.1f}"  # NaN: one seed


def setting_rows(summary: dict, setting: str) -> list[dict]:
    return [r for r in summary["rows"].values() if r["setting"] == setting]


def table(summary: dict, setting: str, with_time: bool = True) -> str:
    rows = setting_rows(summary, setting)
    head = "| method | accuracy % | balanced accuracy % | seeds |"
    if with_time:
        head += " training time per run | process wall time per run |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    best = max(r["accuracy_mean"] for r in rows)
    for r in rows:
        name = f"**{r['variant']}**" if r["accuracy_mean"] == best else r["variant"]
        line = (f"| {name} | {pct(r['accuracy_mean'], r['accuracy_std'])} | "
                f"{pct(r['balanced_accuracy_mean'], r['balanced_accuracy_std'])} | {len(r['seeds'])} |")
        if with_time:
            line += f" {r['train_seconds_mean']:.0f} s | {r['wall_seconds_mean']:.0f} s |"
        lines.append(line)
    return "\n".join(lines)


def probe_line(summary: dict, setting: str) -> str:
    rows = setting_rows(summary, setting)
    mean, std = mean_std(rows[0]["probe_accuracy"])  # the same labels for every variant of a seed
    return (f"Teacher probe (a linear head fitted on the cached teacher features of the same labeled images): "
            f"{pct(mean, std)} %")


def majority(summary: dict) -> str:
    return f"{100 * summary['extraction']['majority_class_eval']:.1f} %"


def delta(summary: dict, a: str, b: str, setting: str = "ssl") -> str:
    """Mean accuracy difference a − b in points, with the per-seed paired differences (same labels per seed)."""
    rows = summary["rows"]
    ra, rb = rows.get(f"{setting}/{a}"), rows.get(f"{setting}/{b}")
    if not ra or not rb:
        return "n/a (not run)"
    by_seed = dict(zip(rb["seeds"], rb["accuracy"], strict=True))
    paired = [100 * (acc - by_seed[seed]) for seed, acc in zip(ra["seeds"], ra["accuracy"], strict=True) if seed in by_seed]
    wins = sum(d > 0 for d in paired)
    return (f"**{100 * (ra['accuracy_mean'] - rb['accuracy_mean']):+.1f}** points (per seed "
            f"{', '.join(f'{d:+.1f}' for d in paired)}; ahead on {wins} of {len(paired)} seeds)")


def student_init(cfg: dict) -> str:
    if cfg.get("student_weights"):
        return f"initialised from `{cfg['student_weights']}`"
    return "initialised from the hub's pretrained weights" if cfg.get("student_pretrained") else "from random initialisation"


def headline(summary: dict) -> str:
    cfg, rows = summary["shared_config"], setting_rows(summary, "ssl")
    if not rows:
        return "(`make report` ran no SSL runs, so there is no headline table.)"
    return "\n".join([
        f"`{summary['data']}`, `ssl` with {100 * rows[0]['label_fraction']:.0f} % of the training labels, "
        f"teacher `{summary['teacher_name']}`, student `{cfg['student']}` {student_init(cfg)} at "
        f"{cfg['image_size']} px, {cfg['epochs']} KD epochs, mean ± sample std over {len(rows[0]['seeds'])} seeds "
        f"(`make report`, device `{cfg['device']}`):",
        "",
        table(summary, "ssl", with_time=False),
        "",
        f"{probe_line(summary, 'ssl')}; majority class {majority(summary)}. Full results, ablations, figures and "
        "every run's config: [docs/results.md](docs/results.md).",
    ])


def setup_section(summary: dict) -> list[str]:
    cfg, ext = summary["shared_config"], summary["extraction"]
    took = (f"**{ext['seconds']:.0f} s** ({ext['measured']})" if ext["seconds"] is not None
            else f"an unknown time ({ext['measured']})")
    ssl = setting_rows(summary, "ssl")
    threads = "; ".join(f"{t['concurrent_runs']} runs at a time with {t['threads']} CPU thread(s) each"
                        for t in summary["run_threads"])
    return [
        "## Setup",
        "",
        f"- Data: `{summary['data']}`, {cfg['n_train']} training and {cfg['n_eval']} held-out images, classes "
        f"{', '.join(cfg['classes'])}. The majority class is {majority(summary)} of the held-out images, so "
        "balanced accuracy (mean per-class recall) is reported beside accuracy.",
        f"- Teacher: `{summary['teacher_name']}` (D = {ext['shape'][2]}), {ext['shape'][1]} cached views per image.",
        f"- **One extraction served every run**: `{ext['command']}` took {took}.",
        f"- Student: `{cfg['student']}` {student_init(cfg)} at {cfg['image_size']} px on `{cfg['device']}`, "
        f"{cfg['epochs']} KD epochs, batch {cfg['batch_size']}, {cfg['optimizer']} lr {cfg['effective_lr']} "
        f"(weight decay {cfg['weight_decay']}), λ_g = {cfg['lambda_general']}, λ_s = {cfg['lambda_specific']}, "
        f"{cfg['customizer']} θ^h_t with Adam {cfg['customizer_lr']}, pseudo-label threshold "
        f"{cfg['pseudo_threshold']}, KD temperature {cfg['kd_temperature']}.",
        *([f"- SSL: {100 * ssl[0]['label_fraction']:.0f} % of the training labels per class, drawn by the seed "
           "(so for one seed every method sees the same labels); the other training images are unlabeled and "
           "feed the teacher terms of the methods that have them."] if ssl else []),
        f"- Runs: {threads}. Training time is the sum of the KD and customization epochs; process wall time "
        "adds startup, hashing the images, the teacher probe and per-epoch evaluation.",
        "- ± is the sample standard deviation over seeds.",
        "",
    ]


def findings_section(summary: dict) -> list[str]:
    return [
        "## What the numbers say",
        "",
        f"- CustomKD − `student`: {delta(summary, 'customkd', 'student')}.",
        f"- CustomKD − `fitnet`: {delta(summary, 'customkd', 'fitnet')}.",
        f"- CustomKD − `kd`: {delta(summary, 'customkd', 'kd')}.",
        f"- Ablation, customizing through a random head − through the student's head: "
        f"{delta(summary, 'customkd-random-head', 'customkd')}.",
        f"- Ablation, dropping the task-specific term (λ_s = 0) − full CustomKD: "
        f"{delta(summary, 'customkd-no-specific', 'customkd')}.",
        f"- CustomKD+DKD − CustomKD: {delta(summary, 'customkd+dkd', 'customkd')}.",
        "- How the defaults were chosen, and what did not help: [tuning.md](tuning.md).",
        "",
    ]


def figures_section(summary: dict) -> list[str]:
    parts = ["## Learning curves", "", "![eval accuracy per epoch](results/learning_curves.png)", ""]
    cka = summary["figures"].get("feature_space", {})
    if not cka:
        return parts
    return parts + [
        "## Feature space (the paper's Figure 3)",
        "",
        "![t-SNE of customized teacher features and student features](results/feature_space.png)",
        "",
        "Linear CKA between paired features of the held-out images (centre view), seed-"
        f"{cka['seed']} SSL runs. f_t is the standardised teacher feature the trainer uses (CKA is not "
        "invariant to per-dimension scaling):",
        "",
        "| θ^h_t customized through | CKA(θ^h_t(f_t), f_s) | CKA(f_t, f_s) |",
        "|---|---|---|",
        *[f"| {head} head | {cka[head]['customized_vs_student']:.3f} | {cka[head]['teacher_vs_student']:.3f} |"
          for head in ("student", "random") if head in cka],
        "",
    ]


def reproduce_section(summary: dict, args: argparse.Namespace) -> list[str]:
    return [
        "## Reproduce",
        "",
        "```",
        "make report",
        "```",
        "",
        f"runs `{summary['command']}`: the extraction (a no-op when the store exists), then every run into "
        f"`{args.out}/<setting>/<variant>/seed<k>/` (finished runs are reused, interrupted ones resume). Each run's "
        "`config.json` (every setting and the store fingerprint), `metrics.json` (per-epoch curves) and "
        "`timing.json` (command line, wall time) are copied to [`docs/results/runs/`](results/runs/); "
        "[`summary.json`](results/summary.json) holds every number on this page.",
        "",
    ]


def render(summary: dict, args: argparse.Namespace) -> str:
    parts = [
        "# Results on the embedded default",
        "",
        "_Generated by `make report` (`bench/compare.py`); do not edit by hand. "
        f"Generated {summary['generated']}; this invocation of the report took "
        f"{summary['invocation_seconds'] / 60:.0f} min (finished runs are reused, see Reproduce)._",
        "",
        *setup_section(summary),
    ]
    for setting in ("ssl", "supervised"):
        if any(r["setting"] == setting for r in summary["rows"].values()):
            rows = setting_rows(summary, setting)
            title = (f"SSL, {100 * rows[0]['label_fraction']:.0f} % of the labels" if setting == "ssl"
                     else "Supervised, every label (reference)")
            parts += [f"## {title}", "", table(summary, setting), "", probe_line(summary, setting) + ".", ""]
    parts += [*findings_section(summary), *figures_section(summary), *reproduce_section(summary, args)]
    return "\n".join(parts)


def update_readme(path: Path, summary: dict) -> None:
    """Replace the README block between the report markers with the headline table."""
    text = path.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"error: {path} has no {README_START} … {README_END} block for the headline table")
    before, rest = text.split(README_START, 1)
    _, after = rest.split(README_END, 1)
    path.write_text(f"{before}{README_START}\n{headline(summary)}\n{README_END}{after}")
