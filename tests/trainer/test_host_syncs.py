"""A KD step that never waits for the device, and uint8 batches normalised after the copy.

On CPU a guard stands in for the GPU: during steady-state KD steps of every method, any read of a tensor's value
to the host (``item``, ``bool``, ``int``, ``float``, ``tolist``, ``__index__``) and any operator whose output size
depends on tensor values (boolean-mask indexing, ``nonzero``, ...) raises. Where CUDA exists, the same steps run
under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from customkd.common.distributed import DistEnv
from customkd.contract.datasets import to_8bit
from customkd.contract.views import ViewRecipe, centre_view, replay, replay_pil, to_tensor
from customkd.trainer.assemble import build_trainee, epoch_plan, kd_step, load_inputs
from customkd.trainer.data import StudentViews, load_cached_data, make_loader
from customkd.trainer.distill import EpochFeatures
from customkd.trainer.loop import PixelNorm, _kd_update
from customkd.trainer.methods import METHODS, EpochContext
from tests.conftest import tiny_config

aten = torch.ops.aten
HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")
# operators whose output size depends on tensor values: on a GPU the host waits for the answer
SIZE_FROM_VALUES = {aten.nonzero.default, aten.masked_select.default, aten._unique2.default, aten.unique_dim.default,
                    aten.unique_consecutive.default, aten.bincount.default, aten.repeat_interleave.Tensor}
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


class NoValueDependentSizes(TorchDispatchMode):
    """Raises on :data:`SIZE_FROM_VALUES` and on indexing by a boolean mask."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        masked = func in INDEXING and any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1])
        if func in SIZE_FROM_VALUES or masked:
            raise AssertionError(f"{func} sizes its output by tensor values: the host waits for the device")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def no_host_reads(allowed: tuple[torch.Tensor, ...] = ()):
    """Inside, reading any tensor but ``allowed`` ones to the host raises; host-side numpy work is untouched."""
    allowed_ids = {id(t) for t in allowed}

    def guard(name: str, real):
        def read(tensor, *args, **kwargs):
            if id(tensor) not in allowed_ids:
                raise AssertionError(f"Tensor.{name} read a tensor's value to the host")
            return real(tensor, *args, **kwargs)
        return read

    with pytest.MonkeyPatch.context() as patch, NoValueDependentSizes():
        for name in HOST_READS:
            patch.setattr(torch.Tensor, name, guard(name, getattr(torch.Tensor, name)))
        yield


def test_the_guard_catches_host_reads_and_mask_indexing():
    labels = torch.tensor([1, -1, 0])
    for read in (lambda: bool((labels >= 0).any()), lambda: labels[labels >= 0], lambda: int(labels.sum()),
                 lambda: labels.sum().item(), lambda: float(labels[0]), lambda: labels.tolist()):
        with pytest.raises(AssertionError), no_host_reads():
            read()
    with no_host_reads(allowed=(labels,)):
        assert labels.tolist() == [1, -1, 0] and int(labels.numpy().sum()) == 0  # allowed, and numpy is the host's


def _optimizer_steps(optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, ...]:
    """AdamW's per-parameter step counts: host tensors the non-fused step reads (``fused=True`` on CUDA keeps them
    on the device and reads nothing)."""
    return tuple(state["step"] for state in optimizer.state.values() if isinstance(state.get("step"), torch.Tensor))


def _customize(cfg, inputs, trainee, device: torch.device) -> None:
    """One customization round before KD epoch 0, as ``trainer.distill.epoch_stage`` runs it."""
    plan = epoch_plan(cfg, inputs, 0, DistEnv())
    ctx = EpochContext(0, cfg.seed, trainee.student.head,
                       EpochFeatures(inputs.data.features, plan.order, plan.views, inputs.norm, device),
                       torch.from_numpy(inputs.row_labels[plan.order]).to(device), inputs.probe, cfg.batch_size,
                       inputs.data.streaming)
    assert trainee.method.epoch_stage(ctx) is not None and trainee.method.rounds_done == 1


def _steps(store, method: str, fixmatch: bool, device: torch.device):
    """A fresh run's KD step parts and its first epoch's batches with their counts (CustomKD customized first)."""
    cfg = tiny_config(store, method=method, customize_warmup=0, ssl="fixmatch" if fixmatch else "none",
                      fixmatch_threshold=0.0)  # every unlabeled sample gets a pseudo-label: the term is live
    inputs = load_inputs(cfg, device)
    trainee = build_trainee(cfg, inputs, device)
    if trainee.method.customizes:
        _customize(cfg, inputs, trainee, device)
    plan = epoch_plan(cfg, inputs, 0, DistEnv())
    dataset = StudentViews(inputs.data, cfg.image_size, strong_seed=cfg.seed if fixmatch else None)
    loader = make_loader(dataset, plan.order, plan.views, cfg.batch_size, workers=0, device=device)
    return kd_step(cfg, inputs, trainee, device, progress=False), list(loader), plan.counts


