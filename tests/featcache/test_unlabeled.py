"""Unlabeled images as users have them: ``extract --unlabeled folder:PATH`` stores them beside a labeled dataset
(label -1, training split, their own domain); SSL trains on them as unlabeled, UDA as an unlabeled target."""

import json
import shutil

import numpy as np
import pytest
import zarr

from tests.conftest import TINY_STUDENT, TINY_TEACHER, customkd, make_tiny_hue_folder, one_error_line


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    labeled = make_tiny_hue_folder(root / "labeled", classes=3, per_class=6)
    flat = root / "camera_roll"
    (flat / "day2").mkdir(parents=True)
    for i, image in enumerate(sorted(make_tiny_hue_folder(root / "source", classes=3, per_class=3).rglob("*.png"))):
        shutil.copy(image, (flat if i % 2 else flat / "day2") / f"shot{i:02d}.png")  # flat, and one level below
    (flat / ".thumbs").mkdir()
    (flat / ".thumbs" / "x.png").write_bytes(b"hidden")
    store = root / "mixed.zarr"
    done = customkd("extract", "--teacher", TINY_TEACHER, "--weights", "random", "--data", f"folder:{labeled}",
                    "--unlabeled", f"folder:{flat}", "--out", str(store), "--views", "2", "--workers", "0",
                    "--shard-size", "8", "--chunk-size", "4")
    assert done.returncode == 0, done.stderr
    return store, labeled, flat


def test_unlabeled_rows_are_stored_with_label_minus_one(mixed_store):
    store, labeled, flat = mixed_store
    group = zarr.open_group(str(store), mode="r")
    manifest = group.attrs["customkd"]
    labels, domain, split = (np.asarray(group[name][:]) for name in ("labels", "domain", "split"))
    assert len(labels) == 18 + 9 and (labels[:18] >= 0).all() and (labels[18:] == -1).all()
    assert manifest["domains"] == ["all", "camera_roll"] and (domain[18:] == 1).all() and (split[18:] == 0).all()
    assert manifest["data_spec"] == f"folder:{labeled.resolve()}|unlabeled:camera_roll={flat.resolve()}"
    assert customkd("cache", "verify", str(store)).returncode == 0  # rows cross-checked against the listing


def test_ssl_uses_every_label_and_the_unlabeled_rows(mixed_store, tmp_path):
    store = mixed_store[0]
    for setting, n_train in (("ssl", 15 + 9), ("supervised", 15)):  # 3 of the 18 labeled images are held out
        run = tmp_path / setting
        done = customkd("distill", "--cache", str(store), "--setting", setting, "--student", TINY_STUDENT,
                        "--method", "customkd", "--epochs", "1", "--min-steps", "0", "--image-size", "32",
                        "--batch-size", "8", "--workers", "0", "--out", str(run))
        assert done.returncode == 0, done.stderr
        config = json.loads((run / "config.json").read_text())
        assert (config["n_train"], config["n_labeled"], config["n_eval"]) == (n_train, 15, 3), setting


def test_uda_takes_an_unlabeled_target_domain(mixed_store, tmp_path):
    store = mixed_store[0]
    done = customkd("distill", "--cache", str(store), "--setting", "uda", "--source", "all", "--target", "camera_roll",
                    "--student", TINY_STUDENT, "--epochs", "1", "--min-steps", "0", "--image-size", "32",
                    "--batch-size", "8", "--workers", "0", "--out", str(tmp_path / "uda"))
    assert done.returncode == 0, done.stderr
    assert "evaluating on the source's held-out images" in done.stderr
    config = json.loads((tmp_path / "uda" / "config.json").read_text())
    assert (config["n_train"], config["n_labeled"], config["n_eval"]) == (24, 15, 3)


def test_unlabeled_folder_errors(tmp_path, tiny_folder):
    one_error_line(customkd("extract", "--teacher", TINY_TEACHER, "--data", f"folder:{tiny_folder}", "--unlabeled",
                              f"folder:{tmp_path}/nope", "--out", str(tmp_path / "x.zarr")), "does not exist")
    (tmp_path / "empty").mkdir()
    one_error_line(customkd("extract", "--teacher", TINY_TEACHER, "--weights", "random", "--data",
                              f"folder:{tiny_folder}", "--unlabeled", f"folder:{tmp_path}/empty", "--out",
                              str(tmp_path / "y.zarr")), "no images under unlabeled folder")
    assert not (tmp_path / "y.zarr").exists()


def test_copies_of_held_out_images_are_never_trained_on(tmp_path, caplog):
    """An ``--unlabeled`` folder holding byte-identical copies of labeled images: the copies of held-out images
    are left out of training with a warning naming one, the other unlabeled rows are trained on."""
    from customkd.trainer.config import DistillConfig
    from customkd.trainer.data import load_cached_data, make_split

    labeled = make_tiny_hue_folder(tmp_path / "labeled", classes=3, per_class=6)
    flat = tmp_path / "roll"
    flat.mkdir()
    for i, image in enumerate(sorted(labeled.rglob("*.png"))):
        shutil.copy(image, flat / f"copy{i:02d}.png")
    store = tmp_path / "s.zarr"
    done = customkd("extract", "--teacher", TINY_TEACHER, "--weights", "random", "--data", f"folder:{labeled}",
                    "--unlabeled", f"folder:{flat}", "--out", str(store), "--views", "2", "--workers", "0")
    assert done.returncode == 0, done.stderr
    data = load_cached_data(DistillConfig(cache=str(store)))
    held_out = np.flatnonzero((data.split == 1) & (data.labels >= 0))
    assert len(held_out) == 3
    with caplog.at_level("WARNING"):
        split = make_split(DistillConfig(cache=str(store), setting="ssl"), data)
    trained = set(data.content_hash[split.train].tolist())
    assert not trained & set(data.content_hash[held_out].tolist())
    assert len(split.train) + len(split.val) == 15 + 18 - 3  # every labeled training row and 15 of the 18 copies
    assert "3 training images are byte-identical copies of held-out images (e.g. unlabeled/roll/copy" in caplog.text
