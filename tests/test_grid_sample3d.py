"""5-D grid sampling: CPU twin, torch custom op and decomposition against F.grid_sample."""

from __future__ import annotations

import ctypes

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from needs import missing

from engine.kernels import grid_sample as ops
from engine.kernels.decomposed import grid_sample3d_decomposed

MODES = ["bilinear", "nearest"]
PADDINGS = ["zeros", "border", "reflection"]
TOL = {"atol": 1e-5, "rtol": 1e-5}
PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    handle = ops.load_kernel_library(required=False)
    if handle is None:
        missing(f"libfrvd_kernels.so is not built (run scripts/build_kernels.sh): {ops._lib_error}")
    return handle


def _grid(kind: str, shape: tuple[int, ...], sizes: tuple[int, int, int], align: bool, gen: torch.Generator):
    """Sampling grids of several flavours; `sizes` is (W, H, D), matching grid[..., 0:3]."""
    if kind == "inside":  # and just outside
        return torch.rand(shape, generator=gen) * 2.2 - 1.1
    if kind == "wide":  # several reflections deep
        return torch.rand(shape, generator=gen) * 12 - 6
    if kind == "far":  # far outside, mixed with ordinary points
        g = torch.rand(shape, generator=gen) * 2.4 - 1.2
        far = (torch.rand(shape, generator=gen) * 2 - 1) * 1e6
        return torch.where(torch.rand(shape, generator=gen) < 0.3, far, g)
    if kind == "lattice":  # voxel centres and half-way points: exact taps and rounding ties
        out = torch.empty(shape)
        for axis, size in enumerate(sizes):
            p = torch.randint(-6, 2 * size + 6, shape[:-1], generator=gen).float() / 2
            if align:
                out[..., axis] = p * 2 / max(size - 1, 1) - 1
            else:
                out[..., axis] = (2 * p + 1) / size - 1
        return out
    if kind == "special":
        values = torch.tensor([-1.0, 1.0, 0.0, -1.5, 1.5, -3.0, 3.0, 1e30, -1e30])
        return values[torch.randint(0, len(values), shape, generator=gen)]
    raise AssertionError(kind)