@pytest.mark.parametrize("fixmatch", [False, True], ids=["plain", "fixmatch"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_steady_kd_step_reads_nothing_from_the_device(tiny_store, method, fixmatch):
    kd, batches, counts = _steps(tiny_store, method, fixmatch, torch.device("cpu"))
    assert len(batches) >= 3
    _kd_update(kd, batches[0], 0, counts[0])  # the first step creates the optimiser's state
    with no_host_reads(allowed=_optimizer_steps(kd.optimizer)):
        for step in (1, 2):
            parts, _ = _kd_update(kd, batches[step], 0, counts[step])
    if kd.method.customizes:
        assert "specific" in parts  # the customized branch ran
    if fixmatch:
        assert "fixmatch" in parts
    assert all(torch.isfinite(value).all() for value in parts.values())


def test_customization_loss_reads_nothing_and_a_batch_without_targets_adds_nothing(tiny_store):
    cfg = tiny_config(tiny_store, method="customkd", customize_target="labels")
    inputs = load_inputs(cfg, torch.device("cpu"))
    trainee = build_trainee(cfg, inputs, torch.device("cpu"))
    features = inputs.norm(inputs.data.features[inputs.split.train[:6], 1])
    probe_logits = inputs.probe(features).detach()
    for labels in (torch.tensor([0, -1, 2, 1, -1, 0]), torch.full((6,), -1)):
        with no_host_reads():
            parts = trainee.method.customization_loss(features, labels, probe_logits, trainee.student.head)
            parts["loss"].backward()
        grads = [p.grad for p in trainee.method.customizer.parameters()]
        assert torch.isfinite(parts["loss"]) and all(torch.isfinite(g).all() for g in grads)
        assert int(parts["used"]) == int((labels >= 0).sum())
        if int(parts["used"]) == 0:
            assert float(parts["loss"].detach()) == 0.0 and all(not g.any() for g in grads)
        trainee.method.customizer.zero_grad(set_to_none=True)


def test_the_host_round_count_follows_a_loaded_checkpoint(tiny_store):
    cfg = tiny_config(tiny_store, method="customkd")
    inputs = load_inputs(cfg, torch.device("cpu"))
    trained, fresh = (build_trainee(cfg, inputs, torch.device("cpu")).method for _ in range(2))
    trained.add_round()
    trained.add_round()
    assert trained.rounds_done == 2 and int(trained.rounds) == 2 and fresh.rounds_done == 0
    torch.nn.ModuleDict({"method": fresh}).load_state_dict({f"method.{k}": v for k, v in trained.state_dict().items()})
    assert fresh.rounds_done == 2  # loaded as a submodule too, as a checkpoint restores it


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["customkd+dkd", "kd+fitnet"])
def test_a_steady_kd_step_never_synchronises_cuda(tiny_store, method):
    kd, batches, counts = _steps(tiny_store, method, True, torch.device("cuda"))
    steps = list(zip(batches, counts, strict=True))
    for batch, batch_counts in steps[:2]:  # warm-up: optimiser state, cuDNN and cuBLAS handles, the allocator
        _kd_update(kd, batch, 0, batch_counts)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch, batch_counts in steps[2:] + steps:  # the epoch's last batch, then all of them again
            _kd_update(kd, batch, 0, batch_counts)
    finally:
        torch.cuda.set_sync_debug_mode(0)


MEANS_STDS = [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5,) * 3, (0.5,) * 3)]


@pytest.mark.parametrize(("mean", "std"), MEANS_STDS, ids=["imagenet", "half"])
def test_uint8_batches_normalised_after_the_copy_equal_the_float_views_bit_for_bit(tiny_store, mean, std):
    data = load_cached_data(tiny_config(tiny_store))
    dataset = StudentViews(data, 32, strong_seed=0)
    items = [(row, view, epoch) for row in (0, 5, 17, 29) for view in range(data.n_views) for epoch in (0, 1)]
    weak, _, _, strong = (torch.stack(column) if isinstance(column[0], torch.Tensor) else column
                          for column in zip(*(dataset[item] for item in items), strict=True))
    assert weak.dtype == strong.dtype == torch.uint8 and weak.shape == (len(items), 3, 32, 32)
    floats, strong_floats = [], []
    for row, view, epoch in items:  # the reference: float32 views from contract.views.to_tensor
        crop = replay_pil(data.listing.load_image(row), data.views[row, view], 32, "bilinear")
        floats.append(to_tensor(crop, mean, std))
        strong_floats.append(to_tensor(dataset._strong(crop, row, epoch), mean, std))
    normalize = PixelNorm(mean, std, torch.device("cpu"))
    assert torch.equal(normalize(weak), torch.stack(floats))
    assert torch.equal(normalize(strong), torch.stack(strong_floats))


def test_predict_images_normalise_as_evaluation_does(tiny_folder):
    from customkd.trainer.predict import ImageFiles, list_images

    files = list_images(str(tiny_folder))[:5]
    preprocess = {"size": 32, "crop": 0.875, "interpolation": "bilinear", "mean": [0.5, 0.4, 0.3], "std": [0.2] * 3}
    pixels = torch.stack([ImageFiles(files, preprocess)[i][0] for i in range(len(files))])
    assert pixels.dtype == torch.uint8
    expected = []
    for file in files:
        with Image.open(file) as image:
            image = to_8bit(image)
            params = centre_view(*image.size, ViewRecipe(centre_crop=0.875))
            expected.append(replay(image, params, 32, (0.5, 0.4, 0.3), (0.2,) * 3, "bilinear"))
    normalised = PixelNorm((0.5, 0.4, 0.3), (0.2,) * 3, torch.device("cpu"))(pixels)
    assert torch.equal(normalised, torch.stack(expected))
    assert np.isfinite(normalised.numpy()).all()
