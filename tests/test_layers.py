"""Layers point down: preprocess -> evaluate.core -> models -> distill -> the evaluate apps.

Every module's imports (top-level and the lazy ones inside functions) are read with ``ast``, so
an import added anywhere in a lower layer that reaches up fails here.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("preprocess", "evaluate", "models", "distill")
# layer of each package (evaluate.core is the shared layer inside evaluate; the rest of evaluate are apps)
LAYERS = {"preprocess": 0, "evaluate.core": 1, "models": 2, "distill": 3, "evaluate": 4}
APPS = ("demo", "tables", "speed", "infer", "export", "serve", "plot", "cv", "scale")


def layer_of(module: str) -> int | None:
    """The layer of a project module name (None for third-party modules)."""
    for prefix, layer in sorted(LAYERS.items(), key=lambda kv: -len(kv[0])):  # longest prefix first
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, relative imports resolved; ``from pkg import mod``
    of a package yields ``pkg.mod`` (it may name a submodule: ``from evaluate import core`` is fine,
    ``from evaluate import tables`` is not)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    here = module_name(path, root).split(".")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package upwards
                pkg = here[: len(here) - node.level] if path.name != "__init__.py" else here[: len(here) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            if (root / (base.replace(".", "/") + ".py")).is_file():  # names from a module
                found.append((node.lineno, base))
            else:  # names from a package: submodules (or what its __init__ defines)
                found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def violations(files: list[Path], root: Path = ROOT) -> list[str]:
    """Imports from a lower layer to a higher one, or from below the apps to an app module."""
    bad = []
    for path in files:
        own = layer_of(module_name(path, root))
        for line, mod in imported_modules(path, root):
            target = layer_of(mod)
            if target is None or own is None:
                continue
            is_app = any(mod == f"evaluate.{a}" or mod.startswith(f"evaluate.{a}.") for a in APPS)
            if target > own or (is_app and own < LAYERS["evaluate"]):
                bad.append(f"{path.relative_to(root).as_posix()}:{line} imports {mod}")
    return bad


def project_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_layers_point_down():
    files = project_files()
    assert len(files) > 40  # the walk really found the packages
    bad = violations(files)
    assert not bad, "imports that point up a layer:\n" + "\n".join(bad)


def test_no_lower_module_imports_an_app():
    lower = [p for p in project_files() if (layer_of(module_name(p)) or 0) < LAYERS["evaluate"]]
    assert any(module_name(p) == "models.train" for p in lower)
    assert not violations(lower)


def violations_of(tmp_path: Path, where: str, source: str) -> list[str]:
    """The check run on one module ``where`` holding ``source``, in an otherwise empty tree."""
    path = tmp_path / where
    path.parent.mkdir(parents=True)
    path.write_text(source)
    return violations([path], tmp_path)


@pytest.mark.parametrize("where, source", [
    ("models/x.py", "from evaluate.demo import main\n"),
    ("models/x.py", "def f():\n    from evaluate import tables\n"),
    ("distill/x.py", "import evaluate.speed\n"),
    ("preprocess/x.py", "from models.data import collate\n"),
    ("evaluate/core/x.py", "from models.base import InputSpec\n"),
    ("models/x.py", "from evaluate.eval import evaluate\n"),
    ("models/x.py", "from distill.losses import hierarchical_kd\n"),
])
def test_an_upward_import_is_caught(tmp_path, where, source):
    """The check fails on each kind of upward import, naming the file and line."""
    bad = violations_of(tmp_path, where, source)
    line = source.count("\n")  # the import is the last line
    assert bad and all(b.startswith(f"{where}:{line} imports ") for b in bad), bad


@pytest.mark.parametrize("where, source", [
    ("models/x.py", "from evaluate.core.decode import decode_outputs\n"),
    ("distill/x.py", "from models.train import train\n"),
    ("evaluate/demo.py", "from distill.train import run_recipe\n"),
    ("evaluate/core/x.py", "from preprocess.configs import UserError\n"),
    ("models/x.py", "import torch\n"),
    ("models/x.py", "from evaluate import core\n"),
])
def test_a_downward_import_passes(tmp_path, where, source):
    assert violations_of(tmp_path, where, source) == []
