"""The seven graphs of the engine, as ``GraphSpec`` data, and the modules they export.

    appearance     LivePortrait F: source (256^2, [0, 1]) -> feature volume
    motion         LivePortrait M + pose refinement: frames -> pitch/yaw/roll/t/exp/scale/kp
    warp           W + SPADE trunk + HeadNet: feature volume, source/driving keypoints -> head latents
    denoiser       WFM (+ IFM infofill) + UNet for a batch of windows, both CFG halves (batch 2 x windows)
    vae_encoder    source image -> posterior mode (unscaled, the release's conditioning latent)
    vae_decoder    latents / scaling_factor -> image in [-1, 1]
    image_encoder  CLIP vision tower -> image embedding

Every module's ``forward`` takes the spec's inputs in order (argument names = tensor names)
and returns the outputs in the spec's order, so the torch backend and the exporter use them
unchanged. The release's quirks live in the networks themselves (residual re-injection,
0.27.2 time-context layout grouped per CFG pair), so they are traced into the graph as is.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.config.settings import DECODE_CHUNK, MOTION_CHUNK, ModelConfig
from engine.graphs.mode_modules import DOWN_RESIDUALS, DenoiserCondGraph, UnetGraph, WfmGraph
from engine.graphs.spec import Dim, GraphSpec, TensorSpec, random_tensor
from engine.models.liveportrait.keypoints import refine_kp_info
from engine.models.liveportrait.motion_branch import INPUT_SIZE as LP_INPUT  # LivePortrait always runs at 256x256
from engine.models.taesd import TAESD, width_for

GRAPH_NAMES = ("appearance", "motion", "warp", "denoiser", "vae_encoder", "vae_decoder", "image_encoder")
# graphs the fast modes use (engine.config.modes), built only on request: the denoiser split into WFM and UNet
# (WFM reuse across steps), and conditional-only variants whose batch is one row per window (no CFG pair)
MODE_GRAPH_NAMES = ("wfm", "unet", "denoiser_cond", "wfm_cond", "unet_cond")
ALL_GRAPH_NAMES = GRAPH_NAMES + MODE_GRAPH_NAMES
# graphs of networks an engine has only when given (engine.models.taesd: the tiny VAE decoder)
OPTIONAL_GRAPH_NAMES = ("tiny_decoder",)
GRID_SAMPLE_FORMS = ("onnx20", "custom", "decomposed")


@dataclass(frozen=True)
class GraphOptions:
    """What besides the model config shapes the graphs: resolution, window tiling, batch ranges."""

    image_size: int  # output frames are image_size x image_size
    window: int = 14  # frames per denoiser window
    max_windows: int = 4  # windows per denoiser call (each brings its CFG pair)
    opt_windows: int = 1
    motion_chunk: int = MOTION_CHUNK  # driving frames per warp call (the motion stage's chunk)
    max_decode: int = DECODE_CHUNK  # frames per VAE decoder call
    grid_sample: str = "onnx20"  # onnx20 (onnxruntime), custom (TensorRT plugin), decomposed (plugin-free)
    time_context: str = "release"

    def __post_init__(self) -> None:
        if self.grid_sample not in GRID_SAMPLE_FORMS:
            raise ValueError(f"grid_sample must be one of {GRID_SAMPLE_FORMS}, got {self.grid_sample!r}")
        if self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8, got {self.image_size}")


# ---------------------------------------------------------------------------------------- modules


class AppearanceGraph(nn.Module):
    def __init__(self, nets: Any) -> None:
        super().__init__()
        self.net = nets.motion.appearance_feature_extractor

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        return self.net(source)


class MotionGraph(nn.Module):
    def __init__(self, nets: Any) -> None:
        super().__init__()
        self.net = nets.motion.motion_extractor

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        info = refine_kp_info(self.net(images)._asdict())
        return info.pitch, info.yaw, info.roll, info.t, info.exp, info.scale, info.kp


@functools.lru_cache(maxsize=16)
def antialias_weights(in_size: int, out_size: int) -> tuple[tuple[float, ...], ...]:
    """[out, in] weights of torch's antialiased bilinear downscale (``F.interpolate(mode="bilinear",
    antialias=True, align_corners=False)``, ATen's ``upsample_bilinear2d_aa``) along one axis:
    a triangle filter widened by the scale, each row normalised. Plain Python, so under export the
    matrix is a constant."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    rows = []
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        w = [max(0.0, 1.0 - abs((j + lo - center + 0.5) * inv)) for j in range(hi - lo)]
        total = sum(w)
        row = [0.0] * in_size
        for j, wj in enumerate(w):
            row[lo + j] = wj / total if total else 0.0
        rows.append(tuple(row))
    return tuple(rows)


