"""Core tables: audio files, jobs, segments and every kind of result."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from earshot.db.base import Base, new_id, utcnow
from earshot.tenants.models import DEFAULT_TENANT

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "superseded")
# superseded: the object version the job was made for was overwritten or deleted first
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled", "superseded")
SEGMENT_STATUSES = ("pending", "running", "done", "failed")


class AudioFile(Base):
    __tablename__ = "audio_files"
    __table_args__ = (UniqueConstraint("uri", "version", name="uq_audio_files_uri_version"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    uri: Mapped[str] = mapped_column(Text)
    bucket: Mapped[str | None] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(Text)
    # version id, else etag, else "" for local files: what makes an upload distinct
    version: Mapped[str] = mapped_column(String(255), default="")
    etag: Mapped[str | None] = mapped_column(String(255))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    duration_s: Mapped[float | None] = mapped_column(Float)
    format: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_tenant_status", "tenant_id", "status"),
        # an Idempotency-Key belongs to its tenant: another tenant's same string is another job
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    audio_file_id: Mapped[str] = mapped_column(ForeignKey("audio_files.id", ondelete="CASCADE"))
    source_uri: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    tasks: Mapped[list[str]] = mapped_column(JSON, default=list)
    questions: Mapped[list[str]] = mapped_column(JSON, default=list)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    engine: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    segment_count: Mapped[int | None] = mapped_column(Integer)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id"), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT
    )
    idempotency_key: Mapped[str] = mapped_column(String(512))
    # SHA-256 of the request that created the job: a reused key with another body is a 409
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    output_prefix: Mapped[str | None] = mapped_column(Text)
    callback_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    timings: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    # migration 0007_reliability: lease of the running step, outage failures, side effects done
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    retryable: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    settled_at: Mapped[datetime | None] = mapped_column()

    audio_file: Mapped[AudioFile] = relationship()
    segments: Mapped[list[Segment]] = relationship(
        back_populates="job", order_by="Segment.index", cascade="all, delete-orphan"
    )


class Segment(Base):
    __tablename__ = "segments"
    __table_args__ = (UniqueConstraint("job_id", "index", name="uq_segments_job_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    scratch_uri: Mapped[str | None] = mapped_column(Text)
    raw: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_message: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    job: Mapped[Job] = relationship(back_populates="segments")


class Utterance(Base):
    __tablename__ = "utterances"
    __table_args__ = (
        UniqueConstraint("job_id", "segment_index", "seq", name="uq_utterances_job_seg_seq"),
        Index("ix_utterances_job_start", "job_id", "start_s"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    segment_index: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    text: Mapped[str] = mapped_column(Text)


class Summary(Base):
    """Summaries at every level: ``segment``, ``section``, ``file``, ``caption``, ``chapter``."""

    __tablename__ = "summaries"
    __table_args__ = (
        UniqueConstraint("job_id", "level", "idx", name="uq_summaries_job_level_idx"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    level: Mapped[str] = mapped_column(String(16))
    idx: Mapped[int] = mapped_column(Integer)
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    title: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    raw: Mapped[str | None] = mapped_column(Text)


class Event(Base):
    """Temporal grounding: what happened when, on the file's timeline."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("job_id", "segment_index", "seq", name="uq_events_job_seg_seq"),
        Index("ix_events_job_label", "job_id", "label"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    segment_index: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(Text)
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    raw: Mapped[str | None] = mapped_column(Text)


class ReasoningTrace(Base):
    __tablename__ = "reasoning_traces"
    __table_args__ = (
        UniqueConstraint("job_id", "segment_index", "seq", name="uq_reasoning_job_seg_seq"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    # -1 marks a file-level trace (a reduced answer)
    segment_index: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    question: Mapped[str] = mapped_column(Text)
    thinking: Mapped[str] = mapped_column(Text, default="")
    answer: Mapped[str] = mapped_column(Text, default="")
    adapter: Mapped[bool] = mapped_column(Boolean, default=False)
    raw: Mapped[str | None] = mapped_column(Text)


class SpeechOutput(Base):
    __tablename__ = "speech_outputs"
    __table_args__ = (UniqueConstraint("job_id", "kind", name="uq_speech_outputs_job_kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32), default="summary")
    uri: Mapped[str] = mapped_column(Text)
    duration_s: Mapped[float] = mapped_column(Float)
    voice: Mapped[str] = mapped_column(String(128))
    sample_rate: Mapped[int] = mapped_column(Integer)
