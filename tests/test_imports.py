"""Every module of the package imports with only the base dependencies declared in pyproject."""

from __future__ import annotations

import ast
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import semseg

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SRC = PROJECT_ROOT / "src" / "semseg"
# Modules that belong to an optional extra; they must import their extra lazily or guarded.
EXTRA_PACKAGES = {
    "fastapi",
    "uvicorn",
    "multipart",
    "pydensecrf",
    "segmentation_models_pytorch",
    "cv2",
    "skimage",
    "pycocotools",
}


def all_modules() -> list[str]:
    modules = pkgutil.walk_packages(semseg.__path__, prefix="semseg.")
    return sorted(info.name for info in modules if info.name != "semseg.__main__")  # runs the CLI


def test_every_module_imports_in_a_clean_interpreter():
    # One fresh interpreter that blocks the optional extras: a module importing one at top level
    # fails here, as it would after a plain `pip install -e .`.
    script = (
        "import importlib, sys\n"
        f"blocked = {sorted(EXTRA_PACKAGES)!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in blocked:\n"
        "            raise ModuleNotFoundError(f'{name} blocked', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from semseg.errors import SemsegError\n"
        f"for name in {all_modules()!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except SemsegError as error:  # a module of an extra may refuse, naming the install\n"
        "        assert 'pip install' in str(error), (name, str(error))\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


def declared_distributions() -> set[str]:
    """Every distribution pyproject declares, in the base dependencies or an extra (a module of
    an extra refuses politely without it: see the clean-interpreter test above)."""
    meta = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(meta["dependencies"])
    for extra in meta["optional-dependencies"].values():
        requirements += extra
    return {
        re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements
    }


def test_top_level_imports_are_declared_dependencies():
    from importlib.metadata import packages_distributions

    base = declared_distributions()
    providers = packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    undeclared = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: lazy imports inside functions are extras
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in stdlib or top in ("semseg", "__future__"):
                    continue
                dists = {d.lower().replace("_", "-") for d in providers.get(top, [])}
                if not dists & base:
                    undeclared.append(f"{path.relative_to(PROJECT_ROOT)}: {top}")
    assert not undeclared, undeclared


def module_level_imports() -> dict[str, set[str]]:
    """semseg module -> the semseg modules it imports at module level (the ones that can cycle)."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        targets = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            targets |= {n for n in names if n.startswith("semseg")}
        graph[name] = targets
    return {
        name: {t for t in targets if t in graph and t != name} for name, targets in graph.items()
    }


def test_no_import_cycle_between_modules():
    graph = module_level_imports()
    for name in graph:  # a package importing its own submodules is not a cycle
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles[:5]
