"""View replay on the device (trainer/replay.py, trainer/device_replay.py) against the workers' PIL replay
(contract.views.replay_pil): the exact engine pixel for pixel, the fast one within its stated tolerance, and a
whole run with ``--replay device`` equal to the worker run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from customkd.contract.views import ViewRecipe, draw_views, replay_pil, to_uint8
from customkd.trainer.replay import FAST_TOLERANCE, hsv_to_rgb, replay_batch, rgb_to_hsv, vertical_first
from tests.conftest import invoke, one_error_line, tiny_config, without_timing


def _images(count: int, seed: int) -> list[Image.Image]:
    """Smooth gradients plus noise, grey and RGB, wide and tall (tall ones take PIL's vertical-first order)."""
    rng = np.random.default_rng(seed)
    images = []
    for k in range(count):
        width, height = (int(v) for v in rng.integers(12, 70, 2))
        if k % 4 == 1:
            height = width * 4  # shrinks more in height: Pillow resizes these vertically first
        ramp = np.linspace(0, 150, width)[None, :, None] + np.linspace(0, 60, height)[:, None, None]
        pixels = (rng.integers(0, 100, (height, width, 3)) + ramp).clip(0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels).convert("L" if k % 3 == 0 else "RGB"))
    return images


def _batch(images: list[Image.Image]) -> tuple[torch.Tensor, np.ndarray]:
    """The decoded cache's layout: ``[B, C, H, W]`` uint8, zero-padded; C = 1 when every image is grey."""
    channels = 1 if all(image.mode == "L" for image in images) else 3
    height, width = max(i.size[1] for i in images), max(i.size[0] for i in images)
    batch = np.zeros((len(images), channels, height, width), np.uint8)
    for k, image in enumerate(images):
        array = np.asarray(image if channels == 1 or image.mode == "RGB" else image.convert("RGB"))
        batch[k, :, : array.shape[0], : array.shape[1]] = array.reshape(*array.shape[:2], -1).transpose(2, 0, 1)
    return torch.from_numpy(batch), np.array([image.size for image in images], np.int64)


def _differences(jitter: float, size: int, interpolation: str, engine: str, grey: bool = False,
                 device: str = "cpu") -> np.ndarray:
    """|device replay − PIL replay| per pixel, over views drawn by the extraction's own recipe."""
    images = _images(16, seed=size)
    if grey:
        images = [image.convert("L") for image in images]
    recipe = ViewRecipe(color_jitter=jitter)
    params = np.stack([draw_views(*image.size, k, 3, recipe, 11)[1 + k % 2] for k, image in enumerate(images)])
    pixels, sizes = _batch(images)
    replayed = replay_batch(pixels.to(device), sizes, params, size, interpolation, engine).cpu()
    reference = torch.stack([to_uint8(replay_pil(image, p, size, interpolation)) for image, p in zip(images, params, strict=True)])
    assert replayed.dtype == torch.uint8 and replayed.shape == reference.shape
    return (replayed.int() - reference.int()).abs().numpy()


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("jitter", [0.0, 0.4])
@pytest.mark.parametrize("size", [16, 40, 96])
def test_the_exact_engine_gives_pils_pixels(size, jitter, interpolation):
    assert _differences(jitter, size, interpolation, "exact").max() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (bench/gpu_check.sh runs it)")
