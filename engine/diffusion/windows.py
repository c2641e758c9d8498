"""Temporal windows over a clip, as the release builds them, and their blend weights.

Pure functions of (num_frames, size, overlap): no tensors held, no state.
"""

from __future__ import annotations

import torch


def window_indices(num_frames: int, size: int = 14, overlap: int = 6) -> list[list[int]]:
    """Frame indices of every window.

    The release's rule: windows start every ``size - overlap`` frames and always include
    frame 0 in place of their own first frame (so every window sees the first frame);
    an extra window ends at the last frame when the stride leaves it uncovered.

    Clips shorter than one window make the release's builder fail (empty list); here they
    get one window of all their frames (the pipeline pads such clips to a full window).
    """
    if num_frames < 1:
        raise ValueError("a clip needs at least one frame")
    if not 0 <= overlap < size:
        raise ValueError(f"window overlap {overlap} must be in [0, {size})")
    if num_frames <= size:
        return [list(range(num_frames))]
    stride = size - overlap
    windows = [[0, *range(i + 1, min(i + size, num_frames))] for i in range(0, num_frames - size + 1, stride)]
    if windows[-1][-1] < num_frames - 1:
        windows.append([0, *range(num_frames - size + 1, num_frames)])
    return windows


def window_weights(size: int = 14, device: torch.device | str = "cpu") -> torch.Tensor:
    """Triangle weights by position inside a window, w_j = min((j+.5)*2/T, 2-(j+.5)*2/T), float32."""
    ramp = (torch.arange(size, device=device) + 0.5) * 2.0 / size
    return torch.minimum(ramp, 2 - ramp)


def batches(windows: list[list[int]], per_call: int) -> list[list[list[int]]]:
    """Group windows into denoiser calls of at most ``per_call`` windows, keeping their order."""
    if per_call < 1:
        raise ValueError("windows per call must be >= 1")
    return [windows[i : i + per_call] for i in range(0, len(windows), per_call)]
