import shutil

import numpy as np
import pytest
import zarr

from customkd.common.errors import UserError
from customkd.contract import store as fs
from customkd.contract.fingerprint import STORE_COMPONENTS, fingerprint_diff
from customkd.contract.schema import (
    ARRAYS,
    SCHEMA_VERSION,
    make_fingerprint,
    shard_size_for,
)
from customkd.featcache.extract import ExtractConfig, extract
from tests.conftest import ROOT, TINY_TEACHER, invoke, one_error_line, store_bytes


def _arrays(path):
    group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(group[name][:]) for name in group.array_keys()}


def test_store_layout_and_manifest(tiny_store):
    group = zarr.open_group(str(tiny_store), mode="r")
    manifest = group.attrs["customkd"]
    assert manifest["status"] == "complete" and manifest["schema_version"] == SCHEMA_VERSION
    assert group["features_t0"].shape == (30, 3, 64) and group["features_t0"].dtype == np.float16
    assert group["views"].shape == (30, 3, len(manifest["view_params"]))
    assert not np.isnan(group["features_t0"][:]).any()
    assert group["done"][:].tolist() == [1, 1, 1, 1]
    assert set(manifest["fingerprint"]) == set(STORE_COMPONENTS)  # the teacher's is beside its arrays
    assert set(manifest["teachers"][0]["fingerprint"]) >= {"name", "weights_hash", "tap", "size", "precision", "hash"}
    assert group["teacher_done_t0"][:].tolist() == [1, 1, 1, 1]
    assert manifest["classes"] == ["class0", "class1", "class2"]
    assert sorted(set(group["split"][:].tolist())) == [0, 1]


def test_small_dataset_shard_is_a_whole_number_of_chunks():
    assert shard_size_for(30, 256, 16) == 32  # was 30: zarr refused shards (30) of 16-sample chunks
    assert shard_size_for(2624, 256, 16) == 256
    assert shard_size_for(5, 256, 16) == 16
    assert shard_size_for(30, 8, 4) == 8
    with pytest.raises(UserError, match="multiple of --chunk-size"):
        ExtractConfig(teacher=TINY_TEACHER, data="elpv", out="x.zarr", shard_size=20, chunk_size=16)
    ExtractConfig(teacher=TINY_TEACHER, data="elpv", out="x.zarr", shard_size=5, chunk_size=16)  # one short chunk


def test_default_layout_on_a_dataset_smaller_than_a_shard(tiny_folder, tmp_path):
    out = tmp_path / "d.zarr"
    extract(ExtractConfig(teacher=TINY_TEACHER, data=f"folder:{tiny_folder}", out=str(out), views=2,
                          weights="random", workers=0))
    group = zarr.open_group(str(out), mode="r")
    assert group["features_t0"].shards == (32, 2, 64) and group["done"][:].tolist() == [1]
    assert group.attrs["customkd"]["status"] == "complete" and "completed" in group.attrs["customkd"]


def test_rerun_is_noop_and_different_fingerprint_refused(tiny_folder, tmp_path):
    out = tmp_path / "s.zarr"
    cfg = ExtractConfig(teacher=TINY_TEACHER, data=f"folder:{tiny_folder}", out=str(out), views=2,
                        weights="random", workers=0, shard_size=16)
    assert extract(cfg).status == "complete"
    before = _arrays(out)
    assert extract(cfg).status == "unchanged"
    with pytest.raises(UserError, match="different augmentation"):
        extract(ExtractConfig(**{**cfg.__dict__, "views": 3}))
    for name, values in _arrays(out).items():
        np.testing.assert_array_equal(values, before[name])


def test_resume_after_interruption_is_bitwise_identical(tiny_folder, tiny_store, tmp_path):
    out = tmp_path / "r.zarr"
    cfg = ExtractConfig(teacher=TINY_TEACHER, data=f"folder:{tiny_folder}", out=str(out), views=3,
                        weights="random", workers=0, shard_size=8, chunk_size=4)
    extract(cfg)
    # simulate a crash after shard 1: flags of shards 1..3 unset, their data scribbled, status in progress
    group = zarr.open_group(str(out), mode="r+")
    group["done"][1:] = 0
    group["teacher_done_t0"][1:] = 0
    group["features_t0"][8:] = np.float16(7)
    fs.set_status(group, fs.STATUS_IN_PROGRESS)
    with pytest.raises(UserError, match="incomplete"):
        fs.open_complete_store(out)
    result = extract(cfg)
    assert result.status == "complete" and result.shards_written == 3
    reference = _arrays(tiny_store)
    for name, values in _arrays(out).items():
        np.testing.assert_array_equal(values, reference[name], err_msg=name)


def test_out_path_that_is_not_a_store_is_left_alone(tiny_folder, tmp_path):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a customkd store"):
        extract(ExtractConfig(teacher=TINY_TEACHER, data=f"folder:{tiny_folder}", out=str(precious),
                              weights="random", workers=0, overwrite=True))
    assert (precious / "notes.txt").read_text() == "keep me"


