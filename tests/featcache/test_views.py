import numpy as np
from PIL import Image

from featcache.views import VIEW_PARAMS, ViewRecipe, centre_view, draw_views, replay, replay_pil, view_seed


def _image() -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8))


def test_view_seed_depends_only_on_seed_sample_view():
    assert view_seed(0, 123, 1) == view_seed(0, 123, 1)
    assert len({view_seed(0, 123, 1), view_seed(1, 123, 1), view_seed(0, 124, 1), view_seed(0, 123, 2)}) == 4


def test_draw_views_is_deterministic_and_view0_is_centre():
    recipe = ViewRecipe(color_jitter=0.4)
    a = draw_views(80, 60, 42, 5, recipe, base_seed=7)
    b = draw_views(80, 60, 42, 5, recipe, base_seed=7)
    assert a.shape == (5, len(VIEW_PARAMS))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[0], centre_view(80, 60, recipe))
    assert not np.array_equal(a[1], a[2])
    # a later view does not change when more views are drawn (no shared RNG stream)
    np.testing.assert_array_equal(draw_views(80, 60, 42, 3, recipe, 7), a[:3])
    assert ((a[:, :4] >= 0) & (a[:, :4] <= 1)).all()


def test_centre_view_is_centred_square():
    x0, y0, x1, y1 = centre_view(80, 60, ViewRecipe(centre_crop=0.5))[:4]
    assert np.isclose((x1 - x0) * 80, 30) and np.isclose((y1 - y0) * 60, 30)
    assert np.isclose(x0 + x1, 1) and np.isclose(y0 + y1, 1)


def test_replay_same_params_same_pixels_at_each_resolution():
    params = draw_views(80, 60, 9, 3, ViewRecipe(color_jitter=0.3), 0)[2]
    mean, std = (0.5,) * 3, (0.5,) * 3
    first = replay(_image(), params, 32, mean, std, "bicubic")
    second = replay(_image(), params, 32, mean, std, "bicubic")
    assert first.shape == (3, 32, 32)
    assert (first == second).all()
    assert replay(_image(), params, 16, mean, std).shape == (3, 16, 16)


def test_flip_is_computed_from_pixels():
    params = centre_view(80, 60, ViewRecipe())
    flipped = params.copy()
    flipped[4] = 1.0
    plain = np.asarray(replay_pil(_image(), params, 24, "bilinear"))
    mirrored = np.asarray(replay_pil(_image(), flipped, 24, "bilinear"))
    np.testing.assert_array_equal(mirrored, plain[:, ::-1])
