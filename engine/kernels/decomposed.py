"""Plugin-free 5-D grid sampling out of ops every ONNX runtime and TensorRT implement natively.

The volume is laid out channels-last as a [N * D * H * W + 1, C] row table whose last row is
zeros. Each output voxel's taps become row indices (out-of-range taps point at the zero row,
so no mask ever multiplies the data), are fetched with one ``Gather`` (``index_select``) per
tap and blended with the trilinear weights. Coordinate math repeats ATen's GridSampler.h (and
kernels/grid_sample3d/grid_sample3d_math.h) operation for operation in float32, so results
equal ``torch.nn.functional.grid_sample`` for every mode (bilinear, nearest), padding mode
(zeros, border, reflection) and ``align_corners``.

Exported ops: Add/Sub/Mul/Div, Abs, Floor, Round, Mod (fmod=1), Where, comparisons, And, Cast,
Reshape, Transpose, Concat, Gather: opset 17 is enough and no custom domain is involved.
Shapes are read as Python ints, so export with static shapes.
"""

from __future__ import annotations

import torch

MODES = ("bilinear", "nearest")
PADDING_MODES = ("zeros", "border", "reflection")


def _unnormalize(coord: torch.Tensor, size: int, align_corners: bool) -> torch.Tensor:
    if align_corners:
        return ((coord + 1) / 2) * (size - 1)
    return ((coord + 1) * size - 1) / 2


def _clip(coord: torch.Tensor, size: int) -> torch.Tensor:
    # Selects, not clamp: ATen's std::min(size - 1, std::max(x, 0)) sends NaN to size - 1.
    coord = torch.where(coord < 0, 0.0, coord)
    return torch.where(coord < size - 1, coord, float(size - 1))


def _reflect(coord: torch.Tensor, twice_low: int, twice_high: int) -> torch.Tensor:
    if twice_low == twice_high:
        return torch.zeros_like(coord)
    low = twice_low / 2
    span = (twice_high - twice_low) / 2
    coord = (coord - low).abs()
    extra = torch.fmod(coord, span)
    flips = torch.floor(coord / span)
    odd = torch.fmod(flips, 2.0) == 1
    return torch.where(odd, span - extra + low, extra + low)


def _source_index(coord: torch.Tensor, size: int, padding_mode: str, align_corners: bool) -> torch.Tensor:
    coord = _unnormalize(coord, size, align_corners)
    if padding_mode == "border":
        coord = _clip(coord, size)
    elif padding_mode == "reflection":
        if align_corners:
            coord = _reflect(coord, 0, 2 * (size - 1))
        else:
            coord = _reflect(coord, -1, 2 * size - 1)
        coord = _clip(coord, size)
    # Past -2 or size + 1 every tap is outside anyway; clamping keeps the integer cast
    # defined for huge or NaN grid values (NaN -> -2, as in the C++ twin).
    coord = torch.where(coord >= -2, coord, -2.0)
    return torch.where(coord > size + 1, float(size + 1), coord)


def _axis(index: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer index and its in-range mask along one axis."""
    i = index.to(torch.int64)
    return i, (i >= 0) & (i < size)


def grid_sample3d_decomposed(
    input: torch.Tensor,
    grid: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = False,
) -> torch.Tensor:
    """``F.grid_sample`` on [N, C, D, H, W] input and [N, Do, Ho, Wo, 3] grid, decomposed."""
    if input.dim() != 5 or grid.dim() != 5 or grid.shape[-1] != 3:
        raise ValueError("grid_sample3d_decomposed expects [N, C, D, H, W] input and [N, Do, Ho, Wo, 3] grid")
    if grid.shape[0] != input.shape[0]:
        raise ValueError("grid_sample3d_decomposed: input and grid batch sizes differ")
    if mode not in MODES:
        raise ValueError(f"grid_sample3d_decomposed: mode must be one of {MODES}, got {mode!r}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(
            f"grid_sample3d_decomposed: padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}"
        )
    n, c, d, h, w = (int(s) for s in input.shape)
    _, od, oh, ow, _ = grid.shape  # symbolic under export: the frame count stays dynamic
    if min(d, h, w) <= 0:
        raise ValueError("grid_sample3d_decomposed: the input volume is empty")
    volume_rows = n * d * h * w

    # Coordinates in at least float32 even for half input: the weights need the precision.
    coord_dtype = torch.promote_types(grid.dtype, torch.float32)
    g = grid.to(coord_dtype).reshape(n, od * oh * ow, 3)
    ix = _source_index(g[..., 0], w, padding_mode, align_corners)
    iy = _source_index(g[..., 1], h, padding_mode, align_corners)
    iz = _source_index(g[..., 2], d, padding_mode, align_corners)

    table = input.permute(0, 2, 3, 4, 1).reshape(volume_rows, c)
    table = torch.cat([table, table.new_zeros(1, c)], dim=0)
    batch_row = (torch.arange(n, device=input.device, dtype=torch.int64) * (d * h * w)).reshape(n, 1)

    def gather(row: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        return table.index_select(0, torch.where(ok, row, volume_rows).reshape(-1))

    def zy_rows(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return batch_row + (z * h + y) * w

    if mode == "nearest":
        # torch.round rounds half to even, like ATen's std::nearbyint (and ONNX Round).
        (x, mx), (y, my), (z, mz) = (_axis(torch.round(i), s) for i, s in ((ix, w), (iy, h), (iz, d)))
        out = gather(zy_rows(z, y) + x, mx & my & mz)
    else:
        fx, fy, fz = torch.floor(ix), torch.floor(iy), torch.floor(iz)
        # ATen: weight of the low tap is (i0 + 1) - x, of the high tap x - i0.
        wx, wy, wz = ((fx + 1) - ix, ix - fx), ((fy + 1) - iy, iy - fy), ((fz + 1) - iz, iz - fz)
        x0, y0, z0 = fx.to(torch.int64), fy.to(torch.int64), fz.to(torch.int64)
        xs = [_axis(x0, w), _axis(x0 + 1, w)]
        ys = [_axis(y0, h), _axis(y0 + 1, h)]
        zs = [_axis(z0, d), _axis(z0 + 1, d)]
        # Row offsets, masks and x-y weight products shared by the taps that need them.
        zy = {(dz, dy): zy_rows(zs[dz][0], ys[dy][0]) for dz in (0, 1) for dy in (0, 1)}
        zy_ok = {(dz, dy): zs[dz][1] & ys[dy][1] for dz in (0, 1) for dy in (0, 1)}
        wxy = {(dy, dx): wx[dx] * wy[dy] for dy in (0, 1) for dx in (0, 1)}
        acc: torch.Tensor | None = None
        # Tap order and weight products as ATen (tnw, tne, tsw, tse, bnw, ...): equal sums.
        for k in range(8):
            dx, dy, dz = k & 1, (k >> 1) & 1, (k >> 2) & 1
            x, mx = xs[dx]
            weight = (wxy[dy, dx] * wz[dz]).reshape(-1, 1).to(input.dtype)
            term = gather(zy[dz, dy] + x, zy_ok[dz, dy] & mx) * weight
            acc = term if acc is None else acc + term
        assert acc is not None
        out = acc
    return out.reshape(n, od, oh, ow, c).permute(0, 4, 1, 2, 3).contiguous()
