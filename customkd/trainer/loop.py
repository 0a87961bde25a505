"""The named pieces of the training loop: one KD epoch, evaluation, feature normalisation (checkpoints:
:mod:`trainer.run_folder`). What a method does between KD epochs is its own (:meth:`trainer.methods.Method.epoch_stage`)."""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from customkd.common.devices import autocast, resolve_precision
from customkd.common.distributed import DistEnv, is_main_process, reduce_sums
from customkd.common.errors import UserError
from customkd.trainer.methods import BatchCounts, Method, StepInputs
from customkd.trainer.optim import CosineSchedule
from customkd.trainer.students import Student

log = logging.getLogger(__name__)


class FeatureNorm:
    """Normalises cached teacher features ``[..., D]`` (fp16) to float32 tensors.

    ``standardize`` uses ``stats``: per-dimension mean and std ``([D], [D])`` of the training features, every
    view (:func:`trainer.features.feature_stats` reads them from the store in one streaming pass)."""

    def __init__(self, mode: str, *, stats: tuple[np.ndarray, np.ndarray]) -> None:
        self.mode = mode
        self.mean = torch.from_numpy(np.asarray(stats[0], dtype=np.float32))
        self.std = torch.from_numpy(np.asarray(stats[1], dtype=np.float32) + 1e-6)

    def __call__(self, features: np.ndarray) -> torch.Tensor:
        f = torch.from_numpy(np.asarray(features, dtype=np.float32))
        if self.mode == "standardize":
            return (f - self.mean) / self.std
        if self.mode == "l2":
            return nn.functional.normalize(f, dim=-1) * math.sqrt(f.shape[-1])
        return f


def _progress(total: int, desc: str, enabled: bool = True):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, smoothing=0.1, mininterval=1.0,
                disable=not (enabled and is_main_process()))  # under torchrun only rank 0 draws progress


def fixmatch_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor, labels: torch.Tensor,
                  threshold: float, counts: BatchCounts | None = None) -> torch.Tensor:
    """FixMatch (Sohn et al., NeurIPS 2020) on unlabeled samples: CE(strong, argmax weak) where the
    weak view's confidence ≥ τ, summed and divided by the global number of unlabeled samples."""
    counts = counts if counts is not None else BatchCounts.of(labels)
    confidence, pseudo = F.softmax(weak_logits.detach(), dim=1).max(1)
    mask = (confidence >= threshold) & (labels < 0)
    return counts.mean((F.cross_entropy(strong_logits, pseudo, reduction="none") * mask).sum(), "unlabeled")


def prefers_channels_last(student: nn.Module, device: torch.device, memory_format: str = "auto") -> bool:
    """``--memory-format``: ``channels_last`` or ``contiguous`` as asked; ``auto`` runs CNN students on CUDA
    channels_last (cuDNN's fast layout under bf16) and keeps the default layout on a CPU. There channels_last also
    trains faster (docs/benchmarks.md, ``channels_last_vs_nchw_train``) but rounds differently, so every CPU result
    published so far (the report's runs, the pinned numbers) would no longer repeat bit for bit: it is asked for.
    A ViT's single patch convolution gains nothing."""
    if memory_format != "auto":
        return memory_format == "channels_last"
    return device.type == "cuda" and sum(isinstance(m, nn.Conv2d) for m in student.modules()) > 1


def to_memory_format(student: nn.Module, device: torch.device, memory_format: str = "auto") -> nn.Module:
    """The student in the layout :func:`prefers_channels_last` picks (in place); the choice is kept as the
    student's ``channels_last`` for :meth:`PixelNorm.of`."""
    student.channels_last = prefers_channels_last(student, device, memory_format)
    return student.to(memory_format=torch.channels_last) if student.channels_last else student


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host → device without waiting on CUDA: from pinned pages (pinned here unless the loader did),
    queued on the stream; on CPU the tensor itself."""
    if device.type != "cuda" or tensor.device.type == "cuda":
        return tensor.to(device, non_blocking=True)
    pinned = tensor if tensor.is_pinned() else tensor.pin_memory()
    return pinned.to(device, non_blocking=True)


class PixelNorm:
    """uint8 images ``[B, 3, S, S]`` from the loader → float32 on the device, normalised as
    ``(x / 255 − mean) / std``, in the student's memory format.

    Workers hand over bytes (a quarter of float32's size to collate, pin and copy); the arithmetic runs after the
    copy, on the device. It performs the float32 operations of :func:`contract.views.to_tensor` in the same
    order, so on CPU the result equals the workers' former float tensors bit for bit."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
                 channels_last: bool = False) -> None:
        self.device = device
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        # copied once, queued like a batch: building them on the device each step would wait for it
        self.mean = to_device(torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), device)
        self.std = to_device(torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), device)

    @classmethod
    def of(cls, student: Student, device: torch.device) -> PixelNorm:
        """The student's normalisation, in the student's layout (:func:`to_memory_format`'s choice, else
        :func:`prefers_channels_last`'s default)."""
        channels_last = getattr(student, "channels_last", None)
        return cls(student.mean, student.std, device,
                   prefers_channels_last(student, device) if channels_last is None else channels_last)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype != torch.uint8:
            raise TypeError(f"PixelNorm takes the loader's uint8 images, got {pixels.dtype}")
        images = to_device(pixels, self.device).to(torch.float32, memory_format=self.layout)
        return images.div_(255.0).sub_(self.mean).div_(self.std)