def _overwrite(out, data, *extra):
    """``customkd extract --overwrite`` of the tiny teacher onto ``out``, in-process."""
    return invoke("extract", "--teacher", TINY_TEACHER, "--weights", "random", "--workers", "0", "--data", data,
                  "--out", out, "--overwrite", *extra)


def test_overwrite_deletes_only_a_store_customkd_made_of_store_files_only(tiny_folder, tiny_store, tmp_path):
    """--overwrite deletes a folder only when its zarr.json is a customkd manifest and everything in it is a store's
    (zarr.json files, chunk folders of the arrays); otherwise one line names the stranger and nothing is deleted."""
    other = tmp_path / "other.zarr"  # someone else's Zarr group, holding their data
    zarr.create_group(str(other), zarr_format=3, attributes={"project": "not ours"})
    (other / "my_data.npy").write_bytes(b"precious")
    line = one_error_line(_overwrite(other, f"folder:{tiny_folder}"), "not a customkd store")
    assert "nothing was deleted" in line
    assert (other / "my_data.npy").read_bytes() == b"precious" and (other / "zarr.json").is_file()
    (other / "zarr.json").write_text("[1]")  # not even a Zarr group
    one_error_line(_overwrite(other, f"folder:{tiny_folder}"), "not a customkd store")
    assert (other / "my_data.npy").read_bytes() == b"precious"

    for stranger, named in (("notes.txt", "notes.txt"), ("features/notes.txt", "features/notes.txt"),
                            ("labels/c/notes.txt", "labels/c/notes.txt"), ("extra/zarr.json", "extra/")):
        out = tmp_path / f"with-{stranger.replace('/', '-')}.zarr"
        shutil.copytree(tiny_store, out)
        (out / stranger).parent.mkdir(parents=True, exist_ok=True)
        (out / stranger).write_text("mine")
        before = store_bytes(out, manifest=True)
        one_error_line(_overwrite(out, f"folder:{tiny_folder}", "--views", "2"), f"holds {named},")
        assert store_bytes(out, manifest=True) == before, stranger

    out = tmp_path / "plain.zarr"
    shutil.copytree(tiny_store, out)
    assert _overwrite(out, f"folder:{tiny_folder}", "--views", "2").exit_code == 0  # a store of store files only
    assert fs.open_complete_store(out)["features_t0"].shape[1] == 2


def test_a_dataset_folder_inside_equal_to_or_containing_out_is_refused(tiny_folder, tiny_store, tmp_path):
    """``--unlabeled folder:STORE/imgs --out STORE --overwrite`` would delete the images it reads: refused first."""
    out = tmp_path / "s.zarr"
    shutil.copytree(tiny_store, out)
    shutil.copytree(tiny_folder, out / "imgs")
    shutil.copytree(tiny_folder, tmp_path / "data")
    before = store_bytes(out, manifest=True)
    for data, unlabeled in ((f"folder:{tiny_folder}", f"folder:{out / 'imgs'}"), (f"folder:{out / 'imgs'}", None),
                            (f"folder:{out}", None), (f"folder:{tmp_path}", None),
                            (f"folder:{tiny_folder}", f"NAME=folder:{out}")):
        extra = ("--unlabeled", unlabeled) if unlabeled else ()
        assert str(out) in one_error_line(_overwrite(out, data, *extra), "choose an --out outside")
        assert store_bytes(out, manifest=True) == before, (data, unlabeled)


def test_fingerprint_diff_names_components():
    a = make_fingerprint({"n": 1}, {"w": "x"}, {"v": 2}, {"s": 8})
    b = make_fingerprint({"n": 1}, {"w": "y"}, {"v": 2}, {"s": 8})
    assert fingerprint_diff(a, a) == []
    assert fingerprint_diff(a, b) == ["teacher"]


def test_readme_store_table_is_the_schema_array_table():
    """The README's store table lists the contract's arrays (contract/schema.py), in order, with their shapes and
    dtypes; the store writes exactly those."""
    import re

    readme = (ROOT / "README.md").read_text()
    table = readme.split("## The store", 1)[1].split("\n## ", 1)[0]
    rows = {name: (shape, dtype) for name, shape, dtype in
            re.findall(r"^\| `(\w+)` \| ([^|]+?) \| (\w+) \|", table, flags=re.M)}
    assert rows == {name: (spec.shape_text, spec.dtype) for name, spec in ARRAYS.items()}
    assert list(rows) == list(ARRAYS)


def test_a_folder_that_is_not_a_store_is_named_as_such(tiny_folder, tmp_path):
    for args in (["cache", "info", str(tiny_folder)], ["distill", "--cache", str(tiny_folder)]):
        one_error_line(invoke(*args), "is a folder but not a customkd store (no zarr.json at its top)")
    one_error_line(invoke("cache", "info", str(tmp_path / "absent")), "does not exist")
