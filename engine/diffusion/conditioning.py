"""What the denoiser is conditioned on, computed once per source image.

Each function copies one of the release's preprocessing habits exactly (they change the
numbers): the uint8 round trip of the source, CLIP's antialiased resize done in [-1, 1],
the noise-augmented VAE latent taken from the posterior mode WITHOUT the scaling factor,
and the micro-conditioning ids (fps - 1, motion bucket, noise strength).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

CLIP_SIZE = (224, 224)


def _gaussian_kernel(size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype) - size // 2
    if size % 2 == 0:
        x = x + 0.5
    k = torch.exp(-x.pow(2.0) / (2 * torch.tensor(sigma, dtype=dtype).pow(2.0)))
    return k / k.sum()


def _blur_axis(x: torch.Tensor, kernel: torch.Tensor, axis: int) -> torch.Tensor:
    """Depthwise 1-D convolution along H (axis=2) or W (axis=3) with reflect padding."""
    c, k = x.shape[1], kernel.numel()
    pad = [(k - 1) // 2, (k - 1) - (k - 1) // 2]
    weight = kernel.view(1, 1, 1, k) if axis == 3 else kernel.view(1, 1, k, 1)
    x = F.pad(x, pad + [0, 0] if axis == 3 else [0, 0] + pad, mode="reflect")
    return F.conv2d(x, weight.expand(c, 1, -1, -1), groups=c)


def resize_with_antialiasing(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """SVD's CLIP resize: Gaussian blur with sigma = (scale - 1) / 2 (kernel ~4 sigma, odd), then
    bicubic with align_corners=True; the same arithmetic as diffusers' SVD pipeline helper."""
    h, w = x.shape[-2:]
    sigmas = (max((h / size[0] - 1.0) / 2.0, 0.001), max((w / size[1] - 1.0) / 2.0, 0.001))
    ks = [int(max(4.0 * s, 3)) for s in sigmas]
    ks = [k + 1 if k % 2 == 0 else k for k in ks]
    x = _blur_axis(x, _gaussian_kernel(ks[1], sigmas[1], x.dtype), axis=3)
    x = _blur_axis(x, _gaussian_kernel(ks[0], sigmas[0], x.dtype), axis=2)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=True)


def to_pm1(frames_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in [-1, 1], as inference.py computes it."""
    t = torch.as_tensor(np.asarray(frames_u8))
    return t.movedim(-1, -3).to(torch.float32) / 127.5 - 1.0


def reference_image_u8(source_u8: np.ndarray) -> np.ndarray:
    """The PIL image the release gives CLIP and the VAE: a float32 round trip that truncates.

    ``np.uint8((u8 / 127.5 - 1 + 1) * 127.5)`` can land one below the input value.
    """
    pm1 = torch.as_tensor(np.asarray(source_u8)).to(torch.float32) / 127.5 - 1.0
    return ((pm1.numpy() + 1) * 127.5).astype(np.uint8)


def pil_like_tensor(image_u8: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [1, 3, H, W] in [0, 1] (diffusers' pil_to_numpy + numpy_to_pt)."""
    arr = np.asarray(image_u8).astype(np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def clip_pixels(reference_u8: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """[1, 3, 224, 224]: resize with antialiasing in [-1, 1], back to [0, 1], CLIP mean/std."""
    x = pil_like_tensor(reference_u8) * 2.0 - 1.0
    x = resize_with_antialiasing(x, CLIP_SIZE)
    x = (x + 1.0) / 2.0
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x - mean_t) / std_t


def added_time_ids(fps: int, motion_bucket_id: int, noise_aug_strength: float) -> torch.Tensor:
    """[2, 3] float32; SVD was trained on fps - 1."""
    ids = torch.tensor([[fps - 1, motion_bucket_id, noise_aug_strength]], dtype=torch.float32)
    return ids.repeat(2, 1)
