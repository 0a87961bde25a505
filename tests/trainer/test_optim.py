"""trainer.optim: the student's optimiser and lr schedule from timm. With the defaults a run trains bit for bit as the
a plain torch AdamW/SGD over every parameter with a cosine LambdaLR; the timm options group, decay and warm up as declared."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from customkd.common.distributed import DistEnv
from customkd.common.errors import UserError
from customkd.trainer import run_folder
from customkd.trainer.assemble import build_trainee, epoch_plan, kd_step, load_inputs, seed_everything
from customkd.trainer.config import DistillConfig
from customkd.trainer.data import StudentViews, make_loader
from customkd.trainer.distill import distill
from customkd.trainer.loop import _kd_update
from customkd.trainer.optim import CosineSchedule
from tests.conftest import tiny_config

CPU = torch.device("cpu")


def _lrs(total: int, warmup: int, warmup_lr: float, updates: int, lr: float = 0.1) -> list[float]:
    """The lr of each of ``updates`` optimiser updates under :class:`CosineSchedule`."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)
    schedule, seen = CosineSchedule(optimizer, total, warmup, warmup_lr), []
    for _ in range(updates):
        seen.append(optimizer.param_groups[0]["lr"])
        schedule.advance()
    return seen


def test_the_cosine_without_warmup_is_the_hand_built_schedule_exactly():
    """lr · ½(1 + cos(π min(t, T) / T)) at update t, as torch's LambdaLR with the cosine factor computes it, to the last bit, and 0
    once the run's updates are done."""
    assert _lrs(6, 0, 1e-5, 8) == [0.1, 0.09330127018922195, 0.07500000000000001, 0.05, 0.025000000000000012,
                                   0.006698729810778065, 0.0, 0.0]
    for total in (1, 7, 250, 1001):
        assert _lrs(total, 0, 1e-5, total + 2, lr=2e-3) == [
            2e-3 * (0.5 * (1 + math.cos(math.pi * min(t, total) / total))) for t in range(total + 2)]


def test_the_warmup_rises_linearly_from_warmup_lr_then_follows_the_cosine_of_the_whole_run():
    # t < 3: 0.001 + t · (0.1 − 0.001) / 3; t ≥ 3: 0.05 · (1 + cos(π t / 8)) (timm's warmup_prefix=False)
    assert _lrs(8, 3, 0.001, 9) == [0.001, 0.034, 0.067, 0.0691341716182545, 0.05, 0.030865828381745515,
                                    0.014644660940672627, 0.0038060233744356634, 0.0]


def test_the_schedule_state_round_trips_and_a_foreign_state_is_refused(tmp_path):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    schedule = CosineSchedule(optimizer, 8, 3, 0.001)
    for _ in range(4):
        schedule.advance()
    torch.save({"scheduler": schedule.state_dict()}, tmp_path / "state.pt")  # as the checkpoint holds it
    state = torch.load(tmp_path / "state.pt", weights_only=True)["scheduler"]
    again = CosineSchedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1), 8)
    again.load_state_dict(state)
    assert again.updates == 4 and (again.warmup_t, again.warmup_lr_init) == (3, 0.001)
    again.advance()
    assert again.optimizer.param_groups[0]["lr"] == _lrs(8, 3, 0.001, 6)[5]
    lambda_lr = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1),
                                                  lambda s: 1.0)
    with pytest.raises(UserError, match="does not fit this run's scheduler"):  # a LambdaLR state, not timm's
        run_folder.restore(tmp_path, {"scheduler": lambda_lr.state_dict()}, {"scheduler": again})


# ------------------------------------------------- the defaults equal a hand-built AdamW/SGD with a cosine LambdaLR


