"""Uploads to results with real processes: moto S3+SQS, the bridge, Celery workers on RabbitMQ
(`earshot worker --queues cpu,gpu`), PostgreSQL, the tiny AF3 model, signed callbacks.

Module-scoped worker (the model loads once); the SIGKILL test runs last, kills it mid-job
and starts a fresh one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from sqlalchemy import func, select

from earshot import storage
from earshot.callbacks.models import CallbackDelivery
from earshot.callbacks.signing import verify
from earshot.config import Settings, get_settings
from earshot.db import models as m
from earshot.db.session import session_scope
from earshot.ingest.reconcile import scan
from services.ingest.runner import celery_enqueue
from tests.fixtures.ingest import (
    CallbackReceiver,
    Proc,
    bridge_proc,
    count_jobs,
    jobs_for_bucket,
    make_wav,
    purge_queues,
    serve_callbacks,
    sqs_queue_counts,
    sqs_source,
    subprocess_env,
    wait_until,
    worker_proc,
)

pytestmark = pytest.mark.timeout(300)
SECRET = "callback-secret"
RESULT_EXTENSIONS = (".json", ".srt", ".vtt", ".md", ".wav")


@pytest.fixture(scope="module")
def receiver() -> Iterator[CallbackReceiver]:
    with serve_callbacks() as r:
        r.fail_first = 1  # the very first callback fails: it must be retried
        yield r


@dataclass
class Workers:
    env: dict[str, str]
    logs: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self) -> Proc:
        proc = worker_proc(self.logs / f"worker{len(self.procs)}.log", **self.env).start()
        self.procs.append(proc)
        return proc

    @property
    def current(self) -> Proc:
        return self.procs[-1]

    def tails(self) -> str:
        return "\n".join(f"--- worker {i}\n{p.tail(40)}" for i, p in enumerate(self.procs))


@pytest.fixture(scope="module")
def workers(
    pg_url: str, rabbit_url: str, moto_server: str, tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory, receiver: CallbackReceiver,
) -> Iterator[Workers]:
    purge_queues(rabbit_url, "cpu", "gpu")  # nothing left over from other tests
    logs = tmp_path_factory.mktemp("workers")
    env = {
        "EARSHOT_DATABASE_URL": pg_url,
        "EARSHOT_BROKER_URL": rabbit_url,
        "EARSHOT_MODEL_PATH": str(tiny_model_dir),
        "EARSHOT_ENGINE": "local",
        "EARSHOT_S3_ENDPOINT_URL": moto_server,
        "EARSHOT_S3_REGION": "us-east-1",
        "EARSHOT_SCRATCH_URL": (logs / "scratch").as_uri(),
        "EARSHOT_OUTPUT_URL": (logs / "out").as_uri(),
        "EARSHOT_MAX_NEW_TOKENS": "12",
        "EARSHOT_SUMMARY_MAX_NEW_TOKENS": "12",
        "EARSHOT_MAX_SEGMENT_S": "2",
        "EARSHOT_TASK_RETRY_BACKOFF_S": "0.5",
        "EARSHOT_CALLBACK_URL": receiver.url,
        "EARSHOT_CALLBACK_SECRET": SECRET,
        "EARSHOT_CALLBACK_BACKOFF_S": "0.3",
        # the receiver is http on 127.0.0.1: allowed for this test only
        "EARSHOT_CALLBACK_ALLOW_HTTP": "true",
        "EARSHOT_CALLBACK_ALLOW_PRIVATE": "true",
    }
    pool = Workers(env=subprocess_env(**env), logs=logs)
    pool.start()
    try:
        yield pool
    finally:
        for proc in pool.procs:
            proc.stop()


def statuses(bucket: str) -> list[str]:
    return [j.status for j in jobs_for_bucket(bucket)]


def wait_jobs_done(bucket: str, n: int, workers: Workers, timeout: float = 150) -> list[m.Job]:
    def done() -> bool:
        found = statuses(bucket)
        if "failed" in found:
            raise AssertionError(f"a job failed: {[(j.id, j.error_message) for j in jobs_for_bucket(bucket)]}")
        return len(found) == n and all(s == "succeeded" for s in found)

    try:
        wait_until(done, timeout, 0.3, f"{n} jobs to succeed")
    except AssertionError:
        print(workers.tails())
        raise
    return jobs_for_bucket(bucket)


def result_keys(bucket: str) -> list[str]:
    """The "latest" result files (each version's own files live under <key>.versions/)."""
    return sorted(
        key
        for key in (storage.parse_uri(i.uri).key for i in storage.list_objects(f"s3://{bucket}/earshot-output/", settings=get_settings()))
        if ".versions/" not in key
    )


def version_keys(bucket: str, key: str) -> list[str]:
    prefix = f"s3://{bucket}/earshot-output/{key}.versions/"
    return sorted(storage.parse_uri(i.uri).key[len(prefix) - len(f"s3://{bucket}/") :] for i in storage.list_objects(prefix, settings=get_settings()))


def test_uploads_become_jobs_results_and_callbacks(
    ingest_env: Settings, workers: Workers, moto_server: str, s3_bucket: str,
    sqs_notifications: str, receiver: CallbackReceiver, tmp_path: Path,
) -> None:
    bridge = bridge_proc(sqs_source(sqs_notifications, moto_server), tmp_path / "bridge.log").start()
    keys = ["one.wav", "talks/two 2.wav", "three.wav"]
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    try:
        for i, key in enumerate(keys):
            client.put_object(Bucket=s3_bucket, Key=key, Body=make_wav(1.5, 50 + i))
        jobs = wait_jobs_done(s3_bucket, 3, workers)
        # the 15 result files were announced on the same queue: all must be ignored
        wait_until(lambda: sqs_queue_counts(moto_server, sqs_notifications) == (0, 0), 60, 0.3, "the queue to drain")
    finally:
        bridge.stop()
    assert count_jobs(s3_bucket) == 3, bridge.tail()
    assert result_keys(s3_bucket) == sorted(f"earshot-output/{k}{ext}" for k in keys for ext in RESULT_EXTENSIONS)
    report = json.loads(storage.read_bytes(f"s3://{s3_bucket}/earshot-output/talks/two 2.wav.json", settings=get_settings()))
    assert report["status"] == "succeeded" and report["source"] == f"s3://{s3_bucket}/talks/two 2.wav"
    # each version also has its own files, which the job records as its outputs
    etag = client.head_object(Bucket=s3_bucket, Key="one.wav")["ETag"].strip('"')
    assert version_keys(s3_bucket, "one.wav") == sorted(f"{etag}{ext}" for ext in RESULT_EXTENSIONS)
    one = next(j for j in jobs if j.source_uri.endswith("/one.wav"))
    assert one.options["outputs"]["json"] == f"s3://{s3_bucket}/earshot-output/one.wav.versions/{etag}.json"

    # one signed callback per job; the first POST failed and was retried
    ids = {j.id for j in jobs}
    wait_until(lambda: {b["job_id"] for b in receiver.bodies()} >= ids, 30, 0.2, "callbacks")
    with session_scope() as s:
        rows = s.scalars(select(CallbackDelivery).where(CallbackDelivery.job_id.in_(ids))).all()
        assert sorted(r.state for r in rows) == ["delivered"] * 3
        assert sum(r.attempts for r in rows) == 4
    ours = [(h, b) for h, b in receiver.calls if json.loads(b)["job_id"] in ids]
    assert len(ours) == 4
    for headers, body in ours:
        assert json.loads(body)["status"] == "succeeded"
        assert verify(body, headers["x-earshot-signature"], SECRET)


def test_dropped_notification_is_found_by_the_reconciler(
    ingest_env: Settings, workers: Workers, moto_server: str, s3_bucket: str,
) -> None:
    """No notification configured: the event is lost; the reconciler finds the upload."""
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.put_object(Bucket=s3_bucket, Key="lost.wav", Body=make_wav(1.5, 60))
    enqueue = celery_enqueue(ingest_env)
    report = scan(f"s3://{s3_bucket}/", settings=ingest_env, enqueue=enqueue)
    assert [uri for uri, _ in report.enqueued] == [f"s3://{s3_bucket}/lost.wav"]
    wait_jobs_done(s3_bucket, 1, workers)
    assert result_keys(s3_bucket) == [f"earshot-output/lost.wav{ext}" for ext in sorted(RESULT_EXTENSIONS)]
    # the outputs are not uploads: a second scan finds nothing to do
    again = scan(f"s3://{s3_bucket}/", settings=ingest_env, enqueue=enqueue)
    assert again.enqueued == [] and again.known == 1 and again.skipped == {"excluded_prefix": 10}
    assert count_jobs(s3_bucket) == 1


def _mp3(seconds: float) -> bytes:
    import io

    import av
    import numpy as np

    out = io.BytesIO()
    with av.open(out, "w", format="mp3") as container:
        stream = container.add_stream("mp3", rate=16000)
        stream.layout = "mono"
        t = np.arange(int(16000 * seconds)) / 16000
        frame = av.AudioFrame.from_ndarray((0.2 * np.sin(2 * np.pi * 200 * t)).astype("float32").reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return out.getvalue()


def test_empty_upload_fails_visibly_and_a_truncated_one_succeeds_with_a_note(
    ingest_env: Settings, workers: Workers, moto_server: str, s3_bucket: str,
) -> None:
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.put_object(Bucket=s3_bucket, Key="empty.wav", Body=b"")
    full = _mp3(8.0)  # its Xing header says 8 s
    client.put_object(Bucket=s3_bucket, Key="cut.mp3", Body=full[: len(full) // 4])  # about 2 s of frames
    report = scan(f"s3://{s3_bucket}/", settings=ingest_env, enqueue=celery_enqueue(ingest_env))
    assert len(report.enqueued) == 2

    def finished() -> list[m.Job]:
        found = jobs_for_bucket(s3_bucket)
        return found if len(found) == 2 and all(j.status in m.TERMINAL_STATUSES for j in found) else []

    done = wait_until(finished, 120, 0.3, "both jobs to finish")
    by_key = {j.source_uri.rsplit("/", 1)[1]: j for j in done}
    empty, cut = by_key["empty.wav"], by_key["cut.mp3"]
    assert empty.status == "failed" and empty.error_code == "empty_file" and not empty.retryable
    assert cut.status == "succeeded"
    report_json = json.loads(storage.read_bytes(cut.options["outputs"]["json"], settings=get_settings()))
    [note] = [n for n in report_json["notes"] if "header says" in n]
    assert cut.id in note and f"s3://{s3_bucket}/cut.mp3" in note and "8.0 s" in note


def test_worker_killed_mid_job_still_finishes_once(
    ingest_env: Settings, workers: Workers, moto_server: str, s3_bucket: str,
) -> None:
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.put_object(Bucket=s3_bucket, Key="long.wav", Body=make_wav(5.0, 70))
    (_uri, job_id), = scan(f"s3://{s3_bucket}/", settings=ingest_env, enqueue=celery_enqueue(ingest_env)).enqueued

    def running_segment() -> int | None:
        with session_scope() as s:
            return s.scalar(
                select(m.Segment.index).where(m.Segment.job_id == job_id, m.Segment.status == "running")
            )

    victim = workers.current
    try:
        killed_at = wait_until(lambda: running_segment() is not None, 90, 0.03, "a segment to run")
    except AssertionError:
        print(workers.tails())
        raise
    victim.kill()  # SIGKILL the worker and its pool children, mid-segment
    with session_scope() as s:
        job = s.get(m.Job, job_id)
        assert job is not None and job.status == "running"
        n = job.segment_count or 0
        assert n >= 2  # EARSHOT_MAX_SEGMENT_S=2 on a 5 s file
    workers.start()
    (job,) = wait_jobs_done(s3_bucket, 1, workers, timeout=180)
    assert killed_at

    with session_scope() as s:
        segments = s.scalars(select(m.Segment).where(m.Segment.job_id == job_id).order_by(m.Segment.index)).all()
        assert [seg.index for seg in segments] == list(range(n)) and {seg.status for seg in segments} == {"done"}
        assert max(seg.attempts for seg in segments) >= 2  # one segment ran twice: redelivered
        utter = s.execute(
            select(m.Utterance.segment_index, func.count()).where(m.Utterance.job_id == job_id)
            .group_by(m.Utterance.segment_index)
        ).all()
        # (a tone holds no speech: the speech detector may leave segments without utterances)
        assert {i for i, _ in utter} <= set(range(n))
        total = s.scalar(select(func.count()).select_from(m.Utterance).where(m.Utterance.job_id == job_id))
        distinct = s.scalar(
            select(func.count()).select_from(
                select(m.Utterance.segment_index, m.Utterance.seq).where(m.Utterance.job_id == job_id).distinct().subquery()
            )
        )
        assert total == distinct == sum(c for _, c in utter)
        speech = s.scalar(select(func.count()).select_from(m.SpeechOutput).where(m.SpeechOutput.job_id == job_id))
        assert speech == 1
    assert count_jobs(s3_bucket) == 1

    def deliveries() -> list[tuple[str, str]]:
        with session_scope() as s:
            rows = s.scalars(select(CallbackDelivery).where(CallbackDelivery.job_id == job_id)).all()
            return [(d.status, d.state) for d in rows]

    wait_until(lambda: deliveries() == [("succeeded", "delivered")], 30, 0.2, "one delivered callback")
