"""LivePortrait SPADE generator G, truncated after G_middle_5 as in the FRVD release.

FRVD uses G's 64x64 trunk feature (2x the warped-feature channels) as its motion condition; the
upsampling tail (up_0, up_1, conv_img) is built and saved by the release but never run. This
module does not build the tail: its keys are accepted by ``load_state_dict`` (shapes checked,
then discarded) and every other missing or unexpected key is still an error.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

TAIL_PREFIXES = ("up_0.", "up_1.", "conv_img.")


class SpectralNormConv2d(nn.Module):
    """Conv2d whose weight is ``weight_orig / sigma``, the state layout of torch's ``spectral_norm``.

    Only the eval behaviour is implemented: sigma = u . (W_mat v) from the stored u, v with no power
    iteration (W_mat = weight_orig reshaped to [out, -1]), exactly what the release runs at inference.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 bias: bool = True) -> None:
        super().__init__()
        self.padding = padding
        self.weight_orig = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_u: torch.Tensor
        self.weight_v: torch.Tensor
        self.register_buffer("weight_u", torch.empty(out_channels))
        self.register_buffer("weight_v", torch.empty(in_channels * kernel_size * kernel_size))
        nn.init.kaiming_uniform_(self.weight_orig, a=5**0.5)
        nn.init.normal_(self.weight_u)
        nn.init.normal_(self.weight_v)

    def normalized_weight(self) -> torch.Tensor:
        w = self.weight_orig
        sigma = torch.dot(self.weight_u, torch.mv(w.reshape(w.shape[0], -1), self.weight_v))
        return w / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.normalized_weight(), self.bias, padding=self.padding)


class SPADE(nn.Module):
    """Parameter-free instance norm modulated by gamma/beta predicted from the segmentation map."""

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128) -> None:
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, kernel_size=3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, kernel_size=3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        normalized = F.instance_norm(x, eps=1e-5)
        if segmap.shape[2:] != x.shape[2:]:
            segmap = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    """SPADE residual block with spectral-norm convs and leaky_relu(0.2); learned shortcut if fin != fout."""

    def __init__(self, fin: int, fout: int, label_nc: int) -> None:
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = SpectralNormConv2d(fin, fmiddle, kernel_size=3, padding=1)
        self.conv_1 = SpectralNormConv2d(fmiddle, fout, kernel_size=3, padding=1)
        self.norm_0 = SPADE(fin, label_nc)
        self.norm_1 = SPADE(fmiddle, label_nc)
        if self.learned_shortcut:
            self.conv_s = SpectralNormConv2d(fin, fout, kernel_size=1, bias=False)
            self.norm_s = SPADE(fin, label_nc)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return x_s + dx


def trunk_input_channels(max_features: int, block_expansion: int, num_down_blocks: int) -> int:
    """The release derives G's input width from its last down level (= W's output width, capped)."""
    if num_down_blocks < 1:
        raise ValueError("spade_generator_params.num_down_blocks must be >= 1")
    return min(max_features, block_expansion * (2**num_down_blocks))


def _decoder_tail_shapes(channels: int, out_channels: int, upscale: int | None) -> dict[str, torch.Size]:
    """Key -> shape of the release's unused tail, built on the meta device (no memory)."""
    with torch.device("meta"):
        tail = nn.Module()
        tail.up_0 = SPADEResnetBlock(2 * channels, channels, channels)
        tail.up_1 = SPADEResnetBlock(channels, out_channels, channels)
        if upscale is None or upscale <= 1:
            tail.conv_img = nn.Conv2d(out_channels, 3, 3, padding=1)
        else:
            tail.conv_img = nn.Sequential(nn.Conv2d(out_channels, 3 * 4, kernel_size=3, padding=1))
    return {k: v.shape for k, v in tail.state_dict().items()}


class SPADETrunk(nn.Module):
    """feature [B, C, 64, 64] -> fc -> G_middle_0..5 (seg = feature) -> [B, 2C, 64, 64].

    Constructor arguments are the release's ``spade_generator_params``; ``out_channels`` and
    ``upscale`` only shape the accepted (ignored) tail keys.
    """

    def __init__(self, upscale: int | None = 1, max_features: int = 256, block_expansion: int = 64,
                 out_channels: int = 64, num_down_blocks: int = 2) -> None:
        super().__init__()
        channels = trunk_input_channels(max_features, block_expansion, num_down_blocks)
        self.in_channels = channels
        self.out_channels = 2 * channels
        self.fc = nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1)
        for i in range(6):
            self.add_module(f"G_middle_{i}", SPADEResnetBlock(2 * channels, 2 * channels, channels))
        self._tail_shapes = _decoder_tail_shapes(channels, out_channels, upscale)
        self.register_load_state_dict_pre_hook(_drop_decoder_tail)

    def tail_keys(self) -> dict[str, torch.Size]:
        """Key -> shape of the decoder-tail entries a checkpoint may carry (accepted and ignored)."""
        return dict(self._tail_shapes)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        x = self.fc(feature)
        for i in range(6):
            x = getattr(self, f"G_middle_{i}")(x, feature)
        return x


def _drop_decoder_tail(module: SPADETrunk, state_dict: dict[str, Any], prefix: str, local_metadata: Any,
                       strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                       error_msgs: list[str]) -> None:
    # Known tail keys with the right shape are removed before strict matching; unknown names under
    # the tail prefixes are left in place so strict loading still reports them as unexpected.
    for key in [k for k in state_dict if k.startswith(prefix)]:
        name = key[len(prefix):]
        if not name.startswith(TAIL_PREFIXES) or name not in module._tail_shapes:
            continue
        value = state_dict.pop(key)
        expected = module._tail_shapes[name]
        if tuple(value.shape) != tuple(expected):
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(value.shape)} "
                              f"from checkpoint, the decoder tail expects {tuple(expected)}.")
