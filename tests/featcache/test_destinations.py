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
