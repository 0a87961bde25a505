"""A store is untrusted input (docs/design.md §10): injected attacks and damage, each refused with one line.

Every test edits a copy of the session's tiny store the way a hostile or careless sender would,
then runs the reader a receiver runs (the real Typer app in-process, or the library call behind it).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from customkd.common.errors import UserError
from customkd.contract import store as fs
from customkd.contract.datasets import load_listing
from customkd.contract.fingerprint import component_hash
from customkd.contract.schema import PER_SAMPLE_ARRAYS
from customkd.featcache.cache_ops import verify_store
from customkd.featcache.extract import ExtractConfig, extract
from customkd.trainer.config import DistillConfig
from customkd.trainer.data import load_cached_data
from tests.conftest import TINY_STUDENT, TINY_TEACHER, invoke, make_tiny_hue_folder, one_error_line


def distill_args(store: Path, tmp_path: Path) -> list:
    return ["distill", "--cache", store, "--student", TINY_STUDENT, "--epochs", "1", "--image-size", "32",
            "--batch-size", "8", "--workers", "0", "--out", tmp_path / "run"]


@pytest.fixture
def copy(tiny_store, tmp_path) -> Path:
    target = tmp_path / "copy.zarr"
    shutil.copytree(tiny_store, target)
    return target


def edit_manifest(store: Path, change, rehash: bool = False) -> None:
    """Rewrite the root attrs; with ``rehash`` recompute the component hashes as a careful forger would."""
    group = zarr.open_group(str(store), mode="r+")
    manifest = json.loads(json.dumps(group.attrs["customkd"]))
    change(manifest)
    if rehash and isinstance(manifest.get("fingerprint"), dict):
        for part in [*manifest["fingerprint"].values(), *(t["fingerprint"] for t in manifest.get("teachers", []))]:
            part["hash"] = component_hash({k: v for k, v in part.items() if k != "hash"})
    group.attrs["customkd"] = manifest


# ------------------------------------------------------------------ nothing in a store is executed

class _Payload:
    def __init__(self, call, arg) -> None:
        self.call, self.arg = call, arg

    def __reduce__(self):
        return self.call, (self.arg,)


def write_cifar_release(folder: Path, payload=None, protocol: int = 2) -> None:
    """A fake CIFAR-100 python release (dicts of bytes, lists, ints and uint8 NumPy arrays)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for part, n in (("train", 6), ("test", 4)):
        data = {b"batch_label": part.encode(), b"filenames": [f"{i}.png".encode() for i in range(n)],
                b"fine_labels": [i % 3 for i in range(n)], b"coarse_labels": [0] * n,
                b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        if payload is not None:
            data[b"extra"] = payload
        (folder / part).write_bytes(pickle.dumps(data, protocol=protocol))
    meta = {b"fine_label_names": [b"apple", b"bear", b"cloud"], b"coarse_label_names": [b"x"]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=protocol))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_release_loads_with_the_restricted_unpickler(tmp_path, protocol):
    write_cifar_release(tmp_path / "cifar", protocol=protocol)
    listing = load_listing(f"cifar100:{tmp_path / 'cifar'}")
    assert len(listing) == 10 and listing.classes == ("apple", "bear", "cloud")
    assert listing.load_image(0).size == (32, 32)


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec"])
def test_pickle_chosen_by_a_store_never_runs(copy, tmp_path, payload):
    marker = tmp_path / "pwned"
    code = (_Payload(os.system, f"touch {marker}") if payload == "os.system"
            else _Payload(exec, f"open({str(marker)!r}, 'w').close()"))
    outside, inside = tmp_path / "evil", copy / "evil"
    write_cifar_release(outside, payload=code)
    shutil.copytree(outside, inside)

    edit_manifest(copy, lambda m: m.update(data_spec=f"cifar100:{inside}"))
    one_error_line(invoke("cache", "verify", copy), "points inside the store itself")
    one_error_line(invoke(*distill_args(copy, tmp_path)), "points inside the store itself")

    edit_manifest(copy, lambda m: m.update(data_spec=f"cifar100:{outside}"))
    line = one_error_line(invoke("cache", "verify", copy), "refusing CIFAR-100 file")
    assert str(outside / "meta") in line or str(outside / "train") in line
    one_error_line(invoke(*distill_args(copy, tmp_path)), "which the CIFAR-100 format never contains")
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ attributes are validated before use

def _drop_fingerprint(m):
    del m["fingerprint"]


