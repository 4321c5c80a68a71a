"""`earshot ingest ...`: the S3 event bridge, the reconciler and the dead letters."""

from __future__ import annotations

import json
import threading
from typing import Annotated

import typer
from rich.table import Table

from earshot.db.session import session_scope
from earshot.ingest.bridge import Bridge, Delivery
from earshot.ingest.deadletters import list_dead_letters, mark_replayed, resolve_dead_letters
from earshot.ingest.models import DeadLetter
from services.cli.common import console, database_settings, err_console, stop_on_signals

app = typer.Typer(help="Event-driven ingest: S3 uploads become jobs.", no_args_is_help=True)


@app.command("run")
def run(
    source: Annotated[
        str,
        typer.Option(
            "--source",
            help="sqs://QUEUE[?endpoint_url=..&region=..], amqp://user:pass@host/vhost?queue=NAME"
            "[&exchange=EX&routing_key=RK], or webhook://HOST:PORT",
        ),
    ],
    threads: Annotated[int, typer.Option(help="Messages handled in parallel")] = 4,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus metrics on this port")] = None,
    metrics_host: Annotated[str, typer.Option(help="Address for --metrics-port")] = "127.0.0.1",
) -> None:
    """Consume S3 ObjectCreated notifications and turn them into enqueued jobs."""
    from services.ingest.runner import run_bridge

    settings = database_settings()
    if not settings.broker_url:
        err_console.print(
            "[yellow]EARSHOT_BROKER_URL is not set: jobs run inside the bridge process (eager mode)"
        )
    try:
        run_bridge(source, settings, threads=threads, metrics_port=metrics_port, metrics_host=metrics_host)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--source") from exc


@app.command("scan")
def scan(
    prefix: Annotated[str, typer.Argument(help="s3://bucket/prefix to reconcile")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report objects with no job")] = False,
    interval: Annotated[
        float | None, typer.Option(help="Repeat every INTERVAL seconds (periodic mode) until stopped")
    ] = None,
    min_age: Annotated[
        float, typer.Option(help="Leave objects younger than this many seconds to the event path")
    ] = 0.0,
    requeue_after: Annotated[
        float, typer.Option(help="Re-send jobs never marked enqueued after this many seconds")
    ] = 300.0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON report per pass on stdout")] = False,
    reap: Annotated[
        bool, typer.Option("--reap/--no-reap", help="After each pass, one watchdog sweep (`earshot jobs reap`)")
    ] = True,
) -> None:
    """Enqueue every object under PREFIX that has no job yet (a lost event never loses an upload)."""
    from earshot.ingest.reconcile import scan as scan_once
    from services.ingest.runner import celery_enqueue

    settings = database_settings()
    enqueue = celery_enqueue(settings)
    stop = stop_on_signals() if interval else threading.Event()
    while True:
        try:
            report = scan_once(
                prefix, settings=settings, enqueue=enqueue, dry_run=dry_run, min_age_s=min_age,
                requeue_after_s=requeue_after,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="PREFIX") from exc
        except Exception as exc:
            if not interval:
                raise
            err_console.print(f"[red]scan failed:[/] {exc}")
        else:
            if reap and not dry_run:
                from earshot.jobs.watchdog import reap as sweep
                from workers.tasks import send_callback

                try:
                    swept = sweep(settings=settings, enqueue=enqueue, send_callback=send_callback)
                except Exception as exc:  # the scan itself succeeded; the sweeper retries
                    err_console.print(f"[yellow]watchdog sweep failed:[/] {exc}")
                else:
                    if any(swept.as_dict().values()):
                        err_console.print(f"watchdog: {json.dumps(swept.as_dict())}")
            if as_json:
                print(json.dumps(report.as_dict()), flush=True)
            else:
                verb = "would enqueue" if dry_run else "enqueued"
                count = len(report.missing) if dry_run else len(report.enqueued)
                console.print(
                    f"{report.prefix}: {report.listed} listed, {report.eligible} eligible, "
                    f"{report.known} with a job, {verb} {count}"
                    + (f", re-sent {len(report.requeued)}" if report.requeued else "")
                    + (f", rejected {len(report.rejected)}" if report.rejected else "")
                )
                for uri in report.missing if dry_run else [u for u, _ in report.enqueued]:
                    console.print(f"  {uri}")
        if not interval or stop.wait(interval):
            return


@app.command("dead-letters")
def dead_letters(
    limit: int = 50,
    reason: Annotated[str | None, typer.Option(help="Only this reason code")] = None,
    pending: Annotated[bool, typer.Option("--pending", help="Hide replayed and resolved ones")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List messages the bridge could not turn into jobs, newest first."""
    settings = database_settings()
    with session_scope(settings.database_url) as s:
        resolve_dead_letters(s)  # objects whose job succeeded meanwhile
    with session_scope(settings.database_url) as s:
        rows = [
            {
                "id": d.id, "created_at": d.created_at.isoformat(), "source": d.source,
                "reason": d.reason, "detail": d.detail, "bucket": d.bucket, "key": d.key,
                "replayed_at": d.replayed_at.isoformat() if d.replayed_at else None,
                "resolved_at": d.resolved_at.isoformat() if d.resolved_at else None,
                "body": d.body,
            }
            for d in list_dead_letters(s, limit=limit, reason=reason, include_replayed=not pending)
        ]
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    table = Table("id", "created", "source", "reason", "object", "detail")
    for row in rows:
        obj = f"s3://{row['bucket']}/{row['key']}" if row["bucket"] else ""
        table.add_row(
            str(row["id"])[:8], str(row["created_at"])[:19], str(row["source"]), str(row["reason"]),
            obj, str(row["detail"])[:80],
        )
    console.print(table)


@app.command("replay")
def replay(dead_letter_id: Annotated[str, typer.Argument(help="Id (or unique prefix) of a dead letter")]) -> None:
    """Feed a dead letter through the bridge again (after fixing its cause)."""
    from services.ingest.runner import celery_enqueue

    settings = database_settings()
    with session_scope() as s:
        matches = list(
            s.scalars(
                DeadLetter.__table__.select()
                .with_only_columns(DeadLetter.id)
                .where(DeadLetter.id.startswith(dead_letter_id, autoescape=True))
                .limit(2)
            )
        )
        if len(matches) != 1:
            err_console.print(f"[red]{'no' if not matches else 'more than one'} dead letter matches {dead_letter_id}")
            raise typer.Exit(code=2)
        row = s.get(DeadLetter, matches[0])
        assert row is not None
        delivery = Delivery(body=row.body.encode("utf-8"), source=f"replay:{row.source}", message_id=row.id)
    outcome = Bridge(settings, enqueue=celery_enqueue(settings)).handle(delivery)
    if outcome.action == "ack" and not outcome.dead_letters:
        with session_scope() as s:
            mark_replayed(s, matches[0])
    print(json.dumps(outcome.as_dict()))
    if outcome.action != "ack" or outcome.dead_letters:
        raise typer.Exit(code=1)
