"""Parse S3 bucket notifications (AWS, MinIO, SNS-wrapped) into :class:`ObjectEvent` s.

Shapes understood:

- AWS S3 event notification: ``{"Records": [{"eventSource": "aws:s3", "eventName":
  "ObjectCreated:Put", "s3": {"bucket": {"name"}, "object": {"key", "size", "eTag",
  "versionId", "sequencer"}}, "eventTime": ...}]}`` (what S3 sends to SQS, SNS, Lambda);
- the S3 test event ``{"Event": "s3:TestEvent", ...}`` sent when a notification is configured;
- MinIO's event (AMQP, webhook, ...): ``{"EventName": "s3:ObjectCreated:Put", "Key":
  "bucket/key", "Records": [...AWS-shaped, eventSource "minio:s3"...]}``;
- an SNS envelope (``{"Type": "Notification", "Message": "<one of the above as a string>"}``),
  as SNS delivers to SQS without raw delivery and to HTTP endpoints.

Object keys in records are URL-encoded (``+`` for a space); they are decoded with
``unquote_plus``. Anything else raises :class:`BadMessage` with a stable reason code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote_plus

from earshot.storage import normalise_version_id

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_RECORDS",
    "BadMessage",
    "ObjectEvent",
    "ParsedMessage",
    "parse_message",
    "parse_time",
    "sns_fresh",
]

MAX_BODY_BYTES = 1024 * 1024
# S3 sends one record per message; a message with thousands is an attempt to fan out work
MAX_RECORDS = 100


class BadMessage(Exception):
    """A message that can never become a job; ``reason`` is a short code for dead letters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ObjectEvent:
    """One record: something happened to ``s3://bucket/key``."""

    bucket: str
    key: str
    event_name: str  # without the "s3:" prefix, e.g. "ObjectCreated:Put"
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    event_time: datetime | None = None
    record: Mapping[str, Any] | None = None  # the raw record, for dead letters

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def is_created(self) -> bool:
        return self.event_name.startswith("ObjectCreated")


@dataclass(frozen=True)
class ParsedMessage:
    events: list[ObjectEvent]
    test_event: bool = False
    # SNS control messages (SubscriptionConfirmation, UnsubscribeConfirmation) are handed
    # back whole: only the webhook knows what to do with them.
    sns_control: Mapping[str, Any] | None = None
    sns: Mapping[str, Any] | None = None  # the SNS envelope a notification came in, if any


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def sns_fresh(doc: Mapping[str, Any], *, now: datetime, max_age_s: float, max_skew_s: float) -> bool:
    """Whether an SNS message's signed ``Timestamp`` is at most ``max_age_s`` old and not ahead
    of ``now`` by more than ``max_skew_s``: a captured message cannot be replayed later.

    Only for messages pushed over HTTP; on a queue, a backlog makes old messages legitimate.
    """
    sent = parse_time(doc.get("Timestamp"))
    if sent is None or sent.tzinfo is None:
        return False
    age = now - sent
    return timedelta(seconds=-max_skew_s) <= age <= timedelta(seconds=max_age_s)


def _decode(body: bytes | str) -> Any:
    if isinstance(body, bytes):
        if len(body) > MAX_BODY_BYTES:
            raise BadMessage("too_large", f"message is {len(body)} bytes (limit {MAX_BODY_BYTES})")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadMessage("not_utf8", f"message is not UTF-8: {exc}") from exc
    else:
        text = body
    if not text.strip():
        raise BadMessage("empty", "message body is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadMessage("not_json", f"message is not JSON: {exc.msg} at char {exc.pos}") from exc


def _etag(value: object) -> str | None:
    if value is None or value == "":
        return None
    return str(value).strip('"')


def _size(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadMessage("bad_shape", f"object size {value!r} is not a number")
    try:
        size = int(value)
    except ValueError as exc:
        raise BadMessage("bad_shape", f"object size {value!r} is not a number") from exc
    if size < 0:
        raise BadMessage("bad_shape", f"object size {size} is negative")
    return size


def _record(record: object, index: int) -> ObjectEvent:
    if not isinstance(record, dict):
        raise BadMessage("bad_shape", f"Records[{index}] is not an object")
    name = record.get("eventName")
    s3 = record.get("s3")
    if not isinstance(name, str) or not isinstance(s3, dict):
        raise BadMessage("bad_shape", f"Records[{index}] has no eventName/s3")
    bucket = s3.get("bucket")
    obj = s3.get("object")
    if not isinstance(bucket, dict) or not isinstance(obj, dict):
        raise BadMessage("bad_shape", f"Records[{index}].s3 has no bucket/object")
    bucket_name = bucket.get("name")
    raw_key = obj.get("key")
    if not isinstance(bucket_name, str) or not bucket_name:
        raise BadMessage("bad_shape", f"Records[{index}] has no bucket name")
    if not isinstance(raw_key, str) or not raw_key:
        raise BadMessage("bad_shape", f"Records[{index}] has no object key")
    version = obj.get("versionId")
    return ObjectEvent(
        bucket=bucket_name,
        key=unquote_plus(raw_key),
        event_name=name.removeprefix("s3:"),
        size=_size(obj.get("size")),
        etag=_etag(obj.get("eTag", obj.get("etag"))),
        version_id=normalise_version_id(version),
        sequencer=str(obj["sequencer"]) if obj.get("sequencer") else None,
        event_time=parse_time(record.get("eventTime")),
        record=record,
    )


def _from_document(doc: Any) -> ParsedMessage:
    if not isinstance(doc, dict):
        raise BadMessage("bad_shape", f"message is JSON {type(doc).__name__}, not an object")
    if doc.get("Event") == "s3:TestEvent":
        return ParsedMessage(events=[], test_event=True)
    sns_type = doc.get("Type")
    if isinstance(sns_type, str) and "TopicArn" in doc:
        if sns_type in ("SubscriptionConfirmation", "UnsubscribeConfirmation"):
            return ParsedMessage(events=[], sns_control=doc)
        if sns_type != "Notification":
            raise BadMessage("bad_shape", f"unknown SNS message type {sns_type!r}")
        inner = doc.get("Message")
        if not isinstance(inner, str):
            raise BadMessage("bad_shape", "SNS notification without a Message string")
        parsed = _from_document(_decode(inner))
        return ParsedMessage(events=parsed.events, test_event=parsed.test_event, sns=doc)
    records = doc.get("Records")
    if records is None:
        raise BadMessage("bad_shape", "no Records in message (not an S3 event notification)")
    if not isinstance(records, list):
        raise BadMessage("bad_shape", "Records is not a list")
    if not records:
        raise BadMessage("bad_shape", "Records is empty")
    if len(records) > MAX_RECORDS:
        raise BadMessage("too_many_records", f"{len(records)} records (limit {MAX_RECORDS})")
    return ParsedMessage(events=[_record(r, i) for i, r in enumerate(records)])


def parse_message(body: bytes | str) -> ParsedMessage:
    """Parse one queue message or webhook body; raises :class:`BadMessage`."""
    return _from_document(_decode(body))
