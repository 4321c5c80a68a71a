"""S3 event parsing (AWS, MinIO, SNS-wrapped, test events, garbage) and the ingest filters."""

from __future__ import annotations

import json
from typing import Any

import pytest

from earshot.config import Settings
from earshot.ingest.events import BadMessage, parse_message
from earshot.ingest.filters import Filters, Reject, Skip


def aws_record(key: str, *, bucket: str = "calls", size: Any = 1234, etag: str = "abc", name: str = "ObjectCreated:Put", **obj: Any) -> dict[str, Any]:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventTime": "2026-11-26T10:00:00.123Z",
        "eventName": name,
        "s3": {
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": key, "size": size, "eTag": etag, "sequencer": "0055AED6DCD90281E5", **obj},
        },
    }


def test_aws_event_decodes_keys_and_fields() -> None:
    body = json.dumps({"Records": [aws_record("calls/2026/a+b%2Bc%C3%A9.wav", versionId="v1")]})
    parsed = parse_message(body.encode())
    (ev,) = parsed.events
    assert ev.bucket == "calls"
    assert ev.key == "calls/2026/a b+cé.wav"  # unquote_plus: '+' is a space, %2B a plus
    assert ev.size == 1234 and ev.etag == "abc" and ev.version_id == "v1"
    assert ev.is_created and ev.event_name == "ObjectCreated:Put"
    assert ev.event_time is not None and ev.event_time.year == 2026
    assert ev.uri == "s3://calls/calls/2026/a b+cé.wav"


def test_null_version_and_quoted_etag() -> None:
    (ev,) = parse_message(json.dumps({"Records": [aws_record("a.wav", etag='"q"', versionId="null")]})).events
    assert ev.version_id is None and ev.etag == "q"


def test_s3_test_event_is_skipped() -> None:
    body = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-11-26T10:00:00Z", "Bucket": "calls"}
    parsed = parse_message(json.dumps(body))
    assert parsed.test_event and parsed.events == []


def test_minio_event_key_is_url_decoded() -> None:
    record = aws_record("folder/my+file.mp3", name="s3:ObjectCreated:CompleteMultipartUpload")
    record["eventSource"] = "minio:s3"
    body = {"EventName": "s3:ObjectCreated:CompleteMultipartUpload", "Key": "calls/folder/my file.mp3", "Records": [record]}
    (ev,) = parse_message(json.dumps(body)).events
    assert ev.key == "folder/my file.mp3" and ev.event_name == "ObjectCreated:CompleteMultipartUpload"


def test_sns_envelope_and_control_messages() -> None:
    inner = json.dumps({"Records": [aws_record("x.wav")]})
    envelope = {"Type": "Notification", "MessageId": "m", "TopicArn": "arn:aws:sns:us-east-1:1:t", "Message": inner}
    parsed = parse_message(json.dumps(envelope))
    assert [e.key for e in parsed.events] == ["x.wav"] and parsed.sns is not None
    test_inner = json.dumps({"Event": "s3:TestEvent"})
    assert parse_message(json.dumps({**envelope, "Message": test_inner})).test_event
    confirm = {"Type": "SubscriptionConfirmation", "TopicArn": "arn:aws:sns:us-east-1:1:t", "SubscribeURL": "https://x"}
    assert parse_message(json.dumps(confirm)).sns_control is not None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty"),
        (b"not json at all", "not_json"),
        (b"\xff\xfe", "not_utf8"),
        (b"[1, 2]", "bad_shape"),
        (b'{"hello": "world"}', "bad_shape"),
        (b'{"Records": []}', "bad_shape"),
        (b'{"Records": "x"}', "bad_shape"),
        (b'{"Records": [{"eventName": "ObjectCreated:Put"}]}', "bad_shape"),
        (json.dumps({"Records": [aws_record("")]}).encode(), "bad_shape"),
        (json.dumps({"Records": [aws_record("a.wav", size="lots")]}).encode(), "bad_shape"),
        (json.dumps({"Records": [aws_record("a.wav", size=-1)]}).encode(), "bad_shape"),
        (json.dumps({"Type": "Notification", "TopicArn": "t", "Message": "nope"}).encode(), "not_json"),
        (b"x" * (1024 * 1024 + 1), "too_large"),
    ],
)
def test_garbage_has_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(BadMessage) as info:
        parse_message(body)
    assert info.value.reason == reason
    assert info.value.detail


def test_removed_event_is_not_created() -> None:
    (ev,) = parse_message(json.dumps({"Records": [aws_record("a.wav", name="ObjectRemoved:Delete")]})).events
    assert not ev.is_created


# --------------------------------------------------------------------------- filters


def filters(**overrides: Any) -> Filters:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        output_url="s3://results/out/",
        scratch_url="file:///tmp/scratch",
        **overrides,
    )
    return Filters.from_settings(settings)


def test_output_prefix_and_own_prefixes_are_ignored() -> None:
    f = filters()
    assert f.check("calls", "earshot-output/a.wav.wav", 10) == Skip("excluded_prefix", "earshot-output/")
    assert isinstance(f.check("results", "out/job/a.wav", 10), Skip)  # EARSHOT_OUTPUT_URL's prefix
    assert f.check("calls", "out/job/a.wav", 10) is None  # only in that bucket
    assert f.check("calls", "in/a.WAV", 10) is None


def test_suffix_prefix_size_and_unsafe_keys() -> None:
    f = filters(ingest_prefixes=["in/"], ingest_max_bytes=100)
    assert f.check("calls", "other/a.wav", 10) == Skip("prefix_not_included")
    assert f.check("calls", "in/a.json", 10) == Skip("suffix_not_included")
    assert f.check("calls", "in/", 0) == Skip("folder_marker")
    assert f.check("calls", "in/a.wav", 0) is None  # an empty upload becomes a failed job (empty_file)
    assert filters(ingest_min_bytes=1).check("calls", "in/a.wav", 0) == Skip("too_small", "0 bytes")
    assert isinstance(f.check("calls", "in/a.wav", 101), Reject)
    assert f.check("calls", "in/a.wav", None) is None
    verdict = f.check("calls", "in/../a.wav", 10)
    assert isinstance(verdict, Reject) and verdict.reason == "unsafe_key"


def test_bucket_allowlist_rejects_other_buckets() -> None:
    f = filters(ingest_buckets=["calls"])
    assert f.check("calls", "a.wav", 1) is None
    verdict = f.check("elsewhere", "a.wav", 1)
    assert isinstance(verdict, Reject) and verdict.reason == "unknown_bucket"


def test_empty_suffix_list_takes_everything() -> None:
    assert filters(ingest_suffixes=[]).check("calls", "a.bin", 1) is None
