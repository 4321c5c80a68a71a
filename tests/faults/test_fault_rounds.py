"""Fault rounds of issue 16 against the distributed mode, on private servers.

One stack per module: a private PostgreSQL and a private RabbitMQ node (each on a spare
port, stopped and started by the rounds; the shared ones keep running), moto S3 behind a TCP
proxy that is cut, moto SQS fed by S3 notifications, the ingest bridge, two `earshot worker`
processes on this host with their default node names, the sweeper (`earshot jobs reap
--interval 2`), and a callback receiver. The tiny model; every upload is a few seconds of
tone.

Outage lengths are shortened by configuring shorter budgets, and every outage outlasts the
budget the old code had with the same settings:

- old task retries: 5 retries, backoff 0.2 s doubling = 0.2 * (1+2+4+8+16) = 6.2 s, then
  ``fail_job`` (which needed the database) and an ack. PostgreSQL is down 10 s here (the new
  task window is 8 s: a step that meets the whole outage rejects and requeues its message when
  it cannot record the failure).
- old bridge: ``EARSHOT_INGEST_MAX_RECEIVES=2`` with SQS backoff 2^n s: dead-lettered
  ``gave_up`` after about 2 s of broker outage. RabbitMQ is down for its whole restart
  (20-40 s on this machine).
- old storage: upload failures were not retryable at all; download failures had the 6.2 s
  budget. S3 (source, scratch and outputs) is cut for 12 s, longer than the new task window
  (8 s) too, so jobs fail as retryable during the cut and the sweeper must bring them back.

After every round the same invariants are checked (``check_invariants``).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from sqlalchemy import func, select

from earshot import storage
from earshot.callbacks.models import CallbackDelivery
from earshot.config import Settings
from earshot.db import migrate
from earshot.db import models as m
from earshot.db.session import session_scope
from earshot.ingest.models import DeadLetter
from tests.faults.services import PrivatePostgres, PrivateRabbit, TcpProxy
from tests.fixtures.earshot import apply_env
from tests.fixtures.ingest import (
    BIN,
    CallbackReceiver,
    Proc,
    bridge_proc,
    make_wav,
    serve_callbacks,
    sqs_source,
    subprocess_env,
    wait_until,
    worker_proc,
)

pytestmark = pytest.mark.timeout(900)
SECRET = "fault-rounds-callback-secret"
ROUNDS: list[tuple[str, str, float]] = []  # (round, what, recovery seconds) for the report


@dataclass
class Stack:
    pg: PrivatePostgres
    mq: PrivateRabbit
    proxy: TcpProxy
    moto: str
    bucket: str
    queue: str
    env: dict[str, str]
    settings: Settings
    logs: Path
    scratch: str
    fault_file: Path
    receiver: CallbackReceiver
    workers: list[Proc] = field(default_factory=list)
    others: list[Proc] = field(default_factory=list)
    expected: int = 0  # jobs there must be: one per uploaded version

    def s3(self) -> Any:
        return boto3.client("s3", endpoint_url=self.moto, region_name="us-east-1")

    def upload(self, key: str, seconds: float, seed: int) -> str:
        self.expected += 1
        return str(self.s3().put_object(Bucket=self.bucket, Key=key, Body=make_wav(seconds, seed))["ETag"]).strip('"')

    def start_worker(self) -> Proc:
        proc = worker_proc(self.logs / f"worker{len(self.workers)}.log", **self.env).start()
        self.workers.append(proc)
        return proc

    def tails(self) -> str:
        procs = [*self.workers, *self.others]
        return "\n".join(f"--- {p.args[1:3]} {p.log.name}\n{p.tail(30)}" for p in procs)


@pytest.fixture(scope="module")
def stack(moto_server: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("faults")
    mq = PrivateRabbit()
    mq_started = threading.Thread(target=mq.start)  # the slowest part: boot it meanwhile
    mq_started.start()
    pg = PrivatePostgres()
    pg.start()
    proxy = TcpProxy(int(moto_server.rsplit(":", 1)[1]))
    proxy.restore()
    bucket, queue = f"faults-{uuid.uuid4().hex[:8]}", f"faults-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    boto3.client("sqs", endpoint_url=moto_server, region_name="us-east-1").create_queue(QueueName=queue)
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={"QueueConfigurations": [
            {"QueueArn": f"arn:aws:sqs:us-east-1:123456789012:{queue}", "Events": ["s3:ObjectCreated:*"]}
        ]},
    )
    migrate.upgrade("heads", url=pg.url)
    scratch = f"s3://{bucket}/earshot-scratch/"  # on S3, so every step meets a storage cut
    with serve_callbacks() as receiver:
        env = {
            "EARSHOT_DATABASE_URL": pg.url,
            "EARSHOT_BROKER_URL": mq.url,
            "EARSHOT_S3_ENDPOINT_URL": proxy.url,
            "EARSHOT_S3_REGION": "us-east-1",
            "EARSHOT_INGEST_SQS_ENDPOINT_URL": moto_server,
            "EARSHOT_MODEL_PATH": str(tiny_model_dir),
            "EARSHOT_ENGINE": "local",
            "EARSHOT_SCRATCH_URL": scratch,
            "EARSHOT_OUTPUT_URL": (logs / "out").as_uri(),
            "EARSHOT_MAX_NEW_TOKENS": "8",
            "EARSHOT_SUMMARY_MAX_NEW_TOKENS": "8",
            "EARSHOT_MAX_SEGMENT_S": "2",
            "EARSHOT_INGEST_TASKS": json.dumps(["transcribe", "caption"]),
            "EARSHOT_INGEST_MAX_RECEIVES": "2",
            "EARSHOT_TASK_RETRY_BACKOFF_S": "0.2",
            "EARSHOT_TASK_RETRY_MAX_DELAY_S": "2",
            "EARSHOT_TASK_RETRY_WINDOW_S": "8",
            "EARSHOT_JOB_HEARTBEAT_S": "1",
            "EARSHOT_JOB_STALE_AFTER_S": "20",
            "EARSHOT_JOB_RETRY_FAILED_AFTER_S": "1",
            "EARSHOT_JOB_INFRA_RETRY_LIMIT": "10",
            "EARSHOT_CALLBACK_URL": receiver.url,
            "EARSHOT_CALLBACK_SECRET": SECRET,
            "EARSHOT_CALLBACK_BACKOFF_S": "0.3",
            "EARSHOT_CALLBACK_ALLOW_HTTP": "true",
            "EARSHOT_CALLBACK_ALLOW_PRIVATE": "true",
            "EARSHOT_TASK_FAULT_FILE": str(logs / "fault"),
            "EARSHOT_LOG_LEVEL": "INFO",
        }
        with pytest.MonkeyPatch.context() as mp:
            settings = apply_env(mp, **{k.removeprefix("EARSHOT_").lower(): v for k, v in env.items()})
            storage.clear_client_cache()
            mq_started.join()
            st = Stack(
                pg=pg, mq=mq, proxy=proxy, moto=moto_server, bucket=bucket, queue=queue,
                env=subprocess_env(**env), settings=settings, logs=logs, scratch=scratch,
                fault_file=logs / "fault", receiver=receiver,
            )
            st.start_worker()
            st.start_worker()  # same host, default node names: they must not collide (round 7)
            st.others.append(bridge_proc(sqs_source(queue, moto_server, visibility_s="5"), logs / "bridge.log", **env).start())
            st.others.append(
                Proc([str(BIN / "earshot"), "jobs", "reap", "--interval", "1"], logs / "sweeper.log", st.env).start()
            )
            try:
                yield st
            finally:
                from workers.celery_app import configure

                configure(settings.model_copy(update={"broker_url": None, "result_backend": None}))
                for proc in [*st.workers, *st.others]:
                    proc.stop(timeout=10)
                proxy.cut()
                pg.destroy()
                mq.destroy()
                storage.clear_client_cache()
    print("\nfault rounds (round, what, recovery s):")
    for row in ROUNDS:
        print(f"  {row[0]:<4} {row[1]:<60} {row[2]:6.1f}")


# --------------------------------------------------------------------------- invariants


def jobs(stack: Stack) -> list[m.Job]:
    with session_scope(stack.settings.database_url) as s:
        return list(s.scalars(select(m.Job).where(m.Job.source_uri.startswith(f"s3://{stack.bucket}/"))))


def all_settled(stack: Stack, expected: int) -> bool:
    found = jobs(stack)
    if len(found) < expected or any(j.status not in m.TERMINAL_STATUSES or j.settled_at is None for j in found):
        return False
    with session_scope(stack.settings.database_url) as s:
        pending = s.scalar(select(func.count()).where(CallbackDelivery.state != "delivered")) or 0
    return pending == 0


def wait_settled(stack: Stack, timeout: float = 180) -> float:
    """Seconds until every job is terminal and settled, and every callback delivered."""
    started = time.monotonic()
    try:
        wait_until(lambda: all_settled(stack, stack.expected), timeout, 0.5, f"{stack.expected} settled jobs")
    except AssertionError:
        print(stack.tails())
        print([(j.id[:8], j.source_uri, j.status, j.error_code, j.error_message, j.settled_at) for j in jobs(stack)])
        raise
    return time.monotonic() - started


def check_invariants(stack: Stack) -> None:
    db = stack.settings.database_url
    found = jobs(stack)
    with session_scope(db) as s:
        # exactly one job per object version
        per_version = s.execute(
            select(m.AudioFile.uri, m.AudioFile.version, func.count(m.Job.id))
            .join(m.Job, m.Job.audio_file_id == m.AudioFile.id)
            .where(m.AudioFile.uri.startswith(f"s3://{stack.bucket}/"))
            .group_by(m.AudioFile.uri, m.AudioFile.version)
        ).all()
        assert all(n == 1 for _, _, n in per_version), per_version
        # every callback delivered, one per job and final status
        deliveries = s.execute(select(CallbackDelivery.job_id, CallbackDelivery.status, CallbackDelivery.state)).all()
        for job in found:
            assert (job.id, job.status, "delivered") in deliveries, (job.id, job.status, deliveries)
        # no duplicate rows: one segment row per index, one caption per segment
        for job in found:
            if job.status != "succeeded":
                continue
            indices = list(s.scalars(select(m.Segment.index).where(m.Segment.job_id == job.id)))
            assert sorted(indices) == list(range(job.segment_count or 0))
            captions = s.scalar(
                select(func.count()).where(m.Summary.job_id == job.id, m.Summary.level == "caption")
            )
            assert captions == job.segment_count
        gave_up = s.scalar(select(func.count()).where(DeadLetter.reason == "gave_up")) or 0
        assert gave_up == 0
    # every job terminal; no scratch left
    assert all(j.status in m.TERMINAL_STATUSES for j in found)
    left = [i.uri for i in storage.list_objects(stack.scratch, settings=stack.settings)]
    assert left == [], left
    # every output belongs to its own version; "latest" belongs to the current version
    with session_scope(db) as s:
        versions = {j.id: s.get(m.AudioFile, j.audio_file_id) for j in found}
    for job in found:
        if job.status != "succeeded":
            continue
        audio = versions[job.id]
        assert audio is not None
        out = job.options["outputs"]["json"]
        assert f".versions/{audio.version}.json" in out, out
        report = json.loads(storage.read_bytes(out, settings=stack.settings))
        assert report["job_id"] == job.id and report["source"] == job.source_uri
    for key in {storage.parse_uri(j.source_uri).key for j in found}:
        current = stack.s3().head_object(Bucket=stack.bucket, Key=key)["ETag"].strip('"')
        owner = next((j for j in found if j.source_uri.endswith("/" + key) and versions[j.id].version == current), None)
        if owner is None or owner.status != "succeeded":
            continue
        latest = json.loads(storage.read_bytes(f"s3://{stack.bucket}/earshot-output/{key}.json", settings=stack.settings))
        assert latest["job_id"] == owner.id, (key, latest["job_id"], owner.id)


def running(stack: Stack) -> bool:
    return any(j.status == "running" for j in jobs(stack))


# --------------------------------------------------------------------------- rounds


def test_round7_two_workers_on_one_host_both_run(stack: Stack) -> None:
    """Two `earshot worker` processes on one host: distinct default node names, both serve."""
    wait_until(lambda: all("ready" in w.tail(200) for w in stack.workers), 90, 0.5, "both workers ready")
    time.sleep(2)
    assert all(w.alive() for w in stack.workers), stack.tails()
    assert not any("RESOURCE_LOCKED" in w.tail(500) for w in stack.workers)
    names = {
        line.split()[-2] for w in stack.workers for line in w.tail(500).splitlines() if line.endswith(" ready.")
    }
    assert len(names) == 2, names
    for i in range(2):
        stack.upload(f"r7/{i}.wav", 2.5, 70 + i)
    ROUNDS.append(("7", "two workers on one host (default --hostname)", wait_settled(stack)))
    check_invariants(stack)


def test_round1_postgres_down_longer_than_the_old_retry_window(stack: Stack) -> None:
    for i in range(2):
        stack.upload(f"r1/{i}.wav", 3.5, 10 + i)
    wait_until(lambda: running(stack), 60, 0.2, "a running job")
    stack.pg.stop()
    time.sleep(10)  # > 6.2 s, the old budget
    stack.pg.start()
    ROUNDS.append(("1", "PostgreSQL stopped 10 s mid-jobs", wait_settled(stack)))
    check_invariants(stack)


def test_round2_rabbitmq_down_longer_than_the_receive_budget(stack: Stack) -> None:
    stack.mq.stop()
    for i in range(2):
        stack.upload(f"r2/{i}.wav", 2.5, 20 + i)
    time.sleep(6)  # > 2 receives at 2 s backoff, the old budget before gave_up
    stack.mq.start()
    ROUNDS.append(("2", "RabbitMQ stopped (uploads during the outage)", wait_settled(stack)))
    assert "ingest paused" in stack.others[0].tail(400), stack.others[0].tail(60)
    check_invariants(stack)


def test_round3_worker_killed_between_succeeded_and_the_callback(stack: Stack) -> None:
    stack.fault_file.write_text("after-succeeded")
    stack.upload("r3/0.wav", 2.5, 30)
    wait_until(lambda: not stack.fault_file.exists(), 90, 0.2, "the fault to fire")
    wait_until(lambda: any(not w.alive() for w in stack.workers), 30, 0.2, "a worker to die")
    victims = [w for w in stack.workers if not w.alive()]
    assert len(victims) == 1
    killed = next(j for j in jobs(stack) if j.source_uri.endswith("r3/0.wav"))
    log = victims[0].tail(400)
    # it died right after the commit that made the job succeed, before settling it
    assert "killing this worker at after-succeeded" in log
    assert f"callback for job {killed.id}" not in log
    stack.workers.remove(victims[0])
    stack.start_worker()
    ROUNDS.append(("3/4", "worker SIGKILLed after succeeded, before callback/cleanup", wait_settled(stack)))
    check_invariants(stack)


def test_round5_object_overwritten_while_its_job_runs(stack: Stack) -> None:
    stack.upload("r5/a.wav", 6.0, 50)  # three segments

    def prepared() -> bool:
        return any(j.source_uri.endswith("r5/a.wav") and j.segment_count for j in jobs(stack))

    wait_until(prepared, 90, 0.1, "version 1 to be split")
    stack.upload("r5/a.wav", 2.0, 51)  # version 2 while version 1 runs
    ROUNDS.append(("5", "object overwritten while its job runs", wait_settled(stack)))
    mine = sorted((j for j in jobs(stack) if j.source_uri.endswith("r5/a.wav")), key=lambda j: j.created_at)
    assert [j.status for j in mine] == ["succeeded", "succeeded"]
    with session_scope(stack.settings.database_url) as s:
        durations = [s.get(m.AudioFile, j.audio_file_id).duration_s for j in mine]  # type: ignore[union-attr]
    assert durations[0] == pytest.approx(6.0, abs=0.1) and durations[1] == pytest.approx(2.0, abs=0.1)
    check_invariants(stack)


def test_round5b_version_overwritten_before_it_was_read_is_superseded(stack: Stack) -> None:
    """An event for a version that was overwritten before any worker read it."""
    from earshot.ingest.submit import submit_object
    from services.ingest.runner import celery_enqueue

    stack.upload("r5/b.wav", 2.0, 52)
    wait_settled(stack)
    gone = storage.ObjectInfo(uri=f"s3://{stack.bucket}/r5/b.wav", size=64044, etag="0" * 32, version_id=None)
    submitted = submit_object(gone, settings=stack.settings, enqueue=celery_enqueue(stack.settings), source="test")
    stack.expected += 1
    assert submitted.created and submitted.enqueued
    ROUNDS.append(("5b", "job for an overwritten version (never read)", wait_settled(stack)))
    (late,) = [j for j in jobs(stack) if j.id == submitted.job_id]
    assert late.status == "superseded" and "overwritten" in (late.error_message or ""), late.error_message
    check_invariants(stack)


def test_round6_storage_cut_longer_than_the_task_window(stack: Stack) -> None:
    for i in range(2):
        stack.upload(f"r6/{i}.wav", 3.5, 60 + i)
    wait_until(lambda: running(stack), 60, 0.2, "a running job")
    stack.proxy.cut()
    time.sleep(12)  # > 8 s task window (and > the old 6.2 s budget)
    stack.proxy.restore()
    ROUNDS.append(("6", "S3 cut 12 s (longer than the task retry window)", wait_settled(stack, timeout=240)))
    mine = [j for j in jobs(stack) if "/r6/" in j.source_uri]
    assert [j.status for j in mine] == ["succeeded"] * 2
    # the cut outlasted the task window: the job failed as retryable and the sweeper revived it
    assert any(int(j.options.get("infra_retries", 0)) >= 1 for j in mine), [j.options for j in mine]
    check_invariants(stack)
