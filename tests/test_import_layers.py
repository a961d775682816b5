"""No import runs back up the layers of the package (docs/architecture.md).

Each package of ``nnunet_mamba`` imports only from itself and the packages before it in :data:`LAYERS`. The
top-level helper modules (``nnunet_mamba/*.py`` but ``cli.py``) sit just above ``ops``: anything but ``ops``
may import them, and they import only ``ops`` and each other. Nothing outside ``commands/`` and ``cli.py``
imports ``commands/``. Every import statement counts, function-level ones included (the package defers heavy
imports into functions, and a deferred import that runs upwards is still a loop).

The ``trainers/`` and ``planners/`` folders (installed as ``nnunet_mamba_trainers`` and ``nnunet_mamba_planners``)
import the package; the package imports neither by an import statement. It reaches them by name at run time in
exactly two places: the trainers through nnU-Net's own lookup (``discovery.py`` only locates their folder), and
the planners through ``planning/api.py``'s ``planners_package`` (nnU-Net's ``-pl`` looks only inside nnunetv2).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "nnunet_mamba"
#: each package imports only from itself and those before it
LAYERS = ("ops", "blocks", "pretrained", "architectures", "distillation", "planning", "datasets", "evaluation",
          "training", "benchmarks", "comparison", "commands")
HELPERS = "top-level helper modules"
#: the installed names of trainers/ and planners/, and the modules allowed to name them at run time
OUTSIDE_PACKAGES = {"nnunet_mamba_trainers": "discovery.py", "nnunet_mamba_planners": "planning/api.py"}


def _home(package_dir: Path, module: str) -> str | None:
    """The layer (or HELPERS, or "cli") a dotted module of the package belongs to; None outside the package."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    if len(parts) == 1:
        return HELPERS  # the package's __init__ (its __version__)
    if (package_dir / parts[1]).is_dir():
        return parts[1]
    return "cli" if parts[1] == "cli" else HELPERS


def _imports(package_dir: Path, path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import statement in ``path``, relative ones resolved; ``from nnunet_mamba
    import x`` counts as importing ``nnunet_mamba.x`` (a subpackage or helper module, else the package itself)."""
    # the package a relative import starts from: the module's folder (for an __init__.py, its own package)
    package_parts = list(path.relative_to(package_dir.parent).parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package_parts[:len(package_parts) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                child = f"{base}.{alias.name}"
                child_path = package_dir.parent / Path(*child.split("."))
                found.append((node.lineno, child if child_path.is_dir() or child_path.with_suffix(".py").is_file()
                               else base))
    return found


def _allowed(source: str, target: str) -> bool:
    if source == target or source == "cli":
        return True
    if target in ("commands", "cli"):
        return False
    if source == HELPERS:
        return target == "ops"
    if target == HELPERS:
        return source != "ops"
    return LAYERS.index(target) <= LAYERS.index(source)


def upward_imports(package_dir: Path) -> list[str]:
    """Every import in the package that runs against the layers, as ``file:line -> module (source -> target)``."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        inside = path.relative_to(package_dir)
        source = inside.parts[0] if len(inside.parts) > 1 else ("cli" if inside.stem == "cli" else HELPERS)
        if source not in LAYERS + (HELPERS, "cli"):
            found.append(f"{inside}: package {source!r} has no place in the layers")
            continue
        for line, module in _imports(package_dir, path):
            target = _home(package_dir, module)
            if target is not None and target not in LAYERS + (HELPERS, "cli"):
                found.append(f"{inside}:{line} -> {module}: package {target!r} has no place in the layers")
            elif target is not None and not _allowed(source, target):
                found.append(f"{inside}:{line} -> {module} ({source} -> {target})")
    return found


def test_no_import_runs_back_up_the_layers():
    assert upward_imports(ROOT / PACKAGE) == []


def test_the_check_finds_a_planted_upward_import(tmp_path):
    package = tmp_path / PACKAGE
    for layer in ("ops", "planning", "commands"):
        (package / layer).mkdir(parents=True)
        (package / layer / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "discovery.py").write_text("from nnunet_mamba.ops import scan\n")
    (package / "planning" / "api.py").write_text("from . import tool\nfrom nnunet_mamba import discovery\n")
    (package / "planning" / "tool.py").write_text(
        "def main():\n    from nnunet_mamba.commands.plan import run\n    from ..ops import scan\n")
    (package / "ops" / "scan.py").write_text("import nnunet_mamba.planning.api\nfrom nnunet_mamba import discovery\n")
    assert upward_imports(package) == [
        "ops/scan.py:1 -> nnunet_mamba.planning.api (ops -> planning)",
        f"ops/scan.py:2 -> nnunet_mamba.discovery (ops -> {HELPERS})",
        "planning/tool.py:2 -> nnunet_mamba.commands.plan (planning -> commands)",
    ]


@pytest.mark.parametrize("folder", ["trainers", "planners"])
def test_trainers_and_planners_import_the_package_never_commands(folder):
    for path in sorted((ROOT / folder).glob("*.py")):
        for line, module in _imports(ROOT / PACKAGE, path):
            assert not module.startswith(f"{PACKAGE}.commands"), f"{folder}/{path.name}:{line} imports {module}"


def test_the_package_names_trainers_and_planners_only_at_their_two_doors():
    package_dir = ROOT / PACKAGE
    for path in sorted(package_dir.rglob("*.py")):
        inside = path.relative_to(package_dir).as_posix()
        for line, module in _imports(package_dir, path):
            assert module.split(".")[0] not in OUTSIDE_PACKAGES and module.split(".")[0] not in ("trainers",
                                                                                                "planners"), \
                f"{inside}:{line} imports {module}"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                named = {arg.value for arg in node.args if isinstance(arg, ast.Constant)} & set(OUTSIDE_PACKAGES)
                for name in named:
                    assert inside == OUTSIDE_PACKAGES[name], f"{inside}:{node.lineno} loads {name}"
