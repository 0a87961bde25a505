"""How close a finished CustomKD run brought f_s to its customized target z = θ^h_t(f_t), and what z is.

Linear CKA (Kornblith et al., ICML 2019) is invariant to rotations and isotropic scaling, so a z
customized through the student's head and one customized through a random head can score alike: it
cannot test the paper's claim that customization puts the teacher's knowledge *where the student's
classifier reads it*. The metrics here are not rotation-invariant. All take paired rows (one held-out
image each) and are pure numpy, so each is pinned by hand-checkable unit tests:

- :func:`centred_cosine`  — mean over samples of cos(f_s − mean f_s, z − mean z): 1 when f_s points
  where z points, per sample, in the same coordinates.
- :func:`scaled_mse`  — min over a scalar a of mean (f_s − a·z)² (per entry, like the trainer's MSE):
  what the task-specific term could reach if only z's overall scale were wrong.
- :func:`row_space_share` — share of z's centred variance inside the row space of the student's head
  weight ``[C, d_s]``: the part of the target that the student's classifier actually reads.
- :func:`logit_r2` — R² of z from an affine map of the teacher probe's logits ``[N, C]``: 1 means z is
  only the probe's logits in other coordinates (then the task-specific term is close to logit KD).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ALIGNMENT_VERSION = 2  # bump when a metric or the features it reads change; cached alignment.json is redone


def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of paired features ``x [N, D1]`` and ``y [N, D2]``: ‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F)
    on centred columns. 1 = same geometry up to rotation and isotropic scale."""
    x, y = _f64(x) - _f64(x).mean(0), _f64(y) - _f64(y).mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    scale = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / scale) if scale > 0 else float("nan")  # constant features have no geometry


def centred_cosine(student: np.ndarray, target: np.ndarray) -> float:
    """Mean per-sample cosine of centred ``student [N, d]`` and ``target [N, d]`` (rows with a zero
    centred vector count as cosine 0)."""
    s, t = _f64(student) - _f64(student).mean(0), _f64(target) - _f64(target).mean(0)
    norms = np.linalg.norm(s, axis=1) * np.linalg.norm(t, axis=1)
    cos = np.divide((s * t).sum(1), norms, out=np.zeros(len(s)), where=norms > 0)
    return float(cos.mean())


def best_scale(student: np.ndarray, target: np.ndarray) -> float:
    """argmin_a mean (student − a·target)² = ⟨student, target⟩ / ⟨target, target⟩ (0 for a zero target)."""
    s, t = _f64(student), _f64(target)
    energy = float((t * t).sum())
    return float((s * t).sum() / energy) if energy > 0 else 0.0


def scaled_mse(student: np.ndarray, target: np.ndarray) -> float:
    """min_a mean over entries of (student − a·target)², on raw (uncentred) features like the loss."""
    s, t = _f64(student), _f64(target)
    return float(((s - best_scale(s, t) * t) ** 2).mean())


def row_space_share(target: np.ndarray, head_weight: np.ndarray, tol: float = 1e-10) -> float:
    """‖P Zc‖² / ‖Zc‖²: share of the centred ``target [N, d]`` variance in the span of the rows of
    ``head_weight [C, d]`` (P the orthogonal projector onto it; rank from the singular values)."""
    z = _f64(target) - _f64(target).mean(0)
    total = float((z * z).sum())
    if total == 0:
        return float("nan")
    u, sing, _ = np.linalg.svd(_f64(head_weight).T, full_matrices=False)  # columns of u span the rows of W
    basis = u[:, sing > tol * max(sing.max(initial=0.0), 1.0)]
    inside = z @ basis
    return float((inside * inside).sum() / total)


def logit_r2(target: np.ndarray, logits: np.ndarray) -> float:
    """R² of ``target [N, d]`` from the best affine map of ``logits [N, C]`` (least squares, in-sample, so
    it is only meaningful for N ≫ C + 1): 1 − Σ residual² / Σ centred target², summed over every dimension."""
    z, lg = _f64(target), _f64(logits)
    design = np.concatenate([lg, np.ones((len(lg), 1))], 1)
    coef, *_ = np.linalg.lstsq(design, z, rcond=None)
    residual = z - design @ coef
    total = float(((z - z.mean(0)) ** 2).sum())
    return float(1.0 - (residual * residual).sum() / total) if total > 0 else float("nan")


