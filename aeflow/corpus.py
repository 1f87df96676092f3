"""Rebuild the training corpus from installable packages, recording each photo's source and license.

Only the packages that ../shared/TRAINING.md allows for training are used; the photos that the demo,
the tests and evaluation use (scikit-image's colour photos, OpenCV's samples, ukui and lomiri 20.04
wallpapers) are kept out. Run: `python -m aeflow.corpus corpus/` (needs apt-get, Debian's packages).

Sources: wallpapers (lomiri 16.04, MATE, Plasma), Palapeli's puzzle photos, the photos in three
Scribus templates and digiKam's about page, Tux Paint's photo templates, GNOME Taquin's cats, the phone
photos of forensics-samples-files, GCompris's photos (animals, monuments, musicians,
underwater; read out of its Qt resource files) and scikit-image's grey textures and camera.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import json
import re
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

PACKAGES = {
    # package: (folder inside the .deb, glob of photos or a list of files, copyright path prefix to strip)
    "lomiri-wallpapers-16.04": ("usr/share/backgrounds", "*_by_*.jpg", "16.04/"),
    "mate-backgrounds": ("usr/share/backgrounds/mate", "nature/*.jpg", ""),
    "plasma-workspace-wallpapers": ("usr/share/wallpapers", "*/contents/images/*.jpg", ""),
    # Wikimedia Commons photos; each has a .desktop beside it naming author, page and license
    "palapeli-data": ("usr/share/palapeli/collection", "*.jpg", ""),
    # br2/brightness.jpg is left out: the same eclipse as br2/halfmoon.jpg, mostly glare
    "scribus-template": ("usr/share/scribus/templates",
                         ["br2/halfmoon.jpg", "br2/moon.jpg", "br2/nature.jpg", "br2/sunset.jpg",
                          "cal2/moon.jpg", "menu2/pizza.jpg"], ""),
    "digikam-data": ("usr/share/digikam/about/images", ["body-background.jpg"], ""),
    # Tux Paint's photo templates (bark, moss, rock, waves, sheep, brickwork); those under MIN_SIDE left out
    "tuxpaint-data": ("usr/share/tuxpaint/templates",
                      [f"{n}.jpg" for n in ("burnt_bark", "cliff", "corn_maze", "jellyfish", "lighthouse",
                                            "mossy_log", "mudstone", "ocean_splash", "ocean_waves",
                                            "redwoods_above", "rocks", "sheep", "spiders_web",
                                            "sun_behind_clouds", "sun_behind_leaves")], ""),
    # close-ups of cats' fur from Wikimedia Commons, each credited in the copyright file
    "gnome-taquin": ("usr/share/gnome-taquin", "themes/cats/*.jpg", "data/"),
    # phone photos: a city and railway, a circuit board, dogs on leaves (the Debian logos left out)
    "forensics-samples-files": ("usr/share/forensics-samples", "original-files/pic*/IMG*", ""),
}
EXTRA_FILES = {"mate-backgrounds": ["abstract/Elephants.jpg"]}
HAND_LICENSES = {  # package: (license, copyright, where it was read), for copyright files that are not DEP-5
    "scribus-template": (
        "public domain", "2004 Riku Leino <tsoots@gmail.com>",
        "/usr/share/doc/scribus-template/copyright (not DEP-5): Riku Leino's templates, br2, cal2 and "
        "menu2 among them, 'have been placed into public domain by their author'"),
    "digikam-data": (
        "GPL-2+", "digiKam developers",
        "/usr/share/doc/digikam-data/copyright (not DEP-5): 'almost all software is GPL' (version 2 or "
        "later), no exception listed for this image"),
}
GCOMPRIS = "gcompris-qt-data"
GCOMPRIS_RCC = {
    # activity: (glob of photos under its resource/ folder, files left out). Each image's license is in
    # the README beside it in the .rcc (Debian's copyright file lists the older JPEGs these replaced).
    # Left out: WebP-smeared ones (under 0.32 bit/pixel: bee, scarlet_macaw, cat, duck, owl, redPyramid,
    # middleeast, sea1); photos under MIN_SIDE on the short side are skipped as well.
    "erase": ("*.webp", ["bee.webp"]),
    "explore_world_animals": ("animals/*.webp", ["animals/scarlet_macaw.webp"]),
    "explore_farm_animals": ("animals/*.webp",
                             ["animals/cat.webp", "animals/duck.webp", "animals/owl.webp"]),
    "explore_monuments": ("*/*.webp", ["egypt/redPyramid.webp"]),
    "explore_world_music": ("music/*.webp", ["music/middleeast.webp"]),
    "clickgame": ("sea*.webp", ["sea1.webp"]),
}
GCOMPRIS_README_TYPOS = {"germany/aulaPalatina.webp": "germany/audaPalatina.webp"}  # file: its name in README
SKIMAGE_PHOTOS = {  # name: (license, photographer), from each function's docstring in skimage.data
    "brick": ("CC0-1.0", "scikit-image contributors"), "grass": ("CC0-1.0", "scikit-image contributors"),
    "gravel": ("CC0-1.0", "scikit-image contributors"),
    "text": ("public domain", "scikit-image contributors"),
    "page": ("shipped with scikit-image (BSD-3-Clause); no separate license stated",
             "scikit-image contributors"),
    "camera": ("CC0-1.0", "Lav Varshney"),
}
SHORT_SIDE = 768
MIN_SIDE = 500  # smaller photos are left out


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


def _norm_license(text: str) -> str:
    """'CC-BY-SA 4.0' -> 'CC-BY-SA-4.0', 'Public Domain' -> 'public domain'; refuse NC and ND licenses."""
    lic = re.sub(r"^(CC[-A-Za-z]*?)[ -](\d\.\d)$", r"\1-\2", text.strip())
    if lic.lower() in ("public domain", "public-domain"):
        return "public domain"
    if lic.upper() in ("FDL", "GNU-FDL"):
        return "GFDL"
    if re.search(r"(^|-)(NC|ND)(-|$)", lic.upper()):
        raise ValueError(f"not a free license: {text!r}")
    return lic


def _desktop_credit(photo: Path) -> tuple[str, str, str] | None:
    """(license, author, web page) from the Palapeli .desktop file beside a photo, if there is one."""
    desk = photo.with_suffix(".desktop")
    if not desk.exists():
        return None
    keys = dict(line.split("=", 1) for line in desk.read_text(errors="replace").splitlines() if "=" in line)
    return (_norm_license(keys["X-KDE-PluginInfo-License"]), keys["X-KDE-PluginInfo-Author"],
            keys.get("X-KDE-PluginInfo-Website", ""))


def _rcc_files(blob: bytes) -> dict[str, bytes]:
    """The files in a Qt binary resource (.rcc): path -> bytes (zlib-compressed entries inflated)."""
    if blob[:4] != b"qres":
        raise ValueError("not a Qt resource file")
    version, tree, data, names = struct.unpack(">4I", blob[4:20])
    node = 22 if version >= 2 else 14  # version 2 added a 64-bit modification time to each node

    def name(off: int) -> str:
        n = struct.unpack(">H", blob[names + off:names + off + 2])[0]
        return blob[names + off + 6:names + off + 6 + 2 * n].decode("utf-16-be")

    out: dict[str, bytes] = {}
    stack = [(0, "")]
    while stack:
        i, prefix = stack.pop()
        p = tree + i * node
        name_off, flags = struct.unpack(">IH", blob[p:p + 6])
        path = prefix + name(name_off) if i else ""
        if flags & 2:  # directory
            count, first = struct.unpack(">II", blob[p + 6:p + 14])
            stack += [(c, f"{path}/" if i else "") for c in range(first, first + count)]
            continue
        q = data + struct.unpack(">I", blob[p + 10:p + 14])[0]
        raw = blob[q + 4:q + 4 + struct.unpack(">I", blob[q:q + 4])[0]]
        if flags & 4:
            raise ValueError(f"{path}: zstd-compressed resource")
        out[path] = zlib.decompress(raw[4:]) if flags & 1 else raw
    return out


def _readme_credits(text: str) -> dict[str, tuple[str, str, str]]:
    """GCompris's resource README ('Copyright:', 'License:', 'Source:', 'Files:' paragraphs): file ->
    (license, copyright holder, source page)."""
    out = {}
    for para in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in para.splitlines():
            k, sep, value = line.partition(":")
            if sep and k in ("Copyright", "License", "Source", "Files", "Comments"):
                key, fields[k] = k, value.strip()
            elif key:
                fields[key] += " " + line.strip()
        for f in fields.get("Files", "").split():
            out[f] = (fields.get("License", ""), fields.get("Copyright", ""), fields.get("Source", ""))
    return out


def _save(img: Image.Image, dest: Path) -> tuple[int, int]:
    img = img.convert("RGB")
    scale = SHORT_SIDE / min(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    img.save(dest, quality=95)
    return img.size


def _fetch(package: str, tmp_path: Path) -> Path:
    """apt-get download PACKAGE and dpkg -x it; returns the extracted tree."""
    subprocess.run(["apt-get", "download", package], cwd=tmp_path, check=True, capture_output=True)
    deb = next(tmp_path.glob(f"{package}_*.deb"))
    tree = tmp_path / package
    subprocess.run(["dpkg", "-x", str(deb), str(tree)], check=True)
    return tree


def _package_photos(package: str, tmp_path: Path, out: Path) -> list[dict]:
    root, pattern, strip = PACKAGES[package]
    tree = _fetch(package, tmp_path)
    copyright_file = tree / "usr/share/doc" / package / "copyright"
    paras = [] if package in HAND_LICENSES else _licenses(copyright_file)
    base = tree / root
    files = sorted(base.glob(pattern)) if isinstance(pattern, str) else [base / p for p in pattern]
    files += [base / p for p in EXTRA_FILES.get(package, [])]
    if package == "plasma-workspace-wallpapers":  # the largest JPEG of each wallpaper
        best: dict[str, Path] = {}
        for f in files:
            name = f.parts[len(base.parts)]
            if name not in best or f.stat().st_size > best[name].stat().st_size:
                best[name] = f
        files = sorted(best.values())
    records = []
    for f in files:
        rel = str(f.relative_to(base))
        if package in HAND_LICENSES:
            lic, holder, where = HAND_LICENSES[package]
        else:
            (lic, holder), where = _license_for(strip + rel, paras), f"/usr/share/doc/{package}/copyright (DEP-5)"
            lic = _norm_license(lic)
        record = {}
        credit = _desktop_credit(f)
        if credit:  # the photo's own license beats the package-wide DEP-5 paragraph
            where = (f"/{root}/{f.with_suffix('.desktop').name} (X-KDE-PluginInfo-License); "
                     f"{where} says {lic} for the whole package")
            lic, holder, record["source"] = credit
        img = Image.open(f)
        if min(img.size) < MIN_SIDE:
            raise ValueError(f"{package}: {rel} is {img.size}, under {MIN_SIDE} px")
        name = f"{package}--{rel.replace('/', '_')}"
        size = _save(img, out / name)
        records.append({"file": name, "package": package, "original": f"/{root}/{rel}", "license": lic,
                        "copyright": holder, **record, "license_from": where, "size": list(size)})
    return records


def _parents(path: str) -> list[str]:
    """'a/b/c.webp' -> ['a/b/', 'a/']: the folders above a resource path, nearest first."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[:i]) + "/" for i in range(len(parts), 0, -1)]


