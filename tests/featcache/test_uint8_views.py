"""Extraction's loader hands over uint8 views and the main process normalises them: the teacher's input must equal,
bit for bit, the float views that :func:`contract.views.replay` gives for the same stored parameters."""

import numpy as np
import torch
import zarr

from customkd.contract.datasets import load_listing
from customkd.contract.views import normalize_uint8, replay
from customkd.featcache.config import ExtractConfig
from customkd.featcache.extract_loop import StoredViews, ViewImages
from customkd.featcache.teachers import create_teacher
from tests.conftest import TINY_TEACHER


def _stored_images(tiny_store, tiny_folder, rows: list[int]):
    """ViewImages replaying ``tiny_store``'s views for ``rows``, its teacher's preprocess and the store's views."""
    group = zarr.open_group(str(tiny_store), mode="r")
    views = np.asarray(group["views"][:])
    stored = StoredViews(views, np.asarray(group["content_hash"][:]), np.asarray(group["valid"][:]))
    preprocess = create_teacher(TINY_TEACHER, "random", "cpu").preprocess
    cfg = ExtractConfig(teacher=TINY_TEACHER, data=f"folder:{tiny_folder}", out="unused", views=views.shape[1],
                        weights="random", workers=0)
    listing = load_listing(f"folder:{tiny_folder}")
    dataset = ViewImages(listing, rows, np.asarray(group["sample_key"][:]), cfg, preprocess, stored)
    return dataset, listing, preprocess, views


def test_normalised_uint8_views_equal_replayed_float_views(tiny_store, tiny_folder):
    rows = [0, 7, 13, 29]
    dataset, listing, p, views = _stored_images(tiny_store, tiny_folder, rows)
    for item, row in enumerate(rows):
        got_row, pixels, _, _, error = dataset[item]
        assert got_row == row and error == ""
        assert pixels.dtype == torch.uint8 and pixels.shape == (views.shape[1], 3, p.size, p.size)
        image = listing.load_image(row)
        expected = torch.stack([replay(image, v, p.size, p.mean, p.std, p.interpolation) for v in views[row]])
        assert torch.equal(normalize_uint8(pixels, p.mean, p.std), expected)


def test_normalize_uint8_keeps_channels_last():
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    images = normalize_uint8(pixels, (0.5, 0.4, 0.3), (0.2, 0.3, 0.4))
    assert images.dtype == torch.float32 and images.is_contiguous(memory_format=torch.channels_last)
