"""Questions and multi-turn chat over processed audio. Keyword-only functions for the API and CLI.

A conversation is a list of turns plus the clips they attached. Every turn re-sends the whole
conversation to the model. The base AF3 was trained on one sound per prompt (multi-clip chat
was AF3-Chat, a separate checkpoint), so the conversation's clips are joined into one audio
(in order, ``CLIP_GAP_S`` of silence between them, at most ``chat_max_audio_s``) that the
last user turn carries as its one ``<sound>``, and the prompt names where each clip lies in
it. A later question can still refer back to audio attached turns ago ("compare it with the
first one"): it is in the joined audio, at the times the prompt gives.

A turn is answered in three steps, so that streaming and plain answers share everything:

    prepare_turn(session, ...)   validate, plan new clips, rebuild the prompt, load audio
    engine.chat / chat_stream    the model (no database session held meanwhile)
    finish_turn(session, ...)    split thinking/answer, speak, store both turns at once
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from earshot import budgets, prompts, storage
from earshot.af3.chat import Turn
from earshot.analysis import NO_ADAPTER_NOTE
from earshot.chat.models import Conversation, ConversationClip, ConversationTurn
from earshot.chat.schemas import (
    AnswerOut,
    ClipIn,
    ClipOut,
    ConversationOut,
    ConversationSummary,
    TurnOut,
)
from earshot.config import Settings
from earshot.db import models as m
from earshot.engines.base import Engine, Generation
from earshot.errors import EarshotError, InputError
from earshot.grounding import format_time
from earshot.reduce import clip_text
from earshot.tenants import DEFAULT_TENANT

log = logging.getLogger("earshot.chat")

SAMPLE_RATE = 16000
CONTEXT_CHARS = 600
# silence between joined clips: a clear boundary, short enough to keep the audio within limits
CLIP_GAP_S = 1.0


class ConversationNotFound(EarshotError):
    code = "not_found"


class ConversationConflict(EarshotError):
    """Another turn was stored while this one was being answered."""

    code = "conversation_conflict"


@dataclass(frozen=True)
class ClipPlan:
    """A validated window of a processed file, not yet stored."""

    job_id: str
    source_uri: str
    source_version: str
    label: str
    start_s: float
    end_s: float
    file_duration_s: float | None
    context: str | None

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class PreparedTurn:
    """Everything needed to answer one question, detached from the database session."""

    conversation_id: str
    expected_turns: int
    expected_clips: int
    question: str
    think: bool
    speak: bool
    max_new_tokens: int
    new_clips: list[ClipPlan]
    # conversation clip indices this question attaches (waiting ones, then new ones)
    attach: list[int]
    turns: list[Turn]
    # the conversation's clips joined into one audio ([] when it has none)
    audio: list[np.ndarray] = field(repr=False)


@dataclass
class StreamEvent:
    """``token`` (data: {"text"}), then ``answer`` (an AnswerOut) or ``error`` ({code, message})."""

    event: str
    data: dict[str, Any]


# ---- clips --------------------------------------------------------------------------------


def _job(session: Session, job_id: str, scope: str | None = None) -> m.Job:
    job = session.get(m.Job, job_id) if len(job_id) <= 64 else None
    # another tenant's job reads exactly like a missing one, before its status says anything
    if job is None or (scope is not None and job.tenant_id != scope):
        raise InputError(f"no job {job_id[:64]}", code="job_not_found")
    if job.status != "succeeded":
        raise InputError(
            f"job {job_id} is {job.status}: only processed (succeeded) files can be discussed",
            code="job_not_ready",
        )
    return job


def _file_summary(session: Session, job_id: str) -> str | None:
    row = session.scalar(
        select(m.Summary).where(m.Summary.job_id == job_id, m.Summary.level == "file")
    )
    return row.text if row is not None and row.text.strip() else None


def plan_clip(session: Session, ref: ClipIn, *, settings: Settings, scope: str | None = None) -> ClipPlan:
    """Check a requested clip against its job and the limits; default to a window at 0."""
    job = _job(session, ref.job_id, scope)
    duration = job.audio_file.duration_s if job.audio_file and job.audio_file.duration_s else None
    if duration is None and job.segments:
        duration = job.segments[-1].end_s
    start = ref.start or 0.0
    limit = settings.chat_max_clip_s
    end = ref.end if ref.end is not None else start + limit
    if duration is not None:
        if start >= duration:
            raise InputError(
                f"clip start {start:.1f} s is past the end of the file ({duration:.1f} s)",
                code="clip_out_of_range",
            )
        end = min(end, duration)
    if end - start > limit + 1e-6:
        raise InputError(
            f"a clip is at most {limit:.0f} s (EARSHOT_CHAT_MAX_CLIP_S); ask about a window "
            f"with start/end, got {end - start:.1f} s",
            code="clip_too_long",
        )
    whole = duration is not None and start <= 0.0 and end >= duration - 0.05
    version = job.audio_file.version if job.audio_file else ""
    label = PurePosixPath(storage.parse_uri(job.source_uri).key).name or job.source_uri
    return ClipPlan(
        job_id=job.id,
        source_uri=job.source_uri,
        source_version=version,
        label=label,
        start_s=start,
        end_s=end,
        file_duration_s=duration,
        context=None if whole else _file_summary(session, job.id),
    )


def _check_audio_budget(used_s: float, new: Sequence[ClipPlan], settings: Settings) -> None:
    total = used_s + sum(c.duration_s for c in new)
    if total > settings.chat_max_audio_s + 1e-6:
        raise InputError(
            f"a conversation holds at most {settings.chat_max_audio_s:.0f} s of audio "
            f"(EARSHOT_CHAT_MAX_AUDIO_S); these clips would make {total:.0f} s",
            code="conversation_audio_limit",
        )


def read_window(path: str | Path, start_s: float, end_s: float) -> np.ndarray:
    """16 kHz mono samples of ``[start_s, end_s)``; decoding stops at the window's end."""
    from earshot.audio import decode_stream

    lo_n, hi_n = round(start_s * SAMPLE_RATE), round(end_s * SAMPLE_RATE)
    pieces: list[np.ndarray] = []
    pos = 0
    stream = decode_stream(path, sample_rate=SAMPLE_RATE)
    try:
        for chunk in stream:
            n = int(chunk.shape[0])
            lo, hi = max(lo_n - pos, 0), min(hi_n - pos, n)
            if lo < hi:
                pieces.append(chunk[lo:hi])
            pos += n
            if pos >= hi_n:
                break
    finally:
        stream.close()
    return np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, dtype=np.float32)


