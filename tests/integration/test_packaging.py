"""The production image's extras, installed into a clean venv, import every deployable module.

The app image installs ``.[<EXTRAS>]`` (docker/Dockerfile's ``ARG EXTRAS``). Here the same
sources are installed the same way into an empty venv, with uv (the package index and find-links
this machine's pip uses; uv's cache makes a repeat run take seconds, a cold one about 40 s). Then,
outside the repository so the installed copy is the one imported, every module under
``earshot/``, ``services/`` and ``workers/`` is imported and the ``earshot`` console script
answers ``--help``. An import of a package that no production requirement brings in fails here,
before it fails in a pod.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "earshot", "services", "workers", "migrations")

# Walks the installed packages and imports each module; prints a JSON report.
IMPORT_ALL = r"""
import importlib, json, pkgutil, sys
report = {"imported": [], "failed": {}, "files": {}}
for top in ("earshot", "services", "workers"):
    pkg = importlib.import_module(top)
    report["files"][top] = list(pkg.__path__)
    for info in pkgutil.walk_packages(pkg.__path__, top + "."):
        # `python -m` entry points run their app on import; their package is imported anyway
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        try:
            importlib.import_module(info.name)
            report["imported"].append(info.name)
        except BaseException as exc:
            report["failed"][info.name] = f"{type(exc).__name__}: {exc}"
print("REPORT" + json.dumps(report))
"""


def _production_extras() -> str:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    match = re.search(r'(?m)^ARG EXTRAS="([^"]+)"', text)
    assert match, "docker/Dockerfile declares no ARG EXTRAS"
    return match.group(1)


def _uv() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not Path(found).is_file():
        pytest.fail("uv is missing: it comes with the dev extra (pip install -e '.[dev]')")
    return found


def _index_options() -> list[str]:
    """The indexes and wheel folders pip is configured with here, in uv's words."""
    options = ["--index-strategy", "unsafe-best-match"]
    for var, flag in (("PIP_INDEX_URL", "--default-index"), ("PIP_EXTRA_INDEX_URL", "--index"), ("PIP_FIND_LINKS", "--find-links")):
        for value in os.environ.get(var, "").split():
            options += [flag, value]
    return options


def _python_backend_utils() -> Path:
    """``triton_python_backend_utils`` is provided by tritonserver's python backend, not by a wheel.

    ``earshot.triton.models`` runs only inside tritonserver (the Triton image); the module comes
    from the server that the dev extra installs (nvidia-pytriton), as the backend stub provides it.
    """
    import pytriton

    path = Path(pytriton.__file__).resolve().parent / "tritonserver" / "backends" / "python"
    assert (path / "triton_python_backend_utils.py").is_file(), path
    return path


def test_production_extras_import_every_deployable_module_in_a_clean_venv(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        item = ROOT / name
        if item.is_dir():
            shutil.copytree(item, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(item, src / name)
    venv = tmp_path / "venv"
    uv = _uv()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(python), *_index_options(), f"{src}[{_production_extras()}]"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert install.returncode == 0, install.stderr[-4000:]

    # dev tools and dropped dependencies stay out (accelerate still comes, through peft)
    listed = subprocess.run(
        [uv, "pip", "list", "--python", str(python), "--format", "json"], capture_output=True, text=True, check=True
    )
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    for dev_only in ("pytest", "moto", "nvidia-pytriton", "ruff", "mypy", "structlog", "pycurl"):
        assert dev_only not in installed, f"{dev_only} is installed by the production extras"

    run_env = {**env, "PYTHONPATH": str(_python_backend_utils())}
    ran = subprocess.run(
        [str(python), "-c", IMPORT_ALL], capture_output=True, text=True, cwd=tmp_path, env=run_env, timeout=600
    )
    assert ran.returncode == 0, ran.stderr[-4000:]
    report = json.loads(ran.stdout.split("REPORT", 1)[1])
    assert report["failed"] == {}
    for top, paths in report["files"].items():
        assert all(str(venv) in p for p in paths), f"{top} was imported from {paths}, not from the venv"
    expected = {
        ".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
        for top in ("earshot", "services", "workers")
        for p in (src / top).rglob("*.py")
        if p.stem != "__main__" and "__pycache__" not in p.parts
    } - {"earshot", "services", "workers"}
    missing = expected - set(report["imported"])
    assert not missing, f"modules of the tree that the installed package lacks or never imported: {sorted(missing)}"

    helped = subprocess.run([str(venv / "bin" / "earshot"), "--help"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert helped.returncode == 0, helped.stderr[-4000:]
    for command in ("run", "jobs", "db", "train", "triton", "ingest", "keys", "tenants", "api", "export", "ask"):
        assert re.search(rf"(?m)^│ {command}\b", helped.stdout), f"`earshot {command}` is not mounted"
