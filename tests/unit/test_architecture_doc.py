"""docs/architecture.md stays a true map of the code.

Every package under earshot/ and services/ (a directory with ``__init__.py``) and every
top-level module of earshot/ must be named in it, and every repository path it names in
backticks must exist, so a new package without a row, or a row for a folder that was moved or
never existed, fails here. So does an import of a deployable (services/, workers/) by the library.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
TOP_LEVEL = ("earshot", "services", "workers", "tests", "bench", "helm", "docker", "model_repo", "migrations", "docs", "examples", "scripts")


def _text() -> str:
    return DOC.read_text()


def _packages() -> list[str]:
    found = []
    for top in ("earshot", "services"):
        for init in sorted((ROOT / top).rglob("__init__.py")):
            folder = init.parent.relative_to(ROOT)
            if folder.parts == (top,) or "__pycache__" in folder.parts:
                continue
            found.append(f"{folder.as_posix()}/")
    return found


def _library_modules() -> list[str]:
    return [f"earshot/{p.name}" for p in sorted((ROOT / "earshot").glob("*.py")) if p.name != "__init__.py"]


def test_every_package_and_library_module_is_in_the_architecture_map() -> None:
    text = _text()
    missing = [name for name in _packages() + _library_modules() if f"`{name}" not in text]
    assert not missing, f"docs/architecture.md does not map: {missing}"


def test_every_path_the_architecture_map_names_exists() -> None:
    named = {
        token.rstrip("/")
        for token in re.findall(r"`([^`\s]+)`", _text())
        if token.split("/", 1)[0] in TOP_LEVEL and "/" in token and not re.search(r"[<>*{}]", token)
    }
    assert named, "no repository paths found in docs/architecture.md"
    absent = sorted(p for p in named if not (ROOT / p).exists())
    assert not absent, f"docs/architecture.md names paths that do not exist: {absent}"


def test_the_library_never_imports_a_deployable() -> None:
    offenders = []
    for path in sorted((ROOT / "earshot").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            offenders += [
                f"{path.relative_to(ROOT)}:{node.lineno} imports {name}"
                for name in names
                if name.split(".")[0] in ("services", "workers")
            ]
    assert not offenders, offenders