def _set_layout(key, value):
    return lambda m: m["fingerprint"]["layout"].update({key: value})


@pytest.mark.parametrize("change, rehash, needle", [
    (lambda m: m.update(classes=m["classes"][:1]), False, "'classes' differs from the fingerprint"),
    (_set_layout("shard_size", 0), True, "layout shard_size must be a positive integer, got 0"),
    (_set_layout("shard_size", "8"), True, "layout shard_size must be a positive integer, got '8'"),
    (_set_layout("shard_size", 8.0), True, "layout shard_size must be a positive integer"),
    (_set_layout("shard_size", 1), True, "'n_shards' 4 is not ceil(N / shard_size) = 30"),
    (_drop_fingerprint, False, "'fingerprint' is missing"),
    (lambda m: m["teachers"][0].pop("fingerprint"), False, "component 'teacher timm:test_vit' is missing"),
    (lambda m: m["teachers"][0]["fingerprint"].update(tap="cls"), False,
     "'teacher timm:test_vit' does not match its hash"),
    (lambda m: m["teachers"].append(m["teachers"][0]), False, "names a teacher twice"),
    (lambda m: m["teachers"][0].update(name="a,b"), False, "teacher 0 has no name (a string without commas)"),
    (lambda m: m["teachers"][0].update(feature_dim=65), False, "fingerprint feature_dim differs"),
    (lambda m: m["teachers"][0].update(status="finished"), False, "status 'finished' is not one of"),
    (lambda m: m["fingerprint"].update(teacher=m["teachers"][0]["fingerprint"]), False,
     "the store's fingerprint has a 'teacher' component"),
    (lambda m: m.update(shape=[10**12, 3]), False, "out of range"),
    (lambda m: m.update(shape=[30, "3"]), False, "out of range"),
    (lambda m: m["teachers"][0].update(feature_dim=10**6), False, "feature_dim 1000000 is out of range"),
    (lambda m: m.update(status="done\x1b[2J"), False, "'done\\x1b[2J' is not one of"),
    (lambda m: m.update(data_spec="http://example.com/x"), False, "kind 'http' is not one of"),
    (lambda m: m.update(data_spec=7), False, "'data_spec' must be a string"),
    (lambda m: m.update(domains=[]), False, "'domains' must be a non-empty list"),
    (lambda m: m.update(n_invalid=-1), False, "'n_invalid'"),
])
def test_malformed_manifest_is_one_line_exit_2(copy, change, rehash, needle):
    edit_manifest(copy, change, rehash)
    one_error_line(invoke("cache", "info", copy), needle)


def test_array_metadata_must_match_the_manifest(copy, tmp_path):
    meta = copy / "done" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"] = [100_000_000]  # a done array that claims 1e8 shards
    meta.write_text(json.dumps(doc))
    one_error_line(invoke("cache", "info", copy), "array 'done' has shape (100000000,)")
    one_error_line(invoke(*distill_args(copy, tmp_path)), "array 'done' has shape")


def test_forged_classes_are_refused_against_the_listing(copy, tmp_path):
    def shorten(m):
        m["classes"] = m["fingerprint"]["dataset"]["classes"] = m["classes"][:2]

    edit_manifest(copy, shorten, rehash=True)
    result = invoke("cache", "verify", copy)
    assert result.exit_code == 1 and "store's classes differ from the dataset's" in result.output
    one_error_line(invoke(*distill_args(copy, tmp_path)), "classes differ")


def test_cache_info_prints_attribute_strings_sanitised(copy):
    hostile = "\x1b]0;owned\x07\x1b[2J\u202e"
    edit_manifest(copy, lambda m: m.update(created=f"2026 {hostile}", data_spec=f"folder:/nowhere/{hostile}"))
    result = invoke("cache", "info", copy)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output and "\u202e" not in result.output
    assert "\\x1b]0;owned\\x07" in result.output
    assert "\x1b" not in invoke("cache", "info", "--json", copy).output


# ------------------------------------------------------------------ only regular files inside the root are read

@pytest.fixture
def alarm():
    """Fail instead of hanging forever if a reader opens a named pipe."""
    def timeout(*_):
        raise TimeoutError("a reader blocked on a store entry")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("entry, kind", [("fifo", "named pipe"), ("device", "symbolic link"),
                                         ("outside", "symbolic link"), ("root_meta", "symbolic link")])
