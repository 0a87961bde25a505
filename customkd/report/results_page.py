"""``docs/results.md`` and the README's headline table, rendered from the report's summary.

Every sentence that states a result is generated from the numbers in the summary: the paired
comparisons (:func:`paired`), the verdict (:func:`verdict`) and the budget (:func:`budget`).
"""

from __future__ import annotations

import math
import stat
from pathlib import Path

import numpy as np

from customkd.common.errors import UserError
from customkd.common.files import atomic_path, check_path
from customkd.contract.datasets import check_outside_data
from customkd.report.config import README_END, README_START, ReportConfig
from customkd.trainer import run_folder


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; NaN for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else float("nan"))


def paired(a: dict[int, float], b: dict[int, float], scale: float = 100.0) -> dict:
    """Per-seed differences ``a − b`` (×``scale``) over the seeds both have, their mean and the 95 %
    t-interval mean ± t_{0.975, n−1} · s / √n (NaN bounds with fewer than 2 seeds)."""
    seeds = sorted(set(a) & set(b))
    diffs = [scale * (a[s] - b[s]) for s in seeds]
    if not diffs:
        return {"seeds": [], "per_seed": [], "mean": float("nan"), "low": float("nan"), "high": float("nan"),
                "wins": 0, "n": 0}
    mean, std = mean_std(diffs)
    half = t_quantile(0.975, len(diffs) - 1) * std / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return {"seeds": seeds, "per_seed": diffs, "mean": mean, "low": mean - half, "high": mean + half,
            "wins": sum(d > 0 for d in diffs), "n": len(diffs)}


def by_seed(row: dict, metric: str) -> dict[int, float]:
    return dict(zip(row["seeds"], row[metric], strict=True))


# Written before any number of this report version was seen: what the page answers first (primary,
# uncorrected 95 % intervals) and what it checks next (secondary, Holm-corrected within each regime).
PRIMARY = (("customkd", "kd"), ("customkd+dkd", "dkd"), ("customkd", "fitnet"))
SECONDARY = (("customkd+kd", "kd"), ("customkd", "customkd-no-specific"), ("customkd", "customkd-random-head"),
             ("customkd", "customkd-random-trained"), ("customkd", "student"))
ALPHA = 0.05


def t_quantile(probability: float, dof: int) -> float:
    """Student-t quantile (scipy's)."""
    from scipy.stats import t

    return float(t.ppf(probability, dof))


def p_value(stats: dict) -> float:
    """Two-sided paired t-test p-value of the mean difference (NaN with fewer than 2 seeds or no spread)."""
    from scipy.stats import t

    n, diffs = stats["n"], np.asarray(stats["per_seed"])
    if n < 2 or diffs.std(ddof=1) == 0:
        return float("nan")
    statistic = diffs.mean() / (diffs.std(ddof=1) / math.sqrt(n))
    return float(2 * t.sf(abs(statistic), n - 1))


def holm(found: list[dict]) -> None:
    """Holm's step-down correction over ``found`` (one family), in place, on accuracy: the adjusted p-value and
    the interval at the level of the comparison's step, mean ± t_{1 − α / (2 (m − k)), n − 1} · s / √n for the
    k-th smallest p (0-based); an interval that excludes 0 is a rejection at family-wise level α."""
    ranked = sorted(found, key=lambda c: (math.isnan(c["accuracy"]["p"]), c["accuracy"]["p"]))
    m, running = len(ranked), 0.0
    for k, c in enumerate(ranked):
        stats = c["accuracy"]
        running = max(running, min(1.0, (m - k) * stats["p"])) if not math.isnan(stats["p"]) else float("nan")
        level = ALPHA / (m - k)
        stats["p_holm"], stats["level"] = running, level
        if stats["n"] > 1:
            half = t_quantile(1 - level / 2, stats["n"] - 1) * np.std(stats["per_seed"], ddof=1) / math.sqrt(stats["n"])
            stats["low"], stats["high"] = stats["mean"] - half, stats["mean"] + half


