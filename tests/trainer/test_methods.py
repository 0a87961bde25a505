import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import customkd.trainer.methods as methods_package
from customkd.trainer.config import DistillConfig
from customkd.trainer.methods import (
    BASES,
    METHODS,
    TERMS,
    MethodContext,
    Recipe,
    StepInputs,
    create_method,
    method_params,
)
from customkd.trainer.methods.customkd import customization_targets
from customkd.trainer.methods.dkd import dkd_loss
from customkd.trainer.methods.kd import soft_target_loss


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
        head_weight=torch.randn(3, 5, generator=g),  # θ^c_s's weight: the head-space term projects on its rows
    )


# Options every method reads, moved off their defaults (so a swapped or dropped mapping changes a golden value):
# dkd_warmup=5 scales DKD by 0.8 at epoch 3, pseudo_threshold=0.35 admits a second pseudo-label. The other choices of
# customize_target change no parameter mapping and are left to the tests of customization_targets.
SHIFTED = dict(kd_temperature=2.5, kd_weight=0.7, lambda_general=0.6, lambda_specific=1.3, dkd_alpha=0.9, dkd_beta=6.0,
               dkd_warmup=5, customizer="mlp", customizer_activation="none", customize_head="random-trained",
               customize_smoothing=0.2, pseudo_threshold=0.35)
CONFIGS = {"defaults": {}, "shifted": SHIFTED, "full-space": dict(specific_space="full", lambda_general=1.0)}

# Loss parts on _step() after one customization round, adapters initialised under torch.manual_seed(0), student
# activation Hardswish; "customization" is L_cus through a head drawn under torch.manual_seed(1). "full-space" and the
# baselines are the values pinned when methods still read the whole DistillConfig; the head-space defaults are checked
# against a projection computed by hand in test_the_head_space_term_is_the_mse_of_the_difference_projected_on_the_head_rows.
GOLDEN = {
    "defaults": {
        "student": {"loss": 2.26448, "task": 2.26448},
        "fitnet": {"loss": 4.171755, "task": 2.26448, "general": 1.907275},
        "kd": {"loss": 3.076003, "task": 2.26448, "kd": 0.811523},
        "kd+fitnet": {"loss": 4.983278, "task": 2.26448, "general": 1.907275, "kd": 0.811523},
        "dkd": {"loss": 3.459619, "task": 2.26448, "dkd": 1.195139},
        # head-space term, λ_g = 0.1: 2.26448 + 0.1 × 1.261595 + 1.649066
        "customkd": {"loss": 4.039705, "task": 2.26448, "general": 1.261595, "specific": 1.649066,
                     "customization": 1.131387},
        "customkd+dkd": {"loss": 5.234844, "task": 2.26448, "general": 1.261595, "specific": 1.649066, "dkd": 1.195139,
                         "customization": 1.131387},
        "customkd+kd": {"loss": 4.851228, "task": 2.26448, "general": 1.261595, "specific": 1.649066, "kd": 0.811523,
                        "customization": 1.131387},
    },
    # the full-space MSE with λ_g = 1 for every method: the values of the previous defaults, unchanged
    "full-space": {
        "student": {"loss": 2.26448, "task": 2.26448},
        "fitnet": {"loss": 4.171755, "task": 2.26448, "general": 1.907275},
        "kd": {"loss": 3.076003, "task": 2.26448, "kd": 0.811523},
        "kd+fitnet": {"loss": 4.983278, "task": 2.26448, "general": 1.907275, "kd": 0.811523},
        "dkd": {"loss": 3.459619, "task": 2.26448, "dkd": 1.195139},
        "customkd": {"loss": 4.99518, "task": 2.26448, "general": 1.261595, "specific": 1.469106,
                     "customization": 1.131387},
        "customkd+dkd": {"loss": 6.19032, "task": 2.26448, "general": 1.261595, "specific": 1.469106, "dkd": 1.195139,
                         "customization": 1.131387},
        # customkd's parts plus the kd row's term: 4.99518 + 0.811523
        "customkd+kd": {"loss": 5.806703, "task": 2.26448, "general": 1.261595, "specific": 1.469106, "kd": 0.811523,
                        "customization": 1.131387},
    },
    "shifted": {
        "student": {"loss": 2.26448, "task": 2.26448},
        "fitnet": {"loss": 3.408845, "task": 2.26448, "general": 1.907275},
        "kd": {"loss": 2.828393, "task": 2.26448, "kd": 0.805591},
        "kd+fitnet": {"loss": 3.972759, "task": 2.26448, "general": 1.907275, "kd": 0.805591},
        "dkd": {"loss": 3.071357, "task": 2.26448, "dkd": 0.806878},
        "customkd": {"loss": 4.655945, "task": 2.26448, "general": 1.620234, "specific": 1.091788,
                     "customization": 1.084163},
        "customkd+dkd": {"loss": 5.462823, "task": 2.26448, "general": 1.620234, "specific": 1.091788, "dkd": 0.806878,
                         "customization": 1.084163},
        "customkd+kd": {"loss": 5.219859, "task": 2.26448, "general": 1.620234, "specific": 1.091788, "kd": 0.805591,
                        "customization": 1.084163},
    },
}


