"""The dependency direction: ``export`` depends on ``engine``, never the reverse.

Only the entry-point CLIs may reach into the export toolchain (they build and verify graphs);
the runtime - backends, graphs, specs, the artifact reader - must import without it.
"""

from __future__ import annotations

import ast
import functools
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
    # ~13 s of CPU; the timeout only guards a hang (a loaded shared machine took 290 s of wall time)
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
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


# ---------------------------------------------------------------------------------------------------------
# The floors (docs/architecture.md): a module imports only from its own floor or the floors below it.
# Keys are module prefixes; the longest matching prefix decides (``engine.config.modes`` names solver and
# guidance presets, so it stands with diffusion although it lives in config/). A new folder needs a line
# here: the test names it.
FLOOR_NAMES = ["basics", "models", "graphs", "backends", "diffusion/stages", "runtime", "api",
               "tools/serve", "entry points"]
FLOORS: dict[str, int] = {
    "engine.errors": 0, "engine.config": 0, "engine.io": 0, "engine.kernels": 0,
    "engine.models": 1, "engine.face": 1,
    "engine.graphs": 2,
    "engine.backends": 3,
    "engine.diffusion": 4, "engine.config.modes": 4, "engine.runtime.stages": 4, "engine.runtime.common": 4,
    "engine.runtime.control": 4,
    "engine.runtime": 5,
    "engine.api": 6, "engine": 6,  # engine/__init__.py: the façade, lazily re-exporting the API
    # tools beside the server: each uses the API or the floors below, none is used by them
    "engine.serve": 7, "engine.fixtures": 7, "engine.train": 7, "engine.eval": 7, "engine.batch": 7,
    "engine.distill": 7,
    "engine.cli": 8,
}
# ``python -m engine.X`` modules: the thin top-level entry points and every package's __main__
THIN_ENTRIES = {"engine.build", "engine.reenact", "engine.verify", "engine.gpucheck", "engine.webcam"}
TOP_LEVEL_BOUND = 26  # entries of engine/ (see test_top_level_count)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for d in ("engine", "export") for p in sorted((REPO / d).rglob("*.py"))}


def is_entry(module: str) -> bool:
    return module in THIN_ENTRIES or module.startswith("engine.cli.") or module.endswith(".__main__")


