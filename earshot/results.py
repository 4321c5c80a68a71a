"""Result types shared by the engines, the pipeline, the exporters, the API and the CLI.

All times are seconds. Segment-level results carry times relative to the segment;
``absolute()`` helpers move them onto the file's timeline.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class Utterance(BaseModel):
    start: float
    end: float
    text: str


class Event(BaseModel):
    start: float
    end: float
    label: str
    raw: str = ""


class Reasoning(BaseModel):
    question: str
    thinking: str
    answer: str
    adapter: bool = Field(description="True when the think LoRA adapter produced this trace")


class Chapter(BaseModel):
    start: float
    end: float
    title: str
    summary: str = ""


class SegmentInfo(BaseModel):
    index: int
    start: float
    end: float
    status: str


class ErrorInfo(BaseModel):
    code: str
    message: str


class JobReport(BaseModel):
    """What `earshot run --json` prints and `GET /v1/jobs/{id}` builds on."""

    job_id: str
    source: str
    status: str
    tasks: list[str] = Field(default_factory=list)
    duration: float | None = None
    segments: list[SegmentInfo] = Field(default_factory=list)
    transcript: list[Utterance] = Field(default_factory=list)
    summary: str | None = None
    chapters: list[Chapter] = Field(default_factory=list)
    captions: list[str] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)
    reasoning: list[Reasoning] = Field(default_factory=list)
    speech_uri: str | None = None
    outputs: dict[str, str] = Field(default_factory=dict)
    grounding: dict[str, int] = Field(
        default_factory=dict,
        description="event counts: kept, merged across segment cuts, dropped as invalid",
    )
    notes: list[str] = Field(default_factory=list, description="caveats about these results")
    error: ErrorInfo | None = None