def test_only_regular_files_inside_the_store_are_read(copy, tmp_path, alarm, entry, kind):
    target = copy / "labels" / "c" / "1"
    if entry == "root_meta":
        target = copy / "features_t0" / "zarr.json"
    outside = tmp_path / "outside.bin"
    outside.write_bytes(target.read_bytes())
    target.unlink()
    if entry == "fifo":
        os.mkfifo(target)
    elif entry == "device":
        target.symlink_to("/dev/zero")
    else:
        target.symlink_to(outside)
    relative = target.relative_to(copy).as_posix()
    one_error_line(invoke("cache", "verify", copy), f"contains {relative}, a {kind}")
    one_error_line(invoke("cache", "info", copy), f"contains {relative}, a {kind}")
    one_error_line(invoke(*distill_args(copy, tmp_path)), f"contains {relative}, a {kind}")


# ------------------------------------------------------------------ every chunk of every array, and the listing

CHUNK = {"features_t0": "features_t0/c/1/0/0", "views": "views/c/1/0/0", "done": "done/c/1",
         "teacher_done_t0": "teacher_done_t0/c/1", **{name: f"{name}/c/1" for name in PER_SAMPLE_ARRAYS}}


@pytest.mark.parametrize("array", sorted(CHUNK))
def test_missing_chunk_of_any_array_is_named_and_refused(copy, array):
    (copy / CHUNK[array]).unlink()
    problems = verify_store(str(copy))
    assert any(p.startswith(f"array {array}: shard 1 (rows 8-15) is missing") for p in problems), problems
    with pytest.raises(UserError, match=f"array {array}: shard 1 \\(rows 8-15\\) is missing"):
        load_cached_data(DistillConfig(cache=str(copy)))


def test_deleted_labels_chunk_through_the_cli(copy, tmp_path):
    (copy / "labels" / "c" / "0").unlink()  # rows 0-7 would read as class 0
    result = invoke("cache", "verify", copy)
    assert result.exit_code == 1 and "problem: array labels: shard 0 (rows 0-7) is missing" in result.output
    one_error_line(invoke(*distill_args(copy, tmp_path)), "array labels: shard 0 (rows 0-7) is missing")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("array", ["labels", "valid", "content_hash"])
def test_altered_chunk_of_a_per_sample_array_is_named(copy, array):
    chunk = copy / array / "c" / "2"
    blob = bytearray(chunk.read_bytes())
    blob[0] ^= 0xFF
    chunk.write_bytes(bytes(blob))
    assert any(p.startswith(f"array {array}: shard 2 (rows 16-23) is damaged") for p in verify_store(str(copy)))
    with pytest.raises(UserError, match="damaged"):
        load_cached_data(DistillConfig(cache=str(copy)))


@pytest.mark.parametrize("array, value", [("labels", 2), ("domain", 1), ("split", 1)])
def test_stored_rows_differing_from_the_listing_are_refused(copy, array, value):
    group = zarr.open_group(str(copy), mode="r+")
    stored = np.asarray(group[array][:])
    row = int(np.flatnonzero(stored != value)[0])
    stored[row] = value
    group[array].with_config({"write_empty_chunks": True})[:] = stored  # a checksummed, well-formed chunk
    assert any(f"array {array} differs from the dataset listing in 1 row(s), e.g. row {row}" in p
               for p in verify_store(str(copy)))
    with pytest.raises(UserError, match=f"array {array} differs from the dataset listing"):
        load_cached_data(DistillConfig(cache=str(copy)))


# ------------------------------------------------------------------ a store swapped while it is streamed

def test_store_swapped_while_streaming_is_refused(copy, tmp_path):
    data = load_cached_data(DistillConfig(cache=str(copy), features="stream"))
    assert data.streaming
    data.features[np.arange(0, 4), np.zeros(4, np.int64)]  # shard 0, read from the store opened

    other = tmp_path / "other.zarr"  # the "same" store re-extracted elsewhere: other features, later completion
    shutil.copytree(copy, other)
    group = zarr.open_group(str(other), mode="r+")
    group["features_t0"][:] = (np.asarray(group["features_t0"][:]) * 1000).astype(np.float16)
    fs.mark_complete(group, TINY_TEACHER)
    shutil.rmtree(copy)
    other.rename(copy)

    with pytest.raises(UserError, match="changed during training"):
        data.features[np.arange(8, 12), np.zeros(4, np.int64)]  # shard 1: refused, not read from the new store


# ------------------------------------------------------------------ non-finite features

