"""Several teachers over one view set (schema version 3): ``extract --teacher B --into STORE`` replays the
store's views and writes only B's arrays; distill picks one teacher or concatenates several; the rest of the
tool (info, verify, export/import) sees every teacher."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from customkd.common.errors import UserError
from customkd.contract import store as fs
from customkd.featcache.cache_ops import export_h5, import_h5, store_info, verify_store
from customkd.featcache.extract import ExtractConfig, extract
from customkd.trainer.config import METHOD_NAMES, DistillConfig
from customkd.trainer.data import load_cached_data
from tests.conftest import TINY_TEACHER, invoke, one_error_line, store_bytes, tiny_config, torchrun

SECOND = "timm:test_efficientnet"  # D = 256 at --teacher-size 32: another architecture, another D


def _add(store: Path, **settings) -> ExtractConfig:
    return ExtractConfig(**{"teacher": SECOND, "into": str(store), "weights": "random", "workers": 0,
                            "teacher_size": 32, **settings})


@pytest.fixture(scope="module")
def two_teachers(tiny_store, tmp_path_factory) -> Path:
    """The tiny store (teacher ``timm:test_vit``) with :data:`SECOND` added."""
    store = tmp_path_factory.mktemp("many") / "two.zarr"
    shutil.copytree(tiny_store, store)
    assert extract(_add(store)).status == "complete"
    return store


@pytest.fixture
def copy(two_teachers, tmp_path) -> Path:
    shutil.copytree(two_teachers, tmp_path / "copy.zarr")
    return tmp_path / "copy.zarr"


def _second_arrays(key: str) -> bool:
    return key.split("/", 1)[0] in ("features_t1", "teacher_done_t1")


def test_adding_a_teacher_leaves_every_other_object_byte_identical(tiny_store, two_teachers):
    before, after = store_bytes(tiny_store), store_bytes(two_teachers)
    assert {key for key in after if not _second_arrays(key)} == set(before)
    assert all(after[key] == before[key] for key in before)  # views, listing, teacher 0: byte for byte
    manifest = fs.read_manifest(zarr.open_group(str(two_teachers), mode="r"))
    assert manifest.teacher_names == (TINY_TEACHER, SECOND)
    assert [t.status for t in manifest.teachers] == ["complete", "complete"]
    assert (manifest.teachers[1].feature_dim, manifest.teachers[1].component.size) == (256, 32)


def test_the_added_teacher_saw_the_stored_views(tiny_folder, two_teachers, tmp_path):
    """A store extracted from scratch with the second teacher draws the same views from the same seeds; its
    features are the added teacher's, value for value — replay, not new sampling, and the same pixels."""
    alone = tmp_path / "alone.zarr"
    extract(ExtractConfig(teacher=SECOND, data=f"folder:{tiny_folder}", out=str(alone), views=3, weights="random",
                          workers=0, shard_size=8, chunk_size=4, teacher_size=32))
    added = np.asarray(zarr.open_group(str(two_teachers), mode="r")["features_t1"][:])
    fresh = np.asarray(zarr.open_group(str(alone), mode="r")["features_t0"][:])
    np.testing.assert_array_equal(added, fresh)
    assert store_bytes(alone)["views/c/0/0/0"] == store_bytes(two_teachers)["views/c/0/0/0"]


def test_adding_again_is_a_no_op_and_a_different_one_is_refused(copy):
    bytes_before = store_bytes(copy, manifest=True)
    assert extract(_add(copy)).status == "unchanged"
    assert store_bytes(copy, manifest=True) == bytes_before
    line = one_error_line(invoke("extract", "--teacher", SECOND, "--weights", "random", "--into", copy,
                                 "--teacher-size", "48", "--workers", "0"), "already has teacher")
    assert "size" in line and "--overwrite-teacher" in line
    assert store_bytes(copy, manifest=True) == bytes_before
    one_error_line(invoke("extract", "--overwrite-teacher", "--out", copy), "pass --into")


