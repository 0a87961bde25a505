import pickle

import numpy as np
import pytest
import torch.nn.functional as F
from PIL import Image, ImageFilter

from customkd.common.errors import UserError
from customkd.contract.datasets import load_listing, with_kind
from customkd.contract.views import ViewRecipe, draw_views, replay
from tests.conftest import TINY_TEACHER, invoke, make_tiny_hue_folder, one_error_line


def test_folder_with_domains(tmp_path):
    root = make_tiny_hue_folder(tmp_path / "oh", classes=2, per_class=5, domains=("Art", "Clipart"))
    listing = load_listing(f"folder:{root}")
    assert listing.domains == ("Art", "Clipart") and listing.classes == ("class0", "class1")
    assert len(listing) == 20
    assert {s.domain for s in listing.samples} == {0, 1}
    assert listing.samples[0].relpath == "Art/class0/img00.png"
    # held-out split is stratified per (class, domain): one of five per cell
    assert sum(s.split for s in listing.samples) == 4


def test_folder_keeps_train_test_dirs(tmp_path):
    make_tiny_hue_folder(tmp_path / "d" / "train", classes=2, per_class=4)
    make_tiny_hue_folder(tmp_path / "d" / "test", classes=2, per_class=2)
    listing = load_listing(f"folder:{tmp_path / 'd'}")
    assert listing.classes == ("class0", "class1")
    assert [s.split for s in listing.samples].count(1) == 4


