"""The report's figures: learning curves of every method, and the paper's Figure-3 view of the
feature space (customized teacher features θ^h_t(f_t) beside student features f_s) with linear CKA."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("bench.figures")


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al., ICML 2019) of paired features ``x [N, D1]`` and ``y [N, D2]``:
    ‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F) on centred columns. 1 = same geometry up to rotation and scale."""
    x = np.asarray(x, np.float64) - np.asarray(x, np.float64).mean(0)
    y = np.asarray(y, np.float64) - np.asarray(y, np.float64).mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    scale = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / scale) if scale > 0 else float("nan")  # constant features have no geometry


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(summary: dict, path: Path) -> Path:
    """Eval accuracy per epoch, mean ± std over seeds, one line per variant of each setting."""
    plt = _pyplot()
    settings = sorted({row["setting"] for row in summary["rows"].values()}, key=lambda s: s != "ssl")
    fig, axes = plt.subplots(1, len(settings), figsize=(6.5 * len(settings), 4.5), squeeze=False)
    for ax, setting in zip(axes[0], settings, strict=True):
        for row in (r for r in summary["rows"].values() if r["setting"] == setting):
            curves = np.asarray(row["curves"], dtype=np.float64)
            epochs = np.arange(1, curves.shape[1] + 1)
            mean = curves.mean(0)
            std = curves.std(0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
            dashed = "random" in row["slug"] or "no-specific" in row["slug"]
            ax.plot(epochs, mean, marker="o", ms=3, ls="--" if dashed else "-", label=row["variant"])
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.12)
        ax.set_title(f"{setting}: held-out accuracy per epoch (mean ± sample std over seeds)")
        ax.set_xlabel("KD epoch")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def run_features(run_dir: Path) -> dict:
    """For a finished customkd run: f_t, θ^h_t(f_t) and f_s on the eval set (centre view), with labels."""
    from trainer.data import StudentViews, load_cached_data, make_loader, make_split
    from trainer.evaluate import config_from_run, load_run
    from trainer.features import feature_stats
    from trainer.loop import FeatureNorm, load_checkpoint
    from trainer.methods import MethodContext, create_method

    config, student = load_run(str(run_dir))
    cfg = config_from_run(config)
    data = load_cached_data(cfg)
    split = make_split(cfg, data)
    norm = FeatureNorm(cfg.feature_norm, stats=feature_stats(data.features, split.train, data.n_views))
    teacher = norm(data.features[split.eval, 0])
    method = create_method(cfg.method, MethodContext(teacher.shape[-1], student.feature_dim, len(data.classes), cfg))
    method.load_state_dict(load_checkpoint(run_dir / "checkpoint.pt")["method"])
    loader = make_loader(StudentViews(data, cfg.image_size, student.mean, student.std), split.eval,
                         np.zeros(len(split.eval), np.int64), cfg.batch_size, workers=1)
    student_features = torch.cat([student.features(pixels) for pixels, *_ in loader])
    return {"teacher": teacher.numpy(), "customized": method.customizer.eval()(teacher).numpy(),
            "student": student_features.numpy(), "labels": data.labels[split.eval], "classes": data.classes,
            "head": config["customize_head"]}


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
    record: dict = {"path": str(path), "seed": jobs[0].seed}
    for ax, job in zip(axes[0], jobs, strict=True):
        features = run_features(job.run_dir)
        cka = {"customized_vs_student": linear_cka(features["customized"], features["student"]),
               "teacher_vs_student": linear_cka(features["teacher"], features["student"])}
        n = len(features["labels"])
        xy, how = embed(np.concatenate([features["customized"], features["student"]]))
        for c, name in enumerate(features["classes"]):
            members = features["labels"] == c
            colour = plt.cm.viridis(c / max(len(features["classes"]) - 1, 1))
            ax.scatter(*xy[:n][members].T, s=10, marker="^", color=colour, alpha=0.7,
                       label=f"θ^h_t(f_t), class {name}")
            ax.scatter(*xy[n:][members].T, s=10, marker="o", facecolors="none", edgecolors=colour, alpha=0.7,
                       label=f"f_s, class {name}")
        ax.set_title(f"customized through the {features['head']} head\nlinear CKA(θ^h_t(f_t), f_s) = "
                     f"{cka['customized_vs_student']:.3f}   CKA(f_t, f_s) = {cka['teacher_vs_student']:.3f}",
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