# decoded clip windows: a conversation re-sends its clips every turn (a few, so a small FIFO;
# the API answers turns from several threads)
_WINDOWS: dict[tuple[str, str, float, float], np.ndarray] = {}
_WINDOWS_MAX = 8
_WINDOWS_LOCK = threading.Lock()


def _read_clip(uri: str, start_s: float, end_s: float, settings: Settings) -> np.ndarray:
    import tempfile

    ref = storage.parse_uri(uri)
    if ref.scheme == "file":
        return read_window(ref.path, start_s, end_s)
    with tempfile.TemporaryDirectory(prefix="earshot-chat-") as tmp:
        local = Path(tmp) / (PurePosixPath(ref.key).name or "audio")
        storage.download_to(uri, local, settings=settings)
        return read_window(local, start_s, end_s)


def clip_audio(clip: ClipPlan | ConversationClip, settings: Settings) -> np.ndarray:
    """The clip's samples, from the version the clip was planned on (cached, read-only)."""
    key = (clip.source_uri, clip.source_version, float(clip.start_s), float(clip.end_s))
    with _WINDOWS_LOCK:
        audio = _WINDOWS.get(key)
    if audio is None:
        audio = _read_clip(clip.source_uri, key[2], key[3], settings)
        audio.flags.writeable = False
        with _WINDOWS_LOCK:
            if len(_WINDOWS) >= _WINDOWS_MAX:
                _WINDOWS.pop(next(iter(_WINDOWS)), None)
            _WINDOWS[key] = audio
    if audio.shape[0] == 0:
        raise InputError(f"clip {clip.label} [{clip.start_s:.1f}-{clip.end_s:.1f} s] holds no audio", code="empty_clip")
    return audio


# ---- conversations ------------------------------------------------------------------------


def create_conversation(
    session: Session,
    *,
    settings: Settings,
    title: str | None = None,
    clips: Sequence[ClipIn] = (),
    tenant_id: str = DEFAULT_TENANT,
    scope: str | None = None,
) -> Conversation:
    """A new conversation of ``tenant_id``; its clips (jobs visible in ``scope``, None: all
    tenants) wait for the first question."""
    plans = [plan_clip(session, c, settings=settings, scope=scope) for c in clips]
    _check_audio_budget(0.0, plans, settings)
    conv = Conversation(
        title=title, turn_count=0, clip_count=len(plans), audio_s=0.0, options={}, tenant_id=tenant_id
    )
    session.add(conv)
    session.flush()
    for i, plan in enumerate(plans):
        conv.clips.append(_clip_row(conv.id, i, None, plan))
    conv.audio_s = sum(p.duration_s for p in plans)
    session.flush()
    return conv