def comparisons(summary: dict) -> list[dict]:
    """The pre-registered comparisons (:data:`PRIMARY`, :data:`SECONDARY`; ``a − b`` within a regime, where both
    rows exist) and, for a regime with ``compare_to``, each variant against the same variant of that regime."""
    rows, found = summary["rows"], []
    for slug, regime in summary["regimes"].items():
        mine = {r["slug"]: (key, r) for key, r in rows.items() if r["regime"] == slug}
        pairs = [(kind, mine[a], mine[b]) for kind, table in (("primary", PRIMARY), ("secondary", SECONDARY))
                 for a, b in table if a in mine and b in mine]
        other_regime = regime.get("compare_to")
        if other_regime:
            pairs += [("secondary", mine[s], (f"{other_regime}/{s}", rows[f"{other_regime}/{s}"])) for s in mine
                      if f"{other_regime}/{s}" in rows]
        secondary = []
        for kind, (key_a, a), (key_b, b) in pairs:
            c = {"regime": slug, "kind": kind, "a": key_a, "b": key_b,
                 **{m: paired(by_seed(a, m), by_seed(b, m)) for m in ("accuracy", "balanced_accuracy")}}
            c["accuracy"]["p"] = p_value(c["accuracy"])
            found.append(c)
            if kind == "secondary":
                secondary.append(c)
        holm(secondary)
    return found


def pct(mean: float, std: float) -> str:
    return f"{100 * mean:.1f}" if math.isnan(std) else f"{100 * mean:.1f} ± {100 * std:.1f}"  # NaN: one seed


def interval(stats: dict) -> str:
    if math.isnan(stats["low"]):
        return "n/a (1 seed)"
    return f"[{stats['low']:+.1f}, {stats['high']:+.1f}]"


def regime_rows(summary: dict, regime: str) -> list[dict]:
    return [r for r in summary["rows"].values() if r["regime"] == regime]


def label(summary: dict, key: str) -> str:
    """``customkd`` within its own regime; ``customkd (teacher X)`` when the teachers are compared."""
    row = summary["rows"][key]
    return f"{row['variant']} (teacher `{summary['regimes'][row['regime']]['teacher']}`)"


def table(summary: dict, regime: str, with_time: bool = True) -> str:
    rows = regime_rows(summary, regime)
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


def comparison_table(summary: dict, regime: str) -> str:
    found = [c for c in summary["comparisons"] if c["regime"] == regime]
    if not found:
        return ""
    lines = ["| comparison | difference (points) | accuracy: mean | 95 % CI | p | per seed | ahead on | "
             "balanced accuracy: mean |", "|---|---|---|---|---|---|---|---|"]
    for c in found:
        cross = summary["rows"][c["a"]]["regime"] != summary["rows"][c["b"]]["regime"]
        name_a, name_b = (label(summary, c["a"]), label(summary, c["b"])) if cross else (
            summary["rows"][c["a"]]["variant"], summary["rows"][c["b"]]["variant"])
        acc, bal = c["accuracy"], c["balanced_accuracy"]
        kind = c["kind"] + (" (Holm)" if "p_holm" in acc else "")
        p = acc.get("p_holm", acc.get("p", float("nan")))
        lines.append(f"| {kind} | {name_a} − {name_b} | {acc['mean']:+.1f} | {interval(acc)} | "
                     f"{'–' if math.isnan(p) else f'{p:.3f}'} | {', '.join(f'{d:+.1f}' for d in acc['per_seed'])} | "
                     f"{acc['wins']} of {acc['n']} | {bal['mean']:+.1f} |")
    return "\n".join(lines)


def outcome(stats: dict) -> str:
    """``ahead``, ``behind`` or ``inconclusive``: by whether the interval excludes 0, whatever the mean's sign."""
    if stats["n"] < 2 or math.isnan(stats["low"]):
        return "inconclusive"
    return "ahead" if stats["low"] > 0 else "behind" if stats["high"] < 0 else "inconclusive"


def verdict(summary: dict, regime: str) -> str:
    """Generated sentences on the pre-registered primary comparisons of this regime."""
    said = []
    for c in (c for c in summary["comparisons"] if c["regime"] == regime and c["kind"] == "primary"):
        a, b = (summary["rows"][k]["variant"] for k in (c["a"], c["b"]))
        stats = c["accuracy"]
        word = {"ahead": f"**`{a}` is ahead of `{b}`**", "behind": f"**`{a}` is behind `{b}`**",
                "inconclusive": f"**`{a}` vs `{b}`: inconclusive**"}[outcome(stats)]
        said.append(f"{word} ({stats['mean']:+.1f} points, 95 % CI {interval(stats)}, ahead on {stats['wins']} of "
                    f"{stats['n']} seeds).")
    return " ".join(said)


