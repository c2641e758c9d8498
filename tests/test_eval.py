"""engine.eval: each metric against an independent computation, the CLI on two bundled clips, and
its bad inputs (one ``error:`` line, exit 2) and missing weights (``skipped: needs ...``)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine.cli import eval as eval_cli
from engine.errors import WeightsError
from engine.eval import features, metrics
from engine.io import read_video

ASSETS = Path(__file__).resolve().parents[1] / "engine" / "assets"


def _ssim_opencv(a: np.ndarray, b: np.ndarray) -> float:
    """The classic OpenCV SSIM recipe (GaussianBlur 11x11, sigma 1.5), cropped to the valid region."""
    x, y = a.astype(np.float64) / 255, b.astype(np.float64) / 255
    blur = lambda t: cv2.GaussianBlur(t, (11, 11), 1.5)[5:-5, 5:-5]  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return float((((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean())


def _psnr_direct(a: np.ndarray, b: np.ndarray) -> float:
    return float(20 * np.log10(255) - 10 * np.log10(np.mean((a.astype(float) - b.astype(float)) ** 2)))


def test_psnr_ssim_match_independent() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
    got_s, got_p = metrics.ssim(a, b), metrics.psnr(a, b)
    for i in range(3):
        assert got_s[i] == pytest.approx(_ssim_opencv(a[i], b[i]), abs=1e-6)
        assert got_p[i] == pytest.approx(_psnr_direct(a[i], b[i]), abs=1e-9)
    assert metrics.l1(a, b) == pytest.approx(np.abs(a / 255 - b / 255).mean(axis=(1, 2, 3)))
    assert np.all(metrics.ssim(a, a) == pytest.approx(1.0)) and np.all(np.isinf(metrics.psnr(a, a)))


def test_frechet_closed_form_and_identity() -> None:
    rng = np.random.default_rng(1)
    d = 6
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    va, vb = rng.uniform(0.2, 3, d), rng.uniform(0.2, 3, d)
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    ca, cb = (q * va) @ q.T, (q * vb) @ q.T  # commuting covariances: tr sqrt(CaCb) = sum sqrt(va vb)
    closed = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(va) - np.sqrt(vb)) ** 2).sum()
    assert metrics.frechet(mu_a, ca, mu_b, cb) == pytest.approx(closed, rel=1e-9)
    # non-commuting 2-D covariances: for 2x2 PSD M, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M))
    c1, c2 = np.array([[2.0, 0.7], [0.7, 1.0]]), np.array([[1.5, -0.4], [-0.4, 0.5]])
    cross = np.sqrt(np.trace(c1 @ c2) + 2 * np.sqrt(np.linalg.det(c1) * np.linalg.det(c2)))
    assert metrics.frechet(np.zeros(2), c1, np.ones(2), c2) == pytest.approx(2 + np.trace(c1 + c2) - 2 * cross)
    feats = rng.normal(size=(300, d)) @ (q * np.sqrt(va)).T + mu_a
    assert metrics.frechet_of_features(feats, feats) == pytest.approx(0.0, abs=1e-9)
    big = rng.normal(size=(20000, d))
    samples_a, samples_b = big @ (q * np.sqrt(va)).T + mu_a, rng.normal(size=(20000, d)) @ (q * np.sqrt(vb)).T + mu_b
    assert metrics.frechet_of_features(samples_a, samples_b) == pytest.approx(closed, rel=0.05)


def _lpips_files(tmp_path: Path) -> tuple[Path, Path]:
    gen = torch.Generator().manual_seed(0)
    model = features._ALEX
    alex = {}
    for k, (i, o, ks, _, _) in zip(features._ALEX_INDEX, model, strict=True):
        alex[f"features.{k}.weight"] = torch.randn(o, i, ks, ks, generator=gen) * (i * ks * ks) ** -0.5
        alex[f"features.{k}.bias"] = torch.zeros(o)
    heads = {f"lin{k}.model.1.weight": torch.rand(1, o, 1, 1, generator=gen) for k, (_, o, *_) in enumerate(model)}
    pa, ph = tmp_path / "alex.pth", tmp_path / "heads.pth"
    torch.save(alex, pa)
    torch.save(heads, ph)
    return pa, ph


def test_lpips_own_implementation(tmp_path: Path) -> None:
    pa, ph = _lpips_files(tmp_path)
    lp = features.LPIPS(pa, ph)
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + 40, 0, 255).astype(np.uint8)
    assert np.allclose(features.lpips_frames(lp, a, a), 0.0)
    near, far = features.lpips_frames(lp, a, b), features.lpips_frames(lp, a, 255 - a)
    assert np.all(near > 0) and np.all(far > near)
    with pytest.raises(WeightsError, match="lacks or mis-shapes"):
        features.LPIPS(ph, ph)  # heads given as the AlexNet file


def test_eval_cli_two_bundled_clips(tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "clips.json"
    manifest.write_text(json.dumps({"clips": [
        {"name": "pair", "source": str(ASSETS / "source.png"), "driving": str(ASSETS / "driving.mp4"),
         "result": str(ASSETS / "driving_audio.mp4"), "kind": "self"}]}))
    out = tmp_path / "out"
    code = eval_cli.main(["--manifest", str(manifest), "--out", str(out), "--metrics", "l1", "psnr", "ssim", "fid",
                          "--max-frames", "6", "--size", "128"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "skipped: fid needs --inception" in printed
    row = json.loads((out / "pair.json").read_text())
    res = read_video(ASSETS / "driving_audio.mp4", 128, 6).frames
    drv = read_video(ASSETS / "driving.mp4", 128, 6).frames
    assert row["frames"] == 6
    assert row["psnr"] == pytest.approx(np.mean([_psnr_direct(r, d) for r, d in zip(res, drv, strict=True)]), abs=1e-6)
    assert row["ssim"] == pytest.approx(np.mean([_ssim_opencv(r, d) for r, d in zip(res, drv, strict=True)]), abs=1e-6)
    table = (out / "table.md").read_text()
    assert "| clip | L1↓ | PSNR↑ | SSIM↑ | LPIPS↓ | FID↓ | FVD↓ |" in table and f"{row['psnr']:.4f}" in table


def test_eval_cli_fid_through_onnx(tmp_path: Path, capsys) -> None:
    """An ONNX feature extractor on onnxruntime: a clip against itself has FID 0, against another > 0."""
    net = torch.nn.Sequential(torch.nn.AvgPool2d(23), torch.nn.Flatten(), torch.nn.Linear(3 * 13 * 13, 8))
    onnx_path = tmp_path / "inc.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 299, 299),), str(onnx_path), input_names=["x"],
                      dynamic_axes={"x": {0: "n"}}, dynamo=False)
    clip = {"source": str(ASSETS / "source.png"), "driving": str(ASSETS / "driving.mp4"), "kind": "self"}
    for name, result, check in (("same", "driving.mp4", lambda v: v == pytest.approx(0, abs=1e-6)),
                                ("other", "driving_audio.mp4", lambda v: v > 0)):
        manifest = tmp_path / f"{name}.json"
        manifest.write_text(json.dumps({"clips": [dict(clip, result=str(ASSETS / result))]}))
        assert eval_cli.main(["--manifest", str(manifest), "--out", str(tmp_path / name), "--metrics", "fid",
                              "--inception", str(onnx_path), "--max-frames", "12", "--size", "64"]) == 0
        assert check(json.loads((tmp_path / name / "summary.json").read_text())["mean"]["self"]["fid"])
    capsys.readouterr()


@pytest.mark.parametrize("case", ["empty", "no-result", "bad-onnx", "bad-kind"])
def test_eval_cli_bad_input(tmp_path: Path, capsys, case: str) -> None:
    manifest = tmp_path / "m.json"
    clip = {"source": str(ASSETS / "source.png"), "driving": str(ASSETS / "driving.mp4")}
    extra: list[str] = []
    if case == "empty":
        manifest.write_text(json.dumps({"clips": []}))
    elif case == "no-result":
        manifest.write_text(json.dumps({"clips": [clip]}))
    elif case == "bad-kind":
        manifest.write_text(json.dumps({"clips": [dict(clip, result=clip["driving"], kind="selfie")]}))
    else:
        manifest.write_text(json.dumps({"clips": [dict(clip, result=clip["driving"])]}))
        (tmp_path / "bad.onnx").write_bytes(b"not a model")
        extra = ["--arcface", str(tmp_path / "bad.onnx"), "--metrics", "id"]
    code = eval_cli.main(["--manifest", str(manifest), "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert {"empty": "no clips", "no-result": "--run", "bad-onnx": "ArcFace", "bad-kind": "kind"}[case] in err
