"""KD with the teacher online — the mode the two-process design avoids, implemented only for the benchmark.

It is the trainer's ``train_epoch`` unchanged, fed by a loader that replays every view twice (at
the student's and at the teacher's resolution, from one decode) and by a stand-in for the cached
feature array whose indexing runs the frozen teacher on the current batch. So the only
difference from cached CustomKD is the teacher forward plus its replay: what the cache saves.
"""

from __future__ import annotations

import numpy as np
import torch

from customkd.trainer.data import StudentViews


class OnlineViews(StudentViews):
    """(row, view[, epoch]) → (student pixels uint8 ``[3,s,s]``, row, view, teacher pixels float ``[3,S,S]``): the
    student's as the trainer's workers return them, the teacher's as extraction feeds it."""

    def __init__(self, data, size: int, teacher_preprocess) -> None:
        super().__init__(data, size)
        self.teacher_preprocess = teacher_preprocess

    def __getitem__(self, item: tuple[int, ...]):
        from customkd.contract.views import replay, replay_pil, to_uint8

        row, view = item[0], item[1]
        image = self.listing.load_image(row)
        params = self.views[row, view]
        pixels = to_uint8(replay_pil(image, params, self.size, self.interpolation))
        p = self.teacher_preprocess
        return pixels, row, view, replay(image, params, p.size, p.mean, p.std, p.interpolation)


class OnlineBatches:
    """Yields ``train_epoch``'s (pixels, rows, views); keeps each batch's teacher pixels for :class:`OnlineFeatures`."""

    def __init__(self, loader) -> None:
        self.loader, self.batch_sampler, self.teacher_pixels = loader, loader.batch_sampler, None

    def __iter__(self):
        for pixels, rows, views, teacher_pixels in self.loader:
            self.teacher_pixels = teacher_pixels
            yield pixels, rows, views


class OnlineFeatures:
    """Stands in for the cached ``features [N, V, D]``: ``features[rows, views]`` runs the teacher now."""

    def __init__(self, teacher, batches: OnlineBatches, device: torch.device) -> None:
        self.teacher, self.batches, self.device = teacher, batches, device

    def __getitem__(self, key) -> np.ndarray:
        from customkd.common.devices import autocast, resolve_precision

        precision = resolve_precision("auto", self.device)  # extract()'s default: the cache's own precision
        with torch.inference_mode(), autocast(self.device, precision):
            features = self.teacher(self.batches.teacher_pixels.to(self.device, non_blocking=True)).float()
        return features.cpu().numpy()  # [B, D]; FeatureNorm turns it into a tensor as it does cached rows