def strongest(summary: dict, regime: str) -> dict | None:
    """The best CustomKD row (``customkd`` or a combination, no ablation) against the best baseline row (every
    method without customization), both picked by mean accuracy: an exploratory check made after the runs, beside
    the pre-registered comparisons. ``None`` when the regime lacks either family."""
    rows = regime_rows(summary, regime)
    ours = [r for r in rows if "customkd" in r["method"] and r["slug"] == r["method"]]
    baselines = [r for r in rows if "customkd" not in r["method"]]
    if not ours or not baselines:
        return None
    best_ours, best_baseline = (max(family, key=lambda r: r["accuracy_mean"]) for family in (ours, baselines))
    return {"ours": best_ours, "baseline": best_baseline,
            "accuracy": paired(by_seed(best_ours, "accuracy"), by_seed(best_baseline, "accuracy"))}


def strongest_sentence(summary: dict, regime: str) -> str:
    """One generated sentence on :func:`strongest`: ahead, behind or not distinguishable, by the interval."""
    found = strongest(summary, regime)
    if found is None:
        return ""
    stats, ours, baseline = found["accuracy"], found["ours"], found["baseline"]
    word = {"ahead": "ahead of", "behind": "behind", "inconclusive": "not distinguishable from"}[outcome(stats)]
    return (f"Strongest against strongest (both picked by mean after the runs: exploratory, uncorrected, not pre-registered): "
            f"`{ours['variant']}` {100 * ours['accuracy_mean']:.1f} − `{baseline['variant']}` "
            f"{100 * baseline['accuracy_mean']:.1f} = {stats['mean']:+.1f} points, 95 % CI {interval(stats)}, ahead on "
            f"{stats['wins']} of {stats['n']} seeds: CustomKD is **{word} the strongest baseline** in this regime.")


def mean_of(row: dict | None, group: str, metric: str) -> float | None:
    values = (row or {}).get(group, {}).get(metric)
    return float(np.mean(values)) if values else None


def mechanism(summary: dict, regime: str) -> list[str]:
    """Generated sentences that explain the verdict from the alignment and training-side metrics."""
    rows = summary["rows"]
    main = rows.get(f"{regime}/customkd")
    if not main or not main["alignment"]:
        return []
    classes = len(summary["regimes"][regime]["config"]["classes"])
    cosine, share = mean_of(main, "alignment", "cosine"), mean_of(main, "alignment", "head_row_space_share")
    r2, ratio = mean_of(main, "alignment", "logit_r2"), mean_of(main, "alignment", "rms_ratio")
    said = [f"Mechanism (CustomKD, held-out rows, mean over {plural(len(main['seeds']), 'seed')}): f_s and θ^h_t(f_t) have "
            f"a mean centred cosine of {cosine:.2f} and an RMS ratio θ^h_t(f_t) ÷ f_s of {ratio:.2f}; "
            f"{100 * share:.0f} % of θ^h_t(f_t)'s centred variance lies in the row space of the student's head "
            f"({classes} directions)."]
    controls = [(s, mean_of(rows.get(f"{regime}/{s}"), "alignment", "cosine")) for s in
                ("customkd-no-specific", "customkd-random-head", "customkd-random-trained")]
    controls = [(rows[f"{regime}/{s}"]["variant"], c) for s, c in controls if c is not None]
    if controls:
        said.append("The same cosine in the controls: " + "; ".join(f"{n}: {c:.2f}" for n, c in controls) + ".")
    unreachable, last = (mean_of(main, "mechanism", k) for k in ("specific_unreachable_last", "specific_last"))
    if unreachable is not None and last:
        said.append(f"At the last epoch {100 * unreachable / last:.0f} % of the task-specific MSE "
                    f"({last:.3f}) is out of the student's reach.")
    if r2 is not None and r2 >= 0.5:
        said.append(f"{100 * r2:.0f} % of θ^h_t(f_t)'s variance is an affine function of the teacher probe's "
                    f"{classes} logits, so the task-specific term carries little that `kd` does not already "
                    f"distil; a task with many more classes than {classes} (the paper's 65–345) is the regime "
                    "where the customized feature can carry more.")
    elif r2 is not None:
        said.append(f"Only {100 * r2:.0f} % of θ^h_t(f_t)'s variance is an affine function of the probe's logits: "
                    "the customized feature carries more than the logits.")
    return said