def test_the_head_space_term_is_the_mse_of_the_difference_projected_on_the_head_rows():
    from customkd.trainer.methods.base import BatchCounts
    from customkd.trainer.methods.customkd import specific_term

    g = torch.Generator().manual_seed(3)
    f_s, target, weight = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g), torch.randn(3, 5, generator=g)
    projection = weight.T @ torch.linalg.inv(weight @ weight.T) @ weight  # P = Wᵀ(WWᵀ)⁻¹W, [5, 5]
    params = method_params("customkd", DistillConfig(cache="x", specific_space="head"))
    # ‖P d‖² over the C = 3 coordinates of the row space, averaged over samples
    by_hand = float(((f_s - target) @ projection).square().sum(1).mean() / 3)
    assert float(specific_term(f_s, target, params, weight, BatchCounts.of(torch.zeros(4)))) == pytest.approx(by_hand)
    # a difference orthogonal to the head's rows costs nothing
    orthogonal = (f_s - target) - (f_s - target) @ projection
    assert float(specific_term(target + orthogonal, target, params, weight, BatchCounts.of(torch.zeros(4)))) < 1e-10
    cosine = method_params("customkd", DistillConfig(cache="x", specific_space="full", specific_loss="cosine"))
    by_hand = float((1 - torch.nn.functional.cosine_similarity(f_s, target)).mean())
    assert float(specific_term(f_s, target, cosine, None, BatchCounts.of(torch.zeros(4)))) == pytest.approx(by_hand)
    assert float(specific_term(f_s, 7.0 * target, cosine, None, BatchCounts.of(torch.zeros(4)))) == pytest.approx(by_hand)


def test_a_zero_initialised_customizer_moves_only_inside_the_head_row_space_under_sgd():
    cfg = DistillConfig(cache="x", customizer_init="zero", customizer_activation="none", customize_smoothing=0.0)
    torch.manual_seed(0)
    method = create_method("customkd", MethodContext(6, 5, 3, cfg))
    assert not method.customizer.weight.detach().any() and not method.customizer.bias.detach().any()
    head = torch.nn.Linear(5, 3)
    optimizer = torch.optim.SGD(method.customizer_parameters(), lr=0.5)
    step = _step()
    for _ in range(5):
        optimizer.zero_grad()
        method.customization_loss(step.teacher_features, step.labels, step.probe_logits, head)["loss"].backward()
        optimizer.step()
    output = method.customized(step.teacher_features)
    projection = head.weight.T @ torch.linalg.inv(head.weight @ head.weight.T) @ head.weight
    assert float(output.detach().abs().max()) > 1e-3  # it moved
    assert torch.allclose(output.detach() @ projection.detach(), output.detach(), atol=1e-5)  # only where L_cus sees


def _customized(method):
    """A CustomKD method after one customization round (the task-specific term is on)."""
    if method.customizes:
        method.add_round()
    return method


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("name", sorted(METHODS))
def test_golden_losses(name, config):
    cfg = DistillConfig(cache="x", method=name, **CONFIGS[config])
    torch.manual_seed(0)
    method = create_method(name, MethodContext(6, 5, 3, cfg, torch.nn.Hardswish()))
    parts = {}
    if method.customizes:
        step = _step()
        torch.manual_seed(1)
        head = torch.nn.Linear(5, 3)
        parts["customization"] = float(method.customization_loss(step.teacher_features, step.labels,
                                                                 step.probe_logits, head)["loss"].detach())
    parts.update((k, float(v.detach())) for k, v in _customized(method)(_step()).items()
                 if k not in ("specific_unreachable", "customized_ms", "student_ms", "customized_head_ms"))
    assert parts == pytest.approx(GOLDEN[config][name], abs=1e-5)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_create_method_hands_the_method_its_params_from_the_config(name):
    cfg = DistillConfig(cache="x", method=name, **SHIFTED)
    activation = torch.nn.Hardswish()
    method = create_method(name, MethodContext(6, 5, 3, cfg, activation))
    params = method_params(name, cfg)
    assert dataclasses.is_dataclass(params) and params.__dataclass_params__.frozen
    assert method.params == params and type(method.params) is type(params)
    assert method.dims.student_activation is activation  # trainer/distill.py records its name in config.json
    assert not any(isinstance(getattr(method.params, f.name), DistillConfig) for f in dataclasses.fields(params))
    assert [t.params for t in method.terms] == [TERMS[term][0](cfg) for term in METHODS[name].terms]


