"""A run folder belongs to one run: foreign folders, stores, locks, resume settings, restarts."""

from __future__ import annotations

import fcntl
import json

import pytest

from customkd.common.errors import UserError
from customkd.trainer import distill as distill_mod
from customkd.trainer import run_folder
from customkd.trainer.config import DistillConfig
from tests.conftest import TINY_RUN, invoke, one_error_line, tiny_config


def _config(store, out, **overrides) -> DistillConfig:
    return tiny_config(store, out, **{"method": "kd", "epochs": 1, "keep_checkpoint": True, **overrides})


def test_a_folder_with_other_files_is_refused_and_left_untouched(tiny_store, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(UserError, match="not a customkd run"):
        distill_mod.distill(_config(tiny_store, out))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"


def test_a_folder_holding_the_users_own_config_json_is_refused(tiny_store, tmp_path):
    """A folder that looks like a run (a config.json) but was not made by distill: refused through the command line,
    with and without --resume, naming the folder; the user's file is left byte for byte."""
    out = tmp_path / "experiment"
    out.mkdir()
    (out / "config.json").write_text('{"my": "own settings"}')
    args = ["distill", "--cache", tiny_store, "--out", out, *(f"--{k.replace('_', '-')}={v}" for k, v in TINY_RUN.items())]
    for extra in ([], ["--resume"]):
        line = one_error_line(invoke(*args, *extra), "not a customkd run")
        assert str(out) in line and "choose a new or empty --out" in line
    assert [p.name for p in out.iterdir()] == ["config.json"]
    assert (out / "config.json").read_text() == '{"my": "own settings"}'


def test_a_folder_distill_created_is_marked_and_resumable(tiny_store, tmp_path):
    out = tmp_path / "r"
    distill_mod.distill(_config(tiny_store, out))
    assert (out / run_folder.MARKER).is_file()
    distill_mod.distill(_config(tiny_store, out, resume=True))


def test_out_inside_a_store_is_refused(tiny_store):
    with pytest.raises(UserError, match="inside the Zarr store"):
        distill_mod.check_run_dir(_config(tiny_store, tiny_store / "runs" / "r"))


def test_a_locked_run_folder_is_refused(tiny_store, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    with open(out / run_folder.LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another distill writing this folder
        with pytest.raises(UserError, match="another distill is writing"):
            distill_mod.distill(_config(tiny_store, out))
    assert not (out / "config.json").exists()


def test_resume_with_other_settings_is_refused_and_the_record_kept(tiny_store, tmp_path):
    out = tmp_path / "r"
    distill_mod.distill(_config(tiny_store, out))
    before = (out / "config.json").read_bytes()
    with pytest.raises(UserError, match="another 'lr'"):
        distill_mod.distill(_config(tiny_store, out, resume=True, lr=0.1))
    with pytest.raises(UserError, match="another 'student'"):
        distill_mod.distill(_config(tiny_store, out, resume=True, student="mobilenetv3_small_100"))
    assert (out / "config.json").read_bytes() == before
    distill_mod.distill(_config(tiny_store, out, resume=True, epochs=1, workers=1))  # how it runs may change


def test_a_run_killed_before_its_first_checkpoint_restarts_without_resume(tiny_store, tmp_path):
    out = tmp_path / "early"
    out.mkdir()
    (out / run_folder.MARKER).write_text("{}")  # what a kill in epoch 1 leaves: distill's own folder,
    (out / "config.json").write_text(json.dumps({"method": "kd"}))  # its record, no checkpoint
    with pytest.raises(UserError, match="without --resume to start it over"):
        distill_mod.distill(_config(tiny_store, out, resume=True))
    distill_mod.distill(_config(tiny_store, out))
    assert (out / "student.safetensors").is_file()


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(setting="uda", labels_per_class=None, source=("all",), target=("all",)), "both --source and --target"),
    (dict(labels_per_class=1000), "labels every training sample"),
])
def test_settings_that_would_silently_change_meaning_are_refused(tiny_store, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        distill_mod.distill(_config(tiny_store, tmp_path / "x", **overrides))
    assert not (tmp_path / "x").exists()


def test_a_non_finite_loss_stops_the_run_and_saves_nothing(tiny_store, tmp_path, monkeypatch):
    import torch

    from customkd.trainer.methods import kd

    real = kd.soft_target_loss
    monkeypatch.setattr(kd, "soft_target_loss", lambda *a, **k: real(*a, **k) * torch.tensor(float("nan")))
    with pytest.raises(UserError, match="loss term 'kd' became nan in epoch 1"):
        distill_mod.distill(_config(tiny_store, tmp_path / "nan"))
    assert not (tmp_path / "nan" / "student.safetensors").exists()
    assert not (tmp_path / "nan" / run_folder.CHECKPOINT).exists()


def test_a_finished_run_keeps_what_describes_and_deploys_it_and_refuses_to_be_rerun(tiny_store, tmp_path):
    """By default the checkpoint (everything --resume needs, the largest file) and the lock go when the run
    finishes; the method's modules stay in their own file; the folder is then refused by another distill, with or
    without --resume, in one line. --keep-checkpoint keeps the checkpoint, and such a run resumes as before."""
    out = tmp_path / "r"
    distill_mod.distill(_config(tiny_store, out, keep_checkpoint=False))
    names = {p.name for p in out.iterdir()}
    assert run_folder.CHECKPOINT not in names and run_folder.LOCK not in names
    assert {run_folder.STUDENT, run_folder.METHOD_STATE, run_folder.CONFIG, run_folder.METRICS} <= names
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for resume in (False, True):
        with pytest.raises(UserError, match="holds a finished run"):
            distill_mod.distill(_config(tiny_store, out, keep_checkpoint=False, resume=resume))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    kept = tmp_path / "kept"
    distill_mod.distill(_config(tiny_store, kept))  # this module's runs keep it
    assert run_folder.has_checkpoint(kept) and not (kept / run_folder.LOCK).exists()


def test_links_in_a_run_folder_are_never_written_through(tiny_store, tmp_path):
    """A run folder someone sent, marked as distill's, holding links out of it (``config.json.partial`` to a file of
    the user's, ``model`` to a folder of theirs), and an unmarked folder whose ``.lock`` is a link: each refused in
    one line before anything is written, the linked file and folder left as they were."""
    victim, folder = tmp_path / "bashrc", tmp_path / "elsewhere"
    victim.write_text("mine")
    folder.mkdir()
    sent = tmp_path / "sent"
    sent.mkdir()
    (sent / run_folder.MARKER).write_text("{}")
    (sent / "config.json.partial").symlink_to(victim)
    (sent / run_folder.MODEL).symlink_to(folder)
    lock_link = tmp_path / "lock-link"
    lock_link.mkdir()
    (lock_link / run_folder.LOCK).symlink_to(tmp_path / "created")
    args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_RUN.items()]
    for out in (sent, lock_link):
        one_error_line(invoke("distill", "--cache", tiny_store, "--out", out, *args), "link")
    assert victim.read_text() == "mine" and not any(folder.iterdir()) and not (tmp_path / "created").exists()
    assert sorted(p.name for p in sent.iterdir()) == [run_folder.MARKER, "config.json.partial", run_folder.MODEL]


def test_a_partial_name_that_is_a_link_is_never_written_through(tmp_path):
    from customkd.common.files import write_text

    victim = tmp_path / "victim"
    victim.write_text("mine")
    (tmp_path / "results.md.partial").symlink_to(victim)
    with pytest.raises(UserError, match="never writes through"):
        write_text(tmp_path / "results.md", "report")
    assert victim.read_text() == "mine" and not (tmp_path / "results.md").exists()
