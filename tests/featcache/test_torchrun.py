"""Extraction under torchrun (gloo, CPU): two ranks give the same bytes as one; a crash resumes with any count."""

import subprocess
from pathlib import Path

from tests.conftest import TINY_TEACHER, make_tiny_hue_folder, store_bytes, torchrun


def _extract(folder: Path, out: Path, nproc: int) -> subprocess.CompletedProcess:
    return torchrun(nproc, "extract", "--teacher", TINY_TEACHER, "--weights", "random", "--data", f"folder:{folder}",
                    "--out", out, "--views", "3", "--shard-size", "5", "--workers", "0")


def test_two_ranks_write_the_same_store_as_one(tmp_path):
    folder = make_tiny_hue_folder(tmp_path / "imgs", classes=3, per_class=7)  # 21 images → 5 shards
    one, two = tmp_path / "one.zarr", tmp_path / "two.zarr"
    for out, nproc in ((one, 1), (two, 2)):
        result = _extract(folder, out, nproc)
        assert result.returncode == 0, result.stderr[-2000:]
    assert store_bytes(two) == store_bytes(one)
    assert result.stdout.count("N=21 V=3") == 1  # only rank 0 reports

    # a store left half-done by a crashed run completes with another number of ranks
    import zarr

    from customkd.contract import store as fs

    group = zarr.open_group(str(two), mode="r+")
    group["done"][1::2] = 0
    group["teacher_done_t0"][1::2] = 0
    fs.set_status(group, fs.STATUS_IN_PROGRESS)
    result = _extract(folder, two, 1)
    assert result.returncode == 0, result.stderr[-2000:]
    assert store_bytes(two) == store_bytes(one)
