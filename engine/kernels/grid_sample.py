"""5-D grid sampling entry point used by the warping network.

``grid_sample3d`` has the signature and semantics of ``torch.nn.functional.grid_sample`` on
5-D input and runs one of three implementations:

* ``kernel``: ``torch.ops.frvd.grid_sample3d``, a ``torch.library`` custom op over the C ABI
  of ``libfrvd_kernels.so`` (CPU twin for float32 CPU tensors, CUDA kernel for float32 and
  float16 CUDA tensors). Requesting it without a built library raises ``KernelLibraryError``.
* ``torch``: ``torch.nn.functional.grid_sample``.
* ``decomposed``: ``engine.kernels.decomposed``, plain tensor ops that export to ONNX without
  custom nodes (for TensorRT without a plugin).

The default ``auto`` uses the kernel where it applies and otherwise falls back to torch,
logging once why. Choose with ``set_grid_sample_impl(...)``, the ``grid_sample_impl(...)``
context manager or the ``FRVD_GRID_SAMPLE`` environment variable. The library is taken from
``FRVD_KERNEL_LIB`` (file or folder), else ``build/`` in the repository, else next to this
package.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.errors import EngineError

log = logging.getLogger(__name__)

LIB_ENV = "FRVD_KERNEL_LIB"
IMPL_ENV = "FRVD_GRID_SAMPLE"
LIB_NAME = "libfrvd_kernels.so"
ABI_VERSION = 1  # must equal FRVD_KERNELS_ABI_VERSION in kernels/grid_sample3d/frvd_grid_sample3d.h
IMPLS = ("auto", "kernel", "torch", "decomposed")

# Codes of the C ABI enums.
MODE_CODES = {"bilinear": 0, "nearest": 1}
PADDING_CODES = {"zeros": 0, "border": 1, "reflection": 2}
DTYPE_CODES = {torch.float32: 0, torch.float16: 1}
_BUILD_HINT = "build it with scripts/build_kernels.sh (CMake) or point FRVD_KERNEL_LIB at libfrvd_kernels.so"


FRVD_ERR_NO_CUDA = 6  # frvd_status codes that concern the CUDA side (frvd_grid_sample3d.h)
FRVD_ERR_CUDA = 7


class KernelLibraryError(EngineError):
    """libfrvd_kernels.so is missing, stale, or rejected a call (``status``: its frvd_status code)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- library loading

_lib: ctypes.CDLL | None = None
_lib_error: str | None = None
_lib_loaded = False
_warned: set[str] = set()
_cuda_problem: str | None = None  # why the CUDA kernel cannot run here (probed once, or seen failing)
_cuda_probed = False


def kernel_library_candidates() -> list[Path]:
    """Where the library is looked for, in order."""
    override = os.environ.get(LIB_ENV)
    if override:
        p = Path(override)
        return [p / LIB_NAME if p.is_dir() else p]
    package_dir = Path(__file__).resolve().parent
    return [package_dir.parents[1] / "build" / LIB_NAME, package_dir / LIB_NAME]


def _declare(lib: ctypes.CDLL) -> None:
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    lib.frvd_kernels_abi_version.restype = i32
    lib.frvd_kernels_has_cuda.restype = i32
    lib.frvd_status_string.restype = ctypes.c_char_p
    lib.frvd_status_string.argtypes = [i32]
    lib.frvd_grid_sample3d.restype = i32
    lib.frvd_grid_sample3d.argtypes = [ptr, ptr, ptr] + [i64] * 8 + [i32] * 4 + [ptr]
    lib.frvd_grid_sample3d_cpu.restype = i32
    lib.frvd_grid_sample3d_cpu.argtypes = [ptr, ptr, ptr] + [i64] * 8 + [i32] * 4
    if hasattr(lib, "frvd_cuda_check"):  # newer than ABI 1's first release: optional
        lib.frvd_cuda_check.restype = i32
        lib.frvd_cuda_check.argtypes = [ctypes.POINTER(i32)] * 3