def test_cifar100_python_release(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    for part, n in (("train", 6), ("test", 3)):
        data = (rng.random((n, 3072)) * 255).astype(np.uint8)
        with open(root / part, "wb") as fh:
            pickle.dump({b"data": data, b"fine_labels": list(range(n))}, fh)
    with open(root / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, fh)
    listing = load_listing(f"cifar100:{root}")
    assert len(listing) == 9 and len(listing.classes) == 100
    test_rows = [i for i, s in enumerate(listing.samples) if s.split == 1]
    assert len(test_rows) == 3
    image = listing.load_image(0)
    assert image.size == (32, 32) and image.mode == "RGB"
    with pytest.raises(UserError, match="python release"):
        load_listing(f"cifar100:{tmp_path}")


def test_paths_never_escape_the_root(tmp_path):
    from dataclasses import replace

    root = make_tiny_hue_folder(tmp_path / "x", classes=1, per_class=1)
    listing = load_listing(f"folder:{root}")
    hostile = replace(listing, samples=(replace(listing.samples[0], relpath="../../etc/passwd"),))
    with pytest.raises(UserError, match="escapes the dataset root"):
        hostile.read_bytes(0)


def test_teacher_and_student_see_the_same_crop():
    """Replaying one stored view at two resolutions gives the same picture; another view does not."""
    rng = np.random.default_rng(3)
    image = Image.fromarray((rng.random((90, 120, 3)) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(3))
    views = draw_views(120, 90, 5, 4, ViewRecipe(), 0)
    mean, std = (0.5,) * 3, (0.5,) * 3
    teacher_view = replay(image, views[1], 224, mean, std, "bicubic")
    student_view = replay(image, views[1], 64, mean, std, "bilinear")
    down = F.interpolate(teacher_view[None], size=64, mode="area")[0]
    same = (down - student_view).abs().mean()
    other = (F.interpolate(replay(image, views[2], 224, mean, std)[None], size=64, mode="area")[0] - student_view)
    assert same < 0.05 < other.abs().mean()


def test_digits_is_the_bundled_uci_digits_with_a_fixed_split_and_stable_bytes():
    import hashlib

    from customkd.contract.datasets import load_listing

    listing = load_listing("digits")
    assert len(listing) == 1797 and listing.classes == tuple(str(c) for c in range(10))
    assert sum(s.split == 0 for s in listing.samples) == 1438 and sum(s.split == 1 for s in listing.samples) == 359
    image = listing.load_image(0)
    assert image.size == (32, 32) and image.mode == "L"
    # uncompressed PGM bytes: the same on every machine, so stores extracted by teammates agree
    digest = hashlib.sha256(b"".join(listing.read_bytes(i) for i in range(len(listing)))).hexdigest()
    assert digest == "105ea76ff86dc4b2b71f428e396ee58103ff53311bc4bdb8409ed7d0a7bc0183"
    assert listing.listing_hash() == "b2fa0dc41e501726f8c856529cbc3b77157a108eb98e6d9fdbd144886adb8545"


def test_links_in_a_data_folder_are_skipped_with_one_warning(tmp_path, caplog):
    """A link back into the tree (``c -> .``) would repeat images and invent a class; a link out of it would
    read files outside the dataset. Neither is followed, and one warning names them."""
    root = make_tiny_hue_folder(tmp_path / "data", classes=2, per_class=5)
    plain = load_listing(f"folder:{root}")
    outside = make_tiny_hue_folder(tmp_path / "elsewhere", classes=1, per_class=2)
    (root / "c").symlink_to(".")
    (root / "class0" / "loop").symlink_to("..")
    (root / "class1" / "out").symlink_to(outside / "class0")
    (root / "class1" / "copy.png").symlink_to(root / "class0" / "img00.png")
    (root / "class1" / "far.png").symlink_to(outside / "class0" / "img00.png")
    (root / "linked_class").symlink_to(outside / "class0")
    with caplog.at_level("WARNING", logger="customkd.contract.datasets"):
        listing = load_listing(f"folder:{root}")
    assert listing.samples == plain.samples and listing.classes == plain.classes
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    for name in ("c", "class0/loop", "class1/out", "class1/copy.png", "class1/far.png", "linked_class"):
        assert name in warnings[0], warnings[0]


def test_unlabeled_images_that_are_labeled_images_are_refused(tmp_path):
    """``--unlabeled`` naming the labeled folder, a folder inside it or one holding it would put held-out
    images into training."""
    from customkd.contract.schema import unlabeled_part

    root = make_tiny_hue_folder(tmp_path / "data", classes=2, per_class=5)
    for folder in (root, root / "class1", tmp_path):
        with pytest.raises(UserError, match="labeled dataset"):
            load_listing(f"folder:{root}|{unlabeled_part('u', str(folder))}")
    other = make_tiny_hue_folder(tmp_path / "other", classes=1, per_class=2)
    (other / "class0" / "hard.png").hardlink_to(root / "class0" / "img01.png")
    with pytest.raises(UserError, match="class0/img01.png"):
        load_listing(f"folder:{root}|{unlabeled_part('u', str(other))}")
    (other / "class0" / "hard.png").unlink()
    assert len(load_listing(f"folder:{root}|{unlabeled_part('u', str(other))}")) == 12
    one_error_line(invoke("extract", "--teacher", TINY_TEACHER, "--weights", "random", "--data", f"folder:{root}",
                          "--unlabeled", f"folder:{root}", "--out", tmp_path / "x.zarr"), "of the labeled dataset")
    assert not (tmp_path / "x.zarr").exists()


def test_names_reach_the_log_escaped(tmp_path, caplog):
    """A folder or spec named with an escape sequence (a store's ``data_spec``, a dataset someone sent) must not
    drive the terminal that shows the log."""
    root = make_tiny_hue_folder(tmp_path / "data\x1b[2J\u202e", classes=2, per_class=3)
    (root / "class0" / "back").symlink_to("..")
    with caplog.at_level("INFO", logger="customkd.contract.datasets"):
        load_listing(f"folder:{root}")
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2 and all("\\x1b[2J\\u202e" in message for message in messages), messages
    assert not any("\x1b" in message or "\u202e" in message for message in messages), messages


def test_a_bare_folder_path_is_a_folder_dataset_and_names_keep_their_meaning(tmp_path, monkeypatch):
    root = make_tiny_hue_folder(tmp_path / "shapes", classes=2, per_class=3)
    bare, prefixed = load_listing(str(root)), load_listing(f"folder:{root}")
    assert bare.spec == prefixed.spec and bare.listing_hash() == prefixed.listing_hash()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()  # a folder named like a bundled dataset does not shadow it
    assert with_kind("digits") == "digits" and with_kind("shapes") == "folder:shapes"
    assert with_kind("shapes|unlabeled:u=/x") == "folder:shapes|unlabeled:u=/x"
    with pytest.raises(UserError, match="unknown dataset 'no-such-folder'"):
        load_listing("no-such-folder")


def _unreadable_entry(folder) -> None:
    """An entry under ``folder`` that this process cannot stat or list: a folder without permissions, or (for root,
    whom permissions do not stop) a link to ``/proc/1/cwd``, which a container's root may not resolve."""
    import os

    if os.geteuid() != 0:
        (folder / "class0" / "locked").mkdir()
        (folder / "class0").chmod(0)
        return
    try:
        os.stat("/proc/1/cwd")
    except PermissionError:
        (folder / "locked").symlink_to("/proc/1/cwd")
        return
    pytest.skip("no entry here that root cannot stat")


def test_an_entry_the_listing_cannot_stat_is_one_line(tmp_path, tiny_store):
    """A data folder (or a store's recorded data spec) holding an entry this user cannot stat or list: one line
    naming it, exit 2, for every command that lists the dataset, never a PermissionError traceback."""
    folder = make_tiny_hue_folder(tmp_path / "data", per_class=2)
    _unreadable_entry(folder)
    try:
        with pytest.raises(UserError, match=r"cannot list dataset folder:.*Permission denied"):
            load_listing(f"folder:{folder}")
        one_error_line(invoke("cache", "verify", tiny_store, "--data", f"folder:{folder}"), "cannot list dataset")
    finally:
        (folder / "class0").chmod(0o755)