def _cfg(folder: Path, out: Path, **kw) -> ExtractConfig:
    return ExtractConfig(teacher=TINY_TEACHER, data=f"folder:{folder}", out=str(out), views=2, weights="random",
                         workers=0, shard_size=8, chunk_size=4, **kw)


@pytest.mark.parametrize("scale, needle", [(1e7, "beyond float16's range"), (float("nan"), "NaN")])
def test_non_finite_teacher_features_are_refused(tmp_path, monkeypatch, scale, needle):
    from customkd.featcache.teachers import Teacher

    folder = make_tiny_hue_folder(tmp_path / "imgs", classes=2, per_class=4)
    real = Teacher.forward
    monkeypatch.setattr(Teacher, "forward", lambda self, images: real(self, images) * scale)
    out = tmp_path / "s.zarr"
    with pytest.raises(UserError, match=f"teacher {TINY_TEACHER} produced non-finite features .* shard 0.*{needle}"):
        extract(_cfg(folder, out))
    assert fs.read_manifest(zarr.open_group(str(out), mode="r")).status == fs.STATUS_IN_PROGRESS
    with pytest.raises(UserError, match="incomplete"):
        fs.open_complete_store(out)


def test_verify_reports_inf_features(copy):
    group = zarr.open_group(str(copy), mode="r+")
    block = np.asarray(group["features_t0"][16:24])
    block[3, 1, 5] = np.inf
    group["features_t0"][16:24] = block
    assert any("array features_t0: shard 2 (rows 16-23) has inf" in p for p in verify_store(str(copy)))
    with pytest.raises(UserError, match="non-finite"):
        load_cached_data(DistillConfig(cache=str(copy)))


@pytest.mark.parametrize(("row", "view", "column", "value", "named"), [
    (17, 1, 2, 1e6, "crop box"),  # x1: a crop far outside the image
    (3, 0, 0, 0.9, "crop box"),  # x0 > x1: a box of negative width
    (9, 1, 4, 0.5, "flip"),
    (20, 1, 5, -3.0, "brightness"),
    (4, 1, 8, 5.0, "hue"),
])
def test_view_parameters_outside_what_the_recipe_draws_are_refused(copy, row, view, column, value, named):
    """Replaying a forged view (a crop of 1e6 widths, hue 5) would train on pictures the teacher never saw."""
    group = zarr.open_group(str(copy), mode="r+")
    views = np.asarray(group["views"][:])
    views[row, view, column] = value
    group["views"][:] = views
    problems = verify_store(str(copy))
    assert len(problems) == 1 and f"array views: row {row} view {view}" in problems[0] and named in problems[0], \
        problems
    with pytest.raises(UserError, match=f"array views: row {row} view {view}: {named}"):
        load_cached_data(DistillConfig(cache=str(copy)))


# ------------------------------------------------------------------ images and dead ends

def test_hidden_folders_and_files_are_not_data(tmp_path):
    folder = make_tiny_hue_folder(tmp_path / "imgs", classes=2, per_class=3)
    (folder / ".ipynb_checkpoints").mkdir()
    shutil.copy(folder / "class0" / "img00.png", folder / ".ipynb_checkpoints" / "img00-checkpoint.png")
    (folder / "class1" / ".thumbs").mkdir()
    shutil.copy(folder / "class0" / "img00.png", folder / "class1" / ".thumbs" / "a.png")
    shutil.copy(folder / "class0" / "img00.png", folder / "class1" / "._img00.png")
    listing = load_listing(f"folder:{folder}")
    assert listing.classes == ("class0", "class1") and len(listing) == 6


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    folder = tmp_path / "imgs" / "class0"
    folder.mkdir(parents=True)
    ramp = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "deep.png")
    assert Image.open(folder / "deep.png").mode.startswith("I")
    image = load_listing(f"folder:{tmp_path / 'imgs'}").load_image(0)
    pixels = np.asarray(image.convert("RGB"))
    assert (pixels == 255).mean() < 0.01 and abs(float(pixels.mean()) - 127.5) < 2


