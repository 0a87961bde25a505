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


def test_a_place_where_nothing_can_be_made_is_one_line_for_every_command_that_writes(tiny_store, tiny_folder,
                                                                                      tmp_path):
    """A name over 255 bytes (also once ``.partial`` is added to a file's), a link to nothing, a link loop (also as a
    parent), ``/dev/null`` as a store: every command that writes refuses in one line before any work (were OSError,
    FileExistsError, RuntimeError and NotADirectoryError tracebacks, extract's after loading the teacher); nothing is
    created and the links are left as they were."""
    from tests.conftest import TINY_RUN, customkd

    h5 = tmp_path / "s.h5"
    cache_ops.export_h5(str(tiny_store), str(h5))
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loopA").symlink_to(tmp_path / "loopB")
    (tmp_path / "loopB").symlink_to(tmp_path / "loopA")
    places = {tmp_path / ("x" * 300): "bytes long", tmp_path / "missing" / ("x" * 300): "bytes long",
              tmp_path / "dangling": "is a symbolic link to", tmp_path / "loopA": "a loop",
              tmp_path / "loopA" / "sub": "a loop"}
    extract = ("extract", "--teacher", TINY_TEACHER, "--weights", "random", "--data", f"folder:{tiny_folder}",
               "--workers", "0", "--out")
    run = [f"--{key.replace('_', '-')}={value}" for key, value in TINY_RUN.items()]
    commands = [extract, ("cache", "import", h5), ("cache", "pull", tiny_store), ("cache", "export", tiny_store, "--h5"),
                ("distill", "--cache", tiny_store, *run, "--out"),
                ("compare", "--cache", tiny_store, "--methods", "kd,student", "--seeds", "0", "--out"),
                ("report", "--data", f"folder:{tiny_folder}", "--quick", "--out")]
    before = sorted(tmp_path.iterdir())
    for place, needle in places.items():
        for command in commands:
            one_error_line(invoke(*command, place), needle)
    one_error_line(invoke("cache", "export", tiny_store, "--h5", tmp_path / ("y" * 250)), "258 bytes long with .partial")
    assert sorted(tmp_path.iterdir()) == before
    one_error_line(customkd(*extract, "/dev/null"), "/dev/null exists and is not a customkd store")
    one_error_line(customkd(*extract, tmp_path / "loopA"), "a loop")
    assert (tmp_path / "loopA").is_symlink() and (tmp_path / "dangling").is_symlink()


def test_a_new_store_through_a_link_to_an_empty_folder_is_made_in_the_folder(tiny_folder, tmp_path):
    """``extract --out LINK`` where LINK points at an empty folder (an ``rmdir`` of the link would raise
    NotADirectoryError): the store is made in the folder the link points at, and the link stays."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "link.zarr").symlink_to(tmp_path / "folder")
    made = invoke("extract", "--teacher", TINY_TEACHER, "--weights", "random", "--data", f"folder:{tiny_folder}",
                  "--workers", "0", "--views", "2", "--out", tmp_path / "link.zarr")
    assert made.exit_code == 0, made.output
    assert (tmp_path / "link.zarr").is_symlink() and (tmp_path / "folder" / "zarr.json").is_file()


def test_only_zarrs_own_temporary_files_are_removed_from_a_store(tiny_store, tmp_path):
    """A resumed or finished extraction removes the temporary files a killed zarr write leaves
    (``NAME.<uuid hex>.partial``); it deleted every ``*.partial`` in the store, the user's own too (``extract --into``
    deleted ``STORE/my.partial`` and ``STORE/labels/notes.partial``)."""
    import shutil

    from tests.conftest import customkd

    store = tmp_path / "s.zarr"
    shutil.copytree(tiny_store, store)
    mine = {store / "my.partial": b"mine", store / "labels" / "notes.partial": b"mine too"}
    for path, data in mine.items():
        path.write_bytes(data)
    leftover = store / "labels" / "c" / f"0.{'0123456789abcdef' * 2}.partial"
    leftover.write_bytes(b"torn")
    added = customkd("extract", "--teacher", "timm:test_efficientnet", "--weights", "random", "--into", store,
                     "--workers", "0")
    assert added.returncode == 0, added.stderr
    assert {path: path.read_bytes() for path in mine} == mine and not leftover.exists()


def test_two_commands_creating_one_new_store_at_once_end_in_one_line(tiny_store, tmp_path):
    """Two ``cache import`` (or ``extract --out``) of a new store at once: the one that finds the store created by the
    other after its own checks (zarr's ContainsGroupError) ends in one line saying another process is writing
    there, and the store the other made verifies."""
    import subprocess
    import sys

    from customkd.common.errors import UserError
    from customkd.contract import store as fs
    from tests.conftest import cli_env

    h5 = tmp_path / "s.h5"
    cache_ops.export_h5(str(tiny_store), str(h5))
    opened = fs.Store.open(tiny_store)
    fs.create_store(tmp_path / "new.zarr", opened.manifest, {})
    try:  # the second creation, as the process that lost the race makes it
        fs.create_store(tmp_path / "new.zarr", opened.manifest, {})
        raise AssertionError("a second creation of one store was not refused")
    except UserError as exc:
        assert "became a store while this command was creating it: another process is writing it" in str(exc)
    command = [sys.executable, "-m", "customkd.cli", "cache", "import", str(h5), str(tmp_path / "raced.zarr")]
    both = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=cli_env()) for _ in range(2)]
    outcomes = [(proc.wait(timeout=300), proc.stderr.read()) for proc in both]
    assert sorted(code for code, _ in outcomes) in ([0, 2], [0, 0]), outcomes
    assert all("Traceback" not in err for _, err in outcomes), outcomes
    assert all(len([ln for ln in err.splitlines() if ln.startswith("error:")]) == (code == 2) for code, err in outcomes)
    assert cache_ops.verify_store(str(tmp_path / "raced.zarr"), data=fs.Store.open(tiny_store).manifest.data_spec) == []
