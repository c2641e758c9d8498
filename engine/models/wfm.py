"""Warping Feature Mapper (``src/modules/warping_feature_mapper.py``): FRVD's ControlNet-like motion branch.

A copy of the SVD encoder (conv_in, embeddings, down blocks, mid block) with, in every block that has a
spatio-temporal transformer, an extra full self-attention over all frames x pixels
(``FullTemporalTransformer``); the head-pose latents are added right after conv_in. It returns:

* 12 down residuals (1x1 "zero-convs" of the 12 skip samples) and a mid residual, for the UNet;
* ``infofill``: a small decoder (Internal Feature Modulators over the raw skips) whose 4-channel output the
  pipeline adds to the UNet's prediction.

The release hard-codes the fusion widths for SVD ((1280,1280), (640,1280), (320,640), 320->4); here they are
derived from ``block_out_channels`` in the same pattern, so reduced configs work (as in the fixtures).
"""

from __future__ import annotations

import torch
from torch import nn

from engine.models.ifm import InternalFeatureModulator
from engine.models.svd_blocks import FullTemporalTransformer, SVDDownPath, embed_conditions
from engine.models.time_context import SpatioTemporalTransformer, check_time_context, set_time_context
from engine.models.unet import SVDUNet, SVDUNetConfig, build_down_path


def _conv1x1(channels: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, kernel_size=1)


class WarpingFeatureMapper(SVDDownPath):
    """``(sample, timestep, context, added_time_ids, head_latents) -> (down_res x12, mid_res, infofill)``."""

    def __init__(
        self, config: SVDUNetConfig | None = None, time_context: str = "release", cfg_group: int = 2
    ):
        super().__init__()
        self.config = config = config or SVDUNetConfig()
        check_time_context(time_context, cfg_group)
        build_down_path(self, config, full_attention=True)

        channels = list(config.block_out_channels)
        layers = config.per_block("layers_per_block")
        num_blocks = len(channels)

        # zero-convs, one per skip: conv_in's output, each layer of each block, each downsampler
        convs = [_conv1x1(channels[0])]
        self.lateral_indices: list[int] = []  # skip index of the last layer of each block
        for i in range(num_blocks):
            convs.extend(_conv1x1(channels[i]) for _ in range(layers[i]))
            self.lateral_indices.append(len(convs) - 1)
            if i < num_blocks - 1:
                convs.append(_conv1x1(channels[i]))
        self.warping_feature_mapper_down_blocks = nn.ModuleList(convs)
        self.warping_feature_mapper_mid_block = _conv1x1(channels[-1])

        # infofill path: fusion_block{j} upsamples from block (n-j)'s width to block (n-1-j)'s resolution and
        # fuses that block's last raw skip; SVD: (1280, 1280), (640, 1280), (320, 640)
        self.fusion_names = [f"fusion_block{j}" for j in range(1, num_blocks)]
        for j, name in enumerate(self.fusion_names, start=1):
            self.add_module(
                name, InternalFeatureModulator(channels[num_blocks - 1 - j], channels[num_blocks - j])
            )
        self.fusion_proj = nn.Conv2d(channels[0], config.out_channels, kernel_size=1)

        self._zero_init()
        set_time_context(self, time_context, cfg_group)

    @torch.no_grad()
    def _zero_init(self) -> None:
        # the release starts every injection path at zero (ControlNet-style); irrelevant once weights load
        zeroed = [
            *self.warping_feature_mapper_down_blocks,
            self.warping_feature_mapper_mid_block,
            self.fusion_proj,
        ]
        zeroed += [m.proj_residual for m in self.modules() if isinstance(m, FullTemporalTransformer)]
        for module in zeroed:
            for param in module.parameters():
                if param.device.type != "meta":
                    param.zero_()

    @classmethod
    def from_unet(cls, unet: SVDUNet) -> WarpingFeatureMapper:
        """Initialise from a UNet as the release does.

        conv_in, embeddings, down blocks and mid block are copied; every ``fullattentions`` tensor is copied
        from the matching ``attentions`` key except ``proj_residual`` (no counterpart, stays zero);
        zero-convs and fusion_proj are zero, the fusion blocks keep their default init.
        """
        first = next(m for m in unet.modules() if isinstance(m, SpatioTemporalTransformer))
        wfm = cls(unet.config, time_context=first.time_context, cfg_group=first.cfg_group)
        for name in ("conv_in", "time_embedding", "add_embedding"):
            getattr(wfm, name).load_state_dict(getattr(unet, name).state_dict())
        for name in ("down_blocks", "mid_block"):
            source = getattr(unet, name).state_dict()
            target = getattr(wfm, name)
            state = dict(source)
            for key in target.state_dict():
                if "fullattentions" in key and (src := key.replace("fullattentions", "attentions")) in source:
                    state[key] = source[src]
            result = target.load_state_dict(state, strict=False)
            unexpected_missing = [k for k in result.missing_keys if ".proj_residual." not in k]
            if unexpected_missing or result.unexpected_keys:
                raise RuntimeError(f"from_unet: {name} keys do not line up: {result}")
        return wfm

    def set_time_context(self, mode: str, cfg_group: int = 2) -> None:
        set_time_context(self, mode, cfg_group)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        head_latents: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
        """``sample [B, F, Cin, h, w]``, ``head_latents [B*F, c0, h, w]`` -> ``(down residuals`` (one
        ``[B*F, c_i, h_i, w_i]`` per skip), ``mid residual [B*F, c_last, h', w'], infofill [B, F, 4, h, w])``.
        """
        batch, num_frames = sample.shape[:2]

        # 1. embeddings; frames into the batch: [B, F, C, h, w] -> [B*F, C, h, w]
        sample, emb, context, indicator = embed_conditions(
            self, sample, timestep, encoder_hidden_states, added_time_ids
        )

        # 2. conv_in + head-pose latents (zeros for the uncond half)
        sample = self.conv_in(sample)
        if head_latents is not None:
            sample = sample + head_latents

        # 3. down path, collecting the raw skips
        skips = [sample]
        for block in self.down_blocks:
            sample, block_skips = block(sample, emb, context, indicator)
            skips.extend(block_skips)
        if len(skips) != len(self.warping_feature_mapper_down_blocks):
            raise ValueError(
                f"{len(skips)} skips for {len(self.warping_feature_mapper_down_blocks)} zero-convs"
            )

        # 4. mid block
        sample = self.mid_block(sample, emb, context, indicator)

        # 5. residuals for the UNet: 1x1 convs of the skips and of the mid output, scaled
        down_residuals = tuple(
            conv(skip) * conditioning_scale
            for conv, skip in zip(self.warping_feature_mapper_down_blocks, skips)
        )
        mid_residual = self.warping_feature_mapper_mid_block(sample) * conditioning_scale

        # 6. infofill: mid output up through the fusion blocks, laterals = raw (pre-zero-conv) skips
        #    [B*F, c_last, h/8, w/8] -> ... -> [B*F, c0, h, w] -> [B, F, Cout, h, w]
        hidden_states = sample
        for name, block_index in zip(self.fusion_names, reversed(self.lateral_indices[:-1])):
            hidden_states = getattr(self, name)(skips[block_index], hidden_states)
        infofill = self.fusion_proj(hidden_states)
        infofill = infofill.reshape(batch, num_frames, *infofill.shape[1:])
        return down_residuals, mid_residual, infofill
