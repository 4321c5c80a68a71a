"""The ``api_keys`` table (migration 0002_api). Only the SHA-256 of a token is stored."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from earshot.db.base import Base, new_id, utcnow
from earshot.tenants.models import DEFAULT_TENANT


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    # the first characters of the token ("ek_" + 8), safe to show in listings and logs
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    # every key acts for one tenant (migration 0006_tenants); admin keys see all tenants
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id"), index=True, default=DEFAULT_TENANT, server_default=DEFAULT_TENANT
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()

    @property
    def active(self) -> bool:
        return self.revoked_at is None
