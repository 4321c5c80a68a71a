"""`earshot train ...`: run a curriculum stage, show runs, run the CPU demo.

Mounted by services/cli/main.py as ``earshot train``; also runnable on its own as
``python -m workers.training`` (e.g. under ``torchrun``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from earshot.config import get_settings
from earshot.errors import EarshotError

app = typer.Typer(help="Curriculum fine-tuning of AF3 (stage1 .. stage4).", no_args_is_help=True)
console = Console()


def _ensure_logging() -> None:
    # The `earshot` app configures logging in its callback; `python -m` needs it here.
    root = logging.getLogger()
    if not root.handlers:
        from earshot.logs import setup_logging

        settings = get_settings()
        setup_logging(settings.log_level, json_lines=settings.log_json)
    for noisy in ("transformers", "peft", "httpx", "botocore"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.getLogger("earshot.training").setLevel(logging.INFO)


def _fail(exc: EarshotError) -> typer.Exit:
    console.print(f"[red]error[/red] ({exc.code}): {exc.message}", highlight=False)
    return typer.Exit(2)


def _summary(results: list[Any]) -> Table:
    table = Table(title="curriculum")
    for col in ("stage", "status", "steps", "first loss", "last loss", "tokens/s", "skipped"):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(
            r.stage,
            r.status.replace("_", " "),
            f"{r.steps}/{r.total_steps}" if r.total_steps else "-",
            f"{r.first_loss:.4f}" if r.first_loss is not None else "-",
            f"{r.last_loss:.4f}" if r.last_loss is not None else "-",
            f"{r.tokens_per_s:.0f}" if r.tokens_per_s else "-",
            str(int(r.skipped.get("total", 0) or 0)),
        )
    return table


def _print_results(results: list[Any]) -> None:
    console.print(_summary(results))
    for r in results:
        if r.skipped.get("total"):
            console.print(f"{r.stage}: skipped {_skipped_text(r.skipped)}", highlight=False)
        console.print(f"{r.stage}: model {r.model_uri or '-'}", highlight=False)


def _skipped_text(skipped: dict[str, Any]) -> str:
    total = int(skipped.get("total", 0) or 0)
    if not total:
        return "0"
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(skipped.get("reasons", {}).items()))
    return f"{total} ({reasons})"


@app.command()
def run(
    config: Annotated[str, typer.Option("--config", help="Curriculum YAML: path, file:// or s3://.")],
    stage: Annotated[
        str | None, typer.Option("--stage", help="Run one stage (stage1, stage2, stage3, stage3_5, stage4).")
    ] = None,
    resume_from: Annotated[
        str | None,
        typer.Option(
            "--resume-from",
            help="Start from: the previous stage's output, an AF3 model dir, or a training checkpoint.",
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option("--output", help="With --stage: this stage's output prefix; without: the run's root."),
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Ignore this stage's own checkpoints and DONE marker.")
    ] = False,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda.")] = None,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="Where run metrics go (default: settings).")
    ] = None,
) -> None:
    """Train one stage (as each Kubernetes Job does) or the whole curriculum."""
    _ensure_logging()
    settings = get_settings()
    database_url = database_url or settings.database_url
    from earshot.training.config import load_curriculum
    from earshot.training.dist import destroy, init_distributed
    from earshot.training.trainer import run_curriculum, run_stage

    try:
        cur = load_curriculum(config, settings=settings)
        if device:
            cur.device = device
        info = init_distributed(cur.device)
        if stage:
            results = [
                run_stage(
                    cur,
                    stage,
                    output=output,
                    resume_from=resume_from,
                    restart=restart,
                    database_url=database_url,
                    settings=settings,
                )
            ]
        else:
            if resume_from:
                cur.base_model = resume_from
            results = run_curriculum(
                cur, output=output, restart=restart, database_url=database_url, settings=settings
            )
    except EarshotError as exc:
        raise _fail(exc) from exc
    finally:
        destroy()
    if info.is_main:
        _print_results(results)


@app.command()
def status(
    output: Annotated[
        str | None, typer.Option("--output", help="A run root or stage output prefix to inspect.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    database_url: Annotated[str | None, typer.Option("--database-url")] = None,
) -> None:
    """Runs and their stages from the database (and the markers under --output)."""
    from earshot.training.status import collect_status

    settings = get_settings()
    database_url = database_url or settings.database_url
    try:
        report = collect_status(database_url=database_url, output=output, settings=settings, limit=limit)
    except EarshotError as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    if report.get("database_error"):
        console.print(f"[yellow]database:[/yellow] {report['database_error']}", highlight=False)
    if not report["runs"] and not report["storage"]:
        console.print("no training runs recorded")
        return
    for run_ in report["runs"]:
        table = Table(title=f"{run_['name']} ({run_['status']}) {run_['output_uri']}")
        for col in ("stage", "status", "step", "first loss", "last loss", "tokens/s", "skipped", "tries"):
            table.add_column(col, overflow="fold")
        for s in run_["stages"]:
            table.add_row(
                s["stage"],
                s["status"],
                f"{s['step']}/{s['total_steps']}",
                f"{s['first_loss']:.4f}" if s["first_loss"] is not None else "-",
                f"{s['last_loss']:.4f}" if s["last_loss"] is not None else "-",
                f"{s['tokens_per_s']:.0f}" if s["tokens_per_s"] else "-",
                str(s["records_skipped"]),
                str(s["attempts"]),
            )
        console.print(table)
        for s in run_["stages"]:
            where = s["model_uri"] or s["checkpoint_uri"]
            if where:
                console.print(f"  {s['stage']}: {where}", highlight=False)
            if s["error"]:
                console.print(f"  {s['stage']}: [red]{s['error']}[/red]", highlight=False)
    for item in report["storage"]:
        console.print(
            f"{item['output']}: {item['state']}"
            + (f" (step {item['step']})" if item.get("step") is not None else "")
            + (f", model {item['model_uri']}" if item.get("model_uri") else ""),
            highlight=False,
        )


@app.command()
def demo(
    workdir: Annotated[
        Path | None,
        typer.Option("--workdir", help="Where the model, data and runs go (default: a temp dir)."),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimizer steps per stage.")] = 12,
) -> None:
    """Tiny model + generated data + all five stages on CPU, then load and run the export."""
    _ensure_logging()
    from earshot.training.demo import run_demo

    root = workdir or Path(tempfile.mkdtemp(prefix="earshot-train-demo-"))
    try:
        outcome = run_demo(root, settings=get_settings(), steps=steps, echo=lambda line: console.print(line, highlight=False))
    except EarshotError as exc:
        raise _fail(exc) from exc
    console.print(_summary(outcome["results"]))
    for line in outcome["lines"]:
        console.print(line, highlight=False)


def main() -> None:
    app(prog_name="earshot-train")


if __name__ == "__main__":
    main()
