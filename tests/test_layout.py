"""The package's own layout rules that ruff does not check."""

from __future__ import annotations

import ast

from tests.conftest import REPO


def test_no_module_imports_another_modules_private_names() -> None:
    """What two modules share is public in one place (e.g. memgpt/cli/progress.py for the load bars), not a
    private name of one imported by the other: a private name may change with no thought for other modules."""
    found = []
    for path in sorted((REPO / "memgpt").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("memgpt"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.module} {private}")
    assert found == []
