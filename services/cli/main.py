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


def _mount_optional() -> None:
    """Areas whose dependencies are extras: mounted when importable."""
    try:
        from earshot.training.cli import app as train_app
    except ImportError:
        return
    app.add_typer(train_app, name="train", help="Curriculum fine-tuning of AF3.")


_mount_optional()

if __name__ == "__main__":
    app()
