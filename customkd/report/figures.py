"""The report's figures: learning curves of every method, and the paper's Figure-3 view of the
feature space (customized teacher features θ^h_t(f_t) beside student features f_s) with linear CKA."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from customkd.report.alignment import linear_cka, run_features

__all__ = ["embed", "feature_space", "learning_curves", "linear_cka"]

log = logging.getLogger(__name__)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(summary: dict, path: Path) -> Path:
    """Eval accuracy per epoch, mean ± std over seeds, one panel per regime, one line per variant."""
    plt = _pyplot()
    regimes = list(summary["regimes"])
    fig, axes = plt.subplots(1, len(regimes), figsize=(6.5 * len(regimes), 4.8), squeeze=False)
    for ax, regime in zip(axes[0], regimes, strict=True):
        for row in (r for r in summary["rows"].values() if r["regime"] == regime):
            curves = np.asarray(row["curves"], dtype=np.float64)
            epochs = np.arange(1, curves.shape[1] + 1)
            mean = curves.mean(0)
            std = curves.std(0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
            dashed = row["method"].startswith("customkd") and row["slug"] not in ("customkd", "customkd+dkd")
            ax.plot(epochs, mean, marker="o", ms=3, ls="--" if dashed else "-", label=row["variant"])
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.12)
        ax.set_title(f"{summary['regimes'][regime]['title']}\nheld-out accuracy (mean ± sample std over seeds)",
                     fontsize=9)
        ax.set_xlabel("KD epoch")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def embed(points: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D t-SNE of ``points`` (each feature standardised first); PCA if scikit-learn is missing."""
    z = (points - points.mean(0)) / (points.std(0) + 1e-6)
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        u, s, _ = np.linalg.svd(z - z.mean(0), full_matrices=False)
        return u[:, :2] * s[:2], "PCA"
    perplexity = min(30.0, (len(z) - 1) / 3)  # sklearn needs perplexity < n; 30 is its default
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(z), "t-SNE"


def feature_space(jobs: list, path: Path) -> dict:
    """Figure 3: joint embedding of θ^h_t(f_t) and f_s, student head vs random head; CKA numbers."""
    if not jobs:
        return {}
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(jobs), figsize=(6 * len(jobs), 5.2), squeeze=False)
    record: dict = {"path": str(path), "seed": jobs[0].seed, "regime": jobs[0].regime.slug}
    for ax, job in zip(axes[0], jobs, strict=True):
        features = run_features(job.run_dir)
        cka = {"customized_vs_student": linear_cka(features["customized"], features["student"]),
               "teacher_vs_student": linear_cka(features["teacher"], features["student"])}
        n = len(features["labels"])
        xy, how = embed(np.concatenate([features["customized"], features["student"]]))
        for c, name in enumerate(features["classes"]):
            members = features["labels"] == c
            colour = plt.cm.viridis(c / max(len(features["classes"]) - 1, 1))
            shown = str(name).replace("$", r"\$")  # a class name is text, never mathtext
            ax.scatter(*xy[:n][members].T, s=10, marker="^", color=colour, alpha=0.7,
                       label=rf"$\theta^h_t(f_t)$, class {shown}")
            ax.scatter(*xy[n:][members].T, s=10, marker="o", facecolors="none", edgecolors=colour, alpha=0.7,
                       label=rf"$f_s$, class {shown}")
        ax.set_title(f"customized through the {features['head']} head\n" + r"linear CKA($\theta^h_t(f_t)$, $f_s$) = "
                     f"{cka['customized_vs_student']:.3f}   " + r"CKA($f_t$, $f_s$) = " + f"{cka['teacher_vs_student']:.3f}",
                     fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        record[features["head"]] = {**cka, "run": str(job.run_dir), "embedding": how, "n_eval": n}
    axes[0][-1].legend(fontsize=7, loc="best", markerscale=1.5)
    fig.suptitle(f"{record[features['head']]['embedding']} of customized teacher features (▲) and student features (○), "
                 "eval set, seed " + str(jobs[0].seed), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log.info("feature space: %s", json.dumps({k: v for k, v in record.items() if k != "path"}))
    return record
