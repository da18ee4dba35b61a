"""docs/design.md's module map names every module of the package, and only modules that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "learnalign_pipeline"


def test_module_map_lists_every_module_and_nothing_else():
    text = (ROOT / "docs" / "design.md").read_text()
    table = text[text.index("## Module map") :]
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", table, flags=re.M))
    modules = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert not modules - listed, f"modules missing from docs/design.md's module map: {sorted(modules - listed)}"
    assert not listed - modules, f"docs/design.md lists modules that do not exist: {sorted(listed - modules)}"
