"""Teacher weights in the formats people have, built offline from random-weight models: each loads through
``--weights`` and gives the reference model's features; anything else fails with one line."""

import pytest
import torch
from safetensors.torch import save_file

from customkd.common.errors import UserError
from customkd.featcache import teacher_weights, teachers

TINY = {"num_classes": 0, "depth": 2}  # tiny variants of the registry architectures (same key layout)


def _random(model: str, **kwargs) -> torch.nn.Module:
    import timm

    torch.manual_seed(1)
    reference = timm.create_model(model, pretrained=False, **{**TINY, **kwargs}).eval()
    with torch.no_grad():  # non-trivial values everywhere (layer scales, biases, norms start at 0/1)
        for tensor in reference.state_dict().values():
            tensor.add_(torch.randn_like(tensor) * 0.02)
    return reference


def _features(model: torch.nn.Module, size: int) -> torch.Tensor:
    torch.manual_seed(2)
    with torch.no_grad():
        return model(torch.randn(2, 3, size, size))


def _meta_dinov2(state: dict, registers: bool) -> dict:
    """timm's DINOv2 state → Meta's original layout (what torch.hub / dl.fbaipublicfiles files hold)."""
    meta = {k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3") if "w12" in "".join(state) else k: v
            for k, v in state.items()}
    meta["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    if registers:  # timm folds the CLS position into cls_token and keeps registers apart
        meta["register_tokens"] = meta.pop("reg_token")
        meta["pos_embed"] = torch.cat([torch.zeros_like(state["cls_token"]), state["pos_embed"]], 1)
    return meta


@pytest.mark.parametrize("model", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"])
def test_meta_dinov2_checkpoint_loads_and_matches(tmp_path, model):
    reference = _random(model, img_size=56)
    path = tmp_path / "dinov2_pretrain.pth"
    torch.save(_meta_dinov2(reference.state_dict(), registers="reg4" in model), path)
    loaded, source = teacher_weights.create_timm_model("t", model, str(path), {**TINY, "img_size": 56})
    assert source == "file:dinov2_pretrain.pth"
    torch.testing.assert_close(_features(loaded.eval(), 56), _features(reference, 56), rtol=1e-5, atol=1e-5)


def test_meta_dinov2_giant_swiglu_names_load(tmp_path):
    """ViT-g's SwiGLU is saved by Meta as ``mlp.w12``/``mlp.w3``; timm's filter renames them."""
    kwargs = {"img_size": 56, "embed_dim": 48, "num_heads": 2}
    reference = _random("vit_giant_patch14_dinov2", **kwargs)
    meta = {k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3"): v for k, v in reference.state_dict().items()}
    torch.save({**meta, "mask_token": torch.zeros(1, 48)}, tmp_path / "g.pth")
    assert any(".w12." in k for k in meta)
    loaded, _ = teacher_weights.create_timm_model("t", "vit_giant_patch14_dinov2", str(tmp_path / "g.pth"),
                                                  {**TINY, **kwargs})
    torch.testing.assert_close(_features(loaded.eval(), 56), _features(reference, 56), rtol=1e-5, atol=1e-5)


def test_meta_dinov3_checkpoint_loads_and_matches(tmp_path):
    reference = _random("vit_small_patch16_dinov3", img_size=64)
    meta = {k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma"): v
            for k, v in reference.state_dict().items()}
    meta.update({"mask_token": torch.zeros(1, 384), "rope_embed.periods": torch.ones(16)})
    meta.update({f"blocks.{i}.attn.qkv.bias": torch.zeros(3 * 384) for i in range(2)})  # all zero in the release
    save_file(meta, str(tmp_path / "dinov3.safetensors"))
    loaded, _ = teacher_weights.create_timm_model("t", "vit_small_patch16_dinov3", str(tmp_path / "dinov3.safetensors"),
                                                  {**TINY, "img_size": 64})
    torch.testing.assert_close(_features(loaded.eval(), 64), _features(reference, 64), rtol=1e-5, atol=1e-5)


def test_registry_teacher_meta_registers_file_equals_timm_file(tmp_path):
    """dinov2_vits_reg at its default 224 px: Meta's 518-px file (registers) and timm's own file give the same teacher,
    position embeddings resampled from 37x37 to 16x16 by timm."""
    import timm

    torch.manual_seed(3)
    native = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0)  # 518 px
    save_file(native.state_dict(), str(tmp_path / "timm.safetensors"))
    torch.save(_meta_dinov2(native.state_dict(), registers=True), tmp_path / "meta.pth")
    from_meta = teachers.create_teacher("dinov2_vits_reg", weights=str(tmp_path / "meta.pth"))
    from_timm = teachers.create_teacher("dinov2_vits_reg", weights=str(tmp_path / "timm.safetensors"))
    assert from_meta.preprocess.size == 224 and from_meta.model.pos_embed.shape[1] == 16 * 16
    assert from_meta.identity()["weights_hash"] == from_timm.identity()["weights_hash"]
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(from_meta(images), from_timm(images))


def test_timm_file_saved_at_224_loads_at_any_size(tmp_path):
    import timm

    torch.manual_seed(4)
    small = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=224).eval()
    save_file(small.state_dict(), str(tmp_path / "dinov2_224.safetensors"))
    teacher = teachers.create_teacher("dinov2_vits", weights=str(tmp_path / "dinov2_224.safetensors"))
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(teacher(images), small(images))
    bigger = teachers.create_teacher("dinov2_vits", weights=str(tmp_path / "dinov2_224.safetensors"), size=280)
    assert bigger.model.pos_embed.shape[1] == 1 + 20 * 20 and bigger.identity()["size"] == 280


def test_hugging_face_dinov2_folder_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(hidden_size=384, num_hidden_layers=2, num_attention_heads=6,
                                       intermediate_size=1536, image_size=56, patch_size=14, layerscale_value=0.5)
    torch.manual_seed(5)
    hf = transformers.Dinov2Model(config).eval()
    hf.save_pretrained(tmp_path / "dinov2-hf")
    loaded, source = teacher_weights.create_timm_model("t", "vit_small_patch14_dinov2", str(tmp_path / "dinov2-hf"),
                                                       {**TINY, "img_size": 56})
    assert source == "file:dinov2-hf"
    torch.manual_seed(2)
    images = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        expected = hf(pixel_values=images).pooler_output  # final layernorm, CLS token
        torch.testing.assert_close(loaded.eval()(images), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(UserError, match="holds no model.safetensors or pytorch_model.bin"):
        teacher_weights.read_weights(str(tmp_path))


def _open_clip(arch: str, **kwargs):
    import open_clip

    torch.manual_seed(6)
    with teacher_weights._without_random_init_warning():
        return open_clip.create_model(arch, pretrained=None, **kwargs).eval()


@pytest.mark.parametrize("form", ["full", "visual", "bare"])
def test_open_clip_dicts_load_full_or_visual_only(tmp_path, form):
    reference = _open_clip("ViT-B-32")
    state = reference.state_dict()
    state = {"full": state, "visual": {k: v for k, v in state.items() if k.startswith("visual.")},
             "bare": reference.visual.state_dict()}[form]
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "clip.safetensors"))
    teacher = teachers.create_teacher("open_clip:ViT-B-32:openai", weights=str(tmp_path / "clip.safetensors"))
    assert teacher.weights_source == "file:clip.safetensors" and teacher.feature_dim == 512
    assert set(teacher.model.state_dict()) == set(reference.visual.state_dict())  # the text tower is dropped
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(teacher(images), reference.encode_image(images))