def get_conversation(session: Session, conversation_id: str, *, scope: str | None = None) -> Conversation:
    """The conversation; ``scope`` (a tenant id, None: every tenant) hides other tenants' ones."""
    conv = session.get(Conversation, conversation_id) if len(conversation_id) <= 64 else None
    if conv is None or (scope is not None and conv.tenant_id != scope):
        raise ConversationNotFound(f"no conversation {conversation_id[:64]}")
    return conv


def list_conversations(session: Session, *, limit: int = 50, scope: str | None = None) -> list[Conversation]:
    q = select(Conversation).order_by(Conversation.updated_at.desc()).limit(limit)
    if scope is not None:
        q = q.where(Conversation.tenant_id == scope)
    return list(session.scalars(q))


def delete_conversation(session: Session, conversation_id: str, *, scope: str | None = None) -> None:
    session.delete(get_conversation(session, conversation_id, scope=scope))


def _clip_row(conversation_id: str, idx: int, turn_seq: int | None, plan: ClipPlan) -> ConversationClip:
    return ConversationClip(
        conversation_id=conversation_id,
        idx=idx,
        turn_seq=turn_seq,
        job_id=plan.job_id,
        source_uri=plan.source_uri,
        source_version=plan.source_version,
        label=plan.label,
        start_s=plan.start_s,
        end_s=plan.end_s,
        file_duration_s=plan.file_duration_s,
        context=plan.context,
    )


# ---- prompts ------------------------------------------------------------------------------


def clip_header(number: int, clip: ClipPlan | ConversationClip) -> str:
    """How the model is told which audio is which (the audio itself precedes the text)."""
    span = f"{format_time(clip.start_s, clock=True)} to {format_time(clip.end_s, clock=True)}"
    whole = clip.file_duration_s
    text = f"Audio {number} is {clip.label}, {span}"
    if whole is not None and (clip.start_s > 0 or clip.end_s < whole - 0.05):
        text += f" of a {format_time(whole, clock=True)} recording"
    text += "."
    if clip.context:
        text += f" The whole recording, summarized: {clip_text(clip.context, CONTEXT_CHARS)}"
    return text


def user_text(question: str, numbered: Sequence[tuple[int, ClipPlan | ConversationClip]]) -> str:
    if not numbered:
        return question
    return "\n".join(clip_header(n, c) for n, c in numbered) + "\n\n" + question


def join_clips(clips: Sequence[np.ndarray], *, gap_s: float = CLIP_GAP_S) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The clips in order with ``gap_s`` of silence between them, and each clip's span in it."""
    gap = np.zeros(round(gap_s * SAMPLE_RATE), dtype=np.float32)
    pieces: list[np.ndarray] = []
    spans: list[tuple[float, float]] = []
    pos = 0
    for i, clip in enumerate(clips):
        if i:
            pieces.append(gap)
            pos += gap.shape[0]
        pieces.append(np.asarray(clip, dtype=np.float32))
        spans.append((pos / SAMPLE_RATE, (pos + clip.shape[0]) / SAMPLE_RATE))
        pos += clip.shape[0]
    joined = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    return joined, spans


def joined_header(spans: Sequence[tuple[float, float]]) -> str:
    """Where each clip lies in the joined audio the model hears."""
    if len(spans) == 1:
        return "The audio is audio 1."
    where = "; ".join(
        f"audio {i + 1} from {format_time(a, clock=True)} to {format_time(b, clock=True)}"
        for i, (a, b) in enumerate(spans)
    )
    return (
        f"The audio holds {len(spans)} clips in order, with {CLIP_GAP_S:g} s of silence between "
        f"them: {where}."
    )