def rms_ratio(target: np.ndarray, student: np.ndarray) -> float:
    """RMS(target) / RMS(student) over every entry: 1 when z and f_s have the same overall scale."""
    s = float(np.sqrt((_f64(student) ** 2).mean()))
    return float(np.sqrt((_f64(target) ** 2).mean()) / s) if s > 0 else float("nan")


def alignment_metrics(features: dict) -> dict:
    """Every metric above from the arrays :func:`run_features` returns."""
    z, fs = features["customized"], features["student"]
    return {
        "cka_customized_vs_student": linear_cka(z, fs),
        "cka_teacher_vs_student": linear_cka(features["teacher"], fs),
        "cosine": centred_cosine(fs, z),
        "scaled_mse": scaled_mse(fs, z),
        "best_scale": best_scale(fs, z),
        "mse": float(((_f64(fs) - _f64(z)) ** 2).mean()),
        "head_row_space_share": row_space_share(z, features["head_weight"]),
        "logit_r2": logit_r2(z, features["probe_logits"]),
        "rms_ratio": rms_ratio(z, fs),
        "n_eval": int(len(z)),
    }


def run_features(run_dir: Path) -> dict:
    """For a finished customkd-type run, on its held-out rows (centre view): the standardised teacher
    features f_t, z = θ^h_t(f_t) (``method.customized`` when the method has it, which includes any output
    activation; else ``method.customizer``), the student's f_s as its method sees it, the student's head
    weight, and the teacher probe's logits (:func:`trainer.assemble.load_trained` rebuilds the run)."""
    import torch

    from customkd.trainer.assemble import load_trained
    from customkd.trainer.data import StudentViews, make_loader
    from customkd.trainer.loop import PixelNorm

    run = load_trained(run_dir)
    data, split, student, method = run.inputs.data, run.inputs.split, run.trainee.student, run.trainee.method
    teacher = run.inputs.norm(data.features[split.eval, 0])
    customize = getattr(method, "customized", None) or method.customizer
    loader = make_loader(StudentViews(data, run.cfg.image_size), split.eval, np.zeros(len(split.eval), np.int64),
                         run.cfg.batch_size, workers=1)
    normalize = PixelNorm.of(student, torch.device("cpu"))
    with torch.no_grad():
        student_features = torch.cat([student(normalize(pixels))[0].float() for pixels, *_ in loader])
        return {"teacher": teacher.numpy(), "customized": customize(teacher).float().numpy(),
                "student": student_features.numpy(), "labels": data.labels[split.eval], "classes": data.classes,
                "head": run.config["customize_head"], "head_weight": student.head.weight.detach().numpy(),
                "probe_logits": run.inputs.probe(teacher).numpy()}


def run_alignment(run_dir: Path) -> dict:
    """:func:`alignment_metrics` of one run, cached in the run's alignment.json (keyed on the version and the
    student weights' modification time, so a rerun run is measured again)."""
    from customkd.trainer import run_folder

    stamp = run_folder.student_mtime_ns(run_dir)
    record = run_folder.read_alignment(run_dir)
    if record and record.get("version") == ALIGNMENT_VERSION and record.get("student_mtime_ns") == stamp \
            and isinstance(record.get("metrics"), dict):
        return record["metrics"]
    started = time.perf_counter()
    metrics = {**alignment_metrics(run_features(run_dir)), "seconds": round(time.perf_counter() - started, 1)}
    run_folder.write_alignment(run_dir, {"version": ALIGNMENT_VERSION, "student_mtime_ns": stamp, "metrics": metrics})
    log.info("alignment %s: %s", run_dir, json.dumps({k: round(v, 3) for k, v in metrics.items()}))
    return metrics