def _try_load() -> tuple[ctypes.CDLL | None, str | None]:
    candidates = kernel_library_candidates()
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        where = ", ".join(str(p) for p in candidates)
        return None, f"{LIB_NAME} was not found (looked in: {where}); {_BUILD_HINT}"
    try:
        lib = ctypes.CDLL(str(path))
        _declare(lib)
    except (OSError, AttributeError) as exc:
        return None, f"{path} could not be loaded ({exc}); rebuild it: {_BUILD_HINT}"
    version = lib.frvd_kernels_abi_version()
    if version != ABI_VERSION:
        return None, f"{path} has ABI version {version}, this engine expects {ABI_VERSION}; rebuild it"
    return lib, None


def load_kernel_library(required: bool = True) -> ctypes.CDLL | None:
    """The loaded library (located and loaded once per process).

    With ``required`` a missing or stale library raises ``KernelLibraryError``; otherwise it
    returns None.
    """
    global _lib, _lib_error, _lib_loaded
    if not _lib_loaded:
        _lib, _lib_error = _try_load()
        _lib_loaded = True
    if _lib is None and required:
        raise KernelLibraryError(_lib_error or f"{LIB_NAME} is not available")
    return _lib


def kernel_library_available() -> bool:
    return load_kernel_library(required=False) is not None


def kernel_library_has_cuda() -> bool:
    lib = load_kernel_library(required=False)
    return bool(lib is not None and lib.frvd_kernels_has_cuda())


def _version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}" if v else "none"


def cuda_kernel_problem() -> str | None:
    """Why the library's CUDA kernel cannot launch on this machine (None when it can, or when the
    library predates ``frvd_cuda_check``). Probed once: a driver older than the CUDA toolkit the
    library was compiled with (CUDA 13 needs driver >= 580) fails every launch with status 7."""
    global _cuda_problem, _cuda_probed
    if _cuda_probed or _cuda_problem is not None:
        return _cuda_problem
    _cuda_probed = True
    lib = load_kernel_library(required=False)
    if lib is None or not lib.frvd_kernels_has_cuda():
        return _cuda_problem
    check = getattr(lib, "frvd_cuda_check", None)
    if check is None:
        return None
    runtime, driver, devices = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    status = check(ctypes.byref(runtime), ctypes.byref(driver), ctypes.byref(devices))
    if status == 0:
        return None
    if driver.value == 0:
        _cuda_problem = f"no NVIDIA driver was found, so {LIB_NAME}'s CUDA kernel cannot run"
    elif devices.value == 0:
        _cuda_problem = f"{LIB_NAME}'s CUDA kernel sees no CUDA device (driver supports CUDA {_version(driver.value)})"
    else:
        _cuda_problem = cuda_check_message(status, runtime.value, driver.value)
    return _cuda_problem


CUDA_PROBE_BASE = 1000  # frvd_cuda_check: a failed probe launch returns this + its cudaError_t
_PROBE_HINTS = {
    35: "the driver is older than this CUDA runtime",
    209: "the library has no machine code for this GPU: rebuild it for this GPU's architecture "
         "(python -m engine.gpucheck builds one, or scripts/build_kernels.sh -DCMAKE_CUDA_ARCHITECTURES=native)",
    222: "the library's PTX is newer than the driver can compile: rebuild it with a CUDA toolkit no newer "
         "than the driver, for this GPU's architecture",
}


