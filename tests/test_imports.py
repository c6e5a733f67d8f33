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
    meta = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    return {
        re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0].lower().replace("_", "-")
        for r in meta["dependencies"]
    }


def test_top_level_imports_are_declared_base_dependencies():
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
