"""Which codec width to train next: each width, grown from the same codec, trained for the same CPU time on
the training photos less a validation split, then scored on that split. Prints JSON.

Every arm is one `aeflow train --no-ray` run from --init (a wider arm is grown from it, so all start from
the same pictures), stopped at the first epoch boundary past --minutes of wall time on an otherwise idle
machine; its CPU seconds are read from the process's resource usage. The validation split is every 11th
photo of --data in name order: held out of every arm, never the reserved evaluation sources. The score is
each validation photo's BD-PSNR against the --init codec over 0.25-1.0 bpp, averaged (positive = better);
beside it, each arm's encode and decode seconds per megapixel, since a wider codec costs its users too.

    python benchmarks/codec_width.py --data ~/aeflow-runs/corpus-v2 --init codec-default \\
        --work ~/aeflow-runs/width --minutes 12 --widths 64 96 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

from aeflow import images, modelstore
from aeflow.evaluate import evaluate_image
from aeflow.metrics import bd_psnr

STEPS_PER_EPOCH = 50  # an arm stops at an epoch boundary: the budget's granularity
RECIPE = ["--batch-size", "8", "--crop", "256", "--scale-min", "0.5", "--lr", "2e-4", "--cooldown", "0",
          "--ema", "0.995", "--warmup", "200", "--compile", "--threads", "2", "--steps-per-epoch", str(STEPS_PER_EPOCH)]


def split(data: str, work: str) -> tuple[str, str]:
    """Copies of the photos: every 11th (by name) to val/, the rest to train/."""
    train, val = os.path.join(work, "train"), os.path.join(work, "val")
    if not os.path.isdir(val):
        names = sorted(n for n in os.listdir(data) if n.lower().endswith((".jpg", ".jpeg", ".png", ".webp")))
        for d in (train, val):
            os.makedirs(d, exist_ok=True)
        for i, name in enumerate(names):
            shutil.copy(os.path.join(data, name), os.path.join(val if i % 11 == 0 else train, name))
    return train, val


def train_arm(width: int, init: str, train: str, work: str, minutes: float) -> dict:
    """One arm: train until the epoch that ends past the budget, then export its averaged weights. An arm
    already measured in this --work folder is read back rather than trained again."""
    out, name = os.path.join(work, f"w{width}"), f"w{width}"
    record = os.path.join(work, f"{name}.json")
    if os.path.exists(record):
        with open(record) as f:
            return json.load(f)
    base = [sys.executable, "-m", "aeflow.cli", "train", "--task", "codec", "--data", train, "--out", out,
            "--storage", os.path.join(work, "ckpt"), "--name", name, "--init", init, "--no-ray",
            "--channels", str(width), *RECIPE]
    log = open(os.path.join(work, f"{name}.log"), "w", buffering=1)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.Popen([*base, "--epochs", "100000"], stdout=subprocess.PIPE, stderr=log, text=True)
    epochs = 0
    for line in proc.stdout:
        log.write(line)
        if line.startswith("{"):
            epochs = json.loads(line)["epoch"]
            if time.time() - t0 + json.loads(line)["seconds"] > minutes * 60:
                break
    proc.terminate()
    proc.wait()
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    subprocess.run([*base, "--epochs", str(epochs)], check=True, stdout=log, stderr=log)  # writes --out
    steps = epochs * STEPS_PER_EPOCH
    arm = {"width": width, "model": out, "steps": steps, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "cpu_s_per_step": round(cpu / max(steps, 1), 3),
            "fp16_mb": round(os.path.getsize(os.path.join(out, "model.safetensors")) / 1e6, 2)}
    with open(record, "w") as f:
        json.dump(arm, f)
    return arm


def rd_curves(model: str, folder: str) -> dict:
    """Per photo, (bpp, PSNR) at every level and BD-PSNR vs WebP (0.25-1.0 bpp); encode and decode s/MP."""
    loaded = modelstore.load_model(model)
    ours, vs_webp, enc_s, dec_s, pixels = [], [], 0.0, 0.0, 0.0
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            arr = images.decode_picture(f.read()).rgb
        r = evaluate_image(loaded, arr, formats=("WEBP",), with_ms_ssim=False)
        ours.append([(lv["bpp"], lv["psnr"]) for lv in r["levels"]])
        vs_webp.append(r["bd_psnr_vs_webp"])
        enc_s += sum(lv["encode_s"] for lv in r["levels"])
        dec_s += sum(lv["decode_s"] for lv in r["levels"])
        pixels += arr.shape[0] * arr.shape[1] * len(r["levels"]) / 1e6
    return {"ours": ours, "bd_psnr_vs_webp": float(np.nanmean(vs_webp)),
            "encode_s_per_megapixel": enc_s / pixels, "decode_s_per_megapixel": dec_s / pixels}


def mean_bd(anchors: list, tests: list) -> tuple[float, list[float]]:
    """Per-photo BD-PSNR of `tests` over `anchors` (0.25-1.0 bpp), and its mean."""
    gains = [bd_psnr(*zip(*a), *zip(*t)) for a, t in zip(anchors, tests)]
    return float(np.nanmean(gains)), gains


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="the training photos (a folder)")
    parser.add_argument("--init", default="codec-default")
    parser.add_argument("--work", required=True)
    parser.add_argument("--minutes", type=float, default=12.0, help="wall time per arm")
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 96, 128])
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    train, val = split(args.data, args.work)
    base = rd_curves(args.init, val)
    arms = []
    for width in args.widths:
        arm = train_arm(width, args.init, train, args.work, args.minutes)
        curves = rd_curves(arm["model"], val)
        vs_init, per_image = mean_bd(base["ours"], curves["ours"])
        arm.update({"bd_psnr_vs_init_0.25_1.0_bpp": round(vs_init, 3),
                    "bd_psnr_vs_init_per_image": [round(g, 3) for g in per_image],
                    "bd_psnr_vs_webp_0.25_1.0_bpp": round(curves["bd_psnr_vs_webp"], 3),
                    "encode_s_per_megapixel": round(curves["encode_s_per_megapixel"], 4),
                    "decode_s_per_megapixel": round(curves["decode_s_per_megapixel"], 4)})
        arms.append(arm)
        print(json.dumps(arm), file=sys.stderr, flush=True)
    print(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "init": modelstore.load_model(args.init).fingerprint,
        "train_photos": len(os.listdir(train)), "validation_photos": len(os.listdir(val)), "minutes": args.minutes,
        "recipe": " ".join(RECIPE),
        "init_bd_psnr_vs_webp_0.25_1.0_bpp": round(base["bd_psnr_vs_webp"], 3),
        "init_encode_s_per_megapixel": round(base["encode_s_per_megapixel"], 4),
        "init_decode_s_per_megapixel": round(base["decode_s_per_megapixel"], 4),
        "arms": arms}, indent=1))


if __name__ == "__main__":
    main()
