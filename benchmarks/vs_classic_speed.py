"""aeflow against the classical tools a user already has, in megapixels per second, as a user runs both:
whole `aeflow compress` / `decompress` / `restore --task denoise` command lines (Ray's start and the actors'
imports included) against Pillow WebP encode (q75, method 4), WebP decode + PNG write, and CBM3D (PyPI bm3d,
given the true sigma), each of those in one process per core. One run, the same photos for both sides:
distinct crops of scikit-image's photos (never trained on) saved as JPEG q92, about 0.13 MP each.

Prints JSON; with --results FILE, also rewrites the table between the vs_classic_speed markers in FILE.
Usage: python benchmarks/vs_classic_speed.py [--photos 1500] [--denoise-photos 8] [--variants]
  [--results benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from aeflow.samples import photo_crops

SIZE = (448, 300)  # width, height: 0.134 MP
SIGMA = 25.0
MARK = "vs_classic_speed"


def write_photos(folder: Path, n: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, arr in enumerate(photo_crops(n, *SIZE, start=start)):
        path = folder / f"{(start + i) // 100:03d}" / f"photo{start + i:05d}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(arr).save(path, quality=92)
        paths.append(path)
    return paths


def aeflow_cli(*args: str) -> float:
    """Wall seconds of one aeflow command line, run as a user runs it."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "aeflow.cli", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _webp_encode(job: tuple[str, str]) -> None:
    src, dst = job
    with Image.open(src) as im:
        im.convert("RGB").save(dst, "WEBP", quality=75, method=4)


def _webp_decode(job: tuple[str, str]) -> None:
    src, dst = job
    with Image.open(src) as im:
        im.convert("RGB").save(dst, "PNG")


def _cbm3d(job: tuple[str, str]) -> None:
    import bm3d

    src, dst = job
    noisy = np.asarray(Image.open(src).convert("RGB"), np.float64) / 255
    out = bm3d.bm3d_rgb(noisy, SIGMA / 255)
    Image.fromarray(np.clip(np.round(out * 255), 0, 255).astype(np.uint8)).save(dst)