def number(values: list[float] | None, digits: int = 2) -> str:
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


ALIGNMENT_COLUMNS = (("alignment", "cka_customized_vs_student", "CKA(z, f_s)"),
                     ("alignment", "cosine", "cosine(z, f_s) centred"),
                     ("alignment", "scaled_mse", "MSE after best scale"),
                     ("alignment", "head_row_space_share", "share in head row space"),
                     ("alignment", "logit_r2", "R² from probe logits"),
                     ("alignment", "rms_ratio", "RMS z ÷ f_s (eval mode)"),
                     ("mechanism", "specific_first", "task-specific MSE, first customized epoch"),
                     ("mechanism", "specific_last", "…, last epoch"),
                     ("mechanism", "specific_unreachable_last", "unreachable part, last epoch"),
                     ("mechanism", "train_rms_ratio_last", "RMS ratio in training, last epoch"))


def alignment_table(summary: dict, regime: str) -> list[str]:
    rows = [r for r in regime_rows(summary, regime) if r["alignment"]]
    if not rows:
        return []
    head = "| variant | " + " | ".join(title for *_, title in ALIGNMENT_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(ALIGNMENT_COLUMNS) + 1)]
    lines += [f"| {r['variant']} | " + " | ".join(number(r[g].get(m)) for g, m, _ in ALIGNMENT_COLUMNS) + " |"
              for r in rows]
    per_seed = ["| variant | seed | " + " | ".join(title for *_, title in ALIGNMENT_COLUMNS[:6]) + " |",
                "|" + "---|" * 8]
    for r in rows:
        for i, seed in enumerate(r["seeds"]):
            per_seed.append(f"| {r['variant']} | {seed} | " + " | ".join(
                f"{r[g][m][i]:.3f}" if m in r[g] else "–" for g, m, _ in ALIGNMENT_COLUMNS[:6]) + " |")
    return [*lines, "", "<details><summary>per seed</summary>", "", *per_seed, "", "</details>", ""]


def budget(summary: dict) -> dict:
    """Measured costs: this invocation, each extraction, every cited run's process time and the
    alignment measurements; from scratch ≈ extractions + Σ run time ÷ runs at a time + alignment."""
    runs = [s for r in summary["rows"].values() for s in r["wall_seconds"]]
    extraction = {e.get("store", e["teacher"]): e.get("store_seconds", e["seconds"])
                  for e in summary["extractions"].values()}  # a store with several teachers counted once
    alignment = sum(s for r in summary["rows"].values() for s in r["alignment"].get("seconds", []))
    known = sum(s for s in extraction.values() if s is not None)
    return {"invocation_seconds": summary["invocation_seconds"], "extraction_seconds": extraction,
            "runs": len(runs), "runs_run_here": summary["runs_run_here"], "run_process_seconds": round(sum(runs), 1),
            "parallel": summary["parallel"], "alignment_seconds": round(alignment, 1),
            "from_scratch_seconds": round(known + sum(runs) / summary["parallel"] + alignment, 1),
            "extraction_unknown": [t for t, s in extraction.items() if s is None]}


