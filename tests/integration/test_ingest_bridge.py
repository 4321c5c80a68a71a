"""The ingest bridge against real servers: moto S3+SQS+SNS (server mode), PostgreSQL, RabbitMQ.

No Celery worker runs here: ``process_job`` messages stay in the vhost's ``cpu`` queue, so
the tests can count them -- one per job is "enqueued exactly once".
"""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import kombu
import pytest
from sqlalchemy import select

from earshot.config import Settings
from earshot.db import models as m
from earshot.db.session import session_scope
from earshot.ingest.models import DeadLetter, IngestReceipt
from earshot.ingest.reconcile import scan
from services.ingest.runner import celery_enqueue, run_bridge
from tests.fixtures.ingest import (
    BIN,
    bridge_proc,
    count_jobs,
    jobs_for_bucket,
    make_wav,
    queue_depth,
    sqs_queue_counts,
    sqs_source,
    subprocess_env,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)


@contextmanager
def bridge_thread(source: str, settings: Settings) -> Iterator[None]:
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run_bridge(source, settings, enqueue=celery_enqueue(settings), stop=stop, threads=2, poll_s=1)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors


def s3(moto_server: str) -> Any:
    return boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")


def dead_letters(source: str) -> list[DeadLetter]:
    with session_scope() as s:
        return list(s.scalars(select(DeadLetter).where(DeadLetter.source == source).order_by(DeadLetter.created_at)))


def sqs_drained(moto_server: str, queue: str) -> bool:
    return sqs_queue_counts(moto_server, queue) == (0, 0)


def test_sqs_events_become_exactly_one_job_each(
    ingest_env: Settings, moto_server: str, s3_bucket: str, sqs_notifications: str
) -> None:
    client = s3(moto_server)
    for key, seed in [("a.wav", 1), ("dir/b c.wav", 2), ("c.mp3", 3)]:
        client.put_object(Bucket=s3_bucket, Key=key, Body=make_wav(0.5, seed))
    # never jobs: another suffix, Earshot's own outputs
    client.put_object(Bucket=s3_bucket, Key="notes.txt", Body=b"hello")
    client.put_object(Bucket=s3_bucket, Key="earshot-output/a.wav.wav", Body=make_wav(0.2, 9))
    client.put_object(Bucket=s3_bucket, Key="earshot-output/a.wav.json", Body=b"{}")
    # overwritten before the bridge saw it: only the current content becomes a job
    client.put_object(Bucket=s3_bucket, Key="d.wav", Body=make_wav(0.5, 4))
    client.put_object(Bucket=s3_bucket, Key="d.wav", Body=make_wav(0.5, 5))
    # a multipart upload (moto may announce it twice)
    part = make_wav(170, 6)  # ~5.4 MB: two parts, the first at S3's 5 MiB minimum
    upload = client.create_multipart_upload(Bucket=s3_bucket, Key="big.wav")
    parts = []
    for number, chunk in enumerate([part[: 5 * 1024 * 1024], part[5 * 1024 * 1024 :]], start=1):
        etag = client.upload_part(
            Bucket=s3_bucket, Key="big.wav", UploadId=upload["UploadId"], PartNumber=number, Body=chunk
        )["ETag"]
        parts.append({"ETag": etag, "PartNumber": number})
    client.complete_multipart_upload(
        Bucket=s3_bucket, Key="big.wav", UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )

    # every event delivered three times
    sqs = boto3.client("sqs", endpoint_url=moto_server, region_name="us-east-1")
    url = sqs.get_queue_url(QueueName=sqs_notifications)["QueueUrl"]
    originals: list[dict[str, Any]] = []
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60).get("Messages", []):
        originals += batch
    # test event + 9 uploads + moto's second event for the multipart upload (Put, then Complete...)
    assert len(originals) == 11
    assert sum('"big.wav"' in msg["Body"] for msg in originals) == 2
    for msg in originals:
        for _ in range(2):
            sqs.send_message(QueueUrl=url, MessageBody=msg["Body"])
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=msg["ReceiptHandle"], VisibilityTimeout=0)

    source = sqs_source(sqs_notifications, moto_server)
    with bridge_thread(source, ingest_env):
        wait_until(lambda: sqs_drained(moto_server, sqs_notifications), 60, 0.3, "the queue to drain")
        assert count_jobs(s3_bucket) == 5
        # a re-upload with new content is a new job
        client.put_object(Bucket=s3_bucket, Key="a.wav", Body=make_wav(0.5, 7))
        wait_until(lambda: count_jobs(s3_bucket) == 6, 30, 0.2, "the re-upload's job")
        wait_until(lambda: sqs_drained(moto_server, sqs_notifications), 30, 0.3, "the queue to drain")

    jobs = jobs_for_bucket(s3_bucket)
    keys = sorted(j.source_uri.removeprefix(f"s3://{s3_bucket}/") for j in jobs)
    assert keys == ["a.wav", "a.wav", "big.wav", "c.mp3", "d.wav", "dir/b c.wav"]
    head_d = client.head_object(Bucket=s3_bucket, Key="d.wav")
    with session_scope() as s:
        d_job = s.scalar(select(m.Job).where(m.Job.source_uri == f"s3://{s3_bucket}/d.wav"))
        assert d_job is not None and d_job.audio_file.etag == head_d["ETag"].strip('"')
        receipts = s.scalars(select(IngestReceipt).where(IngestReceipt.job_id.in_([j.id for j in jobs]))).all()
    assert len(receipts) == 6 and all(r.enqueued_at is not None for r in receipts)
    for job in jobs:
        assert job.status == "queued" and job.tasks == ["transcribe", "speak"]
        assert job.output_prefix == f"s3://{s3_bucket}/earshot-output"
        assert job.options["output_stem"] == job.source_uri.removeprefix(f"s3://{s3_bucket}/")
    assert queue_depth(ingest_env.broker_url or "", "cpu") == 6  # process_job sent once per job
    assert dead_letters(f"sqs:{sqs_notifications}") == []