def test_open_clip_file_loads_at_another_size(tmp_path):
    reference = _open_clip("ViT-B-32")
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    teacher = teachers.create_teacher("open_clip:ViT-B-32:openai", weights=str(tmp_path / "clip.safetensors"), size=160)
    assert teacher.preprocess.size == 160 and teacher.identity()["size"] == 160
    assert teacher(torch.randn(1, 3, 160, 160)).shape == (1, 512)


def test_wrong_file_fails_in_one_line_naming_the_tensor(tmp_path):
    import timm

    other = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, depth=1)
    save_file(other.state_dict(), str(tmp_path / "vitb.safetensors"))
    with pytest.raises(UserError) as info:
        teacher_weights.create_timm_model("dinov2_vits", "vit_small_patch14_dinov2", str(tmp_path / "vitb.safetensors"),
                                          {**TINY, "img_size": 56})
    message = str(info.value)
    assert "\n" not in message and "do not fit teacher 'dinov2_vits'" in message
    assert "shape of cls_token differs" in message or "tensor blocks.1." in message or "missing" in message
    assert "Meta's original" in message
    save_file({"text_projection": torch.zeros(3, 3)}, str(tmp_path / "text.safetensors"))
    with pytest.raises(UserError, match=r"do not fit teacher .*: tensor \S+ missing; expected .*OpenCLIP"):
        teachers.create_teacher("open_clip:ViT-B-32:openai", weights=str(tmp_path / "text.safetensors"))


@pytest.mark.skipif(teachers.hub_reachable(), reason="the model hub is reachable here")
@pytest.mark.parametrize("name", sorted(n for n, s in teachers.TEACHERS.items() if s.library == "open_clip"))
def test_open_clip_hub_errors_name_the_file(name):
    spec = teachers.TEACHERS[name]
    with pytest.raises(UserError, match=r"download https://huggingface\.co/\S+/resolve/main/\S+ .*--weights FILE"):
        teacher_weights._open_clip_file(name, spec.model, spec.pretrained)


@pytest.mark.parametrize("name", sorted(n for n, s in teachers.TEACHERS.items() if s.library == "timm"))
def test_timm_hub_sources_name_the_file(name):
    source = teacher_weights._hub_source(teachers.TEACHERS[name].model)
    assert source.startswith("https://huggingface.co/timm/") and source.split(" ")[0].endswith("/model.safetensors")