def minutes(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def budget_section(summary: dict) -> list[str]:
    b = summary["budget"]
    extraction = ", ".join(f"`{t}` {s:.0f} s" if s is not None else f"`{t}` not measured"
                           for t, s in b["extraction_seconds"].items())
    return [
        "## Budget (measured)",
        "",
        f"- This invocation of the report took **{minutes(b['invocation_seconds'])}** of wall time; "
        f"{b['runs_run_here']} of the {plural(b['runs'], 'run')} it cites ran in it (finished runs are reused).",
        f"- From scratch on this machine: extraction {extraction}; {plural(b['runs'], 'run')} totalling "
        f"{minutes(b['run_process_seconds'])} of process time, {b['parallel']} at a time; alignment metrics "
        f"{b['alignment_seconds']:.0f} s: **≈ {minutes(b['from_scratch_seconds'])}** of wall time in all"
        + (f" (plus the unmeasured extraction of {', '.join(b['extraction_unknown'])})" if b["extraction_unknown"]
           else "") + ".",
        "",
    ]


def student_init(cfg: dict) -> str:
    if cfg.get("student_weights"):
        return f"initialised from `{cfg['student_weights']}`"
    return "ImageNet-pretrained" if cfg.get("student_pretrained") else "from random initialisation"


def probe_line(summary: dict, regime: str) -> str:
    mean, std = mean_std(regime_rows(summary, regime)[0]["probe_accuracy"])  # same labels for every variant of a seed
    return (f"Teacher probe (a linear head fitted on the cached teacher features of the same labeled images): "
            f"{pct(mean, std)} %")


def majority(summary: dict, regime: str) -> str:
    return f"{100 * summary['regimes'][regime]['majority_class_eval']:.1f} %"


def regime_setup(summary: dict, slug: str) -> str:
    regime, cfg = summary["regimes"][slug], summary["regimes"][slug]["config"]
    if regime["setting"] != "ssl":
        budget_text = "every label"
    elif cfg.get("labels_per_class"):
        budget_text = f"{cfg['labels_per_class']} labels per class"
    elif cfg.get("label_fraction"):
        budget_text = f"{100 * cfg['label_fraction']:.0f} % of the training labels"
    else:
        budget_text = "every stored label"
    return (f"data `{regime['data']}`, `{regime['setting']}` with {budget_text}; teacher `{regime['teacher']}`; student `{cfg['student']}` "
            f"{student_init(cfg)} at {cfg['image_size']} px; {epochs_run(summary, slug)} KD epochs")


def epochs_run(summary: dict, regime: str) -> str:
    """The KD epochs the runs actually ran (distill may extend ``--epochs`` on small data)."""
    counts = sorted({len(curve) for r in regime_rows(summary, regime) for curve in r["curves"]})
    return "/".join(map(str, counts))


def teacher_regimes(summary: dict) -> list[str]:
    """The regimes that distil from one teacher choice of a store holding several (``pick``), in plan order."""
    return [slug for slug, r in summary["regimes"].items() if r.get("pick")]


def teachers_table(summary: dict) -> list[str]:
    """One table over the teacher regimes: each method's accuracy per teacher choice, the teacher probe, and the
    pre-registered customkd − kd difference per teacher; then each regime read against its ``compare_to``."""
    slugs = teacher_regimes(summary)
    if not slugs:
        return []
    regimes, rows = summary["regimes"], summary["rows"]
    variants = list(dict.fromkeys(rows[k]["variant"] for k in rows if rows[k]["regime"] in slugs))
    cell = {(r["regime"], r["variant"]): r for r in rows.values() if r["regime"] in slugs}
    lines = ["| accuracy % | " + " | ".join(f"`{regimes[s]['teacher'].replace(',', ' + ')}`" for s in slugs) + " |",
             "|---|" + "---|" * len(slugs)]
    for v in variants:
        lines.append(f"| {v} | " + " | ".join(
            pct(cell[s, v]["accuracy_mean"], cell[s, v]["accuracy_std"]) if (s, v) in cell else "–" for s in slugs) + " |")
    probes = [mean_std(regime_rows(summary, s)[0]["probe_accuracy"]) for s in slugs]
    lines.append("| teacher probe | " + " | ".join(pct(m, sd) for m, sd in probes) + " |")
    found = {(c["regime"], c["kind"], c["a"], c["b"]): c["accuracy"] for c in summary["comparisons"]}
    lines.append("| customkd − kd (points, 95 % CI) | " + " | ".join(
        f"{found[key]['mean']:+.1f} {interval(found[key])}" if (key := (s, "primary", f"{s}/customkd", f"{s}/kd"))
        in found else "–" for s in slugs) + " |")
    said = [f"`{regimes[c['regime']]['teacher']}` − `{regimes[rows[c['b']]['regime']]['teacher']}` with "
            f"{rows[c['a']]['variant']}: {c['accuracy']['mean']:+.1f} points, {interval(c['accuracy'])} "
            f"({outcome(c['accuracy'])}, Holm p {c['accuracy'].get('p_holm', float('nan')):.3f})"
            for c in summary["comparisons"] if c["regime"] in slugs and rows[c["b"]]["regime"] != c["regime"]]
    return [*lines, "", "Teacher against teacher, same views, seeds and labeled images (paired per seed; 95 % "
            "intervals, Holm-corrected within each regime): " + "; ".join(said) + "." if said else "", ""]


def headline(summary: dict) -> str:
    parts = []
    teachers = teacher_regimes(summary)
    for slug in (s for s in summary["regimes"] if s not in teachers):
        rows = regime_rows(summary, slug)
        parts += [
            f"**{summary['regimes'][slug]['title']}**: {regime_setup(summary, slug)}; mean ± sample std over "
            f"{plural(len(rows[0]['seeds']), 'seed')} (`make report`, device "
            f"`{summary['regimes'][slug]['config']['device']}`):",
            "",
            table(summary, slug, with_time=False),
            "",
            " ".join(s for s in (f"{probe_line(summary, slug)}; majority class {majority(summary, slug)}.",
                                 verdict(summary, slug), strongest_sentence(summary, slug)) if s),
            "",
        ]
    if teachers:
        parts += [f"**Teachers on one store** ({summary['regimes'][teachers[0]]['data']}, one view set, "
                  f"{regime_setup(summary, teachers[0]).split('; ', 2)[2]}; mean ± sample std over "
                  f"{plural(len(regime_rows(summary, teachers[0])[0]['seeds']), 'seed')}):", "",
                  *teachers_table(summary)]
    return "\n".join(parts + ["Paired differences with 95 % intervals (Holm-corrected where secondary), per-class "
                              "recall, alignment metrics and every run's config: [docs/results.md](docs/results.md)."])


def setup_section(summary: dict) -> list[str]:
    slug = next(iter(summary["regimes"]))
    cfg = summary["regimes"][slug]["config"]
    threads = "; ".join(f"{t['concurrent_runs']} runs at a time with {t['threads']} CPU thread(s) each"
                        for t in summary["run_threads"])
    stores = [f"- Teacher `{e['teacher']}` (D = {e['shape'][2]}), {e['shape'][1]} cached views per image: "
              f"`{e['command']}` took " + (f"{e['seconds']:.0f} s ({e['measured']})." if e["seconds"] is not None
                                          else f"an unknown time ({e['measured']}).")
              for e in summary["extractions"].values()]
    return [
        "## Setup",
        "",
        *[f"- Data of `{slug}`: `{r['data']}`, {r['config']['n_train']} training and {r['config']['n_eval']} "
          f"{'development (carved from the training rows)' if summary.get('eval_split') == 'dev' else 'held-out'} "
          f"images, classes {', '.join(r['config']['classes'])}; the majority class is {majority(summary, slug)} of "
          "the held-out images." for slug, r in summary["regimes"].items()],
        "- Balanced accuracy (mean per-class recall) and each class's recall are reported beside accuracy.",
        *stores,
        f"- Training recipe of the `{slug}` regime (the others differ only in the student and its resolution, "
        f"schedule and label budget shown in their sections; every run's options are in its {run_folder.CONFIG}): batch {cfg['batch_size']}, {cfg['optimizer']} lr "
        f"{cfg['effective_lr']} (weight decay {cfg.get('effective_weight_decay', cfg.get('weight_decay'))}"
        + ("" if cfg.get("decay_norm_bias", True) else ", none on norms and biases")
        + (f"; {cfg['warmup_epochs']:g} warm-up epoch(s) from lr {cfg['warmup_lr']:g}" if cfg.get("warmup_epochs") else "")
        + f"), λ_g = {cfg['effective_lambda_general']}, "
        f"λ_s = {cfg['lambda_specific']}"
        + (f" (task-specific term: {cfg['specific_loss']} in the head's row space)" if cfg.get("specific_space") == "head"
           else f" (task-specific term: {cfg.get('specific_loss', 'mse')} over all of f_s)")
        + f", {cfg['customizer']} θ^h_t with lr {cfg['customizer_lr']}"
        + (f" and weight decay {cfg['customizer_weight_decay']}" if cfg.get("customizer_weight_decay") is not None
           else "")
        + (f", output activation `{cfg['customizer_activation']}`" if cfg.get("customizer_activation") else "")
        + (f", label smoothing {cfg['customize_smoothing']} in L_cus" if cfg.get("customize_smoothing") is not None
           else "")
        + (f", {cfg['customize_warmup']} KD warm-up epoch(s) before the first customization"
           if cfg.get("customize_warmup") is not None else "")
        + (f", at least {cfg['min_steps']} optimizer steps per run" if cfg.get("min_steps") else "")
        + f", pseudo-label threshold {cfg['pseudo_threshold']}, KD temperature {cfg['kd_temperature']}.",
        "- The label subset is drawn by the seed, so for one seed every method sees the same labels: that is what "
        "makes the per-seed differences paired.",
        f"- Runs: {threads}. Training time is the sum of the KD and customization epochs; process wall time "
        "adds startup, hashing the images, the teacher probe and per-epoch evaluation.",
        "- ± is the sample standard deviation over seeds; a 95 % CI is mean ± t_{0.975, n−1} · s / √n of the "
        "per-seed differences.",
        "",
    ]


def regime_section(summary: dict, slug: str) -> list[str]:
    regime = summary["regimes"][slug]
    parts = [f"## {regime['title']}", "", f"{regime_setup(summary, slug)}.", "", table(summary, slug), "",
             probe_line(summary, slug) + ".", ""]
    parts += recall_table(summary, slug)
    found = comparison_table(summary, slug)
    if found:
        parts += ["Paired per-seed differences:", "", found, ""]
    said = [s for s in (verdict(summary, slug), strongest_sentence(summary, slug), *mechanism(summary, slug)) if s]
    if said:
        parts += [" ".join(said), ""]
    if any(r["alignment"] for r in regime_rows(summary, slug)):
        parts += ["Alignment of the student with its customized target z = θ^h_t(f_t) on the held-out images "
                  "(not rotation-invariant, beside linear CKA, which is), and CustomKD's training-side numbers:", "",
                  *alignment_table(summary, slug)]
    return parts


def figures_section(summary: dict) -> list[str]:
    parts = ["## Learning curves", "", "![eval accuracy per epoch](results/learning_curves.png)", ""]
    space = summary["figures"].get("feature_space", {})
    if not space:
        return parts
    return parts + [
        "## Feature space (the paper's Figure 3)",
        "",
        "![t-SNE of customized teacher features and student features](results/feature_space.png)",
        "",
        f"Seed-{space['seed']} runs of the `{space.get('regime', 'main')}` regime, held-out images, centre view. Linear CKA cannot tell these "
        "panels apart by construction (it ignores rotations); the alignment tables above can.",
        "",
    ]


def reproduce_section(summary: dict, cfg: ReportConfig) -> list[str]:
    return [
        "## Reproduce",
        "",
        "```",
        "make report                                   # every regime, 5 seeds",
        "make report REPORT_ARGS='--seeds 0,1 --epochs 2 --regimes main --variants student,kd,customkd'",
        "```",
        "",
        f"This page came from `{summary['command']}`: one extraction per teacher (a no-op when the store exists), "
        f"then every run into `{cfg.out}/<regime>/<variant>/seed<k>/` (finished runs are reused, interrupted ones "
        f"resume, so the report can be run in parts). Each run's `{run_folder.CONFIG}` (every setting and the store "
        f"fingerprint), `{run_folder.METRICS}` (per-epoch curves), `{run_folder.TIMING}` (command line, wall time) "
        f"and, for CustomKD runs, `{run_folder.ALIGNMENT}` are in [`docs/results/runs/`](results/runs/README.md); "
        "[`summary.json`](results/summary.json) holds every number on this page.",
        "",
    ]


def preregistered_section() -> list[str]:
    def pairs(table: tuple) -> str:
        return "; ".join(f"`{a}` − `{b}`" for a, b in table)

    return [
        "## Comparisons, fixed before the numbers",
        "",
        f"- Primary, in every regime that has both rows (95 % paired t-intervals over seeds): {pairs(PRIMARY)}.",
        f"- Secondary (Holm-corrected within each regime, family-wise α = {ALPHA}): {pairs(SECONDARY)}.",
        "- A comparison is called *ahead* or *behind* only when its interval excludes 0; otherwise it is "
        "*inconclusive*, whatever the sign of the mean.",
        "",
    ]


def recall_table(summary: dict, regime: str) -> list[str]:
    """Each class's recall (mean over seeds) per variant."""
    rows = [r for r in regime_rows(summary, regime) if r.get("per_class")]
    if not rows:
        return []
    classes = summary["regimes"][regime]["config"]["classes"]
    lines = ["| variant | " + " | ".join(f"recall `{c}` %" for c in classes) + " |", "|" + "---|" * (len(classes) + 1)]
    for r in rows:
        per_class = np.array([[np.nan if v is None else v for v in seed] for seed in r["per_class"]], dtype=float)
        lines.append(f"| {r['variant']} | " + " | ".join(
            "–" if np.isnan(v) else f"{100 * v:.0f}" for v in np.nanmean(per_class, axis=0)) + " |")
    return ["Per-class recall (mean over seeds):", "", *lines, ""]


def render(summary: dict, cfg: ReportConfig) -> str:
    split = " — development split (training rows), not the test rows" if summary.get("eval_split") == "dev" else ""
    parts = [f"# Results{split}", "",
             f"{PAGE_MARK} (`customkd report`, customkd/report/) at {summary['generated']}; do not edit by hand._", "",
             *budget_section(summary), *preregistered_section(), *setup_section(summary)]
    teachers = teacher_regimes(summary)
    for slug in summary["regimes"]:
        if teachers and slug == teachers[0]:
            parts += ["## Teachers on one store", "", "kd and customkd distilled from each teacher choice of one "
                      "store (the same views, seeds and labeled images; an ensemble concatenates its teachers' "
                      "features under one probe and one projector). Each choice's own section follows.", "",
                      *teachers_table(summary)]
        parts += regime_section(summary, slug)
    parts += [*figures_section(summary), *reproduce_section(summary, cfg)]
    return "\n".join(parts)


PAGE_MARK = "_Generated by `make report`"
# why a page's folder may not be in the dataset: its figures are PNG files, which a folder dataset lists as images
FIGURES_IN_DATA = "the page's figures (PNG files) written there would become images of the dataset, and its stores stale"


def check_writable(cfg: ReportConfig) -> None:
    """Before any run: the page and README the report will write are its own to rewrite (a results.md it
    generated, a README with the report block), so no user file is overwritten and nothing fails at the end."""
    check_path(cfg.docs, "--docs")
    check_outside_data(cfg.data, cfg.docs, "--docs", FIGURES_IN_DATA)
    if cfg.readme is not None:
        check_path(cfg.readme, "--readme")
    page, figures = cfg.docs / "results.md", cfg.docs / "results"
    generated = page.is_file() and PAGE_MARK in page.read_text(errors="replace")
    for taken in (page, figures):  # the figures, summary and run records go into results/ beside the page
        if (taken.exists() or taken.is_symlink()) and not generated:
            raise UserError(f"{taken} exists and was not generated by customkd report; pass --docs DIR for another "
                            "folder (or --no-docs)")
    if cfg.readme is not None:
        text = read_readme(cfg.readme) if cfg.readme.is_file() else ""
        if README_START not in text or README_END not in text:
            raise UserError(f"{cfg.readme} has no {README_START} … {README_END} block for the headline table; add "
                            "one, pass --readme FILE with one, or leave --readme out outside the customkd repository")


def read_readme(path: Path) -> str:
    """A README as text with every byte kept: line endings as they are, bytes that are not UTF-8 as surrogates."""
    return path.read_bytes().decode("utf-8", "surrogateescape")


def update_readme(path: Path, summary: dict) -> None:
    """Replace the README block between the report markers with the headline table; every byte outside the block
    stays (its line endings, bytes that are not UTF-8), and so do its permissions. Through a link the README is
    the file the link points at; the link stays a link."""
    target = path.resolve()
    text = read_readme(target)
    if README_START not in text or README_END not in text:
        raise UserError(f"{path} has no {README_START} … {README_END} block for the headline table")
    before, rest = text.split(README_START, 1)
    _, after = rest.split(README_END, 1)
    newline = "\r\n" if "\r\n" in text else "\n"
    table = headline(summary).replace("\n", newline)
    mode = stat.S_IMODE(target.stat().st_mode)
    with atomic_path(target) as partial:
        partial.write_bytes(f"{before}{README_START}{newline}{table}{newline}{README_END}{after}"
                            .encode("utf-8", "surrogateescape"))
        partial.chmod(mode)