def prepare_turn(
    session: Session,
    *,
    conversation_id: str,
    question: str,
    settings: Settings,
    clips: Sequence[ClipIn] = (),
    think: bool = False,
    speak: bool = False,
    max_new_tokens: int | None = None,
    scope: str | None = None,
) -> PreparedTurn:
    """Validate a question and rebuild the whole conversation as turns + audio in order."""
    question = question.strip()
    if not question:
        raise InputError("the question is empty", code="empty_question")
    conv = get_conversation(session, conversation_id, scope=scope)
    plans = [plan_clip(session, c, settings=settings, scope=scope) for c in clips]
    _check_audio_budget(conv.audio_s, plans, settings)

    by_turn: dict[int | None, list[ConversationClip]] = {}
    for clip in conv.clips:
        by_turn.setdefault(clip.turn_seq, []).append(clip)
    turns: list[Turn] = []
    clips_in_order: list[np.ndarray] = []
    for t in conv.turns:
        if t.role == "user":
            attached = by_turn.get(t.seq, [])
            turns.append(Turn("user", user_text(t.text, [(c.idx + 1, c) for c in attached])))
            clips_in_order.extend(clip_audio(c, settings) for c in attached)
        else:
            turns.append(Turn("assistant", t.text))
    waiting = by_turn.get(None, [])
    numbered: list[tuple[int, ClipPlan | ConversationClip]] = [(c.idx + 1, c) for c in waiting]
    numbered += [(conv.clip_count + i + 1, p) for i, p in enumerate(plans)]
    clips_in_order.extend(clip_audio(c, settings) for _, c in numbered)
    # one <sound> per prompt: every clip so far, joined, rides on the question being asked
    joined, spans = join_clips(clips_in_order)
    text = user_text(question, numbered)
    if spans:
        text = joined_header(spans) + "\n" + text
    turns.append(Turn("user", text, audio=1 if spans else 0))
    limit = max_new_tokens or budgets.budget("question", clip_s=spans[-1][1] if spans else 0.0, settings=settings)
    return PreparedTurn(
        conversation_id=conv.id,
        expected_turns=conv.turn_count,
        expected_clips=conv.clip_count,
        question=question,
        think=think,
        speak=speak,
        max_new_tokens=limit,
        new_clips=plans,
        attach=[n - 1 for n, _ in numbered],
        turns=turns,
        audio=[joined] if spans else [],
    )


# ---- answering ----------------------------------------------------------------------------


def finish_turn(
    session: Session,
    prepared: PreparedTurn,
    raw: str,
    *,
    engine: Engine,
    settings: Settings,
    timings: dict[str, float] | None = None,
    truncated: bool = False,
) -> AnswerOut:
    """Split the answer, speak it when asked, store the question and the answer together."""
    timings = dict(timings or {})
    thinking, answer = prompts.split_reasoning(raw) if prepared.think else ("", raw.strip())
    adapter = prepared.think and engine.has_think_adapter
    notes: list[str] = []
    if prepared.think and not adapter:
        notes.append(NO_ADAPTER_NOTE)
    if truncated:
        notes.append(budgets.truncation_note({"chat": 1}))
    user_seq = prepared.expected_turns
    answer_seq = user_seq + 1

    speech_uri: str | None = None
    speech_s: float | None = None
    if prepared.speak:
        t0 = time.monotonic()
        try:
            speech = engine.speak(answer or "I have no answer.")
            speech_uri = storage.join_uri(
                settings.output_url, "conversations", prepared.conversation_id, f"turn-{answer_seq:04d}.wav"
            )
            storage.put_bytes(speech_uri, speech.wav, content_type="audio/wav", settings=settings)
            speech_s = speech.duration_s
        except EarshotError as exc:
            log.warning("could not speak the answer: %s", exc.message)
            notes.append(f"The answer could not be spoken: {exc.message}")
            speech_uri = None
        timings["speak_s"] = round(time.monotonic() - t0, 3)

    conv = session.get(Conversation, prepared.conversation_id, with_for_update=True, populate_existing=True)
    if conv is None:
        raise ConversationNotFound(f"no conversation {prepared.conversation_id}")
    if conv.turn_count != prepared.expected_turns or conv.clip_count != prepared.expected_clips:
        raise ConversationConflict(
            "another turn was added to this conversation while this one was answered; ask again",
        )
    for clip in conv.clips:
        if clip.turn_seq is None and clip.idx in prepared.attach:
            clip.turn_seq = user_seq
    for i, plan in enumerate(prepared.new_clips):
        conv.clips.append(_clip_row(conv.id, conv.clip_count + i, user_seq, plan))
    question_row = ConversationTurn(
        conversation_id=conv.id, seq=user_seq, role="user", text=prepared.question, thinking="",
        think=prepared.think, adapter=False, timings={},
    )
    answer_row = ConversationTurn(
        conversation_id=conv.id, seq=answer_seq, role="assistant", text=answer, thinking=thinking,
        raw=raw, think=prepared.think, adapter=adapter, note=" ".join(notes) or None,
        speech_uri=speech_uri, speech_duration_s=speech_s, model_id=engine.model_id,
        engine=engine.name, timings=timings,
    )
    conv.turns.extend([question_row, answer_row])
    conv.turn_count += 2
    conv.clip_count += len(prepared.new_clips)
    conv.audio_s += sum(p.duration_s for p in prepared.new_clips)
    if not conv.title:
        conv.title = clip_text(prepared.question, 80)
    session.flush()
    return AnswerOut(
        conversation_id=conv.id,
        question=turn_out(question_row, prepared.attach),
        answer=turn_out(answer_row, []),
    )