def test_overwrite_teacher_redoes_only_that_teacher(copy):
    before = store_bytes(copy)
    old = np.asarray(zarr.open_group(str(copy), mode="r")["features_t1"][:])
    extract(_add(copy, teacher_size=48, overwrite_teacher=True))
    after = store_bytes(copy)
    assert all(after[key] == before[key] for key in before if not _second_arrays(key))
    group = zarr.open_group(str(copy), mode="r")
    assert not np.array_equal(np.asarray(group["features_t1"][:]), old)  # 48 px: other features
    manifest = fs.read_manifest(group)
    assert manifest.teacher_names == (TINY_TEACHER, SECOND) and manifest.teachers[1].component.size == 48
    assert verify_store(str(copy)) == []


def test_an_interrupted_addition_resumes_to_the_same_bytes(two_teachers, copy):
    group = zarr.open_group(str(copy), mode="r+")
    group["teacher_done_t1"][1:] = 0  # killed after shard 0: later shards scribbled, flags unset
    group["features_t1"][8:] = np.float16(3)
    attrs = fs.read_attrs(group)
    attrs["teachers"][1]["status"] = "in_progress"
    group.attrs[fs.ATTRS_KEY] = attrs
    one_error_line(invoke("distill", "--cache", copy, "--teacher", SECOND, "--min-steps", "0"),
                   f"teacher {SECOND} of cache")
    result = extract(_add(copy))
    assert result.status == "complete" and result.shards_written == 3
    assert store_bytes(copy) == store_bytes(two_teachers)


