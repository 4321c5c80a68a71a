"""`earshot run` and `earshot jobs ...`."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from earshot.config import Settings, get_settings
from earshot.db import models as m
from earshot.db.session import session_scope
from earshot.errors import EarshotError
from earshot.jobs.report import build_report
from earshot.jobs.service import fail_job, get_job, list_jobs, retry_failed
from earshot.jobs.submit import submit
from earshot.results import ErrorInfo, JobReport
from services.cli.common import (
    apply_overrides,
    console,
    database_settings,
    ensure_embedded_db,
    err_console,
    stop_on_signals,
)

jobs_app = typer.Typer(help="Inspect jobs.", no_args_is_help=True)


def _report(job_id: str) -> JobReport:
    with session_scope() as s:
        job = get_job(s, job_id)
        assert job is not None
        return build_report(s, job)


def _print_report(report: JobReport) -> None:
    colour = {"succeeded": "green", "failed": "red"}.get(report.status, "yellow")
    console.rule(f"[bold]{report.source}")
    console.print(f"job [bold]{report.job_id}[/]  status [{colour}]{report.status}[/]")
    if report.error:
        console.print(f"[red]error {report.error.code}:[/] {report.error.message}")
    if report.duration is not None:
        console.print(f"duration {report.duration:.1f} s in {len(report.segments)} segment(s)")
    if report.summary:
        console.print(f"[bold]summary[/] {report.summary}")
    for i, caption in enumerate(report.captions):
        console.print(f"[bold]caption[/] {i}: {caption}")
    for ch in report.chapters:
        console.print(f"  [cyan]{ch.start:8.1f}s[/] {ch.title}")
    if report.transcript:
        console.print("[bold]transcript[/]")
        for u in report.transcript[:20]:
            console.print(f"  [cyan]{u.start:8.1f}-{u.end:.1f}s[/] {u.text}")
        if len(report.transcript) > 20:
            console.print(f"  ... {len(report.transcript) - 20} more")
    if report.events:
        table = Table("start", "end", "event")
        for e in report.events[:30]:
            table.add_row(f"{e.start:.1f}", f"{e.end:.1f}", e.label)
        console.print(table)
    for r in report.reasoning[:5]:
        tag = "think adapter" if r.adapter else "no think adapter"
        console.print(f"[bold]Q[/] {r.question} ({tag})\n  [bold]A[/] {r.answer}")
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")
    for name, uri in sorted(report.outputs.items()):
        console.print(f"  {name}: {uri}")


def _run_one(job_id: str, label: str, progress: Progress, settings: Settings) -> None:
    from workers.tasks import enqueue

    bar = progress.add_task(label, total=1.0)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            enqueue(job_id)
        except BaseException as exc:  # surfaced as a failed job below
            errors.append(exc)

    # In eager mode the job runs in this thread; with a broker it runs on the workers.
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    while True:
        with session_scope(settings.database_url) as s:
            job = s.get(m.Job, job_id)
            assert job is not None
            status, fraction = job.status, job.progress
        progress.update(bar, completed=fraction, description=f"{label} [{status}]")
        alive = worker.is_alive()
        # with a broker the workers finish the job; in eager mode this thread does
        if status in m.TERMINAL_STATUSES and (settings.broker_url or not alive):
            break
        # enqueueing failed, or the in-process run ended without a final status
        if not alive and (errors or settings.broker_url is None):
            reason = errors[0] if errors else RuntimeError("the job stopped before it finished")
            with session_scope() as s:
                fail_job(s, job_id, reason)
            break
        time.sleep(0.2)


def run(
    sources: Annotated[list[str], typer.Argument(help="Audio files: local paths, file:// or s3:// URIs.")],
    tasks: Annotated[
        str | None, typer.Option("--tasks", help="Comma-separated: transcribe,caption,events,summarize,think,speak")
    ] = None,
    question: Annotated[list[str] | None, typer.Option("--question", "-q", help="A free-form question, per segment and reduced.")] = None,
    engine: Annotated[str | None, typer.Option(help="local or triton (default: EARSHOT_ENGINE)")] = None,
    model_path: Annotated[str | None, typer.Option(help="AF3 checkpoint dir or s3:// prefix")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per job on stdout.")] = False,
) -> None:
    """Process files now, with a progress bar per file and a report at the end."""
    from workers.celery_app import run_with

    settings = apply_overrides(engine=engine, model_path=model_path)
    ensure_embedded_db(settings)
    if settings.broker_url is None:
        # in-process tasks would print Celery's per-task lines between the progress bars
        logging.getLogger("celery").setLevel(logging.WARNING)
    task_list = [t.strip() for t in tasks.split(",")] if tasks else list(settings.default_tasks)
    reports: list[JobReport] = []
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
        console=err_console, transient=as_json,
    ) as progress:
        for src in sources:
            try:
                with session_scope() as s:
                    job, _ = submit(s, src, settings=settings, tasks=task_list, engine=settings.engine, questions=question or [])
                    job_id = job.id
            except EarshotError as exc:
                reports.append(JobReport(job_id="", source=src, status="failed", error=ErrorInfo(code=exc.code, message=exc.message)))
                continue
            with run_with(settings):  # in-process tasks see the flags
                _run_one(job_id, src, progress, settings)
            reports.append(_report(job_id))
    for rep in reports:
        if as_json:
            print(json.dumps(rep.model_dump(mode="json")), flush=True)
        else:
            _print_report(rep)
    if any(r.status != "succeeded" for r in reports):
        raise typer.Exit(code=1)


@jobs_app.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed, cancelled")] = None,
    limit: int = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List jobs, newest first."""
    ensure_embedded_db(get_settings())
    with session_scope() as s:
        rows = [
            {
                "job_id": j.id, "source": j.source_uri, "status": j.status, "progress": j.progress,
                "created_at": j.created_at.isoformat(), "error": j.error_message,
            }
            for j in list_jobs(s, status=status, limit=limit)
        ]
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    table = Table("job", "status", "progress", "created", "source")
    for row in rows:
        table.add_row(str(row["job_id"]), str(row["status"]), f"{float(row['progress'] or 0):.0%}", str(row["created_at"])[:19], str(row["source"]))
    console.print(table)


