"""The installed product is self-contained: no module of it imports the test tree.

The wheel and the container image (deploy/Dockerfile) carry only the product packages, so
an import of ``tests`` anywhere in them (even a lazy one inside a function) breaks the
command that reaches it.  Every module is parsed with ``ast``, so imports in functions,
``try`` blocks and ``if TYPE_CHECKING`` are all seen; a docstring mentioning tests/ is not.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("xds_client", "translator", "bpf", "integration")


def test_product_packages_are_the_ones_packaged() -> None:
    """The list checked below is the list pyproject.toml installs."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = cfg["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(p.rstrip("*") for p in include) == sorted(PRODUCT)


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``tree``."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def test_imported_modules_sees_lazy_imports() -> None:
    tree = ast.parse("def f():\n    from tests.support import envoy\n    import tests\n")
    assert imported_modules(tree) == [(2, "tests.support"), (3, "tests")]


def test_no_product_module_imports_tests() -> None:
    offenders: list[str] = []
    for pkg in PRODUCT:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for line, name in imported_modules(tree):
                if name == "tests" or name.startswith("tests."):
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
    assert not offenders, ("product code imports the test tree (not in the wheel or the "
                           "image):\n" + "\n".join(offenders))