def cuda_check_message(status: int, runtime: int, driver: int) -> str:
    """Why ``frvd_cuda_check`` refused (status != 0), for a driver and devices that exist. Under CUDA's
    minor-version compatibility only an older driver MAJOR rules the library out by version; anything
    else is what a real probe launch answered."""
    if driver // 1000 < runtime // 1000:
        return (f"{LIB_NAME} was built with CUDA {_version(runtime)} but the NVIDIA driver supports only CUDA "
                f"{_version(driver)} (an older major); update the driver (CUDA 13 needs >= 580) or rebuild the "
                f"library with a CUDA {_version(driver).split('.')[0]}.x toolkit (python -m engine.gpucheck does)")
    if status >= CUDA_PROBE_BASE:
        err = status - CUDA_PROBE_BASE
        hint = _PROBE_HINTS.get(err, "see cudaError_t")
        return (f"{LIB_NAME}'s probe launch failed with cudaError {err} (built with CUDA {_version(runtime)}, "
                f"driver CUDA {_version(driver)}): {hint}")
    return f"{LIB_NAME}'s CUDA kernel cannot run here (frvd_cuda_check status {status})"


def _note_cuda_failure(err: KernelLibraryError) -> None:
    """A launch failed with status 7: the CUDA kernel is unusable for the rest of the process."""
    global _cuda_problem
    _cuda_problem = _cuda_problem or f"the CUDA kernel failed to launch ({err})"


def _reset_kernel_library() -> None:
    """Forget the loaded library and the once-only warnings (tests switch FRVD_KERNEL_LIB)."""
    global _lib, _lib_error, _lib_loaded, _cuda_problem, _cuda_probed
    _lib, _lib_error, _lib_loaded = None, None, False
    _cuda_problem, _cuda_probed = None, False
    _warned.clear()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def _check(lib: ctypes.CDLL, status: int) -> None:
    if status != 0:
        text = lib.frvd_status_string(status).decode()
        raise KernelLibraryError(f"frvd_grid_sample3d failed with status {status}: {text}", status=status)


# --------------------------------------------------------------------------- custom op


def _output_shape(input: torch.Tensor, grid: torch.Tensor) -> tuple[int, ...]:
    torch._check(input.dim() == 5, lambda: f"grid_sample3d expects 5-D input, got {input.dim()}-D")
    torch._check(grid.dim() == 5 and grid.shape[-1] == 3, lambda: "grid must be [N, Do, Ho, Wo, 3]")
    torch._check(input.shape[0] == grid.shape[0], lambda: "input and grid batch sizes differ")
    torch._check(input.dtype == grid.dtype, lambda: "input and grid must have the same dtype")
    return (input.shape[0], input.shape[1], grid.shape[1], grid.shape[2], grid.shape[3])


def _codes(mode: str, padding_mode: str) -> tuple[int, int]:
    if mode not in MODE_CODES:
        raise ValueError(f"grid_sample3d: mode must be one of {sorted(MODE_CODES)}, got {mode!r}")
    if padding_mode not in PADDING_CODES:
        raise ValueError(
            f"grid_sample3d: padding_mode must be one of {sorted(PADDING_CODES)}, got {padding_mode!r}"
        )
    return MODE_CODES[mode], PADDING_CODES[padding_mode]


def _sizes(input: torch.Tensor, grid: torch.Tensor) -> list[int]:
    return [*input.shape, *grid.shape[1:4]]


def run_cpu_kernel(
    input: torch.Tensor,
    grid: torch.Tensor,
    out: torch.Tensor,
    mode: str,
    padding_mode: str,
    align_corners: bool,
) -> torch.Tensor:
    """Run the CPU twin into ``out`` (contiguous float32, NCDHW); returns ``out``."""
    lib = load_kernel_library(required=True)
    assert lib is not None
    mode_code, pad_code = _codes(mode, padding_mode)
    for name, t in (("input", input), ("grid", grid), ("out", out)):
        if t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(f"run_cpu_kernel: {name} must be a contiguous float32 CPU tensor")
    if tuple(out.shape) != _output_shape(input, grid):
        raise ValueError(
            f"run_cpu_kernel: out has shape {tuple(out.shape)}, expected {_output_shape(input, grid)}"
        )
    status = lib.frvd_grid_sample3d_cpu(
        input.data_ptr(),
        grid.data_ptr(),
        out.data_ptr(),
        *_sizes(input, grid),
        mode_code,
        pad_code,
        int(align_corners),
        torch.get_num_threads(),
    )
    _check(lib, status)
    return out