def test_bridge_killed_before_ack_gets_the_message_back(
    ingest_env: Settings, moto_server: str, s3_bucket: str, sqs_notifications: str, tmp_path: Path
) -> None:
    s3(moto_server).put_object(Bucket=s3_bucket, Key="e.wav", Body=make_wav(0.5, 11))
    source = sqs_source(sqs_notifications, moto_server, visibility_s="3")
    crashing = bridge_proc(source, tmp_path / "bridge1.log", EARSHOT_INGEST_FAULT="exit-before-ack").start()
    assert crashing.popen is not None
    try:
        assert crashing.popen.wait(timeout=60) == 137, crashing.tail()
    finally:
        crashing.kill()
    assert count_jobs(s3_bucket) == 1
    assert queue_depth(ingest_env.broker_url or "", "cpu") == 1
    visible, in_flight = sqs_queue_counts(moto_server, sqs_notifications)
    assert visible + in_flight >= 1  # received, never deleted

    again = bridge_proc(source, tmp_path / "bridge2.log").start()
    try:
        wait_until(lambda: sqs_drained(moto_server, sqs_notifications), 60, 0.3, "the redelivered message")
    finally:
        again.stop()
    assert "retried" not in again.tail()
    assert count_jobs(s3_bucket) == 1
    assert queue_depth(ingest_env.broker_url or "", "cpu") == 1  # not enqueued a second time


def test_garbage_is_dead_lettered_and_the_bridge_goes_on(
    ingest_env: Settings, moto_server: str, s3_bucket: str, sqs_notifications: str
) -> None:
    sqs = boto3.client("sqs", endpoint_url=moto_server, region_name="us-east-1")
    url = sqs.get_queue_url(QueueName=sqs_notifications)["QueueUrl"]

    def record(bucket: str, key: str) -> str:
        return json.dumps({"Records": [{
            "eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "eventTime": "2026-11-26T10:00:00Z",
            "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 100, "eTag": "x"}},
        }]})

    garbage = [
        "this is not json",
        json.dumps({"hello": "world"}),
        json.dumps([1, 2, 3]),
        record(f"no-such-bucket-{uuid.uuid4().hex[:6]}", "a.wav"),
        record(s3_bucket, "..%2Fescape.wav"),
    ]
    for body in garbage:
        sqs.send_message(QueueUrl=url, MessageBody=body)
    s3(moto_server).put_object(Bucket=s3_bucket, Key="f.wav", Body=make_wav(0.5, 12))

    with bridge_thread(sqs_source(sqs_notifications, moto_server), ingest_env):
        wait_until(lambda: sqs_drained(moto_server, sqs_notifications), 60, 0.3, "the queue to drain")
    assert count_jobs(s3_bucket) == 1
    letters = dead_letters(f"sqs:{sqs_notifications}")
    assert sorted(d.reason for d in letters) == ["bad_shape", "bad_shape", "not_json", "unknown_bucket", "unsafe_key"]
    for letter in letters:
        assert letter.detail and letter.body and letter.message_id
    unknown = next(d for d in letters if d.reason == "unknown_bucket")
    assert unknown.key == "a.wav" and json.loads(unknown.body)["Records"][0]["s3"]["object"]["key"] == "a.wav"


