"""Build ``libfrvd_kernels.so`` on the machine that will run it (the GPU self-check does this first).

A library compiled elsewhere is the wrong one on a lent GPU box: ``build/`` is not carried, and one
built with CUDA 13 cannot launch on a CUDA 12 driver. So the kernel is compiled there, by ``nvcc``
directly (no CMake needed): the CPU twin and the CUDA kernel, static cudart, machine code for the GPU's
own architecture (``sm_XY`` from torch) plus its PTX. The nvcc must have the CUDA major of the torch
that will call the kernel (``torch.version.cuda``): the same major as the driver torch already runs on,
so CUDA's minor-version compatibility covers the library too.

Pure functions (``find_nvcc``, ``nvcc_version``, ``build_command``, ``check_toolkit``) are tested on CPU;
``build_library`` runs nvcc (it compiles here too: nvcc needs no GPU).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SOURCES = Path(__file__).resolve().parents[2] / "kernels" / "grid_sample3d"
LIB_NAME = "libfrvd_kernels.so"
# The CMake build's flags (CMakeLists.txt): no FMA contraction in the CPU twin (ATen's rounding),
# hidden symbols except the C ABI.
HOST_FLAGS = "-fPIC,-ffp-contract=off,-fno-trapping-math,-fvisibility=hidden,-O3"


class KernelBuildError(RuntimeError):
    """nvcc is missing, of the wrong CUDA major, or the compile failed (the message says which)."""


@dataclass(frozen=True)
class Toolkit:
    nvcc: Path
    version: str  # "12.8"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


def find_nvcc(explicit: str | os.PathLike | None = None) -> Path | None:
    """``explicit``, else ``$CUDA_HOME/bin/nvcc``, else nvcc on PATH, else /usr/local/cuda/bin/nvcc."""
    candidates: list[str | os.PathLike] = [explicit] if explicit else []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "bin" / "nvcc")
    on_path = shutil.which("nvcc")
    candidates += [on_path] if on_path else []
    candidates.append("/usr/local/cuda/bin/nvcc")
    for c in candidates:
        if Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    return None


def parse_nvcc_version(text: str) -> str:
    """"Cuda compilation tools, release 12.8, V12.8.93" -> "12.8"."""
    found = re.search(r"release (\d+)\.(\d+)", text)
    if not found:
        raise KernelBuildError(f"cannot read nvcc's version from: {text.strip()[-200:]!r}")
    return f"{found.group(1)}.{found.group(2)}"


def nvcc_version(nvcc: Path) -> str:
    done = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=60)
    return parse_nvcc_version(done.stdout + done.stderr)


def check_toolkit(toolkit: Toolkit, torch_cuda: str | None) -> None:
    """nvcc's major must be torch's (``torch.version.cuda``): the driver runs torch's major, so a library
    of that major launches under minor-version compatibility; a newer major would need a newer driver."""
    if torch_cuda is None:
        raise KernelBuildError("torch was built without CUDA: there is no CUDA runtime to build the kernel for")
    want = int(torch_cuda.split(".")[0])
    if toolkit.major != want:
        raise KernelBuildError(f"nvcc {toolkit.version} ({toolkit.nvcc}) is CUDA {toolkit.major}, torch runs "
                               f"CUDA {torch_cuda}: put a CUDA {want}.x nvcc on PATH (or CUDA_HOME), or pass a "
                               f"library built with one (--kernel)")


def arch_flags(capability: tuple[int, int]) -> list[str]:
    """SASS for the GPU's own architecture and its PTX (``-gencode`` pair)."""
    sm = f"{capability[0]}{capability[1]}"
    return [f"-gencode=arch=compute_{sm},code=sm_{sm}", f"-gencode=arch=compute_{sm},code=compute_{sm}"]


def build_command(nvcc: Path, capability: tuple[int, int], out: Path, sources: Path = SOURCES) -> list[str]:
    files = [sources / "grid_sample3d_abi.cpp", sources / "grid_sample3d_cpu.cpp", sources / "grid_sample3d_cuda.cu"]
    return [str(nvcc), "-shared", "-std=c++17", "-O3", "-DFRVD_WITH_CUDA=1", f"-I{sources}",
            f"-Xcompiler={HOST_FLAGS}", "--cudart=static", *arch_flags(capability), "-lpthread",
            *map(str, files), "-o", str(out)]


def build_library(out_dir: Path, capability: tuple[int, int], torch_cuda: str | None,
                  nvcc: str | os.PathLike | None = None, timeout: float = 300) -> dict[str, object]:
    """Compile the library into ``out_dir``; a description of what was built (raises KernelBuildError)."""
    found = find_nvcc(nvcc)
    if found is None:
        raise KernelBuildError("no nvcc found (PATH, CUDA_HOME, /usr/local/cuda/bin): cannot build the CUDA kernel")
    toolkit = Toolkit(found, nvcc_version(found))
    check_toolkit(toolkit, torch_cuda)
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / LIB_NAME
    tmp = out_dir / f".{LIB_NAME}.partial"
    cmd = build_command(found, capability, tmp)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise KernelBuildError(f"nvcc failed (exit {done.returncode}): {(done.stdout + done.stderr)[-2000:]}")
    tmp.replace(lib)
    return {"library": str(lib), "nvcc": str(found), "nvcc_version": toolkit.version,
            "arch": f"sm_{capability[0]}{capability[1]}", "command": " ".join(cmd)}
