"""A store or an HDF5 export costs what a valid one of its declared shape would, and the declared shape is what its
objects hold: oversized objects, forged shapes, forged or foreign HDF5 files and damaged stores are refused in one
line before anything large is read, allocated or written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import google_crc32c
import h5py
import numpy as np
import pytest
import zarr

from customkd.contract import schema
from customkd.contract.fingerprint import component_hash
from customkd.contract.schema import ATTRS_KEY
from customkd.featcache.cache_ops import export_h5
from tests.conftest import TINY_TEACHER, cli_env, invoke, one_error_line


@pytest.fixture
def copy(tiny_store, tmp_path) -> Path:
    target = tmp_path / "copy.zarr"
    shutil.copytree(tiny_store, target)
    return target


def rehash(manifest: dict) -> dict:
    parts = [*manifest["fingerprint"].values(), *(teacher["fingerprint"] for teacher in manifest.get("teachers", []))]
    for part in parts:
        part["hash"] = component_hash({k: v for k, v in part.items() if k != "hash"})
    return manifest


def edit_manifest(store: Path, change) -> None:
    """Rewrite the root attrs as a careful forger would: component hashes recomputed."""
    group = zarr.open_group(str(store), mode="r+")
    manifest = json.loads(json.dumps(group.attrs[ATTRS_KEY]))
    change(manifest)
    group.attrs[ATTRS_KEY] = rehash(manifest)


def empty_shard(inner_chunks: int) -> bytes:
    """A shard whose index marks every inner chunk absent (it reads as the fill value): a few dozen bytes."""
    index = b"\xff" * 16 * inner_chunks
    return index + google_crc32c.value(index).to_bytes(4, "little")


def forge_shape(store: Path, views: int, dim: int) -> None:
    """A self-consistent forgery of the tiny store (N=30, shards of 8, inner chunks of 4): manifest, fingerprint and
    the features/views metadata claim ``views`` x ``dim``; every shard of both is an empty index."""
    def claim(m):
        m["shape"] = [30, views]
        m["fingerprint"]["augmentation"]["views"] = views
        m["teachers"][0]["feature_dim"] = m["teachers"][0]["fingerprint"]["feature_dim"] = dim

    edit_manifest(store, claim)
    for array, last in (("features_t0", dim), ("views", 9)):
        meta = store / array / "zarr.json"
        doc = json.loads(meta.read_text())
        doc["shape"] = [30, views, last]
        doc["chunk_grid"]["configuration"]["chunk_shape"] = [8, views, last]
        doc["codecs"][0]["configuration"]["chunk_shape"] = [4, views, last]
        meta.write_text(json.dumps(doc))
        for shard in range(4):
            (store / array / "c" / str(shard) / "0" / "0").write_bytes(empty_shard(2))


def peak_rss_mib(*args) -> tuple[subprocess.CompletedProcess, float]:
    """``customkd ARGS`` in a real process, and the peak resident memory of that process (MiB)."""
    probe = ("import resource, subprocess, sys; r = subprocess.run([sys.executable, '-m', 'customkd.cli', *sys.argv[1:]], "
             "capture_output=True, text=True); sys.stderr.write(r.stderr); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    done = subprocess.run([sys.executable, "-c", probe, *map(str, args)], capture_output=True, text=True,
                          env=cli_env(), timeout=120)
    return done, int(done.stdout.split()[-1]) / 1024


# ------------------------------------------------------------------ objects larger than their shard can be

def test_a_huge_sparse_shard_is_refused_before_it_is_read(copy, tmp_path):
    shard = copy / "features_t0" / "c" / "1" / "0" / "0"
    os.truncate(shard, 4 * 2**30)  # 4 GiB that take no disk space; a reader would hold them whole
    for args in (("cache", "verify", copy), ("cache", "info", copy), ("cache", "export", copy, "--h5",
                                                                       tmp_path / "x.h5")):
        one_error_line(invoke(*args), "object features_t0/c/1/0/0 is 4294967296 bytes, more than the 3116")
    assert not (tmp_path / "x.h5").exists()
    result, peak = peak_rss_mib("cache", "verify", copy)
    assert result.returncode == 2 and "features_t0/c/1/0/0 is 4294967296 bytes" in result.stderr
    assert peak < 1024, peak  # the interpreter and its imports, not the 4 GiB

    os.truncate(shard, 1000)  # cut short: damage verify names, with the shard and its rows
    problems = invoke("cache", "verify", copy)
    assert problems.exit_code == 1
    assert "array features_t0: shard 1 (rows 8-15) is cut short (1000 bytes, fewer than the 3116" in problems.output


# ------------------------------------------------------------------ a declared shape is what the objects hold

@pytest.mark.parametrize("views, dim, needle", [
    (1024, 16384, "feature_dim 16384 is out of range (1..65536, V x D at most 4194304)"),
    (64, 16384, "array 'features_t0' declares shape (30, 64, 16384) (float16), but its 4 object(s) hold 144 bytes"),
])
def test_a_forged_shape_is_refused_on_open(copy, tmp_path, views, dim, needle):
    forge_shape(copy, views, dim)
    one_error_line(invoke("cache", "verify", copy), needle)
    one_error_line(invoke("cache", "export", copy, "--h5", tmp_path / "x.h5"), needle)
    assert not (tmp_path / "x.h5").exists()


def test_settings_whose_store_no_reader_accepts_are_refused_before_creating_it(tiny_folder, tmp_path, monkeypatch):
    out = tmp_path / "s.zarr"
    base = ["extract", "--teacher", TINY_TEACHER, "--weights", "random", "--data", f"folder:{tiny_folder}",
            "--workers", "0", "--out", out]
    one_error_line(invoke(*base, "--views", "1025"), "--views must be between 1 and 1024")
    one_error_line(invoke(*base, "--chunk-size", "2000000000"), "--chunk-size must be between 1 and 1048576")
    one_error_line(invoke(*base, "--shard-size", "0"), "--shard-size must be between 1 and 1048576")
    monkeypatch.setattr(schema, "MAX_FEATURES_PER_SAMPLE", 100)  # below 3 views x 64 dimensions of the tiny teacher
    one_error_line(invoke(*base, "--views", "3"), "these settings would make a store that no reader accepts")
    assert not out.exists()


# ------------------------------------------------------------------ export and import refuse what verify refuses

@pytest.mark.parametrize("damage, needle", [("missing", "array labels: shard 0 (rows 0-7) is missing"),
                                            ("flipped", "array labels: shard 0 (rows 0-7) is damaged")])
def test_export_refuses_a_store_missing_its_labels_chunk(copy, tmp_path, damage, needle):
    chunk = copy / "labels" / "c" / "0"
    if damage == "missing":
        chunk.unlink()  # rows 0-7 would be exported as class 0
    else:
        chunk.write_bytes(bytes([chunk.read_bytes()[0] ^ 0xFF]) + chunk.read_bytes()[1:])
    one_error_line(invoke("cache", "export", copy, "--h5", tmp_path / "x.h5"), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.zarr"]


@pytest.fixture
def exported(tiny_store, tmp_path) -> Path:
    target = tmp_path / "good.h5"
    export_h5(str(tiny_store), str(target))
    return target


def _drop(name):
    def change(h5):
        del h5[name]
    return change


def _drop_manifest(h5):
    del h5.attrs[ATTRS_KEY]


def _nan_features(h5):
    h5["features_t0"][5, 1] = np.nan  # a valid sample: verify names it


def _not_done(h5):
    h5["teacher_done_t0"][2] = 0


def _sparse_forgery(h5):
    """Declare V=64, D=16384 in the manifest and datasets that are never written: kilobytes for 60 MiB."""
    manifest = json.loads(h5.attrs[ATTRS_KEY])
    manifest["shape"][1:] = [64]
    manifest["fingerprint"]["augmentation"]["views"] = 64
    manifest["teachers"][0]["feature_dim"] = manifest["teachers"][0]["fingerprint"]["feature_dim"] = 16384
    h5.attrs[ATTRS_KEY] = json.dumps(rehash(manifest))
    for name, last in (("features_t0", 16384), ("views", 9)):
        dtype = h5[name].dtype
        del h5[name]
        h5.create_dataset(name, shape=(30, 64, last), dtype=dtype, chunks=(8, 64, last))


@pytest.mark.parametrize("change, needle", [
    (None, "is not an HDF5 file"),
    (_drop_manifest, "has no customkd manifest (attribute 'customkd')"),
    (_drop("labels"), "dataset 'labels' is missing"),
    (_sparse_forgery, "dataset 'features_t0' holds 0 bytes in the file for 62914560 declared"),
    (_nan_features, "NaN (unwritten) features for valid samples"),
    (_not_done, "not every shard is flagged done"),
    (lambda h5: h5.attrs.modify(ATTRS_KEY, "[" * 100_000 + "]" * 100_000), "malformed manifest (nested too deeply)"),
])
def test_import_refuses_foreign_forged_or_damaged_hdf5(exported, tmp_path, change, needle):
    if change is None:
        exported.write_text("just some text\n")
    else:
        with h5py.File(exported, "r+") as h5:
            change(h5)
    dest = tmp_path / "back.zarr"
    one_error_line(invoke("cache", "import", exported, dest), needle)
    assert not dest.exists()


# ------------------------------------------------------------------ places the user names, names a store holds

def test_export_onto_a_directory_or_an_unwritable_place_is_one_line(tiny_store, tmp_path):
    (tmp_path / "folder").mkdir()
    cases = [(tmp_path / "folder", "is a directory; name a new file"),
             (tmp_path / "missing" / "x.h5", f"folder {tmp_path / 'missing'} does not exist"),
             (Path("/proc/customkd-export.h5"), "/proc")]  # refused up front, or when the write fails (root)
    for target, needle in cases:
        one_error_line(invoke("cache", "export", tiny_store, "--h5", target), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"] and not any((tmp_path / "folder").iterdir())


def test_a_teacher_name_that_is_no_timm_tag_is_one_escaped_line(copy):
    def rename(m):
        m["teachers"][0]["name"] = m["teachers"][0]["fingerprint"]["name"] = "timm:test_vit.bogus\x1b[2J"

    edit_manifest(copy, rename)
    result = invoke("cache", "verify", "--teacher-check", "2", copy)
    one_error_line(result, "timm model 'test_vit' has no pretrained tag 'bogus\\x1b[2J'")
    assert "\x1b" not in result.output


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("n, shard_size, chunk_size", [(1, 8, 4), (27, 8, 4), (33, 16, 16), (5, 4, 8), (17, 12, 4)])
def test_object_sizes_are_what_zarr_writes(tmp_path, n, shard_size, chunk_size, compress):
    """Every object of a store written by the store helpers has a size within ``object_size_range`` (exactly it,
    uncompressed), also in a last shard whose trailing inner chunks lie past the last row and are never written."""
    from customkd.contract import store as fs
    from customkd.contract.schema import ARRAYS, Layout, TeacherEntry, shard_size_for

    layout = Layout(n, 2, 5, 9, shard_size_for(n, shard_size, chunk_size), chunk_size, compress)
    teacher = TeacherEntry.make({"name": "t", "feature_dim": 5}, 5, 0)
    group = zarr.create_group(str(tmp_path / "s.zarr"), zarr_format=3)
    for name, spec in ARRAYS.items():
        group.create_array(teacher.array(name) if spec.per_teacher else name, shape=layout.shape(name),
                           dtype=spec.dtype, fill_value=spec.fill, **fs._array_options(layout, name))
    rng = np.random.default_rng(0)
    for name in ("labels", "domain", "split", "sample_key"):
        fs._writable(group, name)[:] = 0
    for shard in range(layout.n_shards):
        k = len(range(*layout.shard_rows(shard).indices(n)))
        valid = (np.arange(k) > 0).astype(np.uint8)  # one unreadable image: NaN features, written all the same
        fs.write_shard(group, layout, shard, teacher, rng.standard_normal((k, 2, 5)),
                       (rng.random((k, 2, 9)), np.zeros(k, np.uint64), valid))
    objects = fs.list_objects(tmp_path / "s.zarr")
    for name in ARRAYS:
        for shard, key in fs.chunk_keys(group, teacher.array(name) if ARRAYS[name].per_teacher else name):
            fewest, most = fs.object_size_range(layout, name, shard)
            assert fewest <= objects[key] <= most and (compress or objects[key] == fewest), (key, objects[key])


def test_long_strings_in_a_manifest_never_flood_the_terminal(copy):
    """A creation time and a library version of 10,000 characters (within the manifest's bounds): ``cache info``
    (and ``--json``) print each cut, saying how long it was. A teacher name of 1,000 characters is refused when the
    manifest is validated (names are at most 300 characters), in one bounded line."""
    def forge(manifest):
        manifest["created"] = "x" * 10_000
        manifest["versions"]["torch"] = "y" * 10_000

    edit_manifest(copy, forge)
    for args in ([], ["--json"]):
        result = invoke("cache", "info", copy, *args)
        assert result.exit_code == 0 and len(result.output) < 20_000, len(result.output)
        assert "(10000 characters, cut)" in result.output

    def long_name(manifest):
        teacher = manifest["teachers"][0]
        teacher["name"] = teacher["fingerprint"]["name"] = "timm:test_vit." + "z" * 1_000

    edit_manifest(copy, long_name)
    for args in (["cache", "info", copy], ["cache", "verify", copy, "--teacher-check", "1", "--weights", "random"]):
        line = one_error_line(invoke(*args), "teacher 0 has no name")
        assert len(line) < 2_500


def _forge_string(path: tuple, length: int):
    """An edit setting the string at ``path`` (keys and list positions from the manifest's root) to ``length``
    characters; a new key where the path ends in one that is not there."""
    def forge(manifest):
        *parents, last = path
        target = manifest
        for step in parents:
            target = target[step]
        target[last] = "w" * length
    return forge


@pytest.mark.parametrize("path, length, needle", [
    (("classes", 1), 301, "'classes' entry 1 is 301 characters long, more than the 300 a name may have"),
    (("domains", 0), 301, "'domains' entry 0 is 301 characters long"),
    (("splits", 0), 301, "'splits' entry 0 is 301 characters long"),
    (("view_params", 2), 301, "'view_params' entry 2 is 301 characters long"),
    (("data_spec",), 3_000_000, "a string in 'data_spec' is 3000000 characters long, more than 16384"),
    (("teachers", 0, "fingerprint", "tap"), 20_000, "a string in 'teachers' is 20000 characters long"),
    (("teachers", 0, "name"), 3_000_000, "a string in 'teachers' is 3000000 characters long"),
    (("fingerprint", "augmentation", "seed_scheme"), 20_000, "a string in 'fingerprint' is 20000 characters"),
    (("created",), 5_000_000, "a string in 'created' is 5000000 characters long"),
    (("teachers", 0, "completed"), 5_000_000, "a string in 'teachers' is 5000000 characters long"),
    (("versions", "torch"), 5_000_000, "a string in 'versions' is 5000000 characters long"),
    (("extract_config", "data"), 5_000_000, "a string in 'extract_config' is 5000000 characters long"),
    (("unknown_key",), 5_000_000, "a string in 'unknown_key' is 5000000 characters long"),
])
def test_every_string_of_a_manifest_is_bounded_when_it_is_read(copy, path, length, needle):
    """Names (classes, domains, splits, view parameters) at most 300 characters, every other string at any depth at
    most 16384: a longer one is refused when the manifest is validated, in one bounded line that says where and
    how long (never the string), by every command that opens the store; the store is left as it was."""
    edit_manifest(copy, _forge_string(path, length))
    before = {p: p.read_bytes() for p in sorted(copy.rglob("*")) if p.is_file()}
    for args in (["cache", "info", copy], ["cache", "info", copy, "--json"], ["cache", "verify", copy],
                 ["distill", "--cache", copy, "--out", copy.parent / "run", "--min-steps", "0"]):
        line = one_error_line(invoke(*args), needle)
        assert "malformed manifest" in line and "www" not in line and len(line) < 500
    assert {p: p.read_bytes() for p in sorted(copy.rglob("*")) if p.is_file()} == before
    assert not (copy.parent / "run").exists()


# ------------------------------------------------------------------ a chunk decodes to its own size, never more

@pytest.fixture(scope="module")
def compressed_store(tiny_folder, tmp_path_factory) -> Path:
    from customkd.featcache.extract import ExtractConfig, extract

    out = tmp_path_factory.mktemp("compressed") / "tiny.zarr"
    extract(ExtractConfig(teacher=TINY_TEACHER, data=f"folder:{tiny_folder}", out=str(out), views=3,
                          weights="random", workers=0, shard_size=8, chunk_size=4, compress=True))
    return out


def zstd_bomb(nbytes: int, declare_size: bool) -> bytes:
    """A zstd frame of ``nbytes`` zeros (a few bytes per MiB), its header declaring that size or no size at all."""
    import numcodecs

    frame = numcodecs.Zstd(level=19).encode(np.zeros(nbytes, np.uint8))
    assert frame[4] == 0x80  # descriptor: a 4-byte content size after a window byte
    return frame if declare_size else frame[:4] + b"\x00" + frame[5:6] + frame[10:]


def sharded_object(chunks: list[bytes], size: int | None = None) -> bytes:
    """A shard object holding ``chunks`` (each followed by its crc32c), zero-padded in front to ``size`` bytes."""
    pad = (size or 0) and size - sum(len(c) + 4 for c in chunks) - 16 * len(chunks) - 4
    body, index = b"\0" * pad, b""
    for chunk in chunks:
        blob = chunk + google_crc32c.value(chunk).to_bytes(4, "little")
        index += np.array([len(body), len(blob)], "<u8").tobytes()
        body += blob
    return body + index + google_crc32c.value(index).to_bytes(4, "little")


def test_a_zstd_bomb_decodes_to_no_more_than_its_chunk(copy, compressed_store, tmp_path):
    """A compressed store whose every features shard holds two 2.4 KB zstd frames of 76 MiB (within the bytes a
    shard may hold): each frame is refused after at most its chunk's 1536 bytes were decoded, so `verify` names
    every shard, `export` and `distill` refuse, and the peak memory stays the interpreter's. An uncompressed store
    whose metadata adds a zstd codec is refused on open, naming the codec, before anything is read."""
    store = tmp_path / "bomb.zarr"
    shutil.copytree(compressed_store, store)
    frame = zstd_bomb(76 << 20, declare_size=False)
    for shard in range(4):
        (store / "features_t0" / "c" / str(shard) / "0" / "0").write_bytes(sharded_object([frame, frame]))
    result, peak = peak_rss_mib("cache", "verify", store)
    assert result.returncode == 1 and peak < 200, (result.stderr, peak)
    problems = invoke("cache", "verify", store)
    assert problems.exit_code == 1 and "4 problem(s)" in problems.output
    assert "array features_t0: shard 3 (rows 24-29) is damaged (ZstdFrameError)" in problems.output  # a frame decoded whole would take 76 MiB
    one_error_line(invoke("cache", "export", store, "--h5", tmp_path / "x.h5"), "shard 0 (rows 0-7) is damaged")
    one_error_line(invoke("distill", "--cache", store, "--out", tmp_path / "run", "--min-steps", "0"), "damaged")

    meta = copy / "features_t0" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["codecs"][0]["configuration"]["codecs"].insert(1, {"name": "zstd", "configuration": {"level": 3}})
    meta.write_text(json.dumps(doc))
    (copy / "features_t0" / "c" / "0" / "0" / "0").write_bytes(sharded_object([frame, frame], size=3116))
    for args in (("cache", "info", copy), ("cache", "verify", copy), ("cache", "export", copy, "--h5", tmp_path / "y.h5")):
        one_error_line(invoke(*args), "array 'features_t0' metadata: codecs[0].configuration.codecs[1] is "
                                      '{"name":"zstd"')


@pytest.mark.parametrize("change, needle", [
    (lambda d: d.update(fill_value=7), "fill_value is 7 where extraction writes 0"),
    (lambda d: d["codecs"].insert(0, {"name": "transpose", "configuration": {"order": [0]}}), 'codecs[0].name is "transpose"'),
    (lambda d: d["chunk_key_encoding"]["configuration"].update(separator="."), "separator is \".\" where"),
    (lambda d: d["codecs"][0]["configuration"].update(endian="big"), "endian is \"big\" where extraction writes"),
    (lambda d: d.update(storage_transformers=[{"name": "x"}]), "storage_transformers is [{\"name\":\"x\"}]"),
])
def test_array_metadata_must_encode_as_extraction_writes(copy, change, needle):
    """Every array's codecs, fill value, chunk keys and storage transformers are what extraction writes for the
    manifest's layout: another fill value would stand in for a missing inner chunk, another byte order or codec
    would decode garbage, or gigabytes."""
    meta = copy / "labels" / "zarr.json"
    doc = json.loads(meta.read_text())
    change(doc)
    meta.write_text(json.dumps(doc))
    one_error_line(invoke("cache", "verify", copy), needle)
