"""Pixel and distribution metrics as pure functions on uint8 frames / feature arrays.

    l1, psnr, ssim   self-reenactment: result frames vs the driving frames (uint8 [F, H, W, 3])
    frechet          FID / FVD: the Frechet distance between two Gaussians fitted to features

SSIM is Wang et al. (2004) as scikit-image's ``structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1)`` and torchmetrics compute it: an 11x11
Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, on [0, 1] images, averaged over the valid
(unpadded) positions and the three channels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SSIM_SIGMA, SSIM_WINDOW, SSIM_K1, SSIM_K2 = 1.5, 11, 0.01, 0.03


def _float01(frames_u8: np.ndarray) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float64 [F, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames_u8)).permute(0, 3, 1, 2).double() / 255.0


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"frames must be two uint8 [F, H, W, 3] arrays of one shape, got {a.shape} and {b.shape}")


def l1(result_u8: np.ndarray, target_u8: np.ndarray) -> np.ndarray:
    """Per-frame mean absolute error on [0, 1] pixels."""
    _check_pair(result_u8, target_u8)
    return (_float01(result_u8) - _float01(target_u8)).abs().mean(dim=(1, 2, 3)).numpy()


def psnr(result_u8: np.ndarray, target_u8: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB (data range 255); identical frames give +inf."""
    _check_pair(result_u8, target_u8)
    mse = ((result_u8.astype(np.float64) - target_u8.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0**2 / mse)


def _gaussian_window() -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None].repeat(3, 1, 1, 1)  # [3, 1, 11, 11] depthwise


def ssim(result_u8: np.ndarray, target_u8: np.ndarray, chunk: int = 16) -> np.ndarray:
    """Per-frame SSIM (Gaussian window, see the module docstring)."""
    _check_pair(result_u8, target_u8)
    window = _gaussian_window()
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    out = []
    for i in range(0, result_u8.shape[0], chunk):  # bounded memory whatever the clip length
        x, y = _float01(result_u8[i : i + chunk]), _float01(target_u8[i : i + chunk])

        def blur(t: torch.Tensor) -> torch.Tensor:
            return F.conv2d(t, window, groups=3)  # valid positions only

        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        out.append(s.mean(dim=(1, 2, 3)))
    return torch.cat(out).numpy()


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, D] -> (mean [D], covariance [D, D]) with N - 1 in the denominator (pytorch-fid's np.cov)."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors [N, D] to fit a Gaussian, got {features.shape}")
    f = features.astype(np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)).

    tr((C1 C2)^(1/2)) is computed as tr((C1^(1/2) C2 C1^(1/2))^(1/2)), a symmetric PSD matrix with
    the same eigenvalues, so only symmetric eigendecompositions are needed (no scipy ``sqrtm``)."""
    s1 = _psd_sqrt(cov1)
    middle = _psd_sqrt(s1 @ cov2 @ s1)
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(middle))
    return max(value, 0.0)  # rounding can leave a tiny negative for identical sets


def frechet_of_features(a: np.ndarray, b: np.ndarray) -> float:
    return frechet(*gaussian_stats(a), *gaussian_stats(b))