def fit_trunk_to_latents(trunk: torch.Tensor, side: int | None) -> torch.Tensor:
    """The release renders only at the size where LivePortrait's trunk grid equals the latent
    grid (512 -> 64x64). At other sizes the trunk is resized to the latent grid; at the native
    size this is a no-op, so the release's numbers are untouched.

    A downscale is antialiased. It is written as two matrix products with torch's own filter
    weights (``antialias_weights``) instead of ``Resize(antialias=1)``, which TensorRT's ONNX
    parser rejects; onnxruntime and TensorRT both run MatMul, and the values equal
    ``F.interpolate(..., antialias=True)`` up to float rounding (tests/test_gpu_fallbacks.py)."""
    if side is None or tuple(trunk.shape[-2:]) == (side, side):
        return trunk
    height, width = trunk.shape[-2:]
    if height <= side and width <= side:  # upscale: plain bilinear Resize, which every target runs
        return F.interpolate(trunk, size=(side, side), mode="bilinear", antialias=False)
    rows = torch.tensor(antialias_weights(int(height), side), dtype=trunk.dtype, device=trunk.device)
    cols = torch.tensor(antialias_weights(int(width), side), dtype=trunk.dtype, device=trunk.device)
    return rows @ trunk @ cols.T


class WarpGraph(nn.Module):
    """W(f_s; x_s, x_d) -> SPADE trunk -> HeadNet. The trunk is an output too (fixtures record it)."""

    def __init__(self, nets: Any, latent: int | None = None) -> None:
        super().__init__()
        self.warping = nets.motion.warping_module
        self.trunk = nets.motion.spade_generator
        self.head = nets.head_net
        self.latent = latent  # side of the latent grid the head latents must match

    def forward(
        self, feature_volume: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        warped = self.warping(feature_volume, kp_driving=kp_driving, kp_source=kp_source)
        trunk = self.trunk(warped.out)  # [F, C, h, w], float32 (LivePortrait never runs in half)
        fitted = fit_trunk_to_latents(trunk, self.latent)
        head_dtype = self.head.final_proj.weight.dtype
        return trunk, self.head(fitted[None].to(head_dtype))  # [F, c0, latent, latent]


class DenoiserGraph(nn.Module):
    """Windows x CFG halves in one batch [w0_u, w0_c, w1_u, ...]; outputs stay apart for the fixtures."""

    def __init__(self, nets: Any) -> None:
        super().__init__()
        self.denoiser = nets.denoiser

    def forward(
        self,
        sample: torch.Tensor,  # [2W, T, 8, h, w]
        timestep: torch.Tensor,  # [2W]: one per row, so windows at different noise levels share a call
        encoder_hidden_states: torch.Tensor,  # [2W, 1, D]
        added_time_ids: torch.Tensor,  # [2W, 3]
        head_latents: torch.Tensor,  # [2W, T, c0, h, w]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        heads = head_latents.flatten(0, 1)  # [2W*T, c0, h, w], the WFM's layout
        return self.denoiser.parts(sample, timestep, encoder_hidden_states, added_time_ids, heads)


class VaeEncoderGraph(nn.Module):
    def __init__(self, nets: Any) -> None:
        super().__init__()
        self.vae = nets.vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(image).latent_dist.mode()


class VaeDecoderGraph(nn.Module):
    def __init__(self, nets: Any) -> None:
        super().__init__()
        self.vae = nets.vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample


class TinyDecoderGraph(nn.Module):
    def __init__(self, nets: Any) -> None:
        super().__init__()
        self.decoder = nets.tiny_decoder

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents)


class ImageEncoderGraph(nn.Module):
    def __init__(self, nets: Any) -> None:
        super().__init__()
        self.encoder = nets.image_encoder

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values).image_embeds


