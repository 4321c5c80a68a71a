"""The `earshot` console script: one Typer app with a sub-app per area."""

from __future__ import annotations

import typer

from earshot.config import get_settings
from earshot.logs import setup_logging
from services.cli import admin, jobs

app = typer.Typer(help="Earshot: batch audio understanding on Audio Flamingo 3.", no_args_is_help=True)
app.command("run")(jobs.run)
app.command("worker")(admin.worker)
app.add_typer(jobs.jobs_app, name="jobs")
app.add_typer(admin.db_app, name="db")
app.add_typer(admin.model_app, name="model")


@app.callback()
def _setup() -> None:
    settings = get_settings()
    setup_logging(settings.log_level, json_lines=settings.log_json)


# Areas mounted when their module exists and imports (some need extras).
# (module, attribute, name, is_group)
OPTIONAL = [
    ("earshot.training.cli", "app", "train", True),
    ("services.cli.triton", "app", "triton", True),
    ("services.cli.ingest", "app", "ingest", True),
    ("services.cli.keys", "app", "keys", True),
    ("services.cli.api", "serve", "api", False),
    ("services.cli.export", "export", "export", False),
    ("services.cli.ask", "ask", "ask", False),
]


def _mount_optional() -> None:
    import importlib

    for module, attr, name, group in OPTIONAL:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                continue  # the area is not part of this build
            raise
        obj = getattr(mod, attr)
        if group:
            app.add_typer(obj, name=name)
        else:
            app.command(name)(obj)


_mount_optional()

if __name__ == "__main__":
    app()
