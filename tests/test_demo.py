"""The README's main command, end to end, as a user runs it (in-process, on the session's Ray)."""

from aeflow import cli


def test_demo_prints_its_table_and_writes_every_output(ray_local, tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "mean" in out and "denoised" in out and "JPEG PSNR" in out and "WebP PSNR" in out
    mean = next(line for line in out.splitlines() if line.startswith("mean")).split()
    bpp, psnr, _, _, _, _, noisy, denoised = (float(v) for v in mean[1:9])
    assert 0 < bpp < 1 and psnr > 20 and denoised > noisy + 5
    for folder in ("photos", "decompressed", "noisy", "denoised", "enhanced"):
        assert len(list((tmp_path / "demo" / folder).glob("*.png"))) == 5, folder
    assert len(list((tmp_path / "demo" / "variations").glob("*-v0[01].png"))) == 10
    assert (tmp_path / "demo" / "grid.png").stat().st_size > 10_000
    assert (tmp_path / "demo" / "generate-grid.png").stat().st_size > 10_000
    assert (tmp_path / "demo" / "latents" / "manifest.json").exists()