def _digest(run) -> str:
    """sha256 of a finished run's student and method tensors, in key order."""
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for name in ("student.safetensors", "method.safetensors"):
        state = load_file(str(run / name))
        for key in sorted(state):
            digest.update(key.encode())
            digest.update(state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


# The final weights of a tiny run with a plain AdamW/SGD over every parameter and a LambdaLR cosine, on this machine's
# pinned install (constraints.txt): the timm-built optimiser and schedule must reach them exactly. Like
# test_pinned_run's numbers, another torch or CPU may move them; the same-process comparison below does not depend
# on the machine.
GOLDEN = {
    "adamw": ({"method": "customkd"}, "10f97d795be5d66ba9811cf560609df7c498be3eb0a0c0825f7f138be4b30437"),
    "sgd": ({"method": "kd", "optimizer": "sgd", "weight_decay": 0.05},  # AdamW's decay, given explicitly to SGD
            "3b829df2df21fea67b966d1d6efc80d9ced8487ef13e057e3699fc037949617e"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_a_default_run_ends_at_the_weights_the_hand_built_optimiser_gave(tiny_store, tmp_path, name):
    settings, digest = GOLDEN[name]
    distill(tiny_config(tiny_store, tmp_path / "r", **settings))
    assert _digest(tmp_path / "r") == digest


class HandBuiltCosine:
    """The reference schedule the default must equal: torch's LambdaLR with the cosine factor."""

    def __init__(self, optimizer: torch.optim.Optimizer, total: int) -> None:
        self.lambda_lr = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))

    def advance(self) -> None:
        self.lambda_lr.step()


def _train(cfg: DistillConfig, total: int, hand_built: bool, updates: int) -> tuple[list[float], list[torch.Tensor]]:
    """``updates`` KD steps of a fresh fitnet run (its projector is trained beside the student) whose schedule lasts
    ``total`` updates; the lr of each and the trained parameters."""
    seed_everything(cfg.seed)
    inputs = load_inputs(cfg, CPU)
    trainee = build_trainee(cfg, inputs, CPU, steps=total)
    parameters = list(trainee.student.parameters()) + trainee.method.student_side_parameters()
    if hand_built:  # what make_optimizers built
        trainee.optimizer = torch.optim.AdamW(parameters, lr=cfg.effective_lr, weight_decay=0.05, foreach=True)
        trainee.scheduler = HandBuiltCosine(trainee.optimizer, total)
    plan = epoch_plan(cfg, inputs, 0, DistEnv())
    loader = make_loader(StudentViews(inputs.data, cfg.image_size), plan.order, plan.views, cfg.batch_size, workers=0)
    step, batches, seen = kd_step(cfg, inputs, trainee, CPU, progress=False), list(loader), []
    for update in range(updates):
        seen.append(trainee.optimizer.param_groups[0]["lr"])
        _kd_update(step, batches[update % len(batches)], 0, plan.counts[update % len(batches)])
    return seen, parameters


def test_the_default_optimiser_and_schedule_train_as_the_hand_built_ones_bit_for_bit(tiny_store):
    cfg = tiny_config(tiny_store, method="fitnet")
    (new_lrs, new), (old_lrs, old) = (_train(cfg, 4, hand_built, updates=6) for hand_built in (False, True))
    assert new_lrs == old_lrs and new_lrs[-2:] == [0.0, 0.0]  # past the schedule's end too
    assert len(new) == len(old) and all(torch.equal(a, b) for a, b in zip(new, old, strict=True))


# --------------------------------------------------------------------------- the options


def test_the_default_is_one_group_decaying_every_parameter_in_order(tiny_store):
    cfg = tiny_config(tiny_store, method="fitnet")
    trainee = build_trainee(cfg, load_inputs(cfg, CPU), CPU)
    (group,) = trainee.optimizer.param_groups
    expected = list(trainee.student.parameters()) + trainee.method.student_side_parameters()
    assert [id(p) for p in group["params"]] == [id(p) for p in expected] and group["weight_decay"] == 0.05
    assert type(trainee.optimizer) is torch.optim.AdamW


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_without_decay_on_norms_and_biases_timm_groups_exempt_every_1d_parameter(tiny_store, optimizer):
    cfg = tiny_config(tiny_store, method="fitnet", optimizer=optimizer, decay_norm_bias=False)
    trainee = build_trainee(cfg, load_inputs(cfg, CPU), CPU)
    groups = {group["weight_decay"]: group["params"] for group in trainee.optimizer.param_groups}
    assert set(groups) == {0.0, cfg.effective_weight_decay}
    expected = list(trainee.student.parameters()) + trainee.method.student_side_parameters()
    assert sorted(id(p) for g in groups.values() for p in g) == sorted(id(p) for p in expected)  # each once
    assert all(p.ndim <= 1 for p in groups[0.0]) and all(p.ndim > 1 for p in groups[cfg.effective_weight_decay])
    norms = [m.weight for m in trainee.student.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(any(p is n for p in groups[0.0]) for n in norms)
    assert any(p is trainee.method.student_side_parameters()[-1] for p in groups[0.0])  # the projector's bias


def test_each_optimizer_has_its_own_default_decay_and_an_explicit_one_wins_for_both(tiny_store):
    assert DistillConfig(optimizer="adamw").effective_weight_decay == 0.05
    assert DistillConfig(optimizer="sgd").effective_weight_decay == 5e-4
    for optimizer in ("adamw", "sgd"):
        cfg = tiny_config(tiny_store, optimizer=optimizer, weight_decay=0.01)
        assert cfg.effective_weight_decay == 0.01
        trainee = build_trainee(cfg, load_inputs(cfg, CPU), CPU)
        assert [g["weight_decay"] for g in trainee.optimizer.param_groups] == [0.01]
    sgd = tiny_config(tiny_store, optimizer="sgd")
    (group,) = build_trainee(sgd, load_inputs(sgd, CPU), CPU).optimizer.param_groups
    assert (group["weight_decay"], group["momentum"], group["nesterov"], group["lr"]) == (5e-4, 0.9, True, 0.05)


def test_config_json_records_the_optimiser_choices_and_replays_them(tiny_store, tmp_path):
    cfg = tiny_config(tiny_store, tmp_path / "r", optimizer="sgd", decay_norm_bias=False, warmup_epochs=0.5,
                      warmup_lr=1e-4)
    distill(cfg)
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    steps_per_epoch = cfg.steps_per_epoch(config["n_train"])
    assert (config["weight_decay"], config["effective_weight_decay"], config["decay_norm_bias"]) == (None, 5e-4, False)
    assert (config["warmup_epochs"], config["warmup_lr"]) == (0.5, 1e-4)
    assert config["warmup_steps"] == round(0.5 * steps_per_epoch) and config["optimizer_steps"] == 2 * steps_per_epoch
    replayed = DistillConfig.from_run(str(tmp_path / "r"))
    keys = ("optimizer", "weight_decay", "decay_norm_bias", "warmup_epochs", "warmup_lr")
    assert [getattr(replayed, k) for k in keys] == [getattr(cfg, k) for k in keys]


def test_a_warmup_as_long_as_the_run_is_refused_in_one_line(tiny_store):
    with pytest.raises(UserError, match=r"--warmup-epochs 2 must be shorter than the run \(--epochs 2\)"):
        tiny_config(tiny_store, warmup_epochs=2)
    with pytest.raises(UserError, match="--warmup-epochs must be >= 0"):
        tiny_config(tiny_store, warmup_epochs=-0.5)
    cfg = tiny_config(tiny_store, epochs=None, warmup_epochs=8)  # the run's length is known once the store is read
    with pytest.raises(UserError, match=r"--warmup-epochs 8 is \d+ optimizer steps, not shorter than the run's"):
        build_trainee(cfg, load_inputs(cfg, CPU), CPU)
