"""`earshot export JOB_ID --format ...`: the same writers the API uses."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from earshot.exports import FORMATS, render
from services.cli.common import err_console
from services.cli.jobs import report_or_exit


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
    body = render(report_or_exit(job_id), fmt)
    if output is None:
        sys.stdout.write(body)
        sys.stdout.flush()
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(body, encoding="utf-8")
    err_console.print(f"wrote {output}")