def test_every_method_has_params_and_no_method_module_sees_the_config():
    assert all(recipe.base in BASES and set(recipe.terms) <= set(TERMS) for recipe in METHODS.values())
    for path in sorted(Path(methods_package.__file__).parent.glob("*.py")):
        if path.name != "registry.py":  # the one place where the config becomes params
            assert "DistillConfig" not in path.read_text() and "trainer.config" not in path.read_text(), path.name


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

    from customkd.trainer.distill import distill
    from customkd.trainer.evaluate import evaluate_run
    from tests.conftest import tiny_config

    result = distill(tiny_config(tiny_store, tmp_path / name, method=name, epochs=1, customize_warmup=0))
    train = json.loads((tmp_path / name / "metrics.json").read_text())["epochs"][0]["train"]
    expected = {"student": {"task"}, "fitnet": {"general"}, "kd": {"kd"}, "kd+fitnet": {"kd", "general"},
                "dkd": {"dkd"}, "customkd": {"general", "specific", "head_share"},
                "customkd+kd": {"general", "specific", "kd"}, "customkd+dkd": {"general", "specific", "dkd"}}
    assert expected[name] <= set(train), (name, sorted(train))  # the method's own terms were trained and recorded
    assert all(np.isfinite(train[term]) for term in expected[name])
    # the reported accuracy is the saved student's on the held-out rows, not a number made up along the way
    assert evaluate_run(str(tmp_path / name), workers=0)["accuracy"] == result.final["accuracy"]


def test_method_names_of_the_command_line_are_the_registry():
    from customkd.trainer.config import METHOD_NAMES

    assert METHOD_NAMES == tuple(METHODS)


def test_a_combined_method_is_its_base_plus_the_weighted_registered_terms(monkeypatch):
    monkeypatch.setitem(METHODS, "fitnet+dkd", Recipe("fitnet", ("dkd",)))
    cfg = DistillConfig(cache="x", **SHIFTED)
    torch.manual_seed(0)
    combined = {k: v.detach() for k, v in create_method("fitnet+dkd", MethodContext(6, 5, 3, cfg))(_step()).items()}
    torch.manual_seed(0)
    fitnet = {k: v.detach() for k, v in create_method("fitnet", MethodContext(6, 5, 3, cfg))(_step()).items()}
    dkd = create_method("dkd", MethodContext(6, 5, 3, cfg))(_step())
    assert float(combined["general"]) == float(fitnet["general"]) and float(combined["dkd"]) == float(dkd["dkd"])
    assert float(combined["loss"]) == pytest.approx(float(fitnet["loss"]) + float(dkd["dkd"]), abs=1e-6)
    kd = create_method("kd", MethodContext(6, 5, 3, cfg))(_step())  # a weighted term: w = 0.7 from SHIFTED
    assert float(kd["loss"]) == pytest.approx(float(kd["task"]) + 0.7 * float(kd["kd"]), abs=1e-6)


def _stage_context(epoch: int, seed: int = 0):
    from customkd.trainer.methods import EpochContext

    g = torch.Generator().manual_seed(5)
    features, labels = torch.randn(12, 6, generator=g), torch.tensor([0, 1, 2, -1] * 3)
    return EpochContext(epoch, seed, torch.nn.Linear(5, 3), features, labels, torch.nn.Linear(6, 3), batch_size=5,
                        block_local=False)


def test_customkd_owns_its_schedule_rounds_and_optimiser_state():
    cfg = DistillConfig(cache="x", customize_warmup=2, alternate_every=3, customize_epochs=2)
    torch.manual_seed(0)
    method = create_method("customkd", MethodContext(6, 5, 3, cfg))
    due = [epoch for epoch in range(9) if method.epoch_stage(_stage_context(epoch)) is not None]
    assert due == [2, 5, 8] and int(method.rounds) == 2 * 3  # each round is customize_epochs passes
    saved = method.optimizer_states()
    torch.manual_seed(0)
    fresh = create_method("customkd", MethodContext(6, 5, 3, cfg))
    fresh.load_optimizer_states(saved)
    restored = fresh.optimizer_states()["customizer"]["state"]
    assert restored.keys() == saved["customizer"]["state"].keys() and all(
        torch.equal(restored[k]["exp_avg"], v["exp_avg"]) for k, v in saved["customizer"]["state"].items())
    assert create_method("kd", MethodContext(6, 5, 3, cfg)).epoch_stage(_stage_context(2)) is None


def test_customizer_reset_redraws_theta_from_the_seed_and_epoch_and_restarts_its_optimiser():
    cfg = DistillConfig(cache="x", customizer_reset=True, customize_warmup=0)
    torch.manual_seed(0)
    method = create_method("customkd", MethodContext(6, 5, 3, cfg))
    method.epoch_stage(_stage_context(0, seed=3))
    first = method.optimizer
    torch.manual_seed(3 * 1000 + 1)
    expected = torch.nn.Linear(6, 5).weight.detach().clone()  # the draw a reset before epoch 1 makes
    method.epoch_stage(_stage_context(1, seed=3))
    assert method.optimizer is not first
    trained = method.customizer.weight.detach()
    assert not torch.equal(trained, expected) and float((trained - expected).abs().max()) < 0.05  # reset, one pass