class DistillModule(nn.Module):
    """Student + method as one module, so DistributedDataParallel syncs the student and the adapters."""

    def __init__(self, student: Student, method: Method) -> None:
        super().__init__()
        self.student, self.method = student, method

    def forward(self, pixels: torch.Tensor, strong: torch.Tensor | None, teacher: torch.Tensor, labels: torch.Tensor,
                probe_logits: torch.Tensor, epoch: int, fixmatch: tuple[float, float] | None,
                counts: BatchCounts | None = None) -> dict:
        with autocast(pixels.device, resolve_precision("auto", pixels.device)):
            if strong is not None:
                both_features, both_logits = self.student(torch.cat([pixels, strong]))
                student_features, _ = both_features.float().chunk(2)
                logits, strong_logits = both_logits.float().chunk(2)
            else:
                student_features, logits = (t.float() for t in self.student(pixels))
        step = StepInputs(student_features, logits, labels, teacher, probe_logits, epoch, counts,
                          head_weight=self.student.head.weight)
        parts = self.method(step)
        if strong is not None:
            parts["fixmatch"] = fixmatch_loss(logits, strong_logits, labels, fixmatch[0], step.counts)
            parts["loss"] = parts["loss"] + fixmatch[1] * parts["fixmatch"]
        return parts


SYNC_EVERY = 25  # KD steps between reads of the loss parts to the host (each read waits for the GPU)
StepLog = Callable[[int, dict[str, float]], None]  # (step of the epoch, its loss parts) once they are on the host


def _add_loss_parts(sums: dict[str, float], pending: list, epoch: int, on_step: StepLog | None = None) -> None:
    """Read the pending steps' loss parts to the host in one transfer, check them, add them to ``sums`` and hand
    each step's parts to ``on_step(step, parts)``.

    ``pending`` holds (step, counts, names, values ``[len(names)]`` float64 on the device); the first
    non-finite value, in step order and with terms before the total, stops the run."""
    if not pending:
        return
    flat, position = torch.cat([values for *_, values in pending]).cpu().tolist(), 0
    for step, batch_counts, names, _ in pending:
        read, position = flat[position : position + len(names)], position + len(names)
        for name, value in zip(names, read, strict=True):
            if not math.isfinite(value):
                raise UserError(f"loss term '{name}' became {value} in epoch {epoch + 1} (step {step + 1}); nothing "
                                "was saved for this epoch. Check the loss weights and learning rates (finite, "
                                "smaller) or the teacher features (`customkd cache verify`)")
            # each rank's part is world × its share of the global batch mean: summed over ranks and
            # divided by the world size it is that mean
            sums[name] += value * batch_counts.samples / batch_counts.world
        if on_step is not None:
            on_step(step, dict(zip(names, read, strict=True)))
    pending.clear()


@dataclass(frozen=True)
class KDStep:
    """What every KD step of an epoch uses: the model being trained, its optimiser, and where its inputs come from.

    ``model`` is the :class:`DistillModule` around ``student`` and ``method`` (DDP-wrapped under torchrun);
    ``norm(features[rows, views])`` gives the teacher features ``[B, D]`` of a batch; ``row_labels [N]`` holds
    each row's label or -1; ``probe`` (θ^c_t, frozen) maps ``[B, D]`` to ``[B, C]``. ``fixmatch = (threshold,
    weight)`` adds the FixMatch term on strong views the loader supplies; ``env`` reduces the logged sums over
    ranks; ``progress`` draws a progress bar (on rank 0 only)."""

    student: Student
    method: Method
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: CosineSchedule  # advanced after each optimiser step
    features: object  # np.ndarray [N, V, D] or a reader indexed the same way
    norm: FeatureNorm
    probe: nn.Linear
    row_labels: np.ndarray
    device: torch.device
    grad_clip: float = 0.0
    fixmatch: tuple[float, float] | None = None
    env: DistEnv | None = None
    progress: bool = True

    @functools.cached_property
    def pixels(self) -> PixelNorm:
        """The loader's uint8 images as the student's input on the device."""
        return PixelNorm.of(self.student, self.device)


