"""Turn a path or URI into a queued job (the CLI's `run` and the API's `POST /v1/jobs`)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from earshot import storage
from earshot.config import Settings
from earshot.db.models import Job
from earshot.errors import InputError, StorageError
from earshot.jobs.service import create_job


def source_for(uri_or_path: str, *, settings: Settings) -> storage.ObjectInfo:
    """Describe an existing object; a missing one is an input error, not a crash."""
    ref = storage.parse_uri(uri_or_path)
    try:
        return storage.head(ref.uri, settings=settings)
    except StorageError as exc:
        if exc.retryable:
            raise
        raise InputError(f"cannot read {uri_or_path}: {exc.message}", code="source_not_found") from exc


def submit(
    session: Session,
    uri_or_path: str,
    *,
    settings: Settings,
    tasks: Sequence[str],
    engine: str,
    questions: Sequence[str] = (),
    idempotency_key: str | None = None,
    output_prefix: str | None = None,
    output_stem: str | None = None,
    callback_url: str | None = None,
) -> tuple[Job, bool]:
    source = source_for(uri_or_path, settings=settings)
    options: dict[str, object] = {}
    if output_stem:
        options["output_stem"] = output_stem
    return create_job(
        session,
        source=source,
        tasks=tasks,
        engine=engine,
        questions=questions,
        idempotency_key=idempotency_key,
        output_prefix=output_prefix,
        callback_url=callback_url,
        options=options,
    )