def test_amqp_source_minio_events(ingest_env: Settings, moto_server: str, s3_bucket: str) -> None:
    """MinIO publishes bucket events to an exchange; the bridge's queue is bound to it."""
    broker = ingest_env.broker_url or ""
    exchange, queue = f"minio-{uuid.uuid4().hex[:6]}", f"earshot-ingest-{uuid.uuid4().hex[:6]}"
    client = s3(moto_server)
    etags = {}
    for key, seed in [("m1.wav", 21), ("sub dir/m2.flac", 22)]:
        etags[key] = client.put_object(Bucket=s3_bucket, Key=key, Body=make_wav(0.5, seed))["ETag"].strip('"')

    def minio_event(key: str) -> bytes:
        from urllib.parse import quote_plus

        return json.dumps({
            "EventName": "s3:ObjectCreated:Put",
            "Key": f"{s3_bucket}/{key}",
            "Records": [{
                "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "",
                "eventTime": "2026-11-26T10:00:00.000Z", "eventName": "s3:ObjectCreated:Put",
                "s3": {
                    "s3SchemaVersion": "1.0", "configurationId": "Config",
                    "bucket": {"name": s3_bucket, "arn": f"arn:aws:s3:::{s3_bucket}"},
                    "object": {"key": quote_plus(key), "size": 16044, "eTag": etags[key],
                               "contentType": "audio/wav", "sequencer": "17A0"},
                },
            }],
        }).encode()

    source = f"{broker}?queue={queue}&exchange={exchange}&exchange_type=direct&routing_key=bucketevents"
    with bridge_thread(source, ingest_env):
        wait_until(lambda: queue_exists(broker, queue), 20, 0.2, "the bridge's queue")
        with kombu.Connection(broker) as conn:
            producer = conn.Producer()
            ex = kombu.Exchange(exchange, type="direct", durable=True)
            for body in [minio_event("m1.wav"), minio_event("sub dir/m2.flac"), minio_event("m1.wav"), b"{{garbage"]:
                producer.publish(body, exchange=ex, routing_key="bucketevents", content_type="application/json",
                                 content_encoding="utf-8", declare=[ex])
        wait_until(lambda: count_jobs(s3_bucket) == 2 and dead_letters(f"amqp:{queue}"), 30, 0.2, "jobs")
        wait_until(lambda: queue_depth(broker, queue) == 0, 20, 0.2, "the AMQP queue to drain")
    assert sorted(j.source_uri for j in jobs_for_bucket(s3_bucket)) == [
        f"s3://{s3_bucket}/m1.wav", f"s3://{s3_bucket}/sub dir/m2.flac",
    ]
    assert [d.reason for d in dead_letters(f"amqp:{queue}")] == ["not_json"]
    assert queue_depth(broker, "cpu") == 2


def queue_exists(broker: str, queue: str) -> bool:
    with kombu.Connection(broker) as conn:
        try:
            conn.channel().queue_declare(queue=queue, passive=True)
        except conn.channel_errors:
            return False
    return True


