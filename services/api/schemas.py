"""Request and response models of the REST API (the OpenAPI document is built from these)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from earshot.prompts import TASKS

TaskName = Literal["transcribe", "caption", "events", "summarize", "think", "speak"]
assert set(TASKS) == set(TaskName.__args__)  # type: ignore[attr-defined]

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "superseded"]
ExportName = Literal["json", "srt", "vtt", "txt", "md"]

JOB_ID_EXAMPLE = "0b8e2a52-5a8e-4f38-9d1e-1f6f3f1c2b7a"
# S3 bucket naming rules (3-63 chars of a-z 0-9 . -), then a non-empty key
S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/[^\x00-\x1f\x7f]{1,1024}$")


CALLBACK_URL = r"^https?://[^\s\x00-\x1f]+$"
# any text but control characters (newlines and tabs are fine)
QUESTION = Annotated[str, Field(max_length=2000, pattern=r"^[^\x00-\x08\x0b-\x1f\x7f]*$")]
MAX_QUESTIONS = 20
MAX_TASKS = len(TASKS)


class ErrorOut(BaseModel):
    code: str
    message: str


class JobOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": JOB_ID_EXAMPLE,
                    "status": "running",
                    "source": "s3://calls/2026/11/26/call-0042.mp3",
                    "tasks": ["transcribe", "events", "summarize"],
                    "questions": [],
                    "engine": "triton",
                    "model_id": "nvidia/audio-flamingo-3-hf",
                    "progress": 0.4,
                    "attempts": 1,
                    "segment_count": 5,
                    "duration_s": 2843.2,
                    "created_at": "2026-11-26T09:14:03.120000Z",
                    "updated_at": "2026-11-26T09:15:41.877000Z",
                    "started_at": "2026-11-26T09:14:04.002000Z",
                    "finished_at": None,
                    "timings": {"prepare_s": 3.1},
                    "error": None,
                    "outputs": {},
                }
            ]
        }
    )

    id: str
    status: JobStatus
    source: str = Field(description="The audio's URI")
    tasks: list[str]
    questions: list[str]
    engine: str
    model_id: str | None
    progress: float = Field(ge=0.0, le=1.0, description="Fraction of segments done")
    attempts: int
    segment_count: int | None
    duration_s: float | None = Field(description="Audio length, once probed")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    timings: dict[str, float] = Field(description="Seconds spent per stage")
    error: ErrorOut | None
    outputs: dict[str, str] = Field(description="Result files by format")
    tenant_id: str | None = Field(
        default=None, description="The job's tenant; only in answers to admin keys, which see every tenant"
    )


class JobPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"jobs": [JobOut.model_config["json_schema_extra"]["examples"][0]],  # type: ignore[index]
                                         "next_cursor": "eyJ0IjoiMjAyNi0xMS0yNlQwOToxNDowMy4xMiswMDowMCIsImlkIjoiMGI4ZSJ9"}]}
    )

    jobs: list[JobOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last")


class JobCreate(BaseModel):
    """Submit an object that is already in S3."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "uri": "s3://calls/2026/11/26/call-0042.mp3",
                    "tasks": ["transcribe", "events", "summarize"],
                    "questions": ["Was a siren audible?"],
                    "callback_url": "https://hooks.example.com/earshot",
                }
            ]
        },
    )

    uri: str = Field(description="s3://bucket/key of the audio", pattern=S3_URI.pattern, max_length=1100)
    tasks: list[TaskName] | None = Field(
        default=None, min_length=1, max_length=MAX_TASKS, description="Default: the server's EARSHOT_DEFAULT_TASKS"
    )
    questions: list[QUESTION] = Field(
        default_factory=list, max_length=MAX_QUESTIONS, description="Free-form questions"
    )
    callback_url: str | None = Field(
        default=None, max_length=2000, pattern=CALLBACK_URL, description="POSTed the job id when it finishes"
    )


class UploadForm(BaseModel):
    """Documentation of the multipart form of ``POST /v1/jobs`` (parsed by hand, streamed)."""

    model_config = ConfigDict(extra="forbid")

    file: bytes = Field(json_schema_extra={"format": "binary"}, description="The audio file")
    tasks: list[TaskName] = Field(
        default_factory=list, max_length=MAX_TASKS,
        description="Repeat the field, or comma-separate; default: the server's default tasks",
    )
    questions: list[QUESTION] = Field(default_factory=list, max_length=MAX_QUESTIONS)
    callback_url: str = Field(default="", max_length=2000, pattern=CALLBACK_URL)


class UtteranceOut(BaseModel):
    start: float = Field(description="Seconds from the start of the file")
    end: float
    text: str


class TranscriptOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": JOB_ID_EXAMPLE,
                    "status": "succeeded",
                    "utterances": [
                        {"start": 0.0, "end": 3.2, "text": "Thanks for calling, how can I help?"},
                        {"start": 3.4, "end": 7.9, "text": "There is a siren outside my window."},
                    ],
                }
            ]
        }
    )

    job_id: str
    status: JobStatus
    utterances: list[UtteranceOut]


class SummaryItem(BaseModel):
    level: str = Field(description="segment, section, file, caption or chapter")
    idx: int
    start: float
    end: float
    title: str | None
    text: str


class SummaryOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": JOB_ID_EXAMPLE,
                    "status": "succeeded",
                    "summary": "A caller reports a siren and asks for directions.",
                    "items": [
                        {"level": "file", "idx": 0, "start": 0.0, "end": 61.0, "title": None,
                         "text": "A caller reports a siren and asks for directions."},
                        {"level": "chapter", "idx": 0, "start": 0.0, "end": 30.0, "title": "Greeting",
                         "text": "The agent answers."},
                    ],
                }
            ]
        }
    )

    job_id: str
    status: JobStatus
    summary: str | None = Field(description="The file-level summary, when there is one")
    items: list[SummaryItem] = Field(description="Every summary, ordered by level then index")


class EventOut(BaseModel):
    start: float
    end: float
    duration: float
    label: str
    raw: str


class EventsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"job_id": JOB_ID_EXAMPLE, "status": "succeeded",
                 "events": [{"start": 12.0, "end": 19.5, "duration": 7.5, "label": "siren",
                             "raw": "[12.0-19.5] siren"}]}
            ]
        }
    )

    job_id: str
    status: JobStatus
    events: list[EventOut]


class TraceOut(BaseModel):
    segment_index: int = Field(description="-1 for a file-level answer")
    question: str
    thinking: str
    answer: str
    adapter: bool = Field(description="True when the think LoRA adapter produced it")


class ReasoningOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"job_id": JOB_ID_EXAMPLE, "status": "succeeded",
                 "traces": [{"segment_index": -1, "question": "Was a siren audible?",
                             "thinking": "A rising and falling tone appears at 12 s...",
                             "answer": "Yes, from 12 s to 19 s.", "adapter": True}]}
            ]
        }
    )

    job_id: str
    status: JobStatus
    traces: list[TraceOut]


class SpeechOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"job_id": JOB_ID_EXAMPLE, "kind": "summary",
                 "uri": "s3://results/call-0042/summary.wav",
                 "url": "https://s3.example.com/results/call-0042/summary.wav?X-Amz-Signature=...",
                 "duration_s": 14.2, "voice": "en-us", "sample_rate": 22050}
            ]
        }
    )

    job_id: str
    kind: str
    uri: str
    url: str = Field(description="Presigned GET URL (for file:// storage, the file URI)")
    duration_s: float
    voice: str
    sample_rate: int


class SearchHitOut(BaseModel):
    kind: Literal["utterance", "summary"]
    job_id: str
    source: str
    start: float = Field(description="Absolute seconds from the start of the file")
    end: float
    text: str
    snippet: str = Field(description="HTML-escaped text with matches in <mark>...</mark>")
    score: float
    level: str | None = Field(description="Summary level (summaries only)")


class SearchOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "query": "siren outside",
                    "hits": [
                        {"kind": "utterance", "job_id": JOB_ID_EXAMPLE,
                         "source": "s3://calls/2026/11/26/call-0042.mp3", "start": 3.4, "end": 7.9,
                         "text": "There is a siren outside my window.",
                         "snippet": "There is a <mark>siren</mark> <mark>outside</mark> my window.",
                         "score": 0.1, "level": None}
                    ],
                    "next_cursor": None,
                }
            ]
        }
    )

    query: str
    hits: list[SearchHitOut]
    next_cursor: str | None


class ApiKeyOut(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="The token's first characters, for telling keys apart")
    scopes: list[str]
    tenant_id: str = Field(description="The tenant the key acts for (admin keys see every tenant)")
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"id": "5c1d7f0e-3f7e-4b8e-9a55-0c7c1f0b9e11", "name": "dashboard", "prefix": "ek_Xq3v9LmA",
                 "scopes": ["read"], "tenant_id": "default", "created_at": "2026-11-26T09:00:00Z", "last_used_at": None,
                 "revoked_at": None, "token": "ek_Xq3v9LmA..."}
            ]
        }
    )

    token: str = Field(description="The secret. Shown once; only its hash is stored")


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "dashboard", "scopes": ["read"]}]})

    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*$")
    scopes: list[Literal["read", "submit", "admin"]] = Field(min_length=1, max_length=3)
    tenant_id: str | None = Field(
        default=None, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="The tenant the new key acts for; default: the calling admin key's tenant",
    )


class ApiKeyPage(BaseModel):
    keys: list[ApiKeyOut]


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"]


class Readiness(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok", "database": "ok"}]})

    status: Literal["ok"]
    database: Literal["ok"]