def per_core(fn, jobs: list[tuple[str, str]]) -> float:
    """Wall seconds of fn over jobs in one process per core (the processes' start included)."""
    t0 = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(fn, jobs, chunksize=max(1, len(jobs) // (8 * (os.cpu_count() or 1)))))
    return time.perf_counter() - t0


def noisy_copies(paths: list[Path], folder: Path) -> list[Path]:
    """Each photo with sigma-25 Gaussian noise (seeded), as 8-bit PNG."""
    rng = np.random.default_rng(0)
    out = []
    for p in paths:
        arr = np.asarray(Image.open(p).convert("RGB"), np.float64)
        noisy = np.clip(np.round(arr + rng.normal(0, SIGMA, arr.shape)), 0, 255).astype(np.uint8)
        dst = folder / p.relative_to(p.parents[1]).with_suffix(".png")
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy).save(dst)
        out.append(dst)
    return out


def table(result: dict) -> str:
    rows = result["rows"]
    lines = [f"`python benchmarks/vs_classic_speed.py{result['args']}`, {result['date']}, commit `{result['commit']}`, "
             f"{result['machine']}. {result['photos']} JPEG q92 photos ({result['megapixels']:.1f} MP) for the codec, "
             f"{result['denoise_photos']} ({result['denoise_megapixels']:.2f} MP) with sigma-25 noise for denoising.",
             "", "| aeflow command | aeflow MP/s | classical tool | its MP/s | ratio |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['aeflow']}` | {r['aeflow_mp_s']:.3f} | {r['classic']} | {r['classic_mp_s']:.3f} | "
                     f"**{r['ratio']:.2f}x** |")
    return "\n".join(lines)


def update_results(path: str, text: str) -> None:
    doc = Path(path).read_text()
    start, end = f"<!-- {MARK} -->", f"<!-- /{MARK} -->"
    if start not in doc:
        raise SystemExit(f"{path}: no {start} ... {end} markers to put the table between")
    head, rest = doc.split(start, 1)
    _, tail = rest.split(end, 1)
    Path(path).write_text(f"{head}{start}\n{text}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=1500)
    parser.add_argument("--denoise-photos", type=int, default=8)
    parser.add_argument("--variants", action="store_true",
                        help="also compress with --precision fp32 and --compile, decompress with --fast-decode "
                             "and --compile")
    parser.add_argument("--results", default="", help="a markdown file whose vs_classic_speed table to rewrite")
    parser.add_argument("--work", default="")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="aeflow-speed-"))
    photos = write_photos(work / "photos", args.photos)
    mp = args.photos * SIZE[0] * SIZE[1] / 1e6
    denoise = noisy_copies(photos[: args.denoise_photos], work / "noisy")
    dmp = len(denoise) * SIZE[0] * SIZE[1] / 1e6

    webp_enc = per_core(_webp_encode, [(str(p), str(p.with_suffix(".webp"))) for p in photos])
    webp_dec = per_core(_webp_decode, [(str(p.with_suffix(".webp")), str(p.with_suffix(".dec.png"))) for p in photos])
    for p in photos:  # the classical outputs are not the codec's input
        p.with_suffix(".webp").unlink()
        p.with_suffix(".dec.png").unlink()
    cbm3d = per_core(_cbm3d, [(str(p), str(p.with_suffix(".cbm3d.png"))) for p in denoise])
    for p in denoise:
        p.with_suffix(".cbm3d.png").unlink()

    rows = []

    def run_compress(*flags: str) -> None:
        out = work / ("latents" + "".join(flags).replace("-", "_"))
        seconds = aeflow_cli("compress", "--input", str(work / "photos"), "--output", str(out), *flags)
        rows.append({"aeflow": " ".join(["aeflow compress", *flags]), "aeflow_mp_s": mp / seconds,
                     "classic": "Pillow WebP encode (q75, method 4)", "classic_mp_s": mp / webp_enc})

    def run_decompress(*flags: str) -> None:
        seconds = aeflow_cli("decompress", "--input", str(work / "latents"), "--output",
                             str(work / ("decoded" + "".join(flags).replace("-", "_"))), *flags)
        rows.append({"aeflow": " ".join(["aeflow decompress", *flags]), "aeflow_mp_s": mp / seconds,
                     "classic": "Pillow WebP decode + PNG write", "classic_mp_s": mp / webp_dec})

    run_compress()
    run_decompress()
    if args.variants:
        run_compress("--precision", "fp32")
        run_compress("--compile")
        run_decompress("--fast-decode")
        run_decompress("--compile")
        run_decompress("--fast-decode", "--compile")
    seconds = aeflow_cli("restore", "--input", str(work / "noisy"), "--output", str(work / "denoised"),
                         "--task", "denoise")
    rows.append({"aeflow": "aeflow restore --task denoise", "aeflow_mp_s": dmp / seconds,
                 "classic": "CBM3D (bm3d 4, true sigma)", "classic_mp_s": dmp / cbm3d})
    for r in rows:
        r["ratio"] = r["aeflow_mp_s"] / r["classic_mp_s"]
        r["aeflow_mp_s"], r["classic_mp_s"], r["ratio"] = (round(r[k], 3) for k in ("aeflow_mp_s", "classic_mp_s",
                                                                                    "ratio"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"),
              "commit": commit, "photos": args.photos, "megapixels": round(mp, 2),
              "denoise_photos": len(denoise), "denoise_megapixels": round(dmp, 3),
              "args": " --variants" if args.variants else "", "rows": rows, "work": str(work)}
    print(json.dumps(result, indent=1))
    if args.results:
        update_results(args.results, table(result))


if __name__ == "__main__":
    main()