def test_two_ranks_add_the_same_teacher_as_one(tiny_store, two_teachers, tmp_path):
    store = tmp_path / "ranks.zarr"
    shutil.copytree(tiny_store, store)
    result = torchrun(2, "extract", "--teacher", SECOND, "--weights", "random", "--into", store, "--teacher-size",
                      "32", "--workers", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    ranks, one = store_bytes(store), store_bytes(two_teachers)
    assert ranks.keys() == one.keys()
    assert all(ranks[key] == one[key] for key in one if not key.startswith("features_t1/"))
    # a convolution's float rounding depends on batch composition and threads (rank 1's batches hold other rows)
    features = [np.asarray(zarr.open_group(str(path), mode="r")["features_t1"][:]) for path in (store, two_teachers)]
    np.testing.assert_allclose(*features, rtol=2e-3, atol=2e-3)


def test_a_second_addition_to_the_same_store_at_once_is_refused(tiny_store, two_teachers, tmp_path):
    """While one process adds a teacher to a store (it holds the flock on the store's folder), a second
    ``extract --into`` of that store, also through a link to it, is one line, exit 2, before its teacher loads, and
    writes nothing; once the first lets go, the same command completes (the lock goes with the process)."""
    import fcntl
    import os

    from tests.conftest import customkd

    store = tmp_path / "busy.zarr"
    shutil.copytree(tiny_store, store)
    (tmp_path / "link.zarr").symlink_to(store)
    before = store_bytes(store, manifest=True)
    command = ("extract", "--teacher", SECOND, "--weights", "random", "--teacher-size", "32", "--workers", "0")
    held = os.open(store, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the first extract --into, adding its teacher
        for place in (store, tmp_path / "link.zarr"):
            one_error_line(customkd(*command, "--into", place), "another `customkd extract` is writing store")
        assert store_bytes(store, manifest=True) == before
    finally:
        os.close(held)
    assert customkd(*command, "--into", store).returncode == 0
    assert store_bytes(store) == store_bytes(two_teachers)


def test_an_image_changed_since_extraction_is_refused(tiny_folder, tiny_store, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(tiny_folder, folder)
    store = tmp_path / "s.zarr"
    extract(ExtractConfig(teacher=TINY_TEACHER, data=f"folder:{folder}", out=str(store), views=2, weights="random",
                          workers=0, shard_size=8, chunk_size=4))
    (folder / "class1" / "img03.png").write_bytes((folder / "class1" / "img04.png").read_bytes())
    with pytest.raises(UserError, match="class1/img03.png .its bytes changed since the store was extracted"):
        extract(_add(store))
    assert fs.read_manifest(zarr.open_group(str(store), mode="r")).teachers[1].status == "in_progress"


def test_distill_chooses_one_teacher_or_concatenates_several(two_teachers, tmp_path):
    one_error_line(invoke("distill", "--cache", two_teachers, "--min-steps", "0"),
                   f"holds 2 teachers: {TINY_TEACHER} (complete), {SECOND} (complete); choose one with --teacher")
    one_error_line(invoke("distill", "--cache", two_teachers, "--teacher", "nope", "--min-steps", "0"),
                   f"has no teacher 'nope'; its teachers: {TINY_TEACHER}")
    group = zarr.open_group(str(two_teachers), mode="r")
    first, second = (np.asarray(group[name][:]) for name in ("features_t0", "features_t1"))
    both = f"{SECOND},{TINY_TEACHER}"
    for mode in ("ram", "stream"):
        data = load_cached_data(DistillConfig(cache=str(two_teachers), teachers=both, features=mode, min_steps=0))
        rows, views = np.arange(30), np.full(30, 2)
        np.testing.assert_array_equal(data.features[rows, views], np.concatenate([second, first], -1)[rows, 2])
    single = load_cached_data(DistillConfig(cache=str(two_teachers), teachers=SECOND, min_steps=0))
    np.testing.assert_array_equal(single.features, second)
    manifest = fs.read_manifest(group)
    members = json.loads(json.dumps([t.component.to_dict() for t in manifest.teachers[::-1]]))
    assert data.manifest.fingerprint.teacher.body == {"name": both, "members": members}


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_trains_from_an_ensemble(two_teachers, tmp_path, method):
    from customkd.trainer.distill import distill

    both = f"{TINY_TEACHER},{SECOND}"
    result = distill(tiny_config(two_teachers, tmp_path / "run", epochs=1, method=method, teachers=both,
                                 keep_checkpoint=True))
    assert np.isfinite(result.final["accuracy"])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    manifest = fs.read_manifest(zarr.open_group(str(two_teachers), mode="r")).for_teachers((TINY_TEACHER, SECOND))
    assert config["teachers"] == both and config["teacher_names"] == [TINY_TEACHER, SECOND]
    assert config["store_fingerprint"]["teacher"] == manifest.fingerprint.teacher.hash
    if method == "kd":  # the choice is part of the run: a resume from another teacher is refused
        one_error_line(invoke("distill", "--cache", two_teachers, "--out", tmp_path / "run", "--resume",
                              "--teacher", SECOND, "--min-steps", "0"), "with another 'teachers'")


def test_info_and_verify_see_every_teacher(copy):
    summary = store_info(str(copy))
    assert summary["teachers"] == f"{TINY_TEACHER}, {SECOND}"
    assert summary[f"teacher {SECOND}"].startswith("D=256 size=32 tap=pooled precision=fp32 complete (4/4 shards)")
    assert summary[f"teacher {TINY_TEACHER}"].startswith("D=64 size=160 tap=pooled precision=fp32 complete")
    assert verify_store(str(copy), teacher_check=3, weights="random") == []
    (copy / "features_t1" / "c" / "2" / "0" / "0").unlink()
    assert verify_store(str(copy), teacher=TINY_TEACHER) == []  # the damage is the other teacher's
    problems = verify_store(str(copy), teacher=SECOND)
    assert problems and problems[0].startswith("array features_t1: shard 2 (rows 16-23) is missing")
    with pytest.raises(UserError, match=f"has no teacher 'x'; its teachers: {TINY_TEACHER}, {SECOND}"):
        verify_store(str(copy), teacher="x")


def test_export_and_import_carry_every_teacher(two_teachers, tmp_path):
    export_h5(str(two_teachers), str(tmp_path / "s.h5"))
    import_h5(str(tmp_path / "s.h5"), str(tmp_path / "back.zarr"))
    original, back = (zarr.open_group(str(p), mode="r") for p in (two_teachers, tmp_path / "back.zarr"))
    assert sorted(back.array_keys()) == sorted(original.array_keys())
    for name in original.array_keys():
        np.testing.assert_array_equal(np.asarray(back[name][:]), np.asarray(original[name][:]), err_msg=name)
    assert fs.read_manifest(back).teacher_names == (TINY_TEACHER, SECOND) and verify_store(str(tmp_path / "back.zarr")) == []


# ------------------------------------------------------------------ a version-2 store keeps working

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "v2store"


@pytest.fixture
def v2(tmp_path) -> Path:
    shutil.copytree(FIXTURE, tmp_path / "v2")
    return tmp_path / "v2"


def test_a_version_2_store_is_read_and_trains(v2, tmp_path):
    from customkd.trainer.distill import distill

    store, data = v2 / "store.zarr", f"folder:{v2 / 'images'}"
    manifest = fs.read_manifest(fs.open_complete_store(store), store)
    assert (manifest.schema_version, manifest.teacher_names, manifest.writable) == (2, ("timm:test_vit",), False)
    assert verify_store(str(store), data=data) == []
    loaded = load_cached_data(DistillConfig(cache=str(store), data=data, min_steps=0))
    np.testing.assert_array_equal(loaded.features, np.asarray(zarr.open_group(str(store), mode="r")["features"][:]))
    assert loaded.manifest.fingerprint.hashes() == {k: v["hash"] for k, v in fs.read_attrs(
        zarr.open_group(str(store), mode="r"))["fingerprint"].items()}  # a v2 run pins what it always pinned
    distill(tiny_config(store, tmp_path / "run", epochs=1, data=data, labels_per_class=1, batch_size=4))
    assert (tmp_path / "run" / "student.safetensors").is_file()
    before = store_bytes(store, manifest=True)
    # the extraction that made it, run again (as `make extract` and `make report` do): complete, nothing written
    again = invoke("extract", "--teacher", TINY_TEACHER, "--weights", "random", "--data", data, "--out", store,
                   "--views", "2", "--shard-size", "4", "--chunk-size", "4", "--workers", "0")
    assert again.exit_code == 0 and "already complete, nothing to do" in again.output, again.output
    assert store_bytes(store, manifest=True) == before
    one_error_line(invoke("extract", "--teacher", SECOND, "--weights", "random", "--into", store),
                   "has store schema version 2, which holds one teacher and is read-only here")
    assert store_bytes(store, manifest=True) == before


def test_a_teacher_added_while_a_run_streams_from_the_store_does_not_stop_it(tiny_store, tmp_path):
    store = tmp_path / "grow.zarr"
    shutil.copytree(tiny_store, store)
    data = load_cached_data(DistillConfig(cache=str(store), features="stream", min_steps=0))
    rows, views = np.arange(0, 4), np.zeros(4, np.int64)
    first = data.features[rows, views]
    extract(_add(store))  # the root manifest changes: one more teacher
    later = data.features[np.arange(8, 12), views]  # shard 1, read after the change
    stored = np.asarray(zarr.open_group(str(store), mode="r")["features_t0"][:])
    np.testing.assert_array_equal(first, stored[rows, 0])
    np.testing.assert_array_equal(later, stored[8:12, 0])


def test_rows_skipped_at_extraction_stay_skipped_for_an_added_teacher(tmp_path):
    from tests.conftest import make_tiny_hue_folder

    folder = make_tiny_hue_folder(tmp_path / "imgs", classes=2, per_class=6)
    (folder / "class1" / "img02.png").write_text("this is not an image")
    store = tmp_path / "s.zarr"
    extract(ExtractConfig(teacher=TINY_TEACHER, data=f"folder:{folder}", out=str(store), views=2, weights="random",
                          workers=0, shard_size=4, chunk_size=4, skip_bad=True))
    views_before = store_bytes(store)
    assert extract(_add(store)).status == "complete"
    group = zarr.open_group(str(store), mode="r")
    valid = np.asarray(group["valid"][:]).astype(bool)
    features = np.asarray(group["features_t1"][:])
    assert (~valid).sum() == 1 and np.isnan(features[~valid]).all() and np.isfinite(features[valid]).all()
    assert all(store_bytes(store)[key] == value for key, value in views_before.items())
    assert verify_store(str(store)) == []