def test_signed_webhook_posts_become_jobs_and_nothing_else_does(
    ingest_env: Settings, moto_server: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    import httpx

    from earshot.ingest.webhook import signed_headers
    from tests.fixtures.earshot import apply_env

    secret = "hook-secret-0123456789"
    settings = apply_env(monkeypatch, ingest_webhook_secret=secret, ingest_buckets=json.dumps([s3_bucket]))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = s3(moto_server)
    etag = client.put_object(Bucket=s3_bucket, Key="w1.wav", Body=make_wav(0.5, 31))["ETag"].strip('"')

    def event(bucket: str) -> bytes:
        return json.dumps({"EventName": "s3:ObjectCreated:Put", "Key": f"{bucket}/w1.wav", "Records": [{
            "eventSource": "minio:s3", "eventName": "s3:ObjectCreated:Put", "eventTime": "2026-11-26T10:00:00Z",
            "s3": {"bucket": {"name": bucket}, "object": {"key": "w1.wav", "size": 16044, "eTag": etag}},
        }]}).encode()

    ours, theirs = event(s3_bucket), event("someone-elses-bucket")
    url = f"http://127.0.0.1:{port}/events"
    with bridge_thread(f"webhook://127.0.0.1:{port}", settings):
        wait_until(lambda: _up(f"http://127.0.0.1:{port}/healthz"), 20, 0.1, "the webhook")
        assert httpx.post(url, content=ours).status_code == 401
        assert httpx.post(url, content=ours, headers={"Authorization": f"Bearer {secret}"}).status_code == 401
        for _ in range(2):  # a retried webhook is a no-op
            r = httpx.post(url, content=ours, headers=signed_headers(ours, secret))
            assert (r.status_code, r.json()) == (202, {"status": "accepted"})
        # another bucket's forged (but signed) event: accepted alike, and no job
        r = httpx.post(url, content=theirs, headers=signed_headers(theirs, secret))
        assert (r.status_code, r.json()) == (202, {"status": "accepted"})
        garbage = b"garbage"
        assert httpx.post(url, content=garbage, headers=signed_headers(garbage, secret)).status_code == 202
    assert [j.source_uri for j in jobs_for_bucket(s3_bucket)] == [f"s3://{s3_bucket}/w1.wav"]
    assert count_jobs("someone-elses-bucket") == 0
    assert queue_depth(ingest_env.broker_url or "", "cpu") == 1


def _up(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_reconciler_enqueues_only_what_has_no_job(
    ingest_env: Settings, moto_server: str, s3_bucket: str, tmp_path: Path
) -> None:
    """No notifications at all here: every event is 'lost'; the scan finds the uploads."""
    client = s3(moto_server)
    client.put_object(Bucket=s3_bucket, Key="in/h1.wav", Body=make_wav(0.5, 41))
    client.put_object(Bucket=s3_bucket, Key="in/readme.txt", Body=b"x")
    client.put_object(Bucket=s3_bucket, Key="earshot-output/in/h0.wav.wav", Body=make_wav(0.2, 42))
    enqueue = celery_enqueue(ingest_env)
    prefix = f"s3://{s3_bucket}/"

    first = scan(prefix, settings=ingest_env, enqueue=enqueue)
    assert [u for u, _ in first.enqueued] == [f"s3://{s3_bucket}/in/h1.wav"]
    assert first.skipped == {"suffix_not_included": 1, "excluded_prefix": 1}

    client.put_object(Bucket=s3_bucket, Key="in/h2.wav", Body=make_wav(0.5, 43))
    dry = subprocess.run(
        [str(BIN / "earshot"), "ingest", "scan", f"s3://{s3_bucket}/in/", "--dry-run", "--json"],
        env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )
    assert dry.returncode == 0, dry.stderr[-2000:]
    report = json.loads(dry.stdout.strip().splitlines()[-1])
    assert report["missing"] == [f"s3://{s3_bucket}/in/h2.wav"] and report["known"] == 1
    assert count_jobs(s3_bucket) == 1  # a dry run changes nothing

    # two reconcilers at once (and again): still one job per object
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(scan(prefix, settings=ingest_env, enqueue=enqueue))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(len(r.enqueued) for r in results) >= 1
    again = scan(prefix, settings=ingest_env, enqueue=enqueue)
    assert again.enqueued == [] and again.known == 2
    assert count_jobs(s3_bucket) == 2
    assert queue_depth(ingest_env.broker_url or "", "cpu") == 2

    # a re-upload with new content is new again
    client.put_object(Bucket=s3_bucket, Key="in/h1.wav", Body=make_wav(0.5, 44))
    assert len(scan(prefix, settings=ingest_env, enqueue=enqueue).enqueued) == 1
    assert count_jobs(s3_bucket) == 3


def test_an_outage_failure_is_revived_by_the_scan_and_by_a_reupload(
    ingest_env: Settings, moto_server: str, s3_bucket: str
) -> None:
    """A job that failed on an outage is not a verdict: seeing its object again retries it."""
    from earshot.errors import StorageError
    from earshot.jobs.service import fail_job

    client = s3(moto_server)
    body = make_wav(0.5, 44)
    client.put_object(Bucket=s3_bucket, Key="in/o1.wav", Body=body)
    sent: list[str] = []
    prefix = f"s3://{s3_bucket}/"
    [(_, job_id)] = scan(prefix, settings=ingest_env, enqueue=sent.append).enqueued
    assert sent == [job_id]

    def fail_on_outage() -> None:
        down = StorageError("S3 was unreachable for longer than the task window")
        down.retryable = True
        with session_scope() as s:
            s.get(m.Job, job_id).status = "running"  # type: ignore[union-attr]
        with session_scope() as s:
            fail_job(s, job_id, down, settings=ingest_env, retryable=True)

    fail_on_outage()
    again = scan(prefix, settings=ingest_env, enqueue=sent.append)
    assert [j for _, j in again.enqueued] == [job_id] and sent == [job_id, job_id]
    with session_scope() as s:
        job = s.get(m.Job, job_id)
        assert job is not None and job.status == "queued" and not job.retryable
    # the same bytes uploaded again (same etag): the event path revives it too
    fail_on_outage()
    client.put_object(Bucket=s3_bucket, Key="in/o1.wav", Body=body)
    from earshot.ingest.bridge import Bridge, Delivery

    event = json.dumps({"Records": [{
        "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": s3_bucket}, "object": {"key": "in/o1.wav", "size": len(body)}},
    }]}).encode()
    outcome = Bridge(ingest_env, enqueue=sent.append).handle(Delivery(body=event, source="sqs:test"))
    assert outcome.action == "ack" and outcome.jobs[0].job_id == job_id and sent[-1] == job_id and len(sent) == 3
    assert count_jobs(s3_bucket) == 1  # one job per version, revived, never duplicated
