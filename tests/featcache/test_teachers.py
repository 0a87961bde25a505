import pytest
import torch

from featcache import teachers
from featcache.errors import UserError


def test_registry_entries_resolve():
    for name, spec in teachers.TEACHERS.items():
        assert teachers.resolve_spec(name) is spec
    assert teachers.resolve_spec("timm:resnet18.a1_in1k").model == "resnet18.a1_in1k"
    assert teachers.resolve_spec("open_clip:ViT-B-32:openai").pretrained == "openai"


def test_unknown_teacher_lists_known_names():
    with pytest.raises(UserError, match="known: efficientnet_lite0, dinov2_vits"):
        teachers.resolve_spec("dinov3_huge")


def test_efficientnet_lite0_loads_bundled_weights_one_to_one():
    teacher = teachers.create_teacher("efficientnet_lite0")
    assert teacher.feature_dim == 1280
    assert teacher.weights_source == "file:efficientnet-lite0-57934424.pth"
    assert teacher.preprocess.mean == (0.5, 0.5, 0.5) and teacher.preprocess.size == 224
    source = torch.load(teachers.default_lite0_weights(), weights_only=True)
    assert len(source) == 296
    converted = teachers.convert_lite0_state(source, _timm_lite0_state())
    assert len(converted) == 296
    own = teacher.model.state_dict()
    for key in own:
        assert torch.equal(own[key], converted[key]), key
    assert teacher(torch.zeros(2, 3, 64, 64)).shape == (2, 1280)


def _timm_lite0_state():
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()


def test_lite0_key_rules():
    assert teachers.lite0_key("_conv_stem.weight") == "conv_stem.weight"
    assert teachers.lite0_key("_blocks.0._project_conv.weight") == "blocks.0.0.conv_pw.weight"
    assert teachers.lite0_key("_blocks.3._expand_conv.weight") == "blocks.2.0.conv_pw.weight"
    assert teachers.lite0_key("_blocks.15._bn2.bias") == "blocks.6.0.bn3.bias"


def test_local_weights_file_round_trip(tmp_path):
    from safetensors.torch import save_file

    random_teacher = teachers.create_teacher("timm:test_vit", weights="random")
    state = {k: v.clone() + 0.5 for k, v in random_teacher.model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    loaded = teachers.create_teacher("timm:test_vit", weights=str(tmp_path / "w.safetensors"))
    assert loaded.identity()["weights_hash"] == teachers.state_dict_hash(state)
    assert loaded.identity()["weights_hash"] != random_teacher.identity()["weights_hash"]
    torch.save(state, tmp_path / "w.pth")
    assert teachers.create_teacher("timm:test_vit", weights=str(tmp_path / "w.pth")).identity() == loaded.identity() | {
        "weights": "file:w.pth"}


def test_hub_failure_is_one_line_with_the_fix(monkeypatch):
    import timm

    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(*args, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(UserError, match="--weights FILE") as info:
        teachers.create_teacher("dinov2_vits")
    assert "\n" not in str(info.value)


def test_open_clip_teacher_random_weights_gives_image_embedding():
    teacher = teachers.create_teacher("open_clip:ViT-B-32:openai", weights="random")
    assert teacher.feature_dim == 512
    assert teacher.preprocess.size == 224 and teacher.preprocess.interpolation == "bicubic"


@pytest.mark.parametrize("name", sorted(teachers.TEACHERS))
def test_registry_dims_match_the_libraries(name):
    """Every entry's documented D and input size agree with the library (built on the meta device)."""
    spec = teachers.TEACHERS[name]
    if spec.library == "open_clip":
        import open_clip

        cfg = open_clip.get_model_config(spec.model)
        assert (cfg["embed_dim"], cfg["vision_cfg"]["image_size"]) == (spec.feature_dim, spec.input_size)
        assert spec.pretrained in open_clip.list_pretrained_tags_by_model(spec.model)
        return
    import timm

    with torch.device("meta"):
        model = timm.create_model(spec.model, pretrained=False, num_classes=0)
    assert model.num_features == spec.feature_dim
    assert model.pretrained_cfg["input_size"][-1] == spec.input_size


@pytest.mark.skipif(teachers.hub_reachable(), reason="the model hub is reachable here")
@pytest.mark.parametrize("name", ["timm:test_vit", "open_clip:ViT-B-32:openai"])
def test_real_hub_path_fails_fast_offline(name):
    import time

    started = time.monotonic()
    with pytest.raises(UserError, match="from the model hub .*--weights FILE"):
        teachers.create_teacher(name)
    assert time.monotonic() - started < 30  # no minute of retries


class _Payload:
    """An object whose unpickling would run code: weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_in_weights_is_refused(tmp_path):
    torch.save({"weight": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="cannot read weights .* safely"):
        teachers.load_state_dict_file(tmp_path / "evil.pth")
