"""The written contract between the two processes (contract/schema.py): the stored format round-trips through
the typed manifest, the grammar and the layout are the ones both sides use."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr

from customkd.contract import store as fs
from customkd.contract.datasets import DATASETS, load_listing
from customkd.contract.listing import compare_listing, listing_arrays
from customkd.contract.schema import (
    ARRAYS,
    ATTRS_KEY,
    DATA_KINDS,
    SHARED_ARRAYS,
    STALENESS_ARRAYS,
    DataSpecError,
    Layout,
    Manifest,
    ManifestError,
    parse_data_spec,
)


def _attrs(store) -> dict:
    return json.loads((store / "zarr.json").read_text())["attributes"][ATTRS_KEY]


def test_manifest_round_trips_to_the_stored_attrs(tiny_store):
    attrs = _attrs(tiny_store)
    manifest = Manifest.from_attrs(attrs)
    assert manifest.to_attrs() == attrs
    assert list(manifest.to_attrs()) == list(attrs)  # the order extraction writes, too
    assert manifest.fingerprint.to_dict() == attrs["fingerprint"]
    assert manifest.fingerprint.hashes() == {name: part["hash"] for name, part in attrs["fingerprint"].items()}
    assert manifest.fingerprint.teacher is None and "teacher" not in attrs["fingerprint"]  # each teacher has its own
    (teacher,) = manifest.teachers
    assert teacher.component.to_dict() == attrs["teachers"][0]["fingerprint"]
    assert (teacher.name, teacher.feature_dim, teacher.status) == (attrs["teachers"][0]["name"], 64, "complete")
    assert manifest.for_teachers((teacher.name,)).fingerprint.teacher == teacher.component
    assert manifest.layout.shard_size == attrs["fingerprint"]["layout"]["shard_size"] == 8
    recipe = attrs["fingerprint"]["augmentation"]["recipe"]
    assert manifest.fingerprint.augmentation.centre_crop == recipe["centre_crop"]


def test_unknown_and_optional_keys_round_trip(tiny_store):
    attrs = {**_attrs(tiny_store), "from_a_later_version": {"x": [1, 2]}, "versions": None}
    del attrs["n_shards"], attrs["completed"]
    assert Manifest.from_attrs(attrs).to_attrs() == attrs


def test_manifest_is_a_copy_of_what_was_read(tiny_store):
    attrs = _attrs(tiny_store)
    manifest = Manifest.from_attrs(attrs)
    attrs["fingerprint"]["augmentation"]["recipe"]["centre_crop"] = 0.5
    manifest.to_attrs()["teachers"][0]["fingerprint"]["name"] = "changed"
    assert manifest.fingerprint.augmentation.centre_crop != 0.5
    assert manifest.teachers[0].component.name != "changed"


def test_the_store_layer_reads_the_same_manifest(tiny_store):
    group = fs.open_store(tiny_store)
    assert fs.read_manifest(group, tiny_store) == fs.validate_manifest(group, tiny_store)
    assert fs.read_manifest(group).to_attrs() == fs.read_attrs(group)


def test_a_malformed_manifest_is_one_manifest_error(tiny_store):
    attrs = {**_attrs(tiny_store), "shape": [30, 3, 64]}
    with pytest.raises(ManifestError, match=r"'shape' must be \[N, V\]"):
        Manifest.from_attrs(attrs)


def test_the_store_arrays_are_the_table(tiny_store):
    group = zarr.open_group(str(tiny_store), mode="r")
    manifest = Manifest.from_attrs(_attrs(tiny_store))
    stored = manifest.arrays()
    assert sorted(group.array_keys()) == sorted(stored) == sorted([*SHARED_ARRAYS, "features_t0", "teacher_done_t0"])
    for name, (spec_key, layout) in stored.items():
        spec = ARRAYS[spec_key]
        assert (group[name].shape, str(group[name].dtype)) == (layout.shape(spec_key), spec.dtype), name
        assert fs.storage_chunks(group[name]) == layout.storage_block(spec_key), name
    assert group["features_t0"].shape == (30, 3, 64)


@pytest.mark.parametrize("n, shard", [(30, 8), (32, 8), (1, 16), (257, 256)])
def test_shards_cover_every_row_once(n, shard):
    layout = Layout(n, 2, 4, 9, shard)
    rows = [r for s in range(layout.n_shards) for r in range(n)[layout.shard_rows(s)]]
    assert rows == list(range(n))
    assert layout.shape("done") == (layout.n_shards,)


def test_data_spec_grammar(tmp_path):
    spec = parse_data_spec(f"folder:{tmp_path}|unlabeled:camera=/a/b|unlabeled:web=/c")
    assert (spec.kind, spec.arg, spec.unlabeled) == ("folder", str(tmp_path), (("camera", "/a/b"), ("web", "/c")))
    assert spec.folders == [str(tmp_path), "/a/b", "/c"]
    assert parse_data_spec("elpv").folders == []
    with pytest.raises(DataSpecError) as kind:
        parse_data_spec("http://x")
    assert kind.value.kind == "http" and kind.value.part is None
    for part in ("labeled:a=/b", "unlabeled:=/b", "unlabeled:a=", "unlabeled:a"):
        with pytest.raises(DataSpecError) as bad:
            parse_data_spec(f"elpv|{part}")
        assert bad.value.part == part
    assert set(DATASETS) == set(DATA_KINDS)  # every kind the grammar accepts has a lister


def test_one_staleness_check(tiny_store, tiny_folder, tmp_path):
    group = zarr.open_group(str(tiny_store), mode="r")
    manifest = Manifest.from_attrs(_attrs(tiny_store))
    stored = {name: np.asarray(group[name][:]) for name in STALENESS_ARRAYS}
    listing = load_listing(manifest.data_spec)
    for name, values in listing_arrays(listing).items():
        np.testing.assert_array_equal(values, stored[name])
        assert values.dtype == ARRAYS[name].dtype
    assert compare_listing(listing, manifest, stored).problems() == []

    folder = tmp_path / "imgs"
    shutil.copytree(tiny_folder, folder)
    (folder / "class1" / "img03.png").write_bytes((folder / "class1" / "img04.png").read_bytes())
    edited = load_listing(f"folder:{folder}")
    diff = compare_listing(edited, manifest, stored)
    assert [relpath for _, relpath in diff.stale] == ["class1/img03.png"] and not diff.moved
    stored["labels"][0] = 2
    stored["sample_key"][5] += 1
    problems = compare_listing(edited, manifest, stored).problems()
    assert problems[0].startswith("array labels differs from the dataset listing in 1 row(s), e.g. row 0")
    assert "sample 5: path class0/img05.png does not match the store's row" in problems
