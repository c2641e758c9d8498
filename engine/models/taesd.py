"""The tiny VAE decoder: diffusers' ``AutoencoderTiny`` decoder (TAESD; Bohan Ou's "tiny autoencoder"
for SD-1.x latents, which is what sd-vae-ft-mse makes), as an option of every mode (``decoder="tiny"``).

It reads the *scaled* latents the sampler produces (SD's z * 0.18215, TAESD's own convention) and
returns frames in [-1, 1] like the full decoder. Weights come from a user-given file or from
``python -m engine.distill --what vae-decoder`` (regression on the engine's own decoder). Three
layouts are accepted, checked key by key against the module:

    diffusers AutoencoderTiny   ``decoder.layers.N.*`` (other keys, e.g. the encoder, are ignored)
    diffusers DecoderTiny       ``layers.N.*`` (what ``engine.distill`` writes, safetensors)
    madebyollin/taesd           ``taesd_decoder.pth``: ``N.*`` with N one higher (its layer 0 is the clamp)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.errors import WeightsError

if TYPE_CHECKING:
    from diffusers.models.autoencoders.vae import DecoderTiny

TAESD = {"num_blocks": (3, 3, 3, 1), "upsampling_scaling_factor": 2, "act_fn": "relu", "upsample_fn": "nearest"}
TAESD_WIDTH = 64  # the released TAESD's channels at every level


def width_for(vae: dict) -> int:
    """TAESD's width for a VAE config: 64 (the released TAESD) for SD's VAE (128 .. 512 channels), half the
    VAE's narrowest width for reduced presets (tiny's 32-channel VAE gets a 16-channel TAESD), as every
    tiny network is its full-size architecture at small widths."""
    return min(TAESD_WIDTH, int(vae.get("block_out_channels", [128])[0]) // 2)
FORMAT = "frvd-taesd-decoder"
HOW = ("give diffusers' AutoencoderTiny weights (e.g. madebyollin/taesd), madebyollin's taesd_decoder.pth, or "
       "one made by python -m engine.distill --what vae-decoder")


def build(latent_channels: int = 4, width: int = TAESD_WIDTH) -> DecoderTiny:
    from diffusers.models.autoencoders.vae import DecoderTiny  # imported where used (optional on a GPU box)

    return DecoderTiny(in_channels=latent_channels, out_channels=3, block_out_channels=(width,) * 4, **TAESD)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise WeightsError(f"tiny decoder file {path} does not exist: {HOW}")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any way of failing to read is "not a weights file"
        raise WeightsError(f"tiny decoder file {path} cannot be read ({type(err).__name__}): {HOW}") from None
    if not isinstance(sd, dict):
        raise WeightsError(f"tiny decoder file {path} is not a state dict: {HOW}")
    return sd, {}


def _to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(k.startswith("decoder.layers.") for k in sd):
        return {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.layers.")}
    if any(k.startswith("layers.") for k in sd):
        return sd
    out = {}
    for k, v in sd.items():  # madebyollin's Sequential: index 0 is the Clamp, the rest shift by one
        m = re.match(r"(\d+)\.(.*)", k)
        if m:
            out[f"layers.{int(m.group(1)) - 1}.{m.group(2)}"] = v
    return out


def load(path: Path, latent_channels: int = 4, width: int = TAESD_WIDTH) -> DecoderTiny:
    """A tiny decoder from ``path``; any mismatch is one WeightsError naming the file and the first bad key."""
    path = Path(path)
    sd, _ = _read(path)
    sd = _to_diffusers(sd)
    module = build(latent_channels, width)
    want = module.state_dict()
    missing = [k for k in want if k not in sd]
    shape = [k for k in want if k in sd and tuple(sd[k].shape) != tuple(want[k].shape)]
    extra = [k for k in sd if k not in want]
    if missing or shape or extra:
        what = (f"lacks {len(missing)} tensors (first: {missing[0]})" if missing else
                f"has {len(shape)} tensors of the wrong shape (first: {shape[0]}: {tuple(sd[shape[0]].shape)} "
                f"instead of {tuple(want[shape[0]].shape)})" if shape else
                f"has {len(extra)} unexpected tensors (first: {extra[0]})")
        raise WeightsError(f"tiny decoder file {path} is not a TAESD decoder for {latent_channels}-channel "
                           f"latents and width {width}: it {what}; {HOW}")
    module.load_state_dict({k: v.float() for k, v in sd.items()})
    return module.eval().requires_grad_(False)


def save(module: DecoderTiny, path: Path, info: dict[str, object]) -> None:
    """safetensors with the training facts in its metadata; written to a temporary file, then renamed."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    meta = {"format": FORMAT, "info": json.dumps(info)}
    save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, str(tmp), metadata=meta)
    tmp.replace(path)
