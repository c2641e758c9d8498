"""Pieces both schedulers use: the run's noise, guidance, clip-long head-latent storage; free memory."""

from __future__ import annotations

import bisect
import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from engine.config.modes import RunConfig
from engine.diffusion import sampling


@dataclass(frozen=True)
class Noise:
    """The two random draws of a run, in the release's generator order."""

    aug: torch.Tensor  # [1, 3, H, W]     noise added to the VAE conditioning image
    initial: torch.Tensor  # [1, T, 4, h, w]  one window of initial latent noise, tiled over time

    @classmethod
    def draw(cls, seed: int, size: int, window: int, latent_scale: int = 8) -> Noise:
        generator = torch.Generator("cpu").manual_seed(seed)
        aug = torch.randn((1, 3, size, size), generator=generator, dtype=torch.float32)
        h = size // latent_scale
        initial = torch.randn((1, window, 4, h, h), generator=generator, dtype=torch.float32)
        return cls(aug=aug, initial=initial)

    def initial_latents(self, frames: list[int] | range, schedule: sampling.Schedule) -> torch.Tensor:
        """[n, 4, h, w]: frame i starts from the tile's frame i mod T, times the initial sigma."""
        tile = self.initial[0] * schedule.init_noise_sigma  # [T, 4, h, w]
        return tile[[i % tile.shape[0] for i in frames]]


def guidance_scales(cfg: RunConfig, num_frames: int) -> torch.Tensor:
    """[F, 1, 1, 1] per-frame guidance: linspace(min, max) flipped (release habit)."""
    lo, hi = cfg.guidance_range
    return torch.linspace(lo, hi, num_frames).flip(0)[:, None, None, None]


def timestep_for(schedule: sampling.Schedule, sigma: torch.Tensor) -> torch.Tensor:
    """The schedule's own timestep for one of its sigmas (computed in float64 by the schedule, so
    recomputing 0.25 ln(sigma) from the float32 sigma would differ in the last bits)."""
    hits = (schedule.sigmas[:-1] == sigma).nonzero()
    if len(hits):
        return schedule.timesteps[int(hits[0])]
    return (0.25 * torch.log(sigma.double())).float()


DEVICE_HEAD_BUDGET = 1 << 30  # bytes of head latents kept on a GPU before they move to the host


class HeadStore:
    """Head latents of a clip, kept once (the unconditional half is never materialised), in the
    run's dtype, as the chunks the motion stage produced (no concatenated copy).

    On a GPU they stay on the device until they exceed ``budget`` bytes (1 GiB: ~400 frames at
    512^2 in half precision); a longer clip moves them to host memory and each denoiser call
    copies one window's worth back (~36 MB at 512^2 fp16, small next to a window-step's compute).
    """

    def __init__(self, device: torch.device, budget: int = DEVICE_HEAD_BUDGET) -> None:
        self.device, self.budget = device, budget
        self.host = device.type == "cpu"  # on CPU the device is the host
        self.chunks: list[torch.Tensor] = []
        self.starts: list[int] = []
        self.count = 0

    def append(self, heads: torch.Tensor) -> None:
        if not self.host and self.nbytes() + heads.numel() * heads.element_size() > self.budget:
            self.chunks = [c.to("cpu") for c in self.chunks]
            self.host = True
        self.chunks.append(heads.to("cpu") if self.host else heads)
        self.starts.append(self.count)
        self.count += heads.shape[0]

    def frame(self, index: int) -> torch.Tensor:
        k = bisect.bisect_right(self.starts, index) - 1
        return self.chunks[k][index - self.starts[k]]

    def gather(self, indices: list[int]) -> torch.Tensor:
        """[len(indices), c0, h, w] on the device."""
        return torch.stack([self.frame(i) for i in indices]).to(self.device, non_blocking=True)

    def nbytes(self) -> int:
        return sum(c.numel() * c.element_size() for c in self.chunks)


# ------------------------------------------------------------------------------ stage streams
@contextlib.contextmanager
def stage_stream(device: torch.device) -> Iterator[None]:
    """Run the block on a CUDA stream of its own (nothing off CUDA). The stream's stage threads would
    otherwise all queue their kernels on the device's one default stream, so the motion stage of the
    next frames could not overlap the denoiser. What one stage hands another goes with ``ready_event``."""
    if device.type != "cuda":
        yield
        return
    with torch.cuda.stream(torch.cuda.Stream(device)):
        yield


def ready_event(device: torch.device) -> torch.cuda.Event | None:
    """An event after the work this thread has queued so far (None off CUDA): the receiving stage's
    stream waits for it before reading what was handed over. No host synchronisation."""
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    return event


def wait_ready(event: torch.cuda.Event | None, device: torch.device, tensors: Iterable[torch.Tensor]) -> None:
    """This thread's stream waits for ``event``; the tensors are marked as used on it, so the caching
    allocator does not hand their memory back to the producing stream while this one still reads them."""
    if event is None:
        return
    stream = torch.cuda.current_stream(device)
    stream.wait_event(event)
    for t in tensors:
        t.record_stream(stream)


def free_memory(device: str) -> int:
    """Bytes free for a new engine's work on ``device``: the GPU's free memory, or the host's available
    physical memory (``MemAvailable``: free plus reclaimable caches) on a CPU."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():  # else whoever runs the graphs says why, not this
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