@st.composite
def cases(draw: st.DrawFn) -> dict:
    """A shape and grid; each property test then runs every mode x padding combination on it."""
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 40))
    d, h, w = (draw(st.integers(1, 20)) for _ in range(3))
    od, oh, ow = (draw(st.integers(1, 20)) for _ in range(3))
    align = draw(st.booleans())
    kind = draw(st.sampled_from(["inside", "wide", "far", "lattice", "special"]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return {
        "input": torch.randn((n, c, d, h, w), generator=gen),
        "grid": _grid(kind, (n, od, oh, ow, 3), (w, h, d), align, gen),
        "align_corners": align,
    }


def _variants(case: dict) -> list[dict]:
    return [{**case, "mode": m, "padding_mode": p} for m in MODES for p in PADDINGS]


def _reference(case: dict) -> torch.Tensor:
    return F.grid_sample(
        case["input"],
        case["grid"],
        mode=case["mode"],
        padding_mode=case["padding_mode"],
        align_corners=case["align_corners"],
    )


def _nan_filled_cpu_twin(case: dict) -> torch.Tensor:
    n, c = case["input"].shape[:2]
    out = torch.full((n, c, *case["grid"].shape[1:4]), float("nan"))
    ops.run_cpu_kernel(
        case["input"], case["grid"], out, case["mode"], case["padding_mode"], case["align_corners"]
    )
    return out


@PROPERTY
@given(case=cases())
def test_cpu_twin_matches_torch(lib: ctypes.CDLL, case: dict) -> None:
    for v in _variants(case):
        out = _nan_filled_cpu_twin(v)
        assert not out.isnan().any(), "an output element was never written (or NaN produced)"
        torch.testing.assert_close(out, _reference(v), **TOL)


@PROPERTY
@given(case=cases())
def test_custom_op_matches_torch(lib: ctypes.CDLL, case: dict) -> None:
    for v in _variants(case):
        out = torch.ops.frvd.grid_sample3d(
            v["input"], v["grid"], v["mode"], v["padding_mode"], v["align_corners"]
        )
        assert out.is_contiguous() and not out.isnan().any()
        torch.testing.assert_close(out, _reference(v), **TOL)


@PROPERTY
@given(case=cases())
def test_decomposition_matches_torch(case: dict) -> None:
    for v in _variants(case):
        out = grid_sample3d_decomposed(
            v["input"], v["grid"], v["mode"], v["padding_mode"], v["align_corners"]
        )
        assert out.is_contiguous() and not out.isnan().any()
        torch.testing.assert_close(out, _reference(v), **TOL)


def _liveportrait_grid(n: int, stacked: int, gen: torch.Generator) -> torch.Tensor:
    """Identity grid over 16x64x64 plus a deformation (some points leave the volume); `stacked`
    grids are concatenated on the depth axis as engine's batched_grid_sample does."""
    axes = [torch.linspace(-1, 1, s) for s in (16, 64, 64)]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    identity = torch.stack([xx, yy, zz], dim=-1)
    grid = identity + 0.08 * torch.randn((n * stacked, 16, 64, 64, 3), generator=gen)
    return grid.reshape(n, stacked * 16, 64, 64, 3).contiguous()


@pytest.mark.parametrize(
    "n,c,stacked",
    [(1, 32, 1), (22, 4, 1), (1, 4, 22)],
    ids=["warp_1x32", "dense_motion_22x4", "dense_motion_stacked_1x4_grid352"],
)
def test_liveportrait_shapes(lib: ctypes.CDLL, n: int, c: int, stacked: int) -> None:
    gen = torch.Generator().manual_seed(n * 100 + c)
    case = {
        "input": torch.randn((n, c, 16, 64, 64), generator=gen),
        "grid": _liveportrait_grid(n, stacked, gen),
        "mode": "bilinear",
        "padding_mode": "zeros",
        "align_corners": False,
    }
    ref = _reference(case)
    assert ref.shape == (n, c, 16 * stacked, 64, 64)
    twin = _nan_filled_cpu_twin(case)
    assert not twin.isnan().any()
    torch.testing.assert_close(twin, ref, **TOL)
    with ops.grid_sample_impl("kernel"):
        torch.testing.assert_close(ops.grid_sample3d(case["input"], case["grid"]), ref, **TOL)
    decomposed = grid_sample3d_decomposed(case["input"], case["grid"])
    torch.testing.assert_close(decomposed, ref, **TOL)


@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("mode", MODES)
def test_non_finite_values_outside_the_taps_do_not_leak(
    lib: ctypes.CDLL, mode: str, padding_mode: str
) -> None:
    # ATen skips out-of-range taps instead of weighting them by zero; an inf stored where an
    # out-of-range tap's clamped offset would land must not turn the result into NaN.
    x = torch.randn(1, 2, 3, 4, 5)
    x[:, :, 0, 0, 0] = float("inf")
    grid = torch.tensor([[[[[5.0, 5.0, 5.0], [-7.0, 0.3, 0.1], [0.2, -0.4, 0.6]]]]])
    case = {"input": x, "grid": grid, "mode": mode, "padding_mode": padding_mode, "align_corners": False}
    ref = _reference(case)
    torch.testing.assert_close(_nan_filled_cpu_twin(case), ref, equal_nan=True, **TOL)
    torch.testing.assert_close(
        grid_sample3d_decomposed(x, grid, mode, padding_mode, False), ref, equal_nan=True, **TOL
    )


def test_empty_output_and_custom_op_registration(lib: ctypes.CDLL) -> None:
    x = torch.randn(2, 3, 4, 5, 6)
    empty_grid = torch.zeros(2, 0, 4, 4, 3)
    out = torch.ops.frvd.grid_sample3d(x, empty_grid, "bilinear", "zeros", False)
    assert out.shape == (2, 3, 0, 4, 4)
    result = torch.library.opcheck(
        torch.ops.frvd.grid_sample3d.default, (x, torch.rand(2, 3, 2, 2, 3), "nearest", "border", True)
    )
    assert all(v == "SUCCESS" for v in result.values()), result


def _call(lib: ctypes.CDLL, sizes: list[int], mode: int = 0, pad: int = 0, pointers: bool = True) -> int:
    n, c, d, h, w, od, oh, ow = sizes
    x = torch.zeros(max(n * c * d * h * w, 1))
    g = torch.zeros(max(n * od * oh * ow * 3, 1))
    out = torch.zeros(max(n * c * od * oh * ow, 1))
    ptrs = (x.data_ptr(), g.data_ptr(), out.data_ptr()) if pointers else (None, None, None)
    return lib.frvd_grid_sample3d_cpu(*ptrs, *sizes, mode, pad, 0, 1)


def test_c_abi_rejects_bad_arguments(lib: ctypes.CDLL) -> None:
    ok = [1, 2, 3, 4, 5, 2, 2, 2]
    assert _call(lib, ok) == 0
    assert _call(lib, ok, pointers=False) == 1  # null pointers for a non-empty problem
    assert _call(lib, [1, 2, 3, 4, 5, 0, 2, 2], pointers=False) == 0  # empty output: nothing to touch
    assert _call(lib, [1, 2, 0, 4, 5, 2, 2, 2]) == 2  # empty input volume, as ATen refuses
    assert _call(lib, [-1, 2, 3, 4, 5, 2, 2, 2]) == 2
    assert _call(lib, ok, mode=2) == 4
    assert _call(lib, ok, pad=3) == 5
    assert lib.frvd_kernels_abi_version() == ops.ABI_VERSION
    assert b"padding" in lib.frvd_status_string(5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour of the CUDA entry")
def test_cuda_entry_fails_cleanly_without_a_gpu(lib: ctypes.CDLL) -> None:
    x, g, out = torch.zeros(120), torch.zeros(24), torch.zeros(16)
    args = (x.data_ptr(), g.data_ptr(), out.data_ptr(), 1, 2, 3, 4, 5, 2, 2, 2)
    status = lib.frvd_grid_sample3d(*args, 0, 0, 0, 0, None)
    assert status == (7 if lib.frvd_kernels_has_cuda() else 6)
    assert lib.frvd_grid_sample3d(*args, 5, 0, 0, 0, None) == 3  # dtype checked before any launch


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("mode", MODES)
def test_cuda_kernel_matches_torch(
    lib: ctypes.CDLL, dtype: torch.dtype, mode: str, padding_mode: str
) -> None:
    if not lib.frvd_kernels_has_cuda():
        pytest.skip("libfrvd_kernels.so was built without CUDA")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, 7, 9, 10, 11), generator=gen).cuda().to(dtype)
    g = (torch.rand((2, 5, 6, 7, 3), generator=gen) * 2.6 - 1.3).cuda().to(dtype)
    for align in (False, True):
        out = torch.ops.frvd.grid_sample3d(x, g, mode, padding_mode, align)
        ref = F.grid_sample(x.float(), g.float(), mode=mode, padding_mode=padding_mode, align_corners=align)
        tol = TOL if dtype == torch.float32 else {"atol": 2e-2, "rtol": 1e-2}
        torch.testing.assert_close(out.float(), ref, **tol)
