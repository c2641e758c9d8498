"""How many windows one denoiser call takes by default: as many as fit a memory budget, within a cap.

Batching windows is the exact mode's cheapest speed-up on a CPU (one call's fixed costs - thousands of
small kernels, the parallel regions' barriers - paid once for several windows: 40 frames, 5 Euler steps on
the fixture weights, 14.5 s -> 11.0 s with five windows per call; docs/exact_speed.md). It must not change
a window's numbers: every operator of a denoiser call is per row, and the two that are not bit-for-bit so
across batch sizes are handled where they run (the small per-row embeddings run a CFG pair at a time,
``models.block_ops.by_pairs``) or bounded here: at one thread torch convolves SVD's (3, 1, 1) temporal
convolutions with another kernel once a call has 16 rows or more (``ConvParams::use_mkldnn``), so a CPU
call holds at most ``CPU_WINDOWS`` windows (14 rows with their CFG pairs).

The budget: ``BUDGET_SHARE`` of the memory free when the engine is built, over ``window_bytes``, an
upper estimate of the activations one window adds to a call (below).
"""

from __future__ import annotations

from engine.config.settings import ModelConfig

CPU_WINDOWS = 7  # 2 x 7 = 14 rows < 16: the same convolution kernel as one window per call (see above)
GPU_WINDOWS = 8  # beyond this a GPU is busy anyway; TensorRT engines cap it again at their build profile
BUDGET_SHARE = 0.5
ROWS_PER_WINDOW = 2  # the CFG pair
TRANSIENT = 18  # see window_bytes
_ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def window_bytes(model: ModelConfig, size: int, dtype: str, frames: int = 14) -> int:
    """Bytes one window (its CFG pair) adds to a denoiser call, an upper estimate.

    What a call keeps alive at its widest point, per latent frame and row: the UNet's skip samples
    (``layers_per_block + 1`` per level: the resnets' outputs and the level's input or downsample) and
    the WFM's residuals of the same shapes, which the UNet consumes; plus the transients of the widest
    level (norms, activations, the up path's concatenation, the GEGLU's 8x width), ``TRANSIENT`` times
    its width - the factor that covers the tiny model's measured peak (21.6 MiB per window at 128 px on
    a CPU, where the estimate gives 22.7; docs/exact_speed.md).
    """
    side = size // 8  # latent side (the VAE's factor 8)
    widths = list(model.unet["block_out_channels"])
    per_level = int(model.unet.get("layers_per_block", 2)) + 1
    skips = sum(per_level * width * (side >> level) ** 2 for level, width in enumerate(widths))
    transient = TRANSIENT * widths[0] * side * side
    return _ELEMENT_BYTES[dtype] * ROWS_PER_WINDOW * frames * (2 * skips + transient)


def auto_window_batch(model: ModelConfig, size: int, dtype: str, device_type: str, free_bytes: int) -> int:
    """Windows per denoiser call: as many as ``BUDGET_SHARE`` of ``free_bytes`` holds, at least one,
    at most ``CPU_WINDOWS`` on a CPU (bit-identical to one window per call) or ``GPU_WINDOWS``."""
    cap = CPU_WINDOWS if device_type == "cpu" else GPU_WINDOWS
    fit = int(BUDGET_SHARE * free_bytes) // window_bytes(model, size, dtype)
    return max(1, min(cap, fit))
