"""Request and response shapes of conversations, shared by the REST API and the CLI."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, model_validator

QUESTION_MAX_CHARS = 4000
# 7 days: longer than any recording Earshot accepts, and inside every database's float range
MAX_TIME_S = 7 * 24 * 3600.0
# clips per request (each is a database lookup and a window of audio; the audio budget bounds the rest)
MAX_CLIPS = 16


class ClipIn(BaseModel):
    """A processed file (a job) to listen to, optionally only a window of it."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(description="A succeeded job whose source audio the model hears")
    start: float | None = Field(default=None, ge=0, le=MAX_TIME_S, description="Window start in seconds (default 0)")
    end: float | None = Field(
        default=None, gt=0, le=MAX_TIME_S, description="Window end in seconds (default: start + EARSHOT_CHAT_MAX_CLIP_S or the file's end)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> ClipIn:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class _Asking(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clips: list[ClipIn] = Field(
        default_factory=list, max_length=MAX_CLIPS, description="Audio to attach to this question"
    )
    job_ids: list[str] = Field(
        default_factory=list, max_length=MAX_CLIPS, description="Shorthand: whole files (windowed when long)"
    )
    think: bool = Field(default=False, description="AF3 thinking mode: a reasoning trace, then the answer")
    speak: bool = Field(default=False, description="Also speak the answer (WAV, see .../speech)")
    stream: bool = Field(default=False, description="Answer as server-sent events (token, then answer)")
    max_new_tokens: int | None = Field(default=None, ge=1, le=4096)

    def all_clips(self) -> list[ClipIn]:
        return [*self.clips, *(ClipIn(job_id=j) for j in self.job_ids)]


class ConversationCreate(_Asking):
    title: str | None = Field(default=None, max_length=200)
    question: str | None = Field(
        default=None, min_length=1, max_length=QUESTION_MAX_CHARS,
        description="Ask right away; without it the clips wait for the first turn",
    )


class TurnCreate(_Asking):
    question: str = Field(min_length=1, max_length=QUESTION_MAX_CHARS)


class ClipOut(BaseModel):
    number: int = Field(description="How the model is told about it: 'Audio <number>'")
    job_id: str | None
    source: str
    label: str
    start: float
    end: float
    turn: int | None = Field(description="The user turn that attached it (null: the next one)")


class TurnOut(BaseModel):
    seq: int
    role: str
    text: str
    thinking: str = ""
    think: bool = False
    adapter: bool = Field(default=False, description="True when the think LoRA adapter produced this answer")
    note: str | None = None
    clips: list[int] = Field(default_factory=list, description="Numbers of the clips this turn attached")
    speech_uri: str | None = None
    model_id: str | None = None
    created_at: datetime


class ConversationOut(BaseModel):
    id: str
    title: str | None
    created_at: datetime
    updated_at: datetime
    audio_s: float
    clips: list[ClipOut]
    turns: list[TurnOut]


class ConversationSummary(BaseModel):
    id: str
    title: str | None
    turns: int
    clips: int
    updated_at: datetime


class AnswerOut(BaseModel):
    conversation_id: str
    question: TurnOut
    answer: TurnOut
