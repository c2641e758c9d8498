"""The dependency direction: ``export`` depends on ``engine``, never the reverse.

Only the entry-point CLIs may reach into the export toolchain (they build and verify graphs);
the runtime - backends, graphs, specs, the artifact reader - must import without it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"engine/cli/build.py", "engine/cli/verify.py", "engine/cli/fixtures.py"}
RUNTIME = ("engine.backends.torch_backend", "engine.backends.ort_backend", "engine.backends.trt_backend",
           "engine.graphs.modules")


def _is_export(name: str | None) -> bool:
    return name is not None and (name == "export" or name.startswith("export."))


def export_imports(path: Path) -> list[str]:
    """``line: statement`` for every import of ``export`` anywhere in the file (top level or nested)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if _is_export(a.name)]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module] if node.level == 0 and _is_export(node.module) else []
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            names = [node.args[0].value] if _is_export(node.args[0].value) else []
        else:
            continue
        found += [f"{node.lineno}: {name}" for name in names]
    return found


def test_only_entry_points_import_export() -> None:
    offenders = {}
    files = sorted((REPO / "engine").rglob("*.py"))
    assert len(files) > 20
    for path in files:
        rel = path.relative_to(REPO).as_posix()
        if rel in ENTRY_POINTS:
            continue
        if found := export_imports(path):
            offenders[rel] = found
    assert not offenders, f"engine modules importing the export toolchain: {offenders}"


def test_checker_sees_nested_imports() -> None:
    # the entry points do import export (lazily, inside functions): the checker must see that
    assert export_imports(REPO / "engine" / "cli" / "build.py")
    assert export_imports(REPO / "engine" / "cli" / "fixtures.py")


def test_runtime_imports_without_export() -> None:
    code = (f"import sys, {', '.join(RUNTIME)}; "
            "print(sorted(m for m in sys.modules if m == 'export' or m.startswith('export.')))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def _imports_top_level(path: Path, package: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in
              ("import_module", "find_spec") and node.args and isinstance(node.args[0], ast.Constant)):
            names = [str(node.args[0].value)]
        else:
            continue
        found += [f"{node.lineno}: {n}" for n in names if n == package or n.startswith(package + ".")]
    return found


def test_nothing_imports_a_top_level_kernels_package() -> None:
    # kernels/ holds C++/CUDA sources only; the Python side ships as engine.kernels. Hugging Face's
    # `kernels` package (a transformers dependency) owns the top-level name in an installed environment.
    files = [p for d in ("engine", "export", "benchmarks", "tests", "scripts") for p in (REPO / d).rglob("*.py")]
    offenders = {p.relative_to(REPO).as_posix(): f for p in files if (f := _imports_top_level(p, "kernels"))}
    assert not offenders, f"modules importing a top-level 'kernels' package: {offenders}"
    assert not list((REPO / "kernels").rglob("*.py")), "kernels/ must hold no Python (it would not ship)"


def test_checker_sees_kernels_imports(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import kernels.grid_sample3d\nfrom kernels import x\nimport engine.kernels\n")
    assert _imports_top_level(bad, "kernels") == ["1: kernels.grid_sample3d", "2: kernels"]