@torch.library.custom_op("frvd::grid_sample3d", mutates_args=(), device_types="cpu")
def _grid_sample3d_op(
    input: torch.Tensor, grid: torch.Tensor, mode: str, padding_mode: str, align_corners: bool
) -> torch.Tensor:
    if input.dtype != torch.float32:
        raise ValueError(f"frvd::grid_sample3d on CPU supports float32 only, got {input.dtype}")
    input, grid = input.contiguous(), grid.contiguous()
    out = torch.empty(_output_shape(input, grid), dtype=input.dtype)
    return run_cpu_kernel(input, grid, out, mode, padding_mode, align_corners)


@_grid_sample3d_op.register_kernel("cuda")
def _grid_sample3d_cuda(
    input: torch.Tensor, grid: torch.Tensor, mode: str, padding_mode: str, align_corners: bool
) -> torch.Tensor:
    lib = load_kernel_library(required=True)
    assert lib is not None
    if not lib.frvd_kernels_has_cuda():
        raise KernelLibraryError(f"{LIB_NAME} was built without CUDA (nvcc not found at build time)",
                                 status=FRVD_ERR_NO_CUDA)
    problem = cuda_kernel_problem()
    if problem is not None:
        raise KernelLibraryError(problem, status=FRVD_ERR_CUDA)
    if input.dtype not in DTYPE_CODES:
        raise ValueError(f"frvd::grid_sample3d on CUDA supports float32 and float16, got {input.dtype}")
    mode_code, pad_code = _codes(mode, padding_mode)
    input, grid = input.contiguous(), grid.contiguous()
    out = torch.empty(_output_shape(input, grid), dtype=input.dtype, device=input.device)
    # The kernel is enqueued on torch's current stream of the input's device, so it is
    # ordered with the surrounding torch work without any synchronisation.
    with torch.cuda.device(input.device):
        stream = torch.cuda.current_stream(input.device).cuda_stream
        status = lib.frvd_grid_sample3d(
            input.data_ptr(),
            grid.data_ptr(),
            out.data_ptr(),
            *_sizes(input, grid),
            DTYPE_CODES[input.dtype],
            mode_code,
            pad_code,
            int(align_corners),
            stream,
        )
    _check(lib, status)
    return out


@_grid_sample3d_op.register_fake
def _grid_sample3d_fake(
    input: torch.Tensor, grid: torch.Tensor, mode: str, padding_mode: str, align_corners: bool
) -> torch.Tensor:
    _codes(mode, padding_mode)
    return input.new_empty(_output_shape(input, grid))


# --------------------------------------------------------------------------- implementation choice

_impl_override: str | None = None


def _validate_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"grid_sample3d implementation must be one of {IMPLS}, got {impl!r}")
    return impl


def get_grid_sample_impl() -> str:
    """The active implementation: set_grid_sample_impl(), else $FRVD_GRID_SAMPLE, else auto."""
    if _impl_override is not None:
        return _impl_override
    return _validate_impl(os.environ.get(IMPL_ENV, "auto").strip().lower() or "auto")


def set_grid_sample_impl(impl: str | None) -> None:
    """Pick "auto", "kernel", "torch" or "decomposed"; None returns to $FRVD_GRID_SAMPLE / auto."""
    global _impl_override
    _impl_override = None if impl is None else _validate_impl(impl)


@contextlib.contextmanager
def grid_sample_impl(impl: str | None) -> Iterator[None]:
    """Temporarily use another implementation (for export, tests, benchmarks)."""
    global _impl_override
    previous = _impl_override
    set_grid_sample_impl(impl)
    try:
        yield
    finally:
        _impl_override = previous


