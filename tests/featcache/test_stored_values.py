"""Every stored value of a store is checked on open or read, without the dataset: per-row arrays in their legal
ranges, the manifest's counts, names and recipe. A sender's store forged in one value is refused by every reader:
``cache verify`` reports it, ``distill``, ``cache export`` and ``cache import`` refuse it and write nothing.

Each forgery is written through zarr (or h5py into an export of the intact store), so every checksum holds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from customkd.contract.fingerprint import component_hash
from customkd.contract.schema import ATTRS_KEY
from customkd.contract.views import ViewRecipe
from customkd.featcache.extract import ExtractConfig, extract
from tests.conftest import TINY_STUDENT, TINY_TEACHER, invoke, one_error_line


def _rows(array: str, rows, value):
    """An edit of ``array``: ``rows`` (an index) set to ``value``."""
    def edit(values: np.ndarray) -> np.ndarray:
        values[rows] = value
        return values
    return array, edit


def _manifest(change):
    def edit(manifest: dict) -> dict:
        change(manifest)
        parts = [*manifest["fingerprint"].values(), *(t["fingerprint"] for t in manifest.get("teachers", []))]
        for part in parts:  # a careful forger rehashes every component
            part["hash"] = component_hash({k: v for k, v in part.items() if k != "hash"})
        return manifest
    return ATTRS_KEY, edit


def _recipe(**values):
    return _manifest(lambda m: m["fingerprint"]["augmentation"]["recipe"].update(values))


def _unflip(views: np.ndarray) -> np.ndarray:
    """Every view unflipped, so a recipe without flips would have drawn them."""
    views[..., 4] = 0
    return views


def _invalid_row_with_features(valid: np.ndarray) -> np.ndarray:
    valid[5] = 0  # row 5 keeps its finite features
    return valid


# (name, [(array or the manifest, edit)], what verify and every refusal names, whether opening refuses it); distill
# compares labels, domains and splits with the dataset listing first and names a row out of range there
LISTED = {"label 99": "array labels differs from the dataset listing in 1 row(s), e.g. row 9",
          "label -2": "array labels differs from the dataset listing in 1 row(s), e.g. row 0",
          "domain 4": "array domain differs from the dataset listing in 1 row(s), e.g. row 17",
          "split 2": "array split differs from the dataset listing in 1 row(s), e.g. row 25"}
FORGERIES = [
    ("valid 2", [_rows("valid", 3, 2)], "array valid: shard 0 (rows 0-7): row 3 holds 2, not 0 or 1", False),
    ("done 2", [_rows("done", 1, 2)], "array done: shard 1 (rows 8-15): holds 2, not 0 or 1", False),
    ("teacher_done 2", [_rows("teacher_done_t0", 2, 2)], "array teacher_done_t0: shard 2 (rows 16-23): holds 2",
     False),
    ("label 99", [_rows("labels", 9, 99)], "array labels: shard 1 (rows 8-15): row 9 holds 99, not a class index",
     False),
    ("label -2", [_rows("labels", 0, -2)], "row 0 holds -2, not a class index of 3 or -1 (-1..2)", False),
    ("domain 4", [_rows("domain", 17, 4)], "array domain: shard 2 (rows 16-23): row 17 holds 4, not a domain id",
     False),
    ("split 2", [_rows("split", 25, 2)], "array split: shard 3 (rows 24-29): row 25 holds 2, not a split id", False),
    ("n_invalid", [_manifest(lambda m: m.update(n_invalid=2))],
     "the manifest records 2 invalid samples ('n_invalid'), array valid holds 0", False),
    ("invalid with features", [("valid", _invalid_row_with_features), _manifest(lambda m: m.update(n_invalid=1))],
     "has features for samples stored invalid", False),
    ("view_params reordered", [_manifest(lambda m: m.update(view_params=["y0", "x0", *m["view_params"][2:]]))],
     "'view_params' is [y0, x0, x1", True),
    ("view_params renamed", [_manifest(lambda m: m["view_params"].__setitem__(4, "mirror"))],
     "'view_params' is [x0, y0, x1, y1, mirror", True),
    ("splits renamed", [_manifest(lambda m: m.update(splits=["test", "train"]))], "'splits' is [test, train]", True),
    ("third split", [_manifest(lambda m: m.update(splits=["train", "test", "val"]))], "'splits' is [train, test, val]",
     True),
    ("centre_crop 1e-300", [_recipe(centre_crop=1e-300)], "augmentation recipe centre_crop 1e-300 is not a number",
     True),
    ("scale NaN", [_recipe(scale=[float("nan"), 1.0])], "augmentation recipe scale is not [min, max]", True),
    ("flip off, views flipped", [_recipe(flip=False)], "flip 1 is not 0 (the recipe does not flip)", False),
    ("scale narrowed", [_recipe(scale=[0.99, 1.0]), ("views", _unflip)], "crop box area", False),
    ("centre_crop other", [_recipe(centre_crop=0.5)], "view 0: centre view box", False),
]


def forge_store(store: Path, edits) -> None:
    group = zarr.open_group(str(store), mode="r+")
    for name, edit in edits:
        if name == ATTRS_KEY:
            group.attrs[ATTRS_KEY] = edit(json.loads(json.dumps(group.attrs[ATTRS_KEY])))
        else:
            group[name].with_config({"write_empty_chunks": True})[:] = edit(np.asarray(group[name][:]))


def forge_export(h5_path: Path, edits) -> None:
    with h5py.File(h5_path, "r+") as h5:
        for name, edit in edits:
            if name == ATTRS_KEY:
                h5.attrs[ATTRS_KEY] = json.dumps(edit(json.loads(h5.attrs[ATTRS_KEY])))
            else:
                h5[name][...] = edit(np.asarray(h5[name][:]))


@pytest.fixture(scope="module")
def intact_export(tiny_store, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("export") / "intact.h5"
    assert invoke("cache", "export", tiny_store, "--h5", target).exit_code == 0
    return target


@pytest.mark.parametrize("name, edits, needle, on_open", FORGERIES, ids=[case[0] for case in FORGERIES])
def test_a_value_out_of_its_range_is_refused_by_every_reader(tiny_store, intact_export, tmp_path, name, edits, needle,
                                                             on_open):
    store = tmp_path / "forged.zarr"
    shutil.copytree(tiny_store, store)
    forge_store(store, edits)
    verified = invoke("cache", "verify", store)
    if on_open:  # the manifest itself is refused, as every malformed manifest is
        one_error_line(verified, needle)
    else:  # the report of a damaged store: exit 1, the problem named
        assert verified.exit_code == 1 and needle in verified.output, verified.output
    run = tmp_path / "run"
    one_error_line(invoke("distill", "--cache", store, "--student", TINY_STUDENT, "--epochs", "1", "--image-size",
                          "32", "--batch-size", "8", "--workers", "0", "--out", run), LISTED.get(name, needle))
    assert not run.exists()
    h5_path = tmp_path / "forged.h5"
    one_error_line(invoke("cache", "export", store, "--h5", h5_path), needle)
    assert not h5_path.exists() and not list(tmp_path.glob("forged.h5*"))

    shutil.copy(intact_export, h5_path)
    forge_export(h5_path, edits)
    dest = tmp_path / "imported.zarr"
    one_error_line(invoke("cache", "import", h5_path, dest), needle)
    assert not dest.exists()


@pytest.mark.parametrize("recipe", [ViewRecipe(flip=False, scale=(0.9, 1.0), color_jitter=0.3),
                                    ViewRecipe(scale=(0.05, 0.1), centre_crop=1.0)])
def test_a_store_extracted_with_any_recipe_is_read(tiny_folder, tmp_path, recipe):
    """The checks follow the recipe: a store drawn without flips, with jitter, with crops that fall back to the
    whole short side (0.9 of an image seldom fits a drawn aspect ratio) or tiny crops verifies, exports and imports."""
    store = tmp_path / "recipe.zarr"
    extract(ExtractConfig(teacher=TINY_TEACHER, data=f"folder:{tiny_folder}", out=str(store), views=4,
                          weights="random", workers=0, shard_size=8, chunk_size=4, recipe=recipe))
    assert invoke("cache", "verify", store).exit_code == 0
    assert invoke("cache", "export", store, "--h5", tmp_path / "recipe.h5").exit_code == 0
    assert invoke("cache", "import", tmp_path / "recipe.h5", tmp_path / "back.zarr").exit_code == 0