def report_or_exit(job_id: str) -> JobReport:
    """The job's report; exit 2 with a message if there is no such job (show, export)."""
    settings = database_settings()
    with session_scope(settings.database_url) as s:
        job = get_job(s, job_id)
        if job is None:
            err_console.print(f"[red]no job {job_id}")
            raise typer.Exit(code=2)
        return build_report(s, job)


@jobs_app.command("show")
def jobs_show(job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show one job with its results."""
    report = report_or_exit(job_id)
    if as_json:
        print(json.dumps(report.model_dump(mode="json")))
    else:
        _print_report(report)


@jobs_app.command("retry")
def jobs_retry(
    job_ids: Annotated[list[str] | None, typer.Argument(help="Failed jobs to run again")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Every failed job (narrow it with --code)")] = False,
    code: Annotated[list[str] | None, typer.Option("--code", help="Only failed jobs with this error code")] = None,
    limit: Annotated[int, typer.Option(help="At most this many jobs")] = 1000,
) -> None:
    """Run failed jobs again (e.g. after an outage): `earshot jobs retry --failed --code storage_error`."""
    from workers.tasks import enqueue

    if not job_ids and not failed:
        raise typer.BadParameter("name job ids, or --failed (optionally with --code CODE)")
    settings = database_settings()
    with session_scope(settings.database_url) as s:
        reset = retry_failed(s, job_ids=job_ids or (), codes=code or (), limit=limit)
    for job_id in reset:
        enqueue(job_id)
        console.print(f"retrying {job_id}")
    missed = sorted(set(job_ids or ()) - set(reset))
    for job_id in missed:
        err_console.print(f"[yellow]{job_id}: no such failed job")
    if not reset:
        console.print("nothing to retry")
    if missed:
        raise typer.Exit(code=1)


@jobs_app.command("reap")
def jobs_reap(
    interval: Annotated[float | None, typer.Option(help="Sweep every INTERVAL seconds until stopped")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus metrics on 127.0.0.1:PORT")] = None,
    metrics_host: Annotated[str, typer.Option(help="Address for --metrics-port")] = "127.0.0.1",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON report per sweep on stdout")] = False,
) -> None:
    """The watchdog: re-enqueue stuck jobs, retry outage failures, settle finished jobs, resend callbacks."""
    from earshot.ingest.deadletters import pending_count, resolve_dead_letters
    from earshot.jobs.watchdog import queue_depths, reap
    from workers.celery_app import QUEUES
    from workers.tasks import enqueue, send_callback

    settings = database_settings()
    if metrics_port:
        from prometheus_client import Gauge, start_http_server

        dead = Gauge("earshot_ingest_dead_letters_pending", "Dead letters neither replayed nor resolved")
        start_http_server(metrics_port, addr=metrics_host)
    stop = stop_on_signals() if interval else threading.Event()
    while True:
        try:
            report = reap(settings=settings, enqueue=enqueue, send_callback=send_callback)
            with session_scope(settings.database_url) as s:
                resolved = resolve_dead_letters(s)
                pending = pending_count(s)
            if metrics_port:
                dead.set(pending)
                if settings.broker_url:
                    queue_depths(settings.broker_url, sorted(set(QUEUES.values())))
        except Exception as exc:
            if not interval:
                raise
            err_console.print(f"[red]sweep failed:[/] {exc}")
        else:
            out = {**report.as_dict(), "dead_letters_resolved": resolved}
            if as_json:
                print(json.dumps(out), flush=True)
            else:
                console.print(
                    f"requeued {len(report.requeued)}, retried {len(report.retried)}, settled "
                    f"{len(report.settled)}, callbacks resent {len(report.callbacks)}, dead letters "
                    f"resolved {resolved}"
                )
        if not interval or stop.wait(interval):
            return
