"""Injected faults: bad images, write failures, damaged stores, stale datasets (issue: reliability)."""

import errno
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from customkd.common.errors import UserError
from customkd.contract import store as fs
from customkd.featcache.cache_ops import export_h5, import_h5, store_info, verify_store
from customkd.featcache.extract import ExtractConfig, extract
from customkd.trainer.config import DistillConfig
from customkd.trainer.data import load_cached_data, make_split
from tests.conftest import (
    TINY_STUDENT,
    TINY_TEACHER,
    invoke,
    make_tiny_hue_folder,
    one_error_line,
    store_bytes,
    tiny_config,
)


def _cfg(folder: Path, out: Path, **kw) -> ExtractConfig:
    settings = {"views": 3, "weights": "random", "workers": 0, "shard_size": 8, "chunk_size": 4, **kw}
    return ExtractConfig(teacher=TINY_TEACHER, data=f"folder:{folder}", out=str(out), **settings)


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_tiny_hue_folder(tmp_path / "imgs")


def _break_images(folder: Path) -> list[str]:
    good = (folder / "class0" / "img00.png").read_bytes()
    (folder / "class0" / "img01.png").write_bytes(good[: len(good) // 2])  # truncated
    (folder / "class1" / "img02.png").write_bytes(b"")  # zero bytes
    (folder / "class2" / "img03.png").write_text("this is not an image")  # not an image
    return ["class0/img01.png", "class1/img02.png", "class2/img03.png"]


def test_bad_images_are_all_named_then_skipped_with_flag(folder, tmp_path):
    bad = _break_images(folder)
    out = tmp_path / "s.zarr"
    with pytest.raises(UserError) as info:
        extract(_cfg(folder, out))
    message = str(info.value)
    assert all(name in message for name in bad) and "--skip-bad" in message and "\n" not in message
    assert zarr.open_group(str(out), mode="r").attrs["customkd"]["status"] == "in_progress"

    extract(_cfg(folder, out, skip_bad=True))  # resumes: only the shards holding bad images are redone
    summary = store_info(str(out))
    assert summary["status"] == "complete" and summary["invalid_samples"] == 3
    assert verify_store(str(out)) == []
    data = load_cached_data(DistillConfig(min_steps=0, cache=str(out)))
    invalid = {data.listing.samples[i].relpath for i in np.flatnonzero(~data.valid)}
    assert invalid == set(bad)
    split = make_split(DistillConfig(min_steps=0, cache=str(out), setting="supervised"), data)
    assert not set(np.concatenate([split.train, split.eval]).tolist()) & set(np.flatnonzero(~data.valid).tolist())


def test_unreadable_file_is_reported(folder, tmp_path, monkeypatch):
    from customkd.contract.datasets import DatasetListing

    real = DatasetListing.read_bytes

    def denied(self, index):
        if self.samples[index].relpath == "class1/img05.png":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(self, index)

    monkeypatch.setattr(DatasetListing, "read_bytes", denied)
    with pytest.raises(UserError, match=r"class1/img05.png \(PermissionError\)"):
        extract(_cfg(folder, tmp_path / "p.zarr"))


def test_write_failure_leaves_a_resumable_store(folder, tmp_path, monkeypatch):
    reference = tmp_path / "ref.zarr"
    extract(_cfg(folder, reference))
    out = tmp_path / "full.zarr"
    calls = {"n": 0}
    real_write = fs.write_shard

    def disk_full(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(fs, "write_shard", disk_full)
    with pytest.raises(UserError, match="No space left on device.*rerun the same command to resume"):
        extract(_cfg(folder, out))
    assert fs.read_manifest(zarr.open_group(str(out), mode="r")).status == "in_progress"
    monkeypatch.setattr(fs, "write_shard", real_write)
    extract(_cfg(folder, out))
    assert store_bytes(out) == store_bytes(reference)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_shard_is_located_and_refused(tiny_store, tmp_path, damage):
    copy = tmp_path / "d.zarr"
    shutil.copytree(tiny_store, copy)
    shard_file = copy / "features_t0" / "c" / "1" / "0" / "0"
    blob = bytearray(shard_file.read_bytes())
    if damage == "flip":
        blob[100] ^= 0xFF
        shard_file.write_bytes(bytes(blob))
    else:
        shard_file.write_bytes(bytes(blob[: len(blob) // 2]))
    problems = verify_store(str(copy))
    assert any("shard 1 " in p and "features" in p for p in problems), problems
    with pytest.raises(UserError, match="damaged|NaN"):
        load_cached_data(DistillConfig(min_steps=0, cache=str(copy)))


def test_stale_dataset_is_named_and_refused(tmp_path):
    folder = make_tiny_hue_folder(tmp_path / "imgs")
    out = tmp_path / "s.zarr"
    extract(_cfg(folder, out))
    edited = folder / "class2" / "img04.png"
    pixels = np.asarray(Image.open(edited)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(edited)
    problems = verify_store(str(out))
    assert any("class2/img04.png changed since extraction" in p for p in problems)
    with pytest.raises(UserError, match="fingerprint component 'dataset'.*class2/img04.png.*--allow-stale"):
        load_cached_data(DistillConfig(min_steps=0, cache=str(out)))
    assert load_cached_data(DistillConfig(min_steps=0, cache=str(out), allow_stale=True)).features.shape == (30, 3, 64)
    shutil.copy(edited, folder / "class2" / "extra.png")
    with pytest.raises(UserError, match="31 images on disk vs 30"):
        load_cached_data(DistillConfig(min_steps=0, cache=str(out)))


def test_teacher_check_and_h5_round_trip(tiny_store, tmp_path):
    assert verify_store(str(tiny_store), teacher_check=12) == []
    export_h5(str(tiny_store), str(tmp_path / "s.h5"))
    import_h5(str(tmp_path / "s.h5"), str(tmp_path / "back.zarr"))
    assert store_bytes(tmp_path / "back.zarr") == store_bytes(tiny_store)
    assert fs.read_manifest(zarr.open_group(str(tmp_path / "back.zarr"), mode="r")).status == "complete"


def test_export_never_overwrites_a_file_nor_writes_into_the_store(tiny_store, tmp_path):
    """``cache export --h5 FILE``: an existing FILE (the user's, or the store's own zarr.json) and a FILE inside the
    store are refused in one line; nothing changes. A new FILE appears whole, with no temporary file left."""
    mine = tmp_path / "mine.h5"
    mine.write_bytes(b"my own data")
    store = tmp_path / "s.zarr"
    shutil.copytree(tiny_store, store)
    before = store_bytes(store, manifest=True)
    for target, needle in ((mine, "already exists"), (store / "zarr.json", "already exists"),
                           (store / "export.h5", "inside the Zarr store")):
        assert str(target) in one_error_line(invoke("cache", "export", store, "--h5", target), needle)
    assert mine.read_bytes() == b"my own data" and store_bytes(store, manifest=True) == before
    assert invoke("cache", "export", store, "--h5", tmp_path / "new.h5").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.h5", "new.h5", "s.zarr"]


def test_teacher_check_detects_other_weights(tiny_store, tmp_path):
    from safetensors.torch import save_file

    from customkd.featcache.teachers import create_teacher

    state = {k: v + 1 for k, v in create_teacher(TINY_TEACHER, weights="random").model.state_dict().items()}
    save_file(state, str(tmp_path / "other.safetensors"))
    problems = verify_store(str(tiny_store), teacher_check=4, weights=str(tmp_path / "other.safetensors"))
    assert problems and f"teacher {TINY_TEACHER} weights differ" in problems[0]


def test_student_name_constant_is_a_timm_model():
    import timm

    assert timm.is_model(TINY_STUDENT)


def test_pinned_or_resumed_fingerprint_names_the_component(tmp_path):
    from safetensors.torch import save_file

    from customkd.featcache.teachers import create_teacher
    from customkd.trainer.distill import distill

    folder = make_tiny_hue_folder(tmp_path / "imgs")
    out = tmp_path / "s.zarr"
    extract(_cfg(folder, out))
    teacher_hash = fs.read_manifest(zarr.open_group(str(out), mode="r")).teachers[0].component.hash
    run = tmp_path / "run"
    distill(tiny_config(out, run, epochs=1, expect_fingerprint=f"teacher={teacher_hash[:8]}", keep_checkpoint=True))

    # the store is re-extracted in place with other teacher weights
    state = {k: v * 0.5 for k, v in create_teacher(TINY_TEACHER, weights="random").model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    extract(_cfg(folder, out, weights=str(tmp_path / "w.safetensors"), overwrite=True))
    with pytest.raises(UserError, match="fingerprint component 'teacher'"):
        distill(tiny_config(out, run, epochs=1, resume=True))
    with pytest.raises(UserError, match="fingerprint component 'teacher'"):
        load_cached_data(DistillConfig(min_steps=0, cache=str(out), expect_fingerprint=f"teacher={teacher_hash[:8]}"))

    extract(_cfg(folder, out, views=2, overwrite=True))
    with pytest.raises(UserError, match="fingerprint component 'augmentation'"):
        load_cached_data(DistillConfig(min_steps=0, cache=str(out), expect_fingerprint="augmentation=00000000"))


def test_other_schema_version_is_refused(tiny_store, tmp_path):
    copy = tmp_path / "v2.zarr"
    shutil.copytree(tiny_store, copy)
    group = zarr.open_group(str(copy), mode="r+")
    group.attrs["customkd"] = {**group.attrs["customkd"], "schema_version": 1}  # before every chunk was written
    with pytest.raises(UserError, match="schema version 1.*--overwrite"):
        load_cached_data(DistillConfig(min_steps=0, cache=str(copy)))