def answer_turn(
    session: Session, prepared: PreparedTurn, *, engine: Engine, settings: Settings
) -> AnswerOut:
    """Ask the model (the whole answer at once) and store the turn pair."""
    t0 = time.monotonic()
    gen = engine.chat(
        prepared.turns, prepared.audio, think=prepared.think, max_new_tokens=prepared.max_new_tokens
    )
    budgets.count("chat", truncated=gen.truncated)
    timings = {"generate_s": round(time.monotonic() - t0, 3)}
    return finish_turn(
        session, prepared, gen.text, engine=engine, settings=settings, timings=timings,
        truncated=gen.truncated,
    )


def stream_turn(
    prepared: PreparedTurn, *, engine: Engine, settings: Settings, session_scope: Any = None
) -> Iterator[StreamEvent]:
    """Text pieces as they come, then the stored answer; errors become an ``error`` event.

    Opens its own session at the end (``session_scope``, default one on
    ``settings.database_url``): a request's session is gone by the time a stream finishes.
    """
    if session_scope is None:
        from functools import partial

        from earshot.db.session import session_scope as default_scope

        session_scope = partial(default_scope, settings.database_url)
    pieces: list[str] = []
    t0 = time.monotonic()
    try:
        stream = engine.chat_stream(
            prepared.turns, prepared.audio, think=prepared.think, max_new_tokens=prepared.max_new_tokens
        )
        while True:
            try:
                piece = next(stream)
            except StopIteration as end:  # an engine may return the whole Generation here
                final = end.value if isinstance(end.value, Generation) else None
                break
            pieces.append(piece)
            yield StreamEvent("token", {"text": piece})
        truncated = final is not None and final.truncated
        if final is not None:
            budgets.count("chat", truncated=truncated)
        timings = {"generate_s": round(time.monotonic() - t0, 3)}
        with session_scope() as s:
            out = finish_turn(
                s, prepared, "".join(pieces), engine=engine, settings=settings, timings=timings,
                truncated=truncated,
            )
        yield StreamEvent("answer", out.model_dump(mode="json"))
    except EarshotError as exc:
        yield StreamEvent("error", {"code": exc.code, "message": exc.message})
    except Exception as exc:  # the stream has started: the client can only learn of it here
        log.exception("streamed answer failed")
        yield StreamEvent("error", {"code": "internal_error", "message": str(exc) or type(exc).__name__})


# ---- views --------------------------------------------------------------------------------


def turn_out(turn: ConversationTurn, clip_idx: Sequence[int]) -> TurnOut:
    return TurnOut(
        seq=turn.seq,
        role=turn.role,
        text=turn.text,
        thinking=turn.thinking or "",
        think=bool(turn.think),
        adapter=bool(turn.adapter),
        note=turn.note,
        clips=[i + 1 for i in clip_idx],
        speech_uri=turn.speech_uri,
        model_id=turn.model_id,
        created_at=turn.created_at,
    )


def conversation_out(conv: Conversation) -> ConversationOut:
    by_turn: dict[int, list[int]] = {}
    for c in conv.clips:
        if c.turn_seq is not None:
            by_turn.setdefault(c.turn_seq, []).append(c.idx)
    return ConversationOut(
        id=conv.id,
        title=conv.title,
        created_at=conv.created_at,
        updated_at=conv.updated_at,
        audio_s=conv.audio_s,
        clips=[
            ClipOut(
                number=c.idx + 1, job_id=c.job_id, source=c.source_uri, label=c.label,
                start=c.start_s, end=c.end_s, turn=c.turn_seq,
            )
            for c in conv.clips
        ],
        turns=[turn_out(t, by_turn.get(t.seq, [])) for t in conv.turns],
    )


def conversation_summary(conv: Conversation) -> ConversationSummary:
    return ConversationSummary(
        id=conv.id, title=conv.title, turns=conv.turn_count, clips=conv.clip_count, updated_at=conv.updated_at
    )
