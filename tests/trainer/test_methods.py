import math

import numpy as np
import pytest
import torch

from trainer.config import DistillConfig
from trainer.methods import METHODS, MethodContext, StepInputs, create_method
from trainer.methods.customkd import customization_targets
from trainer.methods.dkd import dkd_loss
from trainer.methods.kd import soft_target_loss


def _ctx(**overrides) -> MethodContext:
    return MethodContext(teacher_dim=6, student_dim=5, num_classes=3, config=DistillConfig(cache="x", **overrides))


def _step(epoch: int = 3) -> StepInputs:
    g = torch.Generator().manual_seed(0)
    return StepInputs(
        student_features=torch.randn(4, 5, generator=g),
        logits=torch.randn(4, 3, generator=g),
        labels=torch.tensor([0, -1, 2, -1]),
        teacher_features=torch.randn(4, 6, generator=g),
        probe_logits=torch.randn(4, 3, generator=g),
        epoch=epoch,
    )


# Golden totals on the fixed tensors above, adapters initialised with torch.manual_seed(0).
GOLDEN = {
    "student": {"loss": 2.2645, "task": 2.2645},
    "fitnet": {"loss": 4.1718, "task": 2.2645, "general": 1.9073},
    "kd": {"loss": 3.0760, "task": 2.2645, "kd": 0.8115},
    "kd+fitnet": {"loss": 4.9833, "task": 2.2645, "general": 1.9073, "kd": 0.8115},
    "dkd": {"loss": 3.4596, "task": 2.2645, "dkd": 1.1951},
    "customkd": {"loss": 5.5406, "task": 2.2645, "general": 1.2616, "specific": 2.0145},
    "customkd+dkd": {"loss": 6.7357, "task": 2.2645, "general": 1.2616, "specific": 2.0145, "dkd": 1.1951},
}


def _customized(method):
    """A CustomKD method after one customization round (the task-specific term is on)."""
    if method.customizes:
        method.rounds += 1
    return method


@pytest.mark.parametrize("name", sorted(METHODS))
def test_golden_losses(name):
    torch.manual_seed(0)
    parts = {k: float(v.detach()) for k, v in _customized(create_method(name, _ctx()))(_step()).items()}
    parts = {k: v for k, v in parts.items() if k not in ("specific_unreachable", "customized_ms", "student_ms")}
    assert parts == pytest.approx(GOLDEN[name], abs=1e-4)


def test_task_and_kd_match_the_formulas_by_hand():
    step = _step()
    labeled = [0, 2]
    log_p = step.logits.log_softmax(1)
    by_hand_task = -sum(float(log_p[i, step.labels[i]]) for i in labeled) / 2
    t = 4.0
    p_t, log_p_s = (step.probe_logits / t).softmax(1), (step.logits / t).log_softmax(1)
    by_hand_kd = float((p_t * (p_t.log() - log_p_s)).sum(1).mean()) * t * t
    parts = create_method("kd", _ctx())(step)
    assert float(parts["task"]) == pytest.approx(by_hand_task, abs=1e-6)
    assert float(parts["kd"]) == pytest.approx(by_hand_kd, abs=1e-6)


def test_task_loss_only_counts_labeled_samples():
    step = _step()
    step.logits = torch.zeros(4, 3)
    parts = create_method("student", _ctx())(step)
    assert parts["task"].item() == pytest.approx(math.log(3))


def test_soft_targets_vanish_for_identical_logits():
    logits = torch.randn(5, 4)
    assert soft_target_loss(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert dkd_loss(logits, logits, torch.zeros(5, dtype=torch.long), 1.0, 8.0, 4.0).item() == pytest.approx(0, abs=1e-5)


def test_lambda_zero_drops_the_specific_term():
    torch.manual_seed(0)
    with_term = _customized(create_method("customkd", _ctx()))(_step())
    torch.manual_seed(0)
    without = _customized(create_method("customkd", _ctx(lambda_specific=0.0)))(_step())
    assert without["loss"].item() == pytest.approx(with_term["loss"].item() - with_term["specific"].item(), abs=1e-5)


def test_customization_targets_use_labels_then_confident_pseudo_labels():
    labels = torch.tensor([1, -1, -1])
    probe = torch.tensor([[0.0, 0.0, 9.0], [9.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    assert customization_targets(labels, probe, "labels+pseudo", 0.8).tolist() == [1, 0, -1]
    assert customization_targets(labels, probe, "labels", 0.8).tolist() == [1, -1, -1]


@pytest.mark.parametrize("head", ["student", "random"])
def test_customization_step_changes_only_the_customizer(head):
    torch.manual_seed(0)
    method = create_method("customkd", _ctx(customize_head=head))
    student_head = torch.nn.Linear(5, 3)
    before_head = {k: v.clone() for k, v in student_head.state_dict().items()}
    before = {k: v.clone() for k, v in method.state_dict().items()}
    optimizer = torch.optim.Adam(method.customizer.parameters(), lr=0.1)
    step = _step()
    parts = method.customization_loss(step.teacher_features, step.labels, step.probe_logits, student_head)
    parts["loss"].backward()
    optimizer.step()
    for key, value in method.state_dict().items():
        assert torch.equal(value, before[key]) != key.startswith("customizer."), key
    for key, value in student_head.state_dict().items():
        assert torch.equal(value, before_head[key])
    assert student_head.weight.grad is None


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_end_to_end(name, tiny_store, tmp_path):
    import json

    from tests.conftest import TINY_STUDENT
    from trainer.distill import distill
    from trainer.evaluate import evaluate_run

    result = distill(DistillConfig(min_steps=0, cache=str(tiny_store), method=name, student=TINY_STUDENT, epochs=1, image_size=32,
                                   batch_size=8, workers=0, labels_per_class=2, customize_warmup=0, out=str(tmp_path / name)))
    train = json.loads((tmp_path / name / "metrics.json").read_text())["epochs"][0]["train"]
    expected = {"student": {"task"}, "fitnet": {"general"}, "kd": {"kd"}, "kd+fitnet": {"kd", "general"},
                "dkd": {"dkd"}, "customkd": {"general", "specific"}, "customkd+dkd": {"general", "specific", "dkd"}}
    assert expected[name] <= set(train), (name, sorted(train))  # the method's own terms were trained and recorded
    assert all(np.isfinite(train[term]) for term in expected[name])
    # the reported accuracy is the saved student's on the held-out rows, not a number made up along the way
    assert evaluate_run(str(tmp_path / name), workers=0)["accuracy"] == result.final["accuracy"]


def test_method_names_of_the_command_line_are_the_registry():
    from trainer.config import METHOD_NAMES

    assert METHOD_NAMES == tuple(METHODS)
