import numpy as np
import torch

from aeflow import metrics, modelstore
from aeflow.models.restorer import with_noise_map
from aeflow.tiling import tiled


def _restore(model, arr, tile=None):
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255
    if model.config.noise_map:  # the shipped denoiser also takes the noise level
        x = with_noise_map(x, 25.0)
    x = x.contiguous(memory_format=torch.channels_last)  # the layout tiled() runs models in
    y = model(x) if tile is None else tiled(model, x, tile=tile)
    return y[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()


def test_tiled_restore_matches_whole_image_without_seams(photos):
    import skimage.data

    model = modelstore.load_model("denoise-default").module
    clean = skimage.data.coffee()[:301, :433]  # odd sizes, several tiles each way
    noisy = np.clip(np.round(clean + np.random.default_rng(1).normal(0, 25, clean.shape)), 0, 255).astype(np.uint8)
    whole = _restore(model, noisy)
    parts = _restore(model, noisy, tile=128)
    assert abs(metrics.psnr(clean, whole) - metrics.psnr(clean, parts)) < 0.05
    assert np.abs(whole.astype(int) - parts).max() <= 4
    assert metrics.psnr(whole, parts) > 55


def test_image_smaller_than_a_tile_is_passed_whole(photos):
    model = modelstore.load_model("denoise-default").module
    arr = photos["coffee"]  # 97 x 141
    np.testing.assert_array_equal(_restore(model, arr), _restore(model, arr, tile=512))
