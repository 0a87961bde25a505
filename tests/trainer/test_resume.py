import json

import pytest

from customkd.trainer import distill as distill_mod
from customkd.trainer import run_folder
from customkd.trainer.config import DistillConfig
from tests.conftest import tiny_config, without_timing


def _config(store, out, **kw) -> DistillConfig:
    return tiny_config(store, out, **{"method": "customkd", "setting": "ssl", "labels_per_class": 3, "epochs": 3, **kw})


# the second: killed after a customization round with none due in the next epoch, so the resumed run's task-specific
# term rests on the round count its checkpoint restored; the third: killed inside the lr warm-up, so the resumed
# run's lr rests on the update count the scheduler's state restored
@pytest.mark.parametrize("schedule", [{}, {"customize_warmup": 0, "alternate_every": 2},
                                      {"warmup_epochs": 1.5, "decay_norm_bias": False, "optimizer": "sgd"}],
                         ids=["default", "restored", "warmup"])
def test_killed_run_resumes_to_the_same_result(tiny_store, tmp_path, monkeypatch, schedule):
    reference = distill_mod.distill(_config(tiny_store, tmp_path / "ref", **schedule))

    saves = {"n": 0}
    real_save = run_folder.save_checkpoint

    def save_then_die(run, state):
        real_save(run, state)
        saves["n"] += 1
        if saves["n"] == 1:
            raise KeyboardInterrupt  # killed right after epoch 1's checkpoint

    monkeypatch.setattr(run_folder, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        distill_mod.distill(_config(tiny_store, tmp_path / "killed", **schedule))
    resumed = distill_mod.distill(_config(tiny_store, tmp_path / "killed", resume=True, **schedule))

    assert resumed.final == reference.final
    ref_epochs = json.loads((tmp_path / "ref" / "metrics.json").read_text())["epochs"]
    new_epochs = json.loads((tmp_path / "killed" / "metrics.json").read_text())["epochs"]
    assert without_timing(new_epochs) == without_timing(ref_epochs)  # the epoch numbers included


def test_existing_run_is_not_overwritten(tiny_store, tmp_path):
    from customkd.common.errors import UserError

    distill_mod.distill(_config(tiny_store, tmp_path / "r", epochs=1))
    with pytest.raises(UserError, match="holds a finished run"):
        distill_mod.distill(_config(tiny_store, tmp_path / "r", epochs=1))
