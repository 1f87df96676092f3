"""Rebuild the training corpus from installable packages, recording each photo's source and license.

Only the packages that ../shared/TRAINING.md allows for training are used; the photos that the demo,
the tests and evaluation use (scikit-image's colour photos, OpenCV's samples, ukui and lomiri 20.04
wallpapers) are kept out. Run: `python -m aeflow.corpus corpus/` (needs apt-get, Debian's packages).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PACKAGES = {
    # package: (folder inside the .deb, glob of photos, copyright path prefix to strip)
    "lomiri-wallpapers-16.04": ("usr/share/backgrounds", "*_by_*.jpg", "16.04/"),
    "mate-backgrounds": ("usr/share/backgrounds/mate", "nature/*.jpg", ""),
    "plasma-workspace-wallpapers": ("usr/share/wallpapers", "*/contents/images/*.jpg", ""),
}
EXTRA_MATE = ["abstract/Elephants.jpg"]
SKIMAGE_TEXTURES = {  # name: license, from each function's docstring in skimage.data
    "brick": "CC0-1.0", "grass": "CC0-1.0", "gravel": "CC0-1.0", "text": "public domain",
    "page": "shipped with scikit-image (BSD-3-Clause); no separate license stated",
}
SHORT_SIDE = 768


def _licenses(copyright_file: Path) -> list[tuple[list[str], str, str]]:
    """Parse a Debian DEP-5 copyright file into (globs, license, copyright holder) paragraphs."""
    out = []
    for para in copyright_file.read_text(errors="replace").split("\n\n"):
        files, lic, holder, key = [], "", "", ""
        for line in para.splitlines():
            if line.startswith("Files:"):
                key = "files"
                files += line[6:].split()
            elif line.startswith("License:"):
                key, lic = "", line[8:].strip()
            elif line.startswith("Copyright:"):
                key, holder = "", line[10:].strip()
            elif line.startswith((" ", "\t")) and key == "files":
                files += line.split()
            else:
                key = ""
        if files:
            out.append((files, lic, holder))
    return out


def _license_for(rel: str, paras: list[tuple[list[str], str, str]]) -> tuple[str, str]:
    found = ("unknown", "")
    for globs, lic, holder in paras:  # DEP-5: the last matching paragraph wins
        if any(fnmatch.fnmatch(rel, g) for g in globs):
            found = (lic, holder)
    return found


def _save(img: Image.Image, dest: Path) -> tuple[int, int]:
    img = img.convert("RGB")
    scale = SHORT_SIDE / min(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    img.save(dest, quality=95)
    return img.size


def build_corpus(out_dir: str | Path) -> list[dict]:
    """Download the packages, extract their photos at 768 px short side (JPEG q95), write SOURCES.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        for package, (root, pattern, strip) in PACKAGES.items():
            subprocess.run(["apt-get", "download", package], cwd=tmp, check=True, capture_output=True)
            deb = next(tmp_path.glob(f"{package}_*.deb"))
            tree = tmp_path / package
            subprocess.run(["dpkg", "-x", str(deb), str(tree)], check=True)
            paras = _licenses(tree / "usr/share/doc" / package / "copyright")
            base = tree / root
            files = sorted(base.glob(pattern))
            if package == "mate-backgrounds":
                files += [base / p for p in EXTRA_MATE]
            if package == "plasma-workspace-wallpapers":  # the largest JPEG of each wallpaper
                best: dict[str, Path] = {}
                for f in files:
                    name = f.parts[len(base.parts)]
                    if name not in best or f.stat().st_size > best[name].stat().st_size:
                        best[name] = f
                files = sorted(best.values())
            for f in files:
                rel = str(f.relative_to(base))
                lic, holder = _license_for(strip + rel, paras)
                name = f"{package}--{rel.replace('/', '_')}"
                size = _save(Image.open(f), out / name)
                records.append({"file": name, "package": package, "original": f"/{root}/{rel}",
                                "license": lic, "copyright": holder, "size": list(size)})
    import skimage.data

    for tex, lic in SKIMAGE_TEXTURES.items():
        arr = np.asarray(getattr(skimage.data, tex)())
        name = f"scikit-image--{tex}.jpg"
        size = _save(Image.fromarray(arr), out / name)
        records.append({"file": name, "package": "scikit-image", "original": f"skimage.data.{tex}()",
                        "license": lic,
                        "copyright": "scikit-image contributors", "size": list(size)})
    (out / "SOURCES.json").write_text(json.dumps(records, indent=1))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    args = parser.parse_args()
    records = build_corpus(args.out_dir)
    print(f"{len(records)} photos in {args.out_dir}")


if __name__ == "__main__":
    main()