@pytest.mark.parametrize("size", [40, 96])
def test_the_exact_engine_gives_pils_pixels_on_a_gpu(size):
    assert _differences(0.4, size, "bilinear", "exact", device="cuda").max() == 0
    fast = _differences(0.4, size, "bilinear", "fast", device="cuda")
    assert fast.max() <= FAST_TOLERANCE["colour"]["max"] and fast.mean() <= FAST_TOLERANCE["colour"]["mean"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (bench/gpu_check.sh runs it)")
def test_device_replay_never_waits_for_the_gpu():
    images = _images(16, seed=40)
    params = np.stack([draw_views(*image.size, k, 3, ViewRecipe(color_jitter=0.4), 11)[1]
                       for k, image in enumerate(images)])
    pixels, sizes = _batch(images)
    pixels = pixels.cuda()
    for engine in ("exact", "fast"):
        replay_batch(pixels, sizes, params, 40, "bilinear", engine)  # warm-up: pinned pages, kernels
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            replay_batch(pixels, sizes, params, 40, "bilinear", engine)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_the_fixtures_take_both_of_pils_pass_orders():
    sizes = np.array([image.size for image in _images(16, seed=16)])
    assert vertical_first(sizes, 16).any() and not vertical_first(sizes, 16).all()


@pytest.mark.parametrize("size", [16, 40, 96])
def test_the_fast_engine_stays_within_its_tolerance(size):
    geometry = _differences(0.0, size, "bilinear", "fast")
    coloured = _differences(0.4, size, "bilinear", "fast")
    assert geometry.max() <= FAST_TOLERANCE["geometry"]["max"]
    assert geometry.mean() <= FAST_TOLERANCE["geometry"]["mean"]
    assert coloured.max() <= FAST_TOLERANCE["colour"]["max"]
    assert coloured.mean() <= FAST_TOLERANCE["colour"]["mean"]


def test_grey_images_stay_one_channel_until_the_end():
    assert _differences(0.4, 40, "bilinear", "exact", grey=True).max() == 0


def test_8bit_hsv_round_trip_equals_pils_on_every_hue_and_a_sample_of_colours():
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (256, 257, 3), dtype=np.uint8)
    colours[0, :256] = np.arange(256)[:, None]  # the greys
    image = Image.fromarray(colours)
    hsv = rgb_to_hsv(torch.from_numpy(colours).permute(2, 0, 1)[None].double())[0]
    assert np.array_equal(hsv.permute(1, 2, 0).numpy().astype(np.uint8), np.asarray(image.convert("HSV")))
    triples = rng.integers(0, 256, (256, 257, 3), dtype=np.uint8)
    triples[1, :256, 0] = np.arange(256)  # every hue, including 255 (sector 6)
    rgb = hsv_to_rgb(torch.from_numpy(triples).permute(2, 0, 1)[None].double())[0]
    assert np.array_equal(rgb.permute(1, 2, 0).numpy().astype(np.uint8),
                          np.asarray(Image.fromarray(triples, "HSV").convert("RGB")))


def test_a_run_with_exact_device_replay_equals_the_worker_run(tiny_store, tmp_path):
    from customkd.trainer.distill import distill
    from customkd.trainer.run_folder import CONFIG, METRICS, STUDENT

    workers = distill(tiny_config(tiny_store, tmp_path / "workers"))
    device = distill(tiny_config(tiny_store, tmp_path / "device", replay="device", replay_engine="exact"))
    metrics = [json.loads((tmp_path / run / METRICS).read_text()) for run in ("workers", "device")]
    assert without_timing(metrics[0]["epochs"]) == without_timing(metrics[1]["epochs"])
    assert workers.final == device.final
    assert (tmp_path / "workers" / STUDENT).read_bytes() == (tmp_path / "device" / STUDENT).read_bytes()
    used = [json.loads((tmp_path / run / CONFIG).read_text())["replay_used"] for run in ("workers", "device")]
    assert used[0] == {"mode": "workers", "view_cache_mib": 0.3}  # every view of the tiny store: 30 x 3 x 3 x 32 x 32 bytes
    assert used[1]["mode"] == "device" and used[1]["engine"] == "exact" and used[1]["cache"] == "cpu"


def test_auto_replays_in_the_workers_on_a_cpu_and_device_refuses_fixmatch(tiny_store):
    from customkd.common.errors import UserError
    from customkd.trainer.data import load_cached_data
    from customkd.trainer.device_replay import decode_images, resolve_replay

    data = load_cached_data(tiny_config(tiny_store))
    rows = np.arange(len(data.views))
    assert resolve_replay("auto", data, rows, torch.device("cpu"), strong=False) is None
    assert decode_images(data, rows, budget=1000) is None  # past the budget: the worker path
    decoded = decode_images(data, rows, budget=2**30)
    first = np.asarray(data.listing.load_image(0).convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(decoded.pixels[decoded.position[0], :, : first.shape[1], : first.shape[2]].numpy(), first)
    with pytest.raises(UserError, match="--replay device does not replay FixMatch"):
        tiny_config(tiny_store, replay="device", ssl="fixmatch")


def test_bad_replay_flags_are_one_error_line_each(tiny_store):
    assert "known: auto, workers, device" in one_error_line(invoke("distill", "--cache", tiny_store, "--replay", "gpu"),
                                                            "--replay")
    assert "use --replay workers" in one_error_line(
        invoke("distill", "--cache", tiny_store, "--replay", "device", "--ssl", "fixmatch"), "RandAugment")
    assert "exact, fast" in one_error_line(invoke("distill", "--cache", tiny_store, "--replay-engine", "pil"),
                                           "--replay-engine")
