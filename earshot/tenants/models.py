"""The ``tenants`` table (migration 0006_tenants): who owns keys, jobs and conversations.

Quotas are NULL for "unlimited"; the defaults are finite on purpose (a new tenant cannot take
the whole cluster before someone decides it may).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from earshot.db.base import Base, utcnow

DEFAULT_TENANT = "default"
DEFAULT_MAX_CONCURRENT_JOBS = 16
DEFAULT_MAX_AUDIO_HOURS_PER_DAY = 24.0
DEFAULT_REQUESTS_PER_MINUTE = 600


class Tenant(Base):
    __tablename__ = "tenants"

    # a slug, so keys, logs and SQL roles can name it
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # s3://bucket/prefix/ (or file:///dir/) patterns a key of this tenant may submit; empty: none
    allowed_sources: Mapped[list[str]] = mapped_column(JSON, default=list)
    # no column defaults: an ORM default would also replace an explicit None ("unlimited");
    # create_tenant() applies the DEFAULT_* values
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer)
    max_audio_hours_per_day: Mapped[float | None] = mapped_column(Float)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