def _targets(node: ast.AST, module: str, path: Path, known: dict[str, Path]) -> list[str]:
    """The project modules one import statement loads (``from P import m`` -> ``P.m`` when m is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join(package + ([node.module] if node.module else []))
    found = []
    for alias in node.names:
        if f"{base}.{alias.name}" in known:
            found.append(f"{base}.{alias.name}")
        elif base in known:
            found.append(base)
    return found


@functools.lru_cache(maxsize=2)
def import_graph(top_level_only: bool) -> dict[str, dict[str, int]]:
    """module -> {imported project module: line}. ``top_level_only``: statements run at import time
    (module body, including ``if``/``try`` blocks and ``TYPE_CHECKING``), not those inside functions."""
    known = all_modules()
    graph: dict[str, dict[str, int]] = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        nodes: list[ast.AST] = []
        if top_level_only:
            stack: list[ast.AST] = list(tree.body)
            while stack:
                node = stack.pop()
                nodes.append(node)
                if isinstance(node, (ast.If, ast.Try)):
                    stack += [*node.body, *node.orelse, *getattr(node, "finalbody", [])]
                    stack += [s for h in getattr(node, "handlers", []) for s in h.body]
        else:
            nodes = list(ast.walk(tree))
        edges: dict[str, int] = {}
        for node in nodes:
            for target in _targets(node, module, path, known):
                if target != module:
                    edges.setdefault(target, getattr(node, "lineno", 0))
        graph[module] = edges
    return graph


def floor_of(module: str) -> int | None:
    if module.startswith("export"):
        return None
    if is_entry(module):
        return len(FLOOR_NAMES) - 1
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in FLOORS:
            return FLOORS[".".join(parts[:n])]
    return None


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_path_through(sorted(component), graph))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _path_through(component: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """One closed import path inside a strongly connected component (for the message)."""
    members, start = set(component), component[0]
    path, seen = [start], {start}
    while True:
        nxt = next(w for w in sorted(graph[path[-1]]) if w in members)
        if nxt in seen:
            return path[path.index(nxt):] + [nxt]
        path.append(nxt)
        seen.add(nxt)


def test_every_module_has_a_floor() -> None:
    unplaced = sorted(m for m in all_modules() if m.startswith("engine") and floor_of(m) is None)
    assert not unplaced, f"modules on no floor: {unplaced}; add their folder to FLOORS in tests/test_layout.py " \
                         "(and docs/architecture.md)"


def test_no_module_imports_a_higher_floor() -> None:
    offenders = []
    for module, edges in import_graph(top_level_only=False).items():
        mine = floor_of(module)
        if mine is None:
            continue
        for target, line in edges.items():
            theirs = floor_of(target)
            if theirs is not None and theirs > mine:
                offenders.append(f"{module}:{line} ({FLOOR_NAMES[mine]}) imports {target} ({FLOOR_NAMES[theirs]})")
    assert not offenders, "imports up the floors:\n" + "\n".join(offenders)


def test_no_import_cycle() -> None:
    found = cycles(import_graph(top_level_only=True))
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_nothing_imports_a_cli() -> None:
    # entry points may share the CLI helpers (engine.cli.args, progress) with each other; nothing else
    # imports any of them, and nobody imports an entry point's module (engine.reenact, X.__main__)
    offenders = []
    for module, edges in import_graph(top_level_only=False).items():
        for target, line in edges.items():
            if target in THIN_ENTRIES or target.endswith(".__main__"):
                offenders.append(f"{module}:{line} imports the entry point {target}")
            elif is_entry(target) and not is_entry(module):
                offenders.append(f"{module}:{line} imports the CLI module {target}")
    assert not offenders, "\n".join(offenders)


def test_thin_entry_points_only_call_their_cli() -> None:
    for module in sorted(THIN_ENTRIES):
        path = REPO / (module.replace(".", "/") + ".py")
        edges = import_graph(top_level_only=False)[module]
        assert list(edges) == [f"engine.cli.{module.split('.')[-1]}"], f"{path}: {sorted(edges)}"
        assert len(path.read_text().splitlines()) <= 12, f"{path} is not thin: move its code into engine/cli/"


def test_top_level_count() -> None:
    # Bound 26: 16 rooms (packages) + api, errors + assets/, data/ (package data) + 5 thin `python -m
    # engine.X` modules kept so documented commands work, leaves room for one more room (issue: <= ~20
    # rooms besides the thin entry points). New CLIs go to engine/cli/ with a package __main__ or a thin
    # module; a new top-level .py that is neither the API, the errors nor a thin entry point fails below.
    entries = sorted(p.name for p in (REPO / "engine").iterdir()
                     if p.name not in ("__init__.py", "__pycache__") and not p.name.startswith("."))
    assert len(entries) <= TOP_LEVEL_BOUND, f"engine/ has {len(entries)} entries (bound {TOP_LEVEL_BOUND}): {entries}"
    modules = {n[:-3] for n in entries if n.endswith(".py")}
    assert modules - {"api", "errors"} <= {m.split(".")[-1] for m in THIN_ENTRIES}, modules


def test_checker_finds_cycles_and_upward_imports() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b": 1}, "b": {}}) == []
    assert floor_of("engine.config.modes") == FLOORS["engine.diffusion"] > floor_of("engine.config.settings") == 0
    assert floor_of("engine.cli.args") == floor_of("engine.serve.__main__") == len(FLOOR_NAMES) - 1
    assert floor_of("engine.runtime.stream") == FLOORS["engine.runtime"]