def _kd_update(kd: KDStep, batch: list, epoch: int, counts: BatchCounts | None) -> tuple[dict, BatchCounts]:
    """One optimiser step on a batch ``(pixels [B, 3, S, S], rows [B], views [B][, strong [B, 3, S, S]])`` of uint8
    images; returns its loss parts (still on the device) and its counts. Nothing here reads the device."""
    pixels, rows, views = batch[:3]
    rows_np, views_np = rows.numpy(), views.numpy()
    teacher = to_device(kd.norm(kd.features[rows_np, views_np]), kd.device)
    batch_labels = kd.row_labels[rows_np]
    labels = to_device(torch.from_numpy(batch_labels), kd.device)
    with torch.no_grad():
        probe_logits = kd.probe(teacher)
    strong = kd.pixels(batch[3]) if kd.fixmatch is not None else None
    counts = counts if counts is not None else BatchCounts.of(batch_labels)  # counted on the host
    parts = kd.model(kd.pixels(pixels), strong, teacher, labels, probe_logits, epoch, kd.fixmatch, counts)
    kd.optimizer.zero_grad(set_to_none=True)
    parts["loss"].backward()
    if kd.grad_clip > 0:
        nn.utils.clip_grad_norm_([p for g in kd.optimizer.param_groups for p in g["params"]], kd.grad_clip)
    kd.optimizer.step()
    kd.scheduler.advance()
    return parts, counts


def train_epoch(kd: KDStep, loader, epoch: int, counts: list[BatchCounts] | None = None,
                on_step: StepLog | None = None) -> dict:
    """One KD epoch over the loader's (row, view) batches; returns mean loss parts and samples/s.

    Under DDP ``counts`` are the global-batch denominators of :func:`trainer.ddp.split_global_batches`.
    Logged parts are means over the epoch's samples (each global batch weighted by its size). Loss
    parts stay on the device and are read every :data:`SYNC_EVERY` steps, so no step waits for the GPU;
    ``on_step(step, parts)`` receives each step's parts as they are read (this rank's)."""
    kd.model.train()
    sums: dict[str, float] = defaultdict(float)
    pending: list = []
    started = time.perf_counter()
    progress = _progress(sum(len(b) for b in loader.batch_sampler), f"epoch {epoch + 1}", kd.progress)
    for step, batch in enumerate(loader):
        parts, batch_counts = _kd_update(kd, batch, epoch, counts[step] if counts is not None else None)
        names = sorted(parts, key=lambda name: name == "loss")  # name a term before the total
        pending.append((step, batch_counts, names, torch.stack([parts[n].detach().double() for n in names])))
        n = len(batch[1]) if batch_counts.active else 0
        sums["_seen"] += n  # rank 0 (never a filler) counts the global batch once
        sums["_weight"] += batch_counts.samples if kd.env is None or kd.env.rank == 0 else 0
        progress.update(n)
        if (step + 1) % SYNC_EVERY == 0:
            _add_loss_parts(sums, pending, epoch, on_step)
            # the bar shows the loss and the speed; every part is in metrics.json and TensorBoard
            progress.set_postfix(loss=f"{sums['loss'] / max(sums['_seen'], 1):.3f}", refresh=False)
    _add_loss_parts(sums, pending, epoch, on_step)
    progress.close()
    seconds = time.perf_counter() - started
    sums = reduce_sums(kd.env, dict(sums)) if kd.env is not None else dict(sums)
    seen, weight = sums.pop("_seen", 0), sums.pop("_weight", 0)
    means = {k: v / max(weight, 1e-9) for k, v in sums.items()}
    means.update(kd.method.epoch_metrics(means))
    return {**means, "samples": int(seen),
            "samples_per_s": seen / max(seconds, 1e-9), "seconds": seconds}


@torch.no_grad()
def predict(student: Student, loader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(rows ``[E]``, predicted class ``[E]``) over the loader of uint8 images; predictions read to the host once."""
    student.eval()
    normalize = PixelNorm.of(student, device)
    rows, preds = [], []
    for pixels, batch_rows, *_ in loader:
        with autocast(device, resolve_precision("auto", device)):
            _, logits = student(normalize(pixels))
        rows.append(batch_rows.numpy())
        preds.append(logits.argmax(1))
    return np.concatenate(rows), torch.cat(preds).cpu().numpy()


def classification_metrics(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> dict:
    """Accuracy, balanced accuracy (mean recall over the classes present), macro F1 over the classes present,
    each class's recall (``None`` for a class with no sample) and the confusion matrix ``[C, C]`` (row: true class,
    column: predicted), by scikit-learn."""
    from sklearn.metrics import confusion_matrix, f1_score

    matrix = confusion_matrix(labels, preds, labels=np.arange(num_classes))
    support = matrix.sum(axis=1)
    per_class = [float(matrix[c, c] / support[c]) if support[c] else None for c in range(num_classes)]
    present = np.flatnonzero(support)
    return {"accuracy": float((labels == preds).mean()),
            "balanced_accuracy": float(np.mean([per_class[c] for c in present])),
            "macro_f1": float(f1_score(labels, preds, labels=present, average="macro", zero_division=0)),
            "per_class_accuracy": per_class, "confusion_matrix": matrix.tolist()}