def _gcompris_photos(tmp_path: Path, out: Path) -> list[dict]:
    tree = _fetch(GCOMPRIS, tmp_path)
    records = []
    for activity, (pattern, left_out) in GCOMPRIS_RCC.items():
        rcc = f"usr/share/gcompris-qt/rcc/{activity}.rcc"
        files = _rcc_files((tree / rcc).read_bytes())
        prefix = f"gcompris/src/activities/{activity}/resource/"
        for path in sorted(files):
            rel = path[len(prefix):]
            if not path.startswith(prefix) or not fnmatch.fnmatch(rel, pattern) or rel in left_out:
                continue
            img = Image.open(io.BytesIO(files[path]))
            if min(img.size) < MIN_SIDE:
                continue
            readme = next(d for d in _parents(path) if d + "README" in files)  # the nearest README above
            credit = _readme_credits(files[readme + "README"].decode()).get(
                GCOMPRIS_README_TYPOS.get(rel, path[len(readme):]))
            if credit is None or not credit[0]:
                raise ValueError(f"{rcc}: no license for {rel} in {readme}README")
            lic, holder, source = credit
            name = f"{GCOMPRIS}--{activity}_{rel.replace('/', '_').rsplit('.', 1)[0]}.jpg"
            size = _save(img, out / name)
            records.append({"file": name, "package": GCOMPRIS, "original": f"/{rcc}:/{path}",
                            "license": _norm_license(lic), "copyright": holder, "source": source,
                            "license_from": f"/{rcc}:/{readme}README", "size": list(size)})
    return records


def build_corpus(out_dir: str | Path) -> list[dict]:
    """Download the packages, extract their photos at 768 px short side (JPEG q95), write SOURCES.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for package in PACKAGES:
            records += _package_photos(package, Path(tmp), out)
        records += _gcompris_photos(Path(tmp), out)
    import skimage.data

    for name, (lic, holder) in SKIMAGE_PHOTOS.items():
        arr = np.asarray(getattr(skimage.data, name)())
        file = f"scikit-image--{name}.jpg"
        size = _save(Image.fromarray(arr), out / file)
        records.append({"file": file, "package": "scikit-image", "original": f"skimage.data.{name}()",
                        "license": lic, "copyright": holder,
                        "license_from": f"docstring of skimage.data.{name}", "size": list(size)})
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
