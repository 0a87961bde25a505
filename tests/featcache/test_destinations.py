"""A new store (``extract --out``, ``cache import``, ``cache pull``) never lands inside another store: a store holds
only its own objects, and one holding something else can no longer be replaced or verified."""

from __future__ import annotations

from customkd.featcache import cache_ops
from tests.conftest import TINY_TEACHER, invoke, one_error_line, store_bytes


def test_a_new_store_inside_a_store_is_refused_and_the_store_left_as_it_was(tiny_store, tiny_folder, tmp_path):
    h5 = tmp_path / "s.h5"
    cache_ops.export_h5(str(tiny_store), str(h5))
    before = store_bytes(tiny_store, manifest=True)
    inside = [tiny_store / "new.zarr", tiny_store / "features" / "new.zarr"]
    for dest in inside:
        one_error_line(invoke("cache", "import", h5, dest), "inside the Zarr store")
        one_error_line(invoke("extract", "--teacher", TINY_TEACHER, "--weights", "random", "--data",
                              f"folder:{tiny_folder}", "--out", dest, "--workers", "0"), "inside the Zarr store")
    assert store_bytes(tiny_store, manifest=True) == before


def test_a_new_store_where_no_folder_can_be_created_is_one_line_before_any_work(tiny_store, tiny_folder, tmp_path):
    """Under a file, or in a file system where no folder can be made (``/proc``): ``cache import`` and ``extract``
    were tracebacks from zarr's mkdir (extract's after loading the teacher); now one line before anything, and
    nothing is left behind."""
    h5 = tmp_path / "s.h5"
    cache_ops.export_h5(str(tiny_store), str(h5))
    (tmp_path / "notes.txt").write_text("mine")
    before = sorted(tmp_path.rglob("*"))
    for dest, needle in ((tmp_path / "notes.txt" / "new.zarr", "Not a directory"),
                         ("/proc/customkd-test/new.zarr", "cannot create /proc/customkd-test")):
        one_error_line(invoke("cache", "import", h5, dest), needle)
        one_error_line(invoke("extract", "--teacher", TINY_TEACHER, "--weights", "random", "--data",
                              f"folder:{tiny_folder}", "--out", dest, "--workers", "0"), needle)
    assert sorted(tmp_path.rglob("*")) == before and (tmp_path / "notes.txt").read_text() == "mine"


def test_overwrite_through_a_link_or_of_a_store_holding_a_foreign_file_is_refused_before_any_work(tiny_store,
                                                                                                   tiny_folder,
                                                                                                   tmp_path):
    """``extract --overwrite --out LINK`` (a link to a store) and ``--out STORE`` holding a file that is not a
    store's: refused in the only line printed, before the dataset is listed or the teacher loads (it logged both and
    'replacing store …' first); the store and the link are left as they were."""
    import shutil

    from tests.conftest import customkd

    store, link = tmp_path / "s.zarr", tmp_path / "link.zarr"
    shutil.copytree(tiny_store, store)
    link.symlink_to(store)
    base = ("extract", "--teacher", TINY_TEACHER, "--weights", "random", "--data", f"folder:{tiny_folder}",
            "--workers", "0", "--shard-size", "8", "--chunk-size", "4", "--overwrite")
    before = store_bytes(store, manifest=True)
    for views in ("3", "2"):  # the same fingerprint (rebuilt in place), another one (replaced)
        refused = customkd(*base, "--views", views, "--out", link)
        one_error_line(refused, "link.zarr is a symbolic link")
        assert refused.stderr.splitlines() == [refused.stderr.splitlines()[-1]] and refused.stdout == ""
    assert link.is_symlink() and store_bytes(store, manifest=True) == before
    (store / "notes.txt").write_text("mine")
    refused = customkd(*base, "--views", "2", "--out", store)
    one_error_line(refused, "holds notes.txt, which is not part of a customkd store")
    assert len(refused.stderr.splitlines()) == 1 and (store / "notes.txt").read_text() == "mine"
    assert store_bytes(store, manifest=True) == {**before, "notes.txt": b"mine"}


def test_a_store_another_extraction_is_writing_is_never_touched(tiny_store, tiny_folder, tmp_path):
    """While one ``extract --out`` writes a store (it holds the flock on the store's folder), the same command in a
    second process, with or without ``--overwrite``, is refused in one line before its teacher loads: it neither
    deletes the store nor removes the first one's temporary files as an interrupted run's leftovers. The folder
    above a new store is held while it is created, so two first extractions of one ``--out`` never both create
    it: whichever comes second finds the store held (refused) or complete (nothing to do), never half made."""
    import fcntl
    import os
    import shutil
    import subprocess
    import sys

    from tests.conftest import cli_env, customkd

    store = tmp_path / "busy.zarr"
    shutil.copytree(tiny_store, store)
    partial = store / "views" / "c" / "0" / "0" / f"0.{'a' * 32}.partial"
    partial.write_bytes(b"being written")  # zarr's temporary file of a shard the first one is writing
    before = store_bytes(store, manifest=True)
    command = ("extract", "--teacher", TINY_TEACHER, "--weights", "random", "--data", f"folder:{tiny_folder}",
               "--views", "3", "--workers", "0", "--shard-size", "8", "--chunk-size", "4")
    held = os.open(store, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the first extraction, writing its shards
        for extra in ((), ("--overwrite",)):
            refused = customkd(*command, *extra, "--out", store)
            one_error_line(refused, "another `customkd extract` is writing store")
            assert len(refused.stderr.splitlines()) == 1
        assert store_bytes(store, manifest=True) == before
    finally:
        os.close(held)

    new = tmp_path / "new" / "s.zarr"
    argv = [sys.executable, "-m", "customkd.cli", *command, "--out", str(new)]
    both = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
            for _ in range(2)]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in both]
    assert all(code == 0 or (code == 2 and "another `customkd extract` is writing store" in err)
               for code, err in outcomes), outcomes
    assert store_bytes(new) == store_bytes(tiny_store)
