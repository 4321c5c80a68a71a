"""The event bridge's core: one message in, jobs (and/or dead letters) out, and a verdict.

Sources (SQS, AMQP, webhook) only move bytes and act on :class:`Outcome.action`:

- ``"ack"``: every record became a job that is enqueued, was ignored, or was dead-lettered
  (the dead letter is committed first). Delete/ack the message.
- ``"retry"``: something transient failed (database, S3, broker). Leave the message to come
  back; nothing was lost and nothing done twice (every step is idempotent).

A message that keeps failing for reasons nobody recognised is dead-lettered as
``gave_up`` once it was received ``EARSHOT_INGEST_MAX_RECEIVES`` times. An outage of the
database, the broker or S3 never dead-letters anything: the outcome names the outage
(:attr:`Outcome.outage`) and the runner pauses receiving until :meth:`Bridge.ready` says the
downstream is back, so receive counts are not burnt while nothing can succeed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from prometheus_client import Counter
from sqlalchemy import text

from earshot import storage
from earshot.config import Settings
from earshot.db.session import session_scope
from earshot.errors import EarshotError
from earshot.ingest.deadletters import record_dead_letter
from earshot.ingest.events import BadMessage, ObjectEvent, ParsedMessage, parse_message
from earshot.ingest.filters import Filters, Reject, Skip
from earshot.ingest.submit import (
    Enqueue,
    Submitted,
    head_object,
    output_prefix_for,
    submit_object,
)
from earshot.jobs.failures import outage_code

__all__ = ["Bridge", "Delivery", "Outcome"]

log = logging.getLogger("earshot.ingest")

MESSAGES = Counter("earshot_ingest_messages", "Messages handled by the ingest bridge", ["outcome"])
RECORDS = Counter("earshot_ingest_records", "S3 event records by result", ["result"])
DEAD_LETTERS = Counter("earshot_ingest_dead_letters", "Dead letters written", ["reason"])


@dataclass(frozen=True)
class Delivery:
    """One message as a source received it."""

    body: bytes
    source: str  # e.g. "sqs:earshot-events", "amqp:minio-events", "webhook"
    message_id: str | None = None
    receive_count: int = 1  # how often this message was delivered, this time included


@dataclass
class Outcome:
    action: Literal["ack", "retry"] = "ack"
    jobs: list[Submitted] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (uri, reason)
    dead_letters: list[tuple[str, str]] = field(default_factory=list)  # (reason, detail)
    test_event: bool = False
    error: str | None = None
    outage: str | None = None  # "database_unavailable", "broker_unavailable", "storage_error"
    parsed: ParsedMessage | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "action": self.action,
            "jobs": [
                {"job_id": j.job_id, "uri": j.uri, "created": j.created, "enqueued": j.enqueued}
                for j in self.jobs
            ],
            "skipped": [{"uri": u, "reason": r} for u, r in self.skipped],
            "dead_letters": [{"reason": r, "detail": d} for r, d in self.dead_letters],
            "test_event": self.test_event,
            "error": self.error,
            "outage": self.outage,
        }


class _Retry(Exception):
    def __init__(self, message: str, outage: str | None = None) -> None:
        # driver messages span lines (psycopg adds hints): keep each log line one line
        super().__init__(" ".join(message.split())[:500])
        self.outage = outage


class Bridge:
    """Turns S3 event messages into jobs. Thread-safe: keeps no per-message state."""

    def __init__(
        self,
        settings: Settings,
        *,
        enqueue: Enqueue,
        filters: Filters | None = None,
        head: Callable[[str, str, str | None], storage.ObjectInfo | Skip | Reject] | None = None,
        probe_broker: Callable[[], None] | None = None,
    ) -> None:
        output_prefix_for(settings, "check")  # refuse an empty output prefix at start-up
        self.settings = settings
        self.enqueue = enqueue
        self.filters = filters or Filters.from_settings(settings)
        self.head = head or partial(head_object, settings=settings)
        self.probe_broker = probe_broker

    def ready(self) -> str | None:
        """None when the database and the broker answer; else the outage code."""
        try:
            with session_scope(self.settings.database_url) as s:
                s.execute(text("SELECT 1"))
        except Exception:
            return "database_unavailable"
        if self.probe_broker is not None:
            try:
                self.probe_broker()
            except Exception:
                return "broker_unavailable"
        return None

    # ------------------------------------------------------------------ messages

    def handle(self, delivery: Delivery) -> Outcome:
        outcome = Outcome()
        try:
            parsed = parse_message(delivery.body)
        except BadMessage as exc:
            return self._dead_message(delivery, outcome, exc.reason, exc.detail)
        outcome.parsed = parsed
        if parsed.test_event:
            outcome.test_event = True
            MESSAGES.labels("test_event").inc()
            log.info("skipping S3 test event from %s", delivery.source)
            return outcome
        if parsed.sns_control is not None:
            # only the webhook can confirm a subscription; on a queue it is noise
            outcome.skipped.append(("", f"sns_{parsed.sns_control.get('Type')}"))
            MESSAGES.labels("ignored").inc()
            return outcome
        try:
            for event in parsed.events:
                self._record(delivery, event, outcome)
        except _Retry as exc:
            if exc.outage is not None:
                outcome.action, outcome.error, outcome.outage = "retry", str(exc), exc.outage
                MESSAGES.labels("retry").inc()
                log.warning("message %s from %s: %s; retried", delivery.message_id, delivery.source, exc)
                return outcome
            return self._retry_or_give_up(delivery, outcome, str(exc))
        MESSAGES.labels("dead_letter" if outcome.dead_letters else "ok").inc()
        return outcome

    def _record(self, delivery: Delivery, event: ObjectEvent, outcome: Outcome) -> None:
        if not event.is_created:
            outcome.skipped.append((event.uri, "not_object_created"))
            RECORDS.labels("skipped").inc()
            return
        verdict: storage.ObjectInfo | Skip | Reject | None = self.filters.check(
            event.bucket, event.key, event.size
        )
        if verdict is None and self.settings.ingest_verify_objects:
            verdict = self._head(event)
        elif verdict is None:
            verdict = storage.ObjectInfo(
                uri=event.uri, size=event.size, etag=event.etag, version_id=event.version_id,
            )
        if isinstance(verdict, Skip):
            log.debug("ignoring %s: %s %s", event.uri, verdict.reason, verdict.detail)
            outcome.skipped.append((event.uri, verdict.reason))
            RECORDS.labels("skipped").inc()
            return
        if isinstance(verdict, Reject):
            self._dead_record(delivery, event, outcome, verdict.reason, verdict.detail)
            return
        assert isinstance(verdict, storage.ObjectInfo)
        try:
            submitted = submit_object(
                verdict, settings=self.settings, enqueue=self.enqueue, source=delivery.source,
                event_time=event.event_time,
            )
        except EarshotError as exc:
            if exc.retryable:
                raise _Retry(f"{exc.code}: {exc.message}", outage_code(exc)) from exc
            self._dead_record(delivery, event, outcome, exc.code, exc.message)
            return
        except Exception as exc:  # database or broker trouble: try again later
            raise _Retry(f"cannot submit {event.uri}: {type(exc).__name__}: {exc}", outage_code(exc)) from exc
        outcome.jobs.append(submitted)
        RECORDS.labels("created" if submitted.created else "duplicate").inc()

    def _head(self, event: ObjectEvent) -> storage.ObjectInfo | Skip | Reject:
        try:
            found = self.head(event.bucket, event.key, event.version_id)
        except EarshotError as exc:
            raise _Retry(exc.message, "storage_error" if exc.retryable else None) from exc
        except Exception as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(found, storage.ObjectInfo):
            return found
        if event.etag and found.etag and event.etag != found.etag and not event.version_id:
            # overwritten since: the newer upload has its own event (and its own job)
            return Skip("superseded", f"etag {event.etag} is now {found.etag}")
        return self.filters.check_size(found.size) or found

    # ------------------------------------------------------------------ failures

    def _dead_message(self, delivery: Delivery, outcome: Outcome, reason: str, detail: str) -> Outcome:
        # name the object when the message parsed: operators look dead letters up by object
        events = outcome.parsed.events if outcome.parsed is not None else []
        bucket, key = (events[0].bucket, events[0].key) if events else (None, None)
        log.warning(
            "dead letter from %s (%s)%s: %s", delivery.source, reason,
            f" for s3://{bucket}/{key}" if bucket else "", detail,
        )
        try:
            with session_scope(self.settings.database_url) as s:
                record_dead_letter(
                    s, source=delivery.source, reason=reason, detail=detail, body=delivery.body,
                    message_id=delivery.message_id, bucket=bucket, key=key,
                )
        except Exception as exc:
            log.warning("cannot store dead letter: %s", exc)
            outcome.action = "retry"
            outcome.error = f"cannot store dead letter: {exc}"
            MESSAGES.labels("retry").inc()
            return outcome
        DEAD_LETTERS.labels(reason).inc()
        MESSAGES.labels("dead_letter").inc()
        outcome.dead_letters.append((reason, detail))
        return outcome

    def _dead_record(
        self, delivery: Delivery, event: ObjectEvent, outcome: Outcome, reason: str, detail: str
    ) -> None:
        log.warning("dead letter %s from %s (%s): %s", event.uri, delivery.source, reason, detail)
        body = json.dumps({"Records": [event.record]}) if event.record else delivery.body
        try:
            with session_scope(self.settings.database_url) as s:
                record_dead_letter(
                    s, source=delivery.source, reason=reason, detail=detail, body=body,
                    message_id=delivery.message_id, bucket=event.bucket, key=event.key,
                )
        except Exception as exc:
            raise _Retry(f"cannot store dead letter: {exc}", outage_code(exc)) from exc
        DEAD_LETTERS.labels(reason).inc()
        RECORDS.labels("dead_letter").inc()
        outcome.dead_letters.append((reason, detail))

    def _retry_or_give_up(self, delivery: Delivery, outcome: Outcome, error: str) -> Outcome:
        outcome.error = error
        if delivery.receive_count < self.settings.ingest_max_receives:
            log.warning(
                "message %s from %s will be retried (delivery %d): %s",
                delivery.message_id, delivery.source, delivery.receive_count, error,
            )
            outcome.action = "retry"
            MESSAGES.labels("retry").inc()
            return outcome
        detail = f"failed {delivery.receive_count} times; last error: {error}"
        result = self._dead_message(
            delivery, Outcome(jobs=outcome.jobs, parsed=outcome.parsed), "gave_up", detail
        )
        result.error = error
        return result
