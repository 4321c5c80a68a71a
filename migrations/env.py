"""Alembic environment: the URL comes from Earshot's Settings unless the caller set one."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

# every table module, so autogenerate sees the whole schema and proposes no spurious drops
from earshot.auth import models as _auth_models  # noqa: F401
from earshot.callbacks import models as _callback_models  # noqa: F401
from earshot.chat import models as _chat_models  # noqa: F401
from earshot.config import get_settings
from earshot.db import models as _models  # noqa: F401
from earshot.db.base import Base
from earshot.ingest import models as _ingest_models  # noqa: F401
from earshot.training import models as _training_models  # noqa: F401

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().database_url
target_metadata = Base.metadata


def run_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connectable = engine_from_config(
        {"sqlalchemy.url": url}, prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    with connectable.connect() as connection:
        # batch mode lets ALTER TABLE work on SQLite too
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