# ---------------------------------------------------------------------------------------- samples


def _images01(spec: GraphSpec, values: Mapping[str, int], gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {t.name: torch.rand(t.concrete(values), generator=gen) for t in spec.inputs}


def _images_pm1(spec: GraphSpec, values: Mapping[str, int], gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {t.name: random_tensor(t.concrete(values), gen) for t in spec.inputs}


def _normal(scale: float):
    def sample(spec: GraphSpec, values: Mapping[str, int], gen: torch.Generator) -> dict[str, torch.Tensor]:
        return {t.name: torch.randn(t.concrete(values), generator=gen) * scale for t in spec.inputs}

    return sample


def _warp_sample(spec: GraphSpec, values: Mapping[str, int], gen: torch.Generator) -> dict[str, torch.Tensor]:
    shapes = spec.input_shapes(values)
    kp_source = random_tensor(shapes["kp_source"], gen, -0.6, 0.6)
    # driving keypoints near the source ones, as a moving head gives them
    kp_driving = kp_source + random_tensor(shapes["kp_driving"], gen, -0.08, 0.08)
    return {
        "feature_volume": torch.randn(shapes["feature_volume"], generator=gen),
        "kp_source": kp_source,
        "kp_driving": kp_driving,
    }


def _denoiser_sample(spec: GraphSpec, values: Mapping[str, int], gen: torch.Generator,
                     pairs: bool = True) -> dict[str, torch.Tensor]:
    shapes = spec.input_shapes(values)
    batch = shapes["sample"][0]
    # CFG layout: even rows unconditional (zeros); conditional-only graphs have no such rows
    uncond = (torch.arange(batch) % 2 == 0).float() if pairs else torch.zeros(batch)

    def cond_only(t: torch.Tensor) -> torch.Tensor:
        return t * (1 - uncond).reshape(-1, *[1] * (t.ndim - 1))

    sample = torch.randn(shapes["sample"], generator=gen)
    channels = sample.shape[2] // 2
    sample[:, :, channels:] = cond_only(sample[:, :, channels:])  # image latents: zeros in the uncond half
    return {
        "sample": sample,
        # one timestep per row; pairs differ so the graph is checked with mixed noise levels
        "timestep": torch.tensor([0.7, 0.7, -0.4, -0.4] * batch)[:batch],
        "encoder_hidden_states": cond_only(torch.randn(shapes["encoder_hidden_states"], generator=gen)),
        "added_time_ids": torch.tensor([[6.0, 127.0, 0.02]]).repeat(batch, 1),
        "head_latents": cond_only(torch.randn(shapes["head_latents"], generator=gen) * 0.5),
    }


def _split_sample(pairs: bool):
    """Sample inputs of the split / conditional graphs: the denoiser's, plus WFM residuals for the UNet."""

    def sample(spec: GraphSpec, values: Mapping[str, int], gen: torch.Generator) -> dict[str, torch.Tensor]:
        shapes = spec.input_shapes(values)
        base = _denoiser_sample(spec, values, gen, pairs) if "head_latents" in shapes else \
            _denoiser_sample(_with_heads(spec), values, gen, pairs)
        out = {n: base[n] for n in spec.input_names if n in base}
        for name in spec.input_names:
            if name not in out:  # a residual: small, like the zero-initialised convs' outputs
                out[name] = torch.randn(shapes[name], generator=gen) * 0.1
        return out

    return sample


def _with_heads(spec: GraphSpec) -> GraphSpec:
    # the UNet takes no head latents; borrow a shape for the shared sampler (its values are dropped)
    sample = spec.inputs[0]
    heads = TensorSpec("head_latents", sample.shape)
    return dataclasses.replace(spec, inputs=(*spec.inputs[:4], heads))


# ---------------------------------------------------------------------------------------- specs


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def wfm_residual_shapes(model: ModelConfig, latent: int) -> list[tuple[str, int, int]]:
    """(name, channels, side) of every WFM output the UNet takes: conv_in's skip, each layer's, each
    downsampler's (``down0`` ...), then the mid block's (``mid``); as WarpingFeatureMapper makes them."""
    channels = list(model.unet["block_out_channels"])
    layers = model.unet["layers_per_block"]
    layers = [layers] * len(channels) if isinstance(layers, int) else list(layers)
    shapes = [(channels[0], latent)]
    for i, c in enumerate(channels):
        shapes += [(c, latent >> i)] * layers[i]
        if i < len(channels) - 1:
            shapes.append((c, latent >> (i + 1)))
    if len(shapes) != DOWN_RESIDUALS:  # UnetGraph names its inputs (torch.export needs the names)
        raise ValueError(f"the split unet graph takes {DOWN_RESIDUALS} down residuals (SVD's layout), "
                         f"this config makes {len(shapes)}")
    named = [(f"down{i}", c, side) for i, (c, side) in enumerate(shapes)]
    return [*named, ("mid", channels[-1], latent >> (len(channels) - 1))]


def _mode_specs(model: ModelConfig, opts: GraphOptions, denoiser: GraphSpec) -> list[GraphSpec]:
    """wfm / unet (CFG pairs, batch 2 x windows) and their conditional-only twins (batch windows),
    plus denoiser_cond: the fused denoiser's inputs, the same weights and tolerances."""
    latent = denoiser.inputs[0].shape[-1]
    assert isinstance(latent, int), "the denoiser's latent side is static"
    out_ch = int(model.unet["out_channels"])
    specs = []
    for cond in (False, True):
        rows = "windows" if cond else "2*windows"
        frames = f"{opts.window if cond else 2 * opts.window}*windows"  # residuals are [rows*T, c, h, w]
        suffix = "_cond" if cond else ""

        def t(spec: TensorSpec, rows: str = rows) -> TensorSpec:
            return TensorSpec(spec.name, (rows, *spec.shape[1:]), spec.dtype)

        inputs = tuple(t(x) for x in denoiser.inputs)
        residuals = tuple(TensorSpec(n, (frames, c, side, side)) for n, c, side in wfm_residual_shapes(model, latent))
        infofill = TensorSpec("infofill", (rows, opts.window, out_ch, latent, latent))
        config = {**denoiser.config, "cond": cond}
        common = dict(dims=denoiser.dims, sample=_split_sample(pairs=not cond), config=config)
        layout = "conditional rows only, one per window" if cond else "both CFG halves"
        specs += [
            GraphSpec(name=f"wfm{suffix}", doc=f"WFM + IFM infofill alone ({layout}): residuals for the UNet",
                      inputs=inputs, outputs=(*residuals, infofill), factory=functools.partial(WfmGraph, cond=cond),
                      slots=("warping_feature_mapper",), **common),
            GraphSpec(name=f"unet{suffix}", doc=f"UNet with the WFM's residuals as inputs ({layout})",
                      inputs=(*inputs[:4], *residuals), outputs=(t(denoiser.outputs[0]),),
                      factory=functools.partial(UnetGraph, cond=cond), slots=("unet",), **common),
        ]
        if cond:
            specs.append(GraphSpec(name="denoiser_cond", doc=f"{denoiser.doc} ({layout})", inputs=inputs,
                                   outputs=tuple(t(x) for x in denoiser.outputs), factory=DenoiserCondGraph,
                                   slots=denoiser.slots, **common))
    return specs


def build_specs(model: ModelConfig, opts: GraphOptions, names: tuple[str, ...] = GRAPH_NAMES) -> dict[str, GraphSpec]:
    """The specs of the graphs ``names`` (default: the seven every build makes; ``ALL_GRAPH_NAMES``
    adds the fast modes' graphs) for ``model`` at ``opts``; shapes come from the configs, never weights."""
    lp = model.liveportrait
    afe = lp["appearance_feature_extractor_params"]
    num_kp = int(lp["motion_extractor_params"]["num_kp"])
    vol = LP_INPUT >> int(afe["num_down_blocks"])  # feature volume side = trunk side = latent side
    volume = (1, int(afe["reshape_channel"]), int(afe["reshape_depth"]), vol, vol)
    unet = model.unet
    c0 = model.head_channels
    latent = opts.image_size // 2 ** (len(model.vae["block_out_channels"]) - 1)
    lat_ch = model.latent_channels
    size, window = opts.image_size, opts.window
    cross = unet["cross_attention_dim"]
    cross = cross if isinstance(cross, int) else cross[0]
    # engine.kernels.decomposed reads the grid's shape as Python ints, which fixes the frame count
    # at trace time: that form gets a static chunk (the pipeline pads the last chunk).
    static = opts.grid_sample == "decomposed"
    frames = Dim("frames", opts.motion_chunk if static else 1, opts.motion_chunk, opts.motion_chunk)
    windows = Dim("windows", 1, opts.opt_windows, opts.max_windows)
    clip = model.clip_vision

    specs = [
        GraphSpec(
            name="appearance",
            doc="LivePortrait F: source image in [0, 1] at 256^2 -> 3-D feature volume f_s",
            inputs=(TensorSpec("source", (1, 3, LP_INPUT, LP_INPUT)),),
            outputs=(TensorSpec("feature_volume", volume),),
            dims=(),
            factory=AppearanceGraph,
            sample=_images01,
            slots=("appearance_feature_extractor",),
            fp32_only=True,
            config={"afe": _hash(afe)},
        ),
        GraphSpec(
            name="motion",
            doc="LivePortrait M and get_kp_info: frames in [0, 1] at 256^2 -> pose (degrees), t, exp, scale, kp",
            inputs=(TensorSpec("images", ("frames", 3, LP_INPUT, LP_INPUT)),),
            outputs=(
                TensorSpec("pitch", ("frames", 1)),
                TensorSpec("yaw", ("frames", 1)),
                TensorSpec("roll", ("frames", 1)),
                TensorSpec("t", ("frames", 3)),
                TensorSpec("exp", ("frames", num_kp, 3)),
                TensorSpec("scale", ("frames", 1)),
                TensorSpec("kp", ("frames", num_kp, 3)),
            ),
            dims=(Dim("frames", 1, 1, opts.motion_chunk),),
            factory=MotionGraph,
            sample=_images01,
            slots=("motion_extractor",),
            fp32_only=True,
            config={"m": _hash(lp["motion_extractor_params"])},
        ),
        GraphSpec(
            name="warp",
            doc="W + SPADE trunk + HeadNet: f_s, x_s, x_d per frame -> trunk and head latents",
            inputs=(
                TensorSpec("feature_volume", volume),
                TensorSpec("kp_source", (1, num_kp, 3)),
                TensorSpec("kp_driving", ("frames", num_kp, 3)),
            ),
            outputs=(
                TensorSpec("trunk", ("frames", model.trunk_channels, vol, vol)),
                TensorSpec("head_latents", ("frames", c0, latent, latent)),
            ),
            dims=(frames,),
            factory=functools.partial(WarpGraph, latent=latent),
            sample=_warp_sample,
            slots=("warping_module", "spade_generator", "head_embedder"),
            fp32_only=True,
            grid_sample=opts.grid_sample,
            # W amplifies rounding ~10x through its narrow keypoint Gaussians (fixture README)
            tolerance={"fp32": 1e-4, "fp16": 5e-2},
            config={
                "w": _hash(lp["warping_module_params"]),
                "g": _hash(lp["spade_generator_params"]),
                "head": [model.trunk_channels, c0, latent],
            },
        ),
        GraphSpec(
            name="denoiser",
            doc="WFM + IFM + UNet (release residual re-injection, time-context layout per CFG pair): "
            "one call denoises a batch of windows with both CFG halves",
            inputs=(
                TensorSpec("sample", ("2*windows", window, int(unet["in_channels"]), latent, latent)),
                TensorSpec("timestep", ("2*windows",)),
                TensorSpec("encoder_hidden_states", ("2*windows", 1, int(cross))),
                TensorSpec("added_time_ids", ("2*windows", 3)),
                TensorSpec("head_latents", ("2*windows", window, c0, latent, latent)),
            ),
            outputs=(
                TensorSpec("unet_out", ("2*windows", window, int(unet["out_channels"]), latent, latent)),
                TensorSpec("infofill", ("2*windows", window, int(unet["out_channels"]), latent, latent)),
            ),
            dims=(windows,),
            factory=DenoiserGraph,
            sample=_denoiser_sample,
            slots=("warping_feature_mapper", "unet"),
            config={"unet": _hash(unet), "time_context": opts.time_context},
        ),
        GraphSpec(
            name="vae_encoder",
            doc="VAE encoder: noise-augmented source in [-1, 1] -> posterior mode (unscaled)",
            inputs=(TensorSpec("image", (1, 3, size, size)),),
            outputs=(TensorSpec("latent", (1, lat_ch, latent, latent)),),
            dims=(),
            factory=VaeEncoderGraph,
            sample=_images_pm1,
            slots=("vae",),
            config={"vae": _hash(model.vae)},
        ),
        GraphSpec(
            name="vae_decoder",
            doc="VAE decoder: latents / scaling_factor -> frames in [-1, 1]",
            inputs=(TensorSpec("latents", ("frames", lat_ch, latent, latent)),),
            outputs=(TensorSpec("image", ("frames", 3, size, size)),),
            dims=(Dim("frames", 1, 1, opts.max_decode),),
            factory=VaeDecoderGraph,
            sample=_normal(3.0),
            slots=("vae",),
            config={"vae": _hash(model.vae)},
        ),
        GraphSpec(
            name="tiny_decoder",
            doc="TAESD decoder (engine.models.taesd): the sampler's scaled latents -> frames in [-1, 1]",
            inputs=(TensorSpec("latents", ("frames", lat_ch, latent, latent)),),
            outputs=(TensorSpec("image", ("frames", 3, size, size)),),
            dims=(Dim("frames", 1, 1, opts.max_decode),),
            factory=TinyDecoderGraph,
            sample=_normal(1.0),
            slots=("tiny_decoder",),
            config={"taesd": _hash(dict(TAESD, width=width_for(model.vae)))},
        ),
        GraphSpec(
            name="image_encoder",
            doc="CLIP vision tower + projection: normalised 224^2 pixels -> image embedding",
            inputs=(TensorSpec("pixel_values", (1, 3, int(clip["image_size"]), int(clip["image_size"]))),),
            outputs=(TensorSpec("image_embeds", (1, int(clip["projection_dim"]))),),
            dims=(),
            factory=ImageEncoderGraph,
            sample=_normal(1.0),
            slots=("image_encoder",),
            config={"clip": _hash(clip)},
        ),
    ]
    specs += _mode_specs(model, opts, next(s for s in specs if s.name == "denoiser"))
    unknown = sorted(set(names) - {s.name for s in specs})
    if unknown:
        raise ValueError(f"unknown graphs {unknown}; choose from {list(ALL_GRAPH_NAMES + OPTIONAL_GRAPH_NAMES)}")
    return {s.name: s for s in specs if s.name in names}


def describe_options(opts: GraphOptions) -> dict[str, Any]:
    return asdict(opts)
