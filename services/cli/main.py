"""The `earshot` console script: one Typer app with a sub-app per area.

Every area is imported here by name. Their modules import only the core requirements at the
top; what needs an extra (torch, tritonclient, uvicorn) is imported inside the command that
uses it, so `earshot --help` works on any install and a missing extra fails that one command
with a readable error.
"""

from __future__ import annotations

import typer

from earshot.config import get_settings
from earshot.logs import setup_logging
from services.cli import admin, api, ask, evaluate, export, ingest, jobs, keys, tenants, train, triton

app = typer.Typer(help="Earshot: batch audio understanding on Audio Flamingo 3.", no_args_is_help=True)


@app.callback()
def _setup() -> None:
    settings = get_settings()
    setup_logging(settings.log_level, json_lines=settings.log_json)


# commands
app.command("run")(jobs.run)
app.command("export")(export.export)
app.command("ask")(ask.ask)
app.command("api")(api.serve)
app.command("worker")(admin.worker)

# groups
app.add_typer(jobs.jobs_app, name="jobs")
app.add_typer(admin.db_app, name="db")
app.add_typer(admin.model_app, name="model")
app.add_typer(ingest.app, name="ingest")
app.add_typer(keys.app, name="keys")
app.add_typer(tenants.app, name="tenants")
app.add_typer(train.app, name="train")
app.add_typer(evaluate.app, name="eval")
app.add_typer(triton.app, name="triton")

if __name__ == "__main__":
    app()
