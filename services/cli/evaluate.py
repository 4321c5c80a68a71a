"""`earshot eval ...`: score a checkpoint on held-out golden-corpus audio; run the golden demo.

Mounted by services/cli/main.py as ``earshot eval``. The logic is in earshot.evaluation and
earshot.corpus; this module only reads flags and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from earshot.config import get_settings

app = typer.Typer(
    help="Score a checkpoint on held-out synthetic speech and sounds (golden corpus).", no_args_is_help=True
)
console = Console()

REPO = Path(__file__).resolve().parents[2]
GOLDEN_MODEL = REPO / "models" / "golden"
SPLITS = ["eval", "eval_heldout_voice"]


@app.command("run")
def run(
    model: Annotated[Path, typer.Option("--model", help="AF3 checkpoint directory.")] = GOLDEN_MODEL,
    corpus: Annotated[
        Path, typer.Option("--corpus", help="Corpus root; missing splits are generated from the spec.")
    ] = REPO / ".earshot" / "golden" / "corpus",
    split: Annotated[list[str] | None, typer.Option("--split", help="Splits to score (repeatable).")] = None,
    spec: Annotated[
        Path | None, typer.Option("--spec", help="Corpus spec (default: examples/golden).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Score only the first N windows per split.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Write the table as JSON (+ .md beside it), e.g. bench/results/golden_eval.json."
        ),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "cpu",
) -> None:
    """WER (seen voices, held-out voice), event onset/offset MAE, event and caption label accuracy."""
    from earshot.corpus.generate import generate_split
    from earshot.evaluation import evaluate, load_engine, table_markdown, write_report

    settings = get_settings().model_copy(update={"device": device})
    dirs = []
    for name in split or SPLITS:
        d = corpus / name
        if not (d / "truth.jsonl").exists():
            console.print(f"generating split {name} in {d}")
            generate_split(name, corpus, spec_path=spec)
        dirs.append(d)
    engine = load_engine(model, settings=settings)
    report = evaluate(engine, dirs, limit=limit, progress=lambda m: console.print(m, highlight=False))
    table = Table(title=f"eval of {model}")
    for col in (
        "split",
        "windows",
        "utterances",
        "WER",
        "onset MAE s",
        "offset MAE s",
        "event labels",
        "caption labels",
        "number",
    ):
        table.add_column(col)
    for s in report["splits"]:
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        sec = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        table.add_row(
            s["split"],
            str(s["windows"]),
            str(s["utterances"]),
            pct(s["wer"]),
            sec(s["onset_mae_s"]),
            sec(s["offset_mae_s"]),
            pct(s["event_label_accuracy"]),
            pct(s["caption_label_accuracy"]),
            pct(s["number_accuracy"]),
        )
    console.print(table)
    if out:
        write_report(report, out, extra={"model_dir": str(model), "limit": limit})
        console.print(f"wrote {out} and {out.with_suffix('.md')}")
    else:
        console.print(table_markdown(report))


@app.command("demo")
def demo(
    model: Annotated[Path, typer.Option("--model", help="AF3 checkpoint directory.")] = GOLDEN_MODEL,
    sample: Annotated[Path, typer.Option("--sample", help="Audio file (any format Earshot decodes).")] = REPO
    / "examples"
    / "golden"
    / "demo.flac",
    truth: Annotated[
        Path | None, typer.Option("--truth", help="Its known words and events (default: the sample's .json).")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "cpu",
) -> None:
    """Analyze a sample whose words are known; print transcript, events, caption and the WER."""
    import json

    from earshot.audio.decode import decode_all
    from earshot.corpus.files import FileTruth
    from earshot.evaluation import load_engine, score_file

    settings = get_settings().model_copy(update={"device": device})
    known = FileTruth.from_json(json.loads((truth or sample.with_suffix(".json")).read_text()))
    engine = load_engine(model, settings=settings)
    audio = decode_all(sample, max_duration_s=600.0)
    score = score_file(engine, audio, known, settings=settings)
    console.print(f"[bold]{sample.name}[/bold] ({known.duration:.0f} s) with {model}", highlight=False)
    console.print("[bold]transcript[/bold] (one utterance per sentence, timed inside its speech chunk)")
    for start, end, text in score.transcript:
        console.print(f"  [{start:6.1f} - {end:6.1f}] {text}", highlight=False)
    console.print(f"[bold]known text[/bold]\n  {score.reference}", highlight=False)
    console.print("[bold]events[/bold] (predicted | placed)")
    for t, p in score.event_pairs:
        got = f"[{p['start']:.1f} - {p['end']:.1f}] {p['label']}" if p else "missed"
        console.print(f"  {got:32} | [{t['start']:.1f} - {t['end']:.1f}] {t['label']}", highlight=False)
    extra = [
        e
        for e in score.events
        if all(p is None or (p["start"], p["label"]) != (e[0], e[2]) for _, p in score.event_pairs)
    ]
    for start, end, label in extra:
        console.print(f"  [{start:.1f} - {end:.1f}] {label:20} | (nothing placed there)", highlight=False)
    console.print(f"[bold]caption[/bold]: {score.caption}", highlight=False)
    wer = score.wer
    console.print(
        f"[bold]WER[/bold] {100 * wer:.1f} % ({score.word_errors} errors / {score.words} words)"
        if wer is not None
        else "no speech in the known text",
        highlight=False,
    )
