"""The layer rule of docs/design.md: core/ computes without the orchestrator, so no module under it imports Dagster
(dagster, dagster_pipes, dagster_* libraries), at top level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import learnalign_pipeline

CORE = Path(learnalign_pipeline.__file__).parent / "core"


def _dagster_imports(source: str) -> list[str]:
    found = []
    for node in sorted(ast.walk(ast.parse(source)), key=lambda n: getattr(n, "lineno", 0)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found += [f"line {node.lineno}: {n}" for n in names if n.split(".")[0].startswith("dagster")]
    return found


def test_the_check_sees_imports_anywhere_in_a_module():
    sample = "import os\ndef f():\n    from dagster_pipes import open_dagster_pipes\nimport dagster as dg\n"
    assert _dagster_imports(sample) == ["line 3: dagster_pipes", "line 4: dagster"]


def test_no_core_module_imports_dagster():
    offending = {
        str(path.relative_to(CORE)): found
        for path in sorted(CORE.rglob("*.py"))
        if (found := _dagster_imports(path.read_text()))
    }
    assert not offending, offending