def _kernel_unsupported(input: torch.Tensor, grid: torch.Tensor, mode: str, padding_mode: str) -> str | None:
    """Why the kernel cannot serve this call (None when it can)."""
    if input.dim() != 5 or grid.dim() != 5:
        return "input is not 5-D"
    if mode not in MODE_CODES or padding_mode not in PADDING_CODES:
        return f"mode={mode!r} / padding_mode={padding_mode!r} is not supported"
    if grid.dtype != input.dtype or grid.device != input.device:
        return "input and grid differ in dtype or device"
    if torch.compiler.is_exporting():
        # Export only records the op (its fake kernel gives the shape); the ONNX translation
        # or TensorRT plugin decides what runs, so any dtype the CUDA kernel takes is fine.
        return None if input.dtype in DTYPE_CODES else f"dtype {input.dtype} (float32/float16 only)"
    if torch.is_grad_enabled() and (input.requires_grad or grid.requires_grad):
        return "gradients are required (the kernel is forward-only)"
    if input.device.type == "cpu":
        return None if input.dtype == torch.float32 else f"CPU dtype {input.dtype} (float32 only)"
    if input.device.type == "cuda":
        return None if input.dtype in DTYPE_CODES else f"CUDA dtype {input.dtype} (float32/float16 only)"
    return f"device {input.device.type}"


def grid_sample3d(
    input: torch.Tensor,
    grid: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = False,
) -> torch.Tensor:
    """Sample a [N, C, D, H, W] volume at a [N, Do, Ho, Wo, 3] grid (xyz order)."""
    impl = get_grid_sample_impl()
    align = bool(align_corners)  # F.grid_sample treats None as False
    if impl == "torch":
        return F.grid_sample(input, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    if impl == "decomposed" and input.dim() == 5 and mode in MODE_CODES and padding_mode in PADDING_CODES:
        from engine.kernels.decomposed import grid_sample3d_decomposed

        return grid_sample3d_decomposed(
            input, grid, mode=mode, padding_mode=padding_mode, align_corners=align
        )
    if impl == "decomposed":  # 4-D input or a mode the decomposition lacks: torch's own semantics
        return F.grid_sample(input, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    reason = _kernel_unsupported(input, grid, mode, padding_mode)
    if reason is None and impl == "auto":
        if not kernel_library_available():
            reason = _lib_error or f"{LIB_NAME} is not available"
        elif input.device.type == "cuda" and not kernel_library_has_cuda():
            reason = f"{LIB_NAME} was built without CUDA"
        elif input.device.type == "cuda" and not torch.compiler.is_exporting():
            reason = cuda_kernel_problem()
    if reason is not None:
        # An explicit "kernel" request still cannot serve what the kernel does not
        # implement (4-D input, bicubic, autograd, other dtypes); torch does it exactly.
        _warn_once(reason, f"grid_sample3d: using torch.nn.functional.grid_sample ({reason})")
        return F.grid_sample(input, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    try:
        return _call_kernel(input, grid, mode, padding_mode, align)
    except KernelLibraryError as err:
        # "kernel" was asked for explicitly: one clear error. "auto" keeps working on torch when
        # the CUDA side cannot launch (status 7, e.g. a driver older than the build's CUDA).
        if impl != "auto" or err.status != FRVD_ERR_CUDA:
            raise
        _note_cuda_failure(err)
        _warn_once(str(_cuda_problem), f"grid_sample3d: using torch.nn.functional.grid_sample ({_cuda_problem})")
        return F.grid_sample(input, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)


def _call_kernel(input: torch.Tensor, grid: torch.Tensor, mode: str, padding_mode: str,
                 align_corners: bool) -> torch.Tensor:
    """The custom op (a seam the tests replace to simulate a failing CUDA launch)."""
    return torch.ops.frvd.grid_sample3d(input, grid, mode, padding_mode, align_corners)