def test_float_and_32_bit_images_beyond_16_bits_are_bad_images_not_clipped(tmp_path):
    """A float TIFF (mode F) and a 32-bit TIFF with values past 65535 are refused as bad images naming the fix
    (PIL's RGB conversion made the first white and clipped the second); a 32-bit TIFF within 0..65535 is scaled
    as a 16-bit image."""
    folder = tmp_path / "imgs" / "class0"
    folder.mkdir(parents=True)
    ramp = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64)
    Image.fromarray(ramp, mode="F").save(folder / "a_float.tif")
    Image.fromarray((ramp * 2**20).astype(np.int32), mode="I").save(folder / "b_wide.tif")
    Image.fromarray((ramp * 65535).astype(np.int32), mode="I").save(folder / "c_within.tif")
    listing = load_listing(f"folder:{tmp_path / 'imgs'}")
    with pytest.raises(ValueError, match="floating-point image.*8 or 16 bits"):
        listing.load_image(0)
    with pytest.raises(ValueError, match="values outside 0..65535"):
        listing.load_image(1)
    pixels = np.asarray(listing.load_image(2).convert("RGB"))
    assert abs(float(pixels.mean()) - 127.5) < 2


def test_decompression_bomb_is_a_bad_image_skippable(tmp_path, monkeypatch):
    """Over twice PIL's pixel limit (PIL's own error), between the limit and twice it (PIL only warns and decodes:
    refused too), and a file larger than an image may be (refused before it is read): each a bad image."""
    from customkd.contract import images

    folder = make_tiny_hue_folder(tmp_path / "imgs", classes=2, per_class=4)
    Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(folder / "class1" / "img99.png")
    Image.fromarray(np.zeros((120, 120, 3), np.uint8)).save(folder / "class1" / "img98.png")
    noise = np.random.default_rng(0).integers(0, 255, (90, 90, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "class0" / "img97.png")  # 8100 px, but over 20 000 bytes
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 200 x 200 > 2 x limit, 120 x 120 between
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 20_000)
    out = tmp_path / "s.zarr"
    with pytest.raises(UserError, match="3 unreadable.*class0/img97.png.*class1/img98.png.*class1/img99.png.*--skip-bad"):
        extract(_cfg(folder, out))
    extract(_cfg(folder, out, skip_bad=True))
    assert fs.read_manifest(fs.open_complete_store(out)).n_invalid == 3


def test_overwrite_rebuilds_a_complete_store_in_place(copy, tiny_folder):
    cfg = ExtractConfig(teacher=TINY_TEACHER, data=f"folder:{tiny_folder}", out=str(copy), views=3,
                        weights="random", workers=0, shard_size=8, chunk_size=4)
    assert extract(cfg).status == "unchanged"
    rebuilt = extract(ExtractConfig(**{**cfg.__dict__, "overwrite": True}))
    assert rebuilt.status == "complete" and rebuilt.shards_written == 4
    assert verify_store(str(copy)) == []


def test_half_created_store_has_a_way_out(copy, tmp_path):
    shutil.rmtree(copy / "done")  # a store of an older customkd killed mid-creation: no 'done' array
    one_error_line(invoke("cache", "info", copy), "array 'done' is missing")
    line = one_error_line(invoke(*distill_args(copy, tmp_path)), "array 'done' is missing")
    assert "--overwrite" in line
    edit_manifest(copy, lambda m: m.update(status="creating"))
    assert invoke("cache", "info", copy).exit_code == 0
    one_error_line(invoke(*distill_args(copy, tmp_path)), "interrupted while being created")


def test_non_utf8_file_name_is_named(tmp_path):
    folder = make_tiny_hue_folder(tmp_path / "imgs", classes=2, per_class=2)
    bad = os.fsencode(str(folder / "class0")) + b"/caf\xe9.png"
    shutil.copy(folder / "class0" / "img00.png", bad)
    with pytest.raises(UserError, match=r"file name b'class0/caf\\xe9.png' .* is not valid UTF-8"):
        load_listing(f"folder:{folder}")


def test_cache_info_shows_the_classes_and_the_labeled_rows_per_split(copy):
    """What distill can use, before any run: the class names, and per split the rows stored with a label (the
    smallest and largest class) and without; counted from the store's own labels and splits."""
    group = zarr.open_group(str(copy), mode="r")
    labels, split = np.asarray(group["labels"][:]), np.asarray(group["split"][:])
    result = invoke("cache", "info", copy)
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split(None, 1)[1] for line in result.output.splitlines() if line.strip()}
    assert lines["classes"] == "3: class0, class1, class2"
    train = labels[split == 0]
    counts = np.bincount(train[train >= 0], minlength=3)
    assert lines["rows_train"] == (f"{len(train)} ({int((train >= 0).sum())} labeled: {counts.min()}–{counts.max()} "
                                   f"per class; {int((train < 0).sum())} unlabeled)")
