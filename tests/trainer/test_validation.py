"""Model selection without peeking (``--val-fraction``): validation rows carved from the labeled training rows, every
epoch scored on them, the best epoch's student kept and tested once at the end, through a resume too."""

import json

import numpy as np
import pytest
import torch

from customkd.common.errors import UserError
from customkd.trainer import distill as distill_mod
from customkd.trainer import run_folder
from customkd.trainer.config import DistillConfig
from customkd.trainer.data import load_cached_data, make_split
from customkd.trainer.evaluate import evaluate_run
from tests.conftest import TINY_RUN, invoke, one_error_line, tiny_config


def _split(store, **kw):
    cfg = tiny_config(store, **kw)
    return make_split(cfg, load_cached_data(cfg))


@pytest.mark.parametrize("setting", [{"setting": "supervised", "labels_per_class": None}, {}],
                         ids=["supervised", "ssl-budget"])
def test_validation_rows_are_labeled_training_rows_left_out_of_training_chosen_by_seed(tiny_store, setting):
    base, val = _split(tiny_store, **setting), _split(tiny_store, val_fraction=0.3, **setting)
    labeled = base.train[base.train_labels >= 0]
    assert set(val.val) <= set(labeled.tolist())  # labels the setting gives training (after the budget), never test
    assert not set(val.val) & set(val.train) and not set(val.val) & set(val.eval)
    assert set(val.train) | set(val.val) == set(base.train) and np.array_equal(val.eval, base.eval)
    data = load_cached_data(tiny_config(tiny_store))
    for c in np.unique(data.labels[labeled]):
        members = int((data.labels[labeled] == c).sum())
        chosen = int((data.labels[val.val] == c).sum())
        assert chosen == min(max(round(0.3 * members), 1), members - 1)  # at least one, one left to train on
    assert np.array_equal(_split(tiny_store, val_fraction=0.3, **setting).val, val.val)  # the same seed, the same rows
    assert not np.array_equal(_split(tiny_store, val_fraction=0.3, seed=3, **setting).val, val.val)


def test_the_validation_fraction_is_checked(tiny_store):
    for bad in (1.0, -0.1):
        with pytest.raises(UserError, match="--val-fraction must be in"):
            DistillConfig(val_fraction=bad)
    one_error_line(invoke("distill", "--cache", tiny_store, "--val-fraction", "1"), "--val-fraction must be in")
    assert DistillConfig().val_fraction == 0 and "--val-fraction" in invoke("distill", "--help").output


ACCURACIES = [0.2, 0.6, 0.6, 0.4]  # epoch 2 is the best; epoch 3 ties it and does not replace it


def _scripted_validation(monkeypatch, accuracies):
    """run_epoch with the validation accuracy of epoch i replaced by ``accuracies[i]``: the choice is then known."""
    real = distill_mod.run_epoch

    def run_epoch(s, epoch, *loaders_and_step_log):
        record = real(s, epoch, *loaders_and_step_log)
        record["val"]["accuracy"] = accuracies[epoch]
        return record

    monkeypatch.setattr(distill_mod, "run_epoch", run_epoch)


def test_the_best_epoch_by_validation_is_the_run_student_and_tested_once(tiny_store, tmp_path, monkeypatch):
    from safetensors.torch import save

    _scripted_validation(monkeypatch, ACCURACIES)
    students, real_save = [], distill_mod.save_epoch
    monkeypatch.setattr(distill_mod, "save_epoch", lambda s, epoch: (
        students.append({k: v.detach().clone().contiguous() for k, v in s.student.model.state_dict().items()}),
        real_save(s, epoch)))
    run = tmp_path / "r"
    result = distill_mod.distill(tiny_config(tiny_store, run, val_fraction=0.3, epochs=4))

    metrics = json.loads((run / "metrics.json").read_text())
    assert all("val" in e and "eval" not in e for e in metrics["epochs"])  # the test rows are not looked at per epoch
    assert [e["val"]["accuracy"] for e in metrics["epochs"]] == ACCURACIES
    final = metrics["final"]
    assert final == result.final and (final["chosen_epoch"], final["val_accuracy"], final["last"]["epoch"]) == (2, 0.6, 4)
    # the run's student is, byte for byte, the student after epoch 2; the last epoch's is kept beside it
    assert (run / run_folder.STUDENT).read_bytes() == save(students[1], metadata={"epoch": "2"}) \
        == (run / run_folder.STUDENT_BEST).read_bytes() == (run / run_folder.MODEL_WEIGHTS).read_bytes()
    assert (run / run_folder.STUDENT_LAST).read_bytes() == save(students[3])
    # final is the chosen student's test accuracy: evaluate RUN gives it back
    again = evaluate_run(str(run), workers=0)
    assert {k: again[k] for k in ("accuracy", "balanced_accuracy", "per_class_accuracy")} == \
        {k: final[k] for k in ("accuracy", "balanced_accuracy", "per_class_accuracy")}
    assert again["n"] == json.loads((run / "config.json").read_text())["n_eval"]
    assert json.loads((run / "config.json").read_text())["n_val"] == 3


