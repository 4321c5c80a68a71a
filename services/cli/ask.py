"""`earshot ask JOB_ID... "question"`: ask about processed files, and keep the conversation going."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import select

from earshot import storage
from earshot.chat import service
from earshot.chat.schemas import AnswerOut, ClipIn
from earshot.db import models as m
from earshot.db.session import session_scope
from earshot.errors import EarshotError, InputError
from earshot.grounding import BadTime, parse_time
from services.cli.common import apply_overrides, console, ensure_embedded_db, err_console

_CLIP = re.compile(r"^(?P<job>[0-9a-fA-F-]{6,36})(?:@(?P<start>[\d:.]+)?(?:-(?P<end>[\d:.]+))?)?$")


def parse_clip(text: str) -> ClipIn | None:
    """``JOB_ID``, ``JOB_ID@START-END``, ``JOB_ID@START`` or ``JOB_ID@-END`` (seconds or m:ss)."""
    found = _CLIP.match(text.strip())
    if not found:
        return None
    try:
        start = parse_time(found.group("start")) if found.group("start") else None
        end = parse_time(found.group("end")) if found.group("end") else None
    except BadTime:
        return None
    try:
        return ClipIn(job_id=found.group("job"), start=start, end=end)
    except ValueError as exc:
        raise typer.BadParameter(f"{text}: {exc}") from exc


def _full_job_id(prefix: str, database_url: str) -> str:
    """A job id, or a unique prefix of one (at least 6 characters)."""
    with session_scope(database_url) as s:
        if s.get(m.Job, prefix) is not None:
            return prefix
        hits = list(s.scalars(select(m.Job.id).where(m.Job.id.startswith(prefix.lower())).limit(2)))
    if len(hits) == 1:
        return hits[0]
    raise InputError(
        f"no job {prefix}" if not hits else f"{prefix} matches several jobs; give more of the id",
        code="job_not_found",
    )


def ask(
    args: Annotated[
        list[str],
        typer.Argument(
            help=(
                "Jobs to listen to (JOB_ID, or JOB_ID@START-END for a window; a unique id prefix "
                'works), then the question last, e.g. 3f2c9a1e@0-90 9ab14c2d "Which one has a siren?"'
            ),
            show_default=False,
        ),
    ],
    conversation: Annotated[
        str | None, typer.Option("--conversation", "-c", help="Continue this conversation (ids printed after each answer).")
    ] = None,
    think: Annotated[bool, typer.Option("--think", help="AF3 thinking mode: a reasoning trace, then the answer.")] = False,
    speak: Annotated[Path | None, typer.Option("--speak", help="Also speak the answer into this WAV file.")] = None,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Print the answer as it is generated.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the stored question and answer as JSON.")] = False,
    max_new_tokens: Annotated[int | None, typer.Option(help="Answer length limit in tokens.")] = None,
    engine: Annotated[str | None, typer.Option(help="local or triton (default: EARSHOT_ENGINE)")] = None,
    model_path: Annotated[str | None, typer.Option(help="AF3 checkpoint dir or s3:// prefix")] = None,
) -> None:
    """Ask about one or several processed files; later questions can refer back to earlier audio."""
    if not args:
        raise typer.BadParameter("give the job id(s) and then the question")
    *clip_args, question = args
    clips: list[ClipIn] = []
    for text in clip_args:
        clip = parse_clip(text)
        if clip is None:
            raise typer.BadParameter(f"{text!r} is not JOB_ID or JOB_ID@START-END (put the question last)")
        clips.append(clip)
    if not clips and conversation is None:
        raise typer.BadParameter("name at least one job to ask about (or --conversation to continue one)")

    settings = apply_overrides(engine=engine, model_path=model_path)
    ensure_embedded_db(settings)
    from earshot.engines import get_engine

    try:
        clips = [c.model_copy(update={"job_id": _full_job_id(c.job_id, settings.database_url)}) for c in clips]
        with session_scope(settings.database_url) as s:
            if conversation is None:
                conv = service.create_conversation(s, settings=settings, clips=clips)
                conversation_id, new_clips = conv.id, []
            else:
                conversation_id, new_clips = service.get_conversation(s, conversation).id, clips
        with session_scope(settings.database_url) as s:
            prepared = service.prepare_turn(
                s, conversation_id=conversation_id, question=question, settings=settings,
                clips=new_clips, think=think, speak=speak is not None, max_new_tokens=max_new_tokens,
            )
        eng = get_engine(settings)
        out: AnswerOut | None = None
        if stream and not as_json:
            for ev in service.stream_turn(prepared, engine=eng, settings=settings):
                if ev.event == "token":
                    sys.stdout.write(ev.data["text"])
                    sys.stdout.flush()
                elif ev.event == "answer":
                    out = AnswerOut.model_validate(ev.data)
                else:
                    raise EarshotError(ev.data["message"], code=ev.data["code"])
            print()
        else:
            with session_scope(settings.database_url) as s:
                out = service.answer_turn(s, prepared, engine=eng, settings=settings)
    except EarshotError as exc:
        err_console.print(f"[red]error {exc.code}:[/] {exc.message}")
        raise typer.Exit(code=2) from exc
    assert out is not None

    if speak is not None and out.answer.speech_uri:
        speak.write_bytes(storage.read_bytes(out.answer.speech_uri, settings=settings))
    if as_json:
        print(json.dumps(out.model_dump(mode="json")))
        return
    if not stream:
        console.print(out.answer.text, markup=False, highlight=False)
    if out.answer.thinking and stream is False:
        err_console.print(f"[dim]thinking: {out.answer.thinking}[/]", markup=True, highlight=False)
    if out.answer.note:
        err_console.print(f"[yellow]note:[/] {out.answer.note}")
    if speak is not None and out.answer.speech_uri:
        err_console.print(f"spoken answer written to {speak}")
    err_console.print(
        f"[dim]conversation {out.conversation_id} · turn {out.answer.seq} · "
        f"continue with: earshot ask -c {out.conversation_id} \"...\"[/]",
        soft_wrap=True,
    )
