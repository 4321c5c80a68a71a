"""services/cli/main.py mounts every CLI area by name: none is left out, none hides behind a string."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import typer

from services.cli import main

CLI = Path(main.__file__).resolve().parent
HELPERS = {"__init__", "main", "common"}


def test_every_cli_module_is_imported_by_name_and_mounted() -> None:
    tree = ast.parse((CLI / "main.py").read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "services.cli"
        for alias in node.names
    }
    areas = {p.stem for p in CLI.glob("*.py")} - HELPERS
    assert areas - imported == set(), f"CLI modules not mounted in services/cli/main.py: {sorted(areas - imported)}"
    assert "importlib" not in (CLI / "main.py").read_text()

    group = typer.main.get_group(main.app)
    for area in sorted(areas):
        module = getattr(main, area).__name__
        mounted = [name for name, command in group.commands.items() if module in _modules_of(command)]
        assert mounted, f"services/cli/{area}.py is imported but none of its commands is mounted"


def _modules_of(command: Any) -> set[str]:
    """The modules whose functions a command (or each command of a group) runs."""
    found = {command.callback.__module__} if getattr(command, "callback", None) else set()
    for sub in getattr(command, "commands", {}).values():
        found |= _modules_of(sub)
    return found