def _kill_after_epoch_2(monkeypatch, cfg) -> None:
    """``distill(cfg)`` killed right after epoch 2's checkpoint, before that epoch's student-best file."""
    saves, real_save = {"n": 0}, run_folder.save_checkpoint

    def save_then_die(run, state):
        real_save(run, state)
        saves["n"] += 1
        if saves["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_folder, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        distill_mod.distill(cfg)
    monkeypatch.setattr(run_folder, "save_checkpoint", real_save)


# the kill comes after epoch 2's checkpoint: the best is epoch 1 (read back from student-best.safetensors), or
# epoch 2 itself, whose student-best.safetensors was never written (taken from the checkpoint's student)
@pytest.mark.parametrize("accuracies", [[0.9, 0.5, 0.5], [0.5, 0.9, 0.4]], ids=["best-before-the-kill", "best-at-the-kill"])
def test_a_killed_run_resumes_with_its_best_student(tiny_store, tmp_path, monkeypatch, accuracies):
    _scripted_validation(monkeypatch, accuracies)
    cfg = {"val_fraction": 0.3, "epochs": 3}
    reference = distill_mod.distill(tiny_config(tiny_store, tmp_path / "ref", **cfg))

    _kill_after_epoch_2(monkeypatch, tiny_config(tiny_store, tmp_path / "killed", **cfg))
    resumed = distill_mod.distill(tiny_config(tiny_store, tmp_path / "killed", resume=True, **cfg))

    assert resumed.final == reference.final and resumed.final["chosen_epoch"] == accuracies.index(max(accuracies)) + 1
    for name in (run_folder.STUDENT, run_folder.STUDENT_BEST, run_folder.STUDENT_LAST):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name


def test_a_student_best_file_of_another_epoch_or_student_is_refused_on_resume(tiny_store, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [0.9, 0.5, 0.5])
    _kill_after_epoch_2(monkeypatch, tiny_config(tiny_store, tmp_path / "r", val_fraction=0.3, epochs=3))
    resume = tiny_config(tiny_store, tmp_path / "r", val_fraction=0.3, epochs=3, resume=True)
    run_folder.save_best_student(tmp_path / "r", {"w": torch.zeros(1)}, 2)  # the history's best is epoch 1
    with pytest.raises(UserError, match="student-best.safetensors holds epoch 2's student, the history's best is epoch 1"):
        distill_mod.distill(resume)
    run_folder.save_best_student(tmp_path / "r", {"w": torch.zeros(1)}, 1)
    with pytest.raises(UserError, match=r"student-best.safetensors does not fit the run's student \(no "):
        distill_mod.distill(resume)


def test_without_a_validation_split_epochs_are_scored_on_the_test_rows(tiny_store, tmp_path):
    run = tmp_path / "r"
    distill_mod.distill(tiny_config(tiny_store, run, epochs=1))
    metrics = json.loads((run / "metrics.json").read_text())
    assert all("eval" in e and "val" not in e for e in metrics["epochs"])
    assert sorted(metrics["final"]) == ["accuracy", "balanced_accuracy", "confusion_matrix", "macro_f1", "per_class_accuracy"]
    assert not run_folder.exists(run, run_folder.STUDENT_BEST) and not run_folder.exists(run, run_folder.STUDENT_LAST)
    assert json.loads((run / "config.json").read_text())["n_val"] == 0


def test_two_ranks_validate_and_choose_as_one_process(tiny_store, tmp_path):
    """Each rank scores its share of the validation rows, gathered: the records, the choice and ``final`` are one
    process's; rank 0 alone writes the run's students (a BatchNorm-free student, as in test_ddp)."""
    from tests.conftest import torchrun
    from tests.trainer.test_ddp import NO_BATCHNORM_STUDENT

    settings = {"student": NO_BATCHNORM_STUDENT, "customize_warmup": 0, "val_fraction": 0.3, "epochs": 3}
    two = torchrun(2, "distill", "--min-steps", "0", "--cache", tiny_store, "--student", NO_BATCHNORM_STUDENT,
                   "--epochs", "3", "--image-size", "32", "--batch-size", "8", "--workers", "0", "--labels-per-class",
                   "2", "--out", tmp_path / "two", "--customize-warmup", "0", "--val-fraction", "0.3")
    assert two.returncode == 0, two.stderr[-2000:]
    one = distill_mod.distill(tiny_config(tiny_store, tmp_path / "one", **settings))
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    single = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert [e["val"] for e in metrics["epochs"]] == [e["val"] for e in single["epochs"]]
    assert metrics["final"] == one.final
    again = evaluate_run(str(tmp_path / "two"), workers=0)
    assert {k: again[k] for k in ("accuracy", "balanced_accuracy")} == \
        {k: metrics["final"][k] for k in ("accuracy", "balanced_accuracy")}
    assert run_folder.exists(tmp_path / "two", run_folder.STUDENT_BEST, run_folder.STUDENT_LAST, run_folder.STUDENT)


def test_a_run_recorded_before_the_option_existed_resumes_with_its_default(tiny_store, tmp_path):
    cfg = tiny_config(tiny_store, tmp_path / "r")
    recorded = {k: v for k, v in cfg.to_dict().items() if k != "val_fraction"}
    distill_mod._check_same_settings(cfg, recorded, tmp_path / "r")  # 0, what the run used
    with pytest.raises(UserError, match="another 'val_fraction'"):
        distill_mod._check_same_settings(tiny_config(tiny_store, val_fraction=0.3), recorded, tmp_path / "r")


def test_the_command_line_names_the_chosen_epoch(tiny_store, tmp_path):
    result = invoke("distill", "--cache", tiny_store, "--out", tmp_path / "r", "--val-fraction", "0.3",
                    *[f"--{k.replace('_', '-')}={v}" for k, v in {**TINY_RUN, "epochs": 2}.items()])
    assert result.exit_code == 0, result.output
    final = json.loads((tmp_path / "r" / "metrics.json").read_text())["final"]
    assert f"(epoch {final['chosen_epoch']}, best validation accuracy {final['val_accuracy']:.4f}; last epoch 2" \
        in result.stdout
