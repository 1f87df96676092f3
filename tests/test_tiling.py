import numpy as np
import torch

from aeflow import images, metrics, modelstore, restoration


def _restore(model, arr, tile=None):
    """The shipped denoiser told sigma 25: as the restore actor runs it (in fp32 here: this is about tiles, not
    precision), or with tile=None the model called once on the whole image (in the layout tiled() runs it in)."""
    x = images.to_tensor(arr)[None]
    if tile is not None:
        return images.to_uint8(restoration.restore(model, x, 25.0, tile=tile, bf16=False)[0])
    with torch.inference_mode():
        y = model(restoration.model_input(model, x, 25.0).contiguous(memory_format=torch.channels_last))
    return images.to_uint8(y[0])


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
