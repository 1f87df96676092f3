"""Real components for the tests: a local Ray, a moto S3 server on 127.0.0.1, real photos."""

from __future__ import annotations

import io
import os
import socket
import tempfile
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_outside_rays_ranges() -> int:
    """A free port in 20000-30000: below the kernel's ephemeral range (where Ray's own random ports
    land) and above Ray's worker ports (10002-19999), so Ray cannot take it before moto binds it."""
    import random

    for port in random.Random(os.getpid()).sample(range(20000, 30000), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port for the S3 test server")


# Set before Ray starts, so that every Ray worker inherits the same S3 endpoint and dummy keys.
S3_PORT = _port_outside_rays_ranges()
os.environ.update({
    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
})


class LocalRay:
    """The tests' own Ray; its session folder records every actor it started."""

    def __init__(self, temp_dir: str):
        self.temp_dir = temp_dir

    def actors_started(self, class_name: str) -> int:
        """Actors of a class this Ray has started so far, alive or not: each actor's worker writes an
        ":actor_name:<class>" line to its log file in the session folder when the actor is created."""
        logs = Path(self.temp_dir, "session_latest", "logs")
        return sum(f.read_text(errors="replace").count(f":actor_name:{class_name}\n")
                   for f in logs.glob("worker-*.out"))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session, 2 CPUs as on CI, in its own temp dir."""
    import ray

    temp = tempfile.mkdtemp(prefix="aer", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", _temp_dir=temp)
    yield LocalRay(temp)
    ray.shutdown()


class S3Server:
    """moto's S3 server on loopback; stop() and start() take the endpoint away and bring it back
    (moto keeps its buckets in this process, so they survive)."""

    def __init__(self, port: int):
        self.port, self.url, self.server = port, f"http://127.0.0.1:{port}", None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 endpoint (moto's server) on loopback, for the whole session."""
    server = S3Server(S3_PORT)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server):
    """An s3fs filesystem on the moto server, with a fresh 'photos' bucket; state reset after."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_server.url, skip_instance_cache=True)
    fs.mkdir("photos")
    yield fs
    urllib.request.urlopen(urllib.request.Request(f"{s3_server.url}/moto-api/reset", method="POST")).read()


def _crop(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    y = (arr.shape[0] - h) // 2
    x = (arr.shape[1] - w) // 2
    return np.ascontiguousarray(arr[y:y + h, x:x + w])


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real photos bundled with scikit-image (never used in training), cropped small for speed;
    odd sizes on purpose (not multiples of the codec's stride)."""
    import skimage.data

    return {
        "astronaut": _crop(skimage.data.astronaut(), 120, 160),
        "chelsea": _crop(skimage.data.chelsea(), 100, 130),
        "coffee": _crop(skimage.data.coffee(), 97, 141),
    }


def encoded(arr: np.ndarray, fmt: str = "PNG", **save) -> bytes:
    """An image file's bytes (Pillow; the mode follows the array: RGB, RGBA, L, 16-bit grey)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **save)
    return buf.getvalue()


FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".webp": "WEBP"}


def write_photos(folder: Path, photos: Mapping[str, np.ndarray], **save) -> Path:
    """Save each name -> pixels of `photos` under folder, in the format its extension names (.png when it
    has none); names may hold subfolders. Returns the folder."""
    folder = Path(folder)
    for name, arr in photos.items():
        path = folder / (name if Path(name).suffix.lower() in FORMATS else f"{name}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encoded(arr, FORMATS[path.suffix.lower()], **save))
    return folder


def many_photos(n: int, size: int) -> dict[str, np.ndarray]:
    """n distinct size x size real-photo crops, ten to a folder: batch0/img000.png ..."""
    from aeflow.samples import photo_crops

    return {f"batch{i // 10}/img{i:03d}.png": arr for i, arr in enumerate(photo_crops(n, size, size))}


# The shipped codec's round trip on the test photos (measured: 21.6-27 dB) must beat this; an untrained
# codec gives about 7 dB and a flat mean-colour image about 11 dB, so a broken model misses it.
CODEC_PSNR_FLOOR = 20.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    from aeflow.metrics import psnr as _psnr

    return _psnr(a, b)


@pytest.fixture(scope="session")
def tiny_codec(tmp_path_factory):
    """A small random codec with two levels, factorized priors at the first and a hyperprior at the top one
    (the layout of older releases), saved and loaded as shipped."""
    import torch

    from aeflow import modelstore
    from aeflow.models import ConvAutoencoder, ConvAutoencoderConfig

    torch.manual_seed(0)
    model = ConvAutoencoder(ConvAutoencoderConfig(channels=8, latent_channels=8, lambdas=(0.01, 0.05),
                                                  hyperprior=True))
    folder = str(tmp_path_factory.mktemp("tiny-codec") / "codec")
    modelstore.save_model(model, folder)
    return modelstore.load_model(folder)
