"""`earshot export JOB_ID --format ...`: the same writers the API uses."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from earshot.config import get_settings
from earshot.db.session import session_scope
from earshot.exports import FORMATS, render
from earshot.jobs.report import build_report
from earshot.jobs.service import get_job
from services.cli.common import ensure_embedded_db, err_console


def export(
    job_id: Annotated[str, typer.Argument(help="The job's id")],
    format: Annotated[str, typer.Option("--format", "-f", help=f"One of: {', '.join(FORMATS)}")] = "json",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout")] = None,
) -> None:
    """Write a job's results as JSON (the full report), SRT, WebVTT, plain text or Markdown."""
    fmt = format.lower()
    if fmt not in FORMATS:
        err_console.print(f"[red]unknown format {format!r}; choose from {', '.join(FORMATS)}")
        raise typer.Exit(code=2)
    ensure_embedded_db(get_settings())
    with session_scope() as s:
        job = get_job(s, job_id)
        if job is None:
            err_console.print(f"[red]no job {job_id}")
            raise typer.Exit(code=2)
        body = render(build_report(s, job), fmt)
    if output is None:
        sys.stdout.write(body)
        sys.stdout.flush()
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(body, encoding="utf-8")
    err_console.print(f"wrote {output}")
