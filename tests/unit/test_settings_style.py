"""One settings style (docs/architecture.md, earshot/config.py).

The library never reads the process-wide settings: functions take ``settings`` (or a URL or a
``Session``) from their caller, and open the database with ``session_scope(url)``. Only
deployables call ``get_settings()``. A CLI flag is a ``model_copy`` passed down, never an
``EARSHOT_*`` environment write followed by cache clearing. Read from the source with ``ast``,
so comments and docstrings do not count.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# where the process-wide settings and the default database are defined
DEFINITIONS = {"earshot/config.py", "earshot/db/session.py"}
# Known exceptions, each with its reason; an entry that no longer offends fails the test, so the
# list only shrinks. None is left.
KNOWN: dict[str, set[str]] = {}


def _modules(*tops: str) -> Iterator[tuple[str, ast.AST]]:
    for top in tops:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if "__pycache__" not in rel:
                yield rel, ast.parse(path.read_text(), filename=rel)


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _calls(tree: ast.AST) -> Iterator[ast.Call]:
    return (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def _local_names(tree: ast.AST) -> dict[int, set[str]]:
    """For each call, the names its enclosing functions bind (parameters, assignments):
    an injected ``session_scope`` parameter is not the module's default one."""
    bound: dict[int, set[str]] = {}
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            names = {a.arg for a in [*fn.args.args, *fn.args.kwonlyargs, *fn.args.posonlyargs]}
            names |= {t.id for n in ast.walk(fn) if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
            for call in _calls(fn):
                bound.setdefault(id(call), set()).update(names)
    return bound


def test_library_code_never_reads_the_global_settings_or_the_default_database() -> None:
    offenders = []
    known: set[tuple[str, str]] = set()
    for rel, tree in _modules("earshot"):
        if rel in DEFINITIONS:
            continue
        local = _local_names(tree)
        for call in _calls(tree):
            name = _name(call.func)
            if isinstance(call.func, ast.Name) and name in local.get(id(call), set()):
                continue
            bare = not call.args and not call.keywords
            if name == "get_settings" or (name in ("session_scope", "session_factory", "db_engine") and bare):
                if name in KNOWN.get(rel, set()):
                    known.add((rel, name))
                    continue
                offenders.append(f"{rel}:{call.lineno} {name}()")
    assert not offenders, "library code must be given its settings:\n" + "\n".join(offenders)
    fixed = {(rel, name) for rel, names in KNOWN.items() for name in names} - known
    assert not fixed, f"no longer offending, drop from KNOWN: {sorted(fixed)}"


def _writes_earshot_env(call: ast.Call) -> bool:
    func = call.func
    is_environ = isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute) and func.value.attr == "environ"
    if is_environ and func.attr in ("update", "setdefault", "__setitem__"):
        return True
    return _name(func) == "putenv"


def test_no_code_writes_earshot_variables_into_the_environment_or_clears_settings_caches() -> None:
    offenders = []
    for rel, tree in _modules("earshot", "services", "workers"):
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if (
                        isinstance(target, ast.Subscript)
                        and isinstance(target.value, ast.Attribute)
                        and target.value.attr == "environ"
                        and "EARSHOT_" in ast.unparse(target.slice)
                    ):
                        offenders.append(f"{rel}:{node.lineno} {ast.unparse(target)} = ...")
            if isinstance(node, ast.Call):
                if _writes_earshot_env(node) and "EARSHOT_" in ast.unparse(node):
                    offenders.append(f"{rel}:{node.lineno} {ast.unparse(node.func)}(...)")
                clears = _name(node.func) in ("reset_settings", "dispose_all") or (
                    _name(node.func) == "cache_clear" and "settings" in ast.unparse(node.func)
                )
                if clears and rel not in DEFINITIONS:  # the definitions exist for tests
                    offenders.append(f"{rel}:{node.lineno} {ast.unparse(node.func)}()")
    assert not offenders, "overrides must be settings.model_copy(...) passed down:\n" + "\n".join(offenders)
