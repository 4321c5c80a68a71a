"""Conversation tables (migration 0005_conversations): conversations, their clips and turns.

A clip is a window of a processed file (a job's source audio). Clips attach to the user turn
that introduced them (``turn_seq``), or wait (``turn_seq`` NULL) for the next user turn when a
conversation is created with clips but no question. Every turn is stored: user questions as
typed, assistant answers with their reasoning trace, how they were produced, and the spoken
answer's location when one was asked for.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from earshot.db.base import Base, new_id, utcnow
from earshot.tenants.models import DEFAULT_TENANT


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_updated", "updated_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # the owner (migration 0006_tenants): another tenant's conversation answers 404
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id"), index=True, default=DEFAULT_TENANT, server_default=DEFAULT_TENANT
    )
    title: Mapped[str | None] = mapped_column(Text)
    turn_count: Mapped[int] = mapped_column(Integer, default=0)
    clip_count: Mapped[int] = mapped_column(Integer, default=0)
    # total seconds of audio attached (bounded by EARSHOT_CHAT_MAX_AUDIO_S)
    audio_s: Mapped[float] = mapped_column(Float, default=0.0)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    clips: Mapped[list[ConversationClip]] = relationship(
        order_by="ConversationClip.idx", cascade="all, delete-orphan", passive_deletes=True
    )
    turns: Mapped[list[ConversationTurn]] = relationship(
        order_by="ConversationTurn.seq", cascade="all, delete-orphan", passive_deletes=True
    )


class ConversationClip(Base):
    __tablename__ = "conversation_clips"
    __table_args__ = (
        UniqueConstraint("conversation_id", "idx", name="uq_conversation_clips_conv_idx"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    # 0-based order in the conversation; the prompt calls it "Audio idx+1"
    idx: Mapped[int] = mapped_column(Integer)
    # the user turn that attached it; NULL while waiting for the first question
    turn_seq: Mapped[int | None] = mapped_column(Integer)
    # the job may be deleted later: the source is copied so the audio can still be found
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    source_uri: Mapped[str] = mapped_column(Text)
    source_version: Mapped[str] = mapped_column(String(255), default="")
    label: Mapped[str] = mapped_column(Text)
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    file_duration_s: Mapped[float | None] = mapped_column(Float)
    # the job's file summary when the clip is only a window of a longer file
    context: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ConversationTurn(Base):
    __tablename__ = "conversation_turns"
    __table_args__ = (
        UniqueConstraint("conversation_id", "seq", name="uq_conversation_turns_conv_seq"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))  # "user" | "assistant"
    # the question as typed, or the answer without its reasoning trace
    text: Mapped[str] = mapped_column(Text)
    thinking: Mapped[str] = mapped_column(Text, default="")
    raw: Mapped[str | None] = mapped_column(Text)
    think: Mapped[bool] = mapped_column(Boolean, default=False)
    # True when the think LoRA adapter produced this answer
    adapter: Mapped[bool] = mapped_column(Boolean, default=False)
    note: Mapped[str | None] = mapped_column(Text)
    speech_uri: Mapped[str | None] = mapped_column(Text)
    speech_duration_s: Mapped[float | None] = mapped_column(Float)
    model_id: Mapped[str | None] = mapped_column(Text)
    engine: Mapped[str | None] = mapped_column(String(32))
    timings: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
