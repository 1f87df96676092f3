"""SHA-256 of every bitstream and decoded image that the shipped codecs give two held-out photos at every
level, one thread, plus one stream with alpha, an ICC profile and --target-bpp: run it before and after a change
to the codec's code and compare the two files (`cmp`) to show the change kept every byte and pixel.
Usage: python benchmarks/codec_hashes.py OUT.json
"""

import hashlib
import json
import sys

import numpy as np
import skimage.data
import torch

from aeflow import codec, modelstore


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main() -> None:
    torch.set_num_threads(1)
    photos = {"astronaut": skimage.data.astronaut(), "coffee": skimage.data.coffee()}
    codecs = sorted(name for name in modelstore.shipped_fingerprints().values() if name.startswith("codec-"))
    out = {}
    for name in codecs:
        loaded = modelstore.load_model(name)
        tables = codec.tables_of(loaded)
        out[f"{name}.hyper_levels"] = sorted(tables.hyper_levels)
        for photo, arr in photos.items():
            for q in range(1, tables.levels + 1):
                bits = codec.encode_images(loaded, [arr], quality=q)[0]
                rgb = codec.decode_bitstream(loaded, bits).rgb
                out[f"{name}/{photo}/q{q}"] = {"stream": sha(bits), "bytes": len(bits),
                                               "rgb": sha(np.ascontiguousarray(rgb).tobytes())}
        arr = photos["coffee"][:200, :300]
        alpha = (np.arange(200 * 300) % 251).astype(np.uint8).reshape(200, 300)
        bits = codec.encode_images(loaded, [arr], target_bpp=0.5, modes=["RGBA"], alphas=[alpha], iccs=[b"icc!"])[0]
        dec = codec.decode_bitstream(loaded, bits)
        out[f"{name}/alpha-icc-target-bpp"] = {"stream": sha(bits), "level": dec.level, "rgb": sha(dec.rgb.tobytes()),
                                               "alpha_exact": bool((dec.alpha == alpha).all())}
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
    print(f"{len(out)} entries for {', '.join(codecs)} -> {sys.argv[1]}")


if __name__ == "__main__":
    main()
