"""Test modules do not import from each other: shared helpers live in tests/support.py (and the end-to-end set-up
in tests/e2e_support.py), so running or changing one test module never depends on another."""
import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _imported_modules(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "import" in node.value:
            # scripts that tests hand to a fresh interpreter
            for line in node.value.splitlines():
                words = line.split()
                if len(words) >= 2 and words[0] in ("from", "import"):
                    yield words[1]


def test_test_modules_import_no_other_test_module():
    offenders = sorted(f"{path.name} imports {module}" for path in TESTS.glob("*.py")
                       for module in _imported_modules(path)
                       if module.split(".")[-1].startswith("test_") or module.startswith("tests.test_"))
    assert offenders == []
