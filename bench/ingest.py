"""Benchmark the ingest bridge: events/s into enqueued jobs, and upload -> job-start delay.

Not a test: it prints numbers. Everything is real and local: a ``moto_server`` (S3 + SQS),
a throwaway PostgreSQL database, a throwaway RabbitMQ vhost as the Celery broker, and
``earshot ingest run`` / ``earshot worker`` as subprocesses.

1. **Throughput.** N objects are uploaded to a bucket whose ObjectCreated events go to an
   SQS queue (and, for AMQP, N MinIO-style events are published to a RabbitMQ queue); 10%
   of the events are delivered a second time. Then the bridge starts and drains the queue.
   Reported: events/s and new jobs/s between the first receipt and the last enqueue (taken
   from the database, so the bridge's start-up is not counted), and that every object got
   exactly one job and exactly one ``process_job`` message.
2. **Delay.** With the bridge running and a Celery worker consuming the ``cpu`` queue
   (``process_job`` only: it downloads, decodes and splits, then parks ``analyze_segment``
   on the unconsumed ``gpu`` queue), files are uploaded at a steady rate. Per upload:
   upload finished -> job enqueued (bridge) and -> job started (``jobs.started_at``, set
   when a worker claims it). p50/p99.

    python bench/ingest.py [--events 500] [--dup 0.1] [--threads 4] [--rate 4] [--seconds 20]
                           [--sources sqs,amqp] [--skip-delay]

Needs PostgreSQL (EARSHOT_BENCH_PG_ADMIN, default postgresql://postgres@127.0.0.1:5432/postgres),
RabbitMQ on 127.0.0.1:5672 (guest/guest, ``rabbitmqctl`` to make a vhost) and moto[server].
Results also go to bench/out/ingest.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import wave
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import boto3
import httpx
import kombu
import numpy as np
import psycopg
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_ADMIN = os.environ.get("EARSHOT_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
RABBIT = "amqp://guest:guest@127.0.0.1:5672"
REGION = "us-east-1"


# --------------------------------------------------------------------------- infrastructure


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto(log: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/moto-api/", timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("moto_server did not start")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def database() -> Iterator[str]:
    from earshot.db import migrate

    name = f"earshot_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        migrate.upgrade("heads", url=url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def vhost() -> Iterator[str]:
    ctl = shutil.which("rabbitmqctl") or "rabbitmqctl"
    name = f"earshot-bench-{uuid.uuid4().hex[:8]}"
    subprocess.run([ctl, "add_vhost", name], check=True, capture_output=True)
    subprocess.run([ctl, "set_permissions", "-p", name, "guest", ".*", ".*", ".*"], check=True, capture_output=True)
    try:
        yield f"{RABBIT}/{name}"
    finally:
        subprocess.run([ctl, "delete_vhost", name], capture_output=True, check=False)


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wav_bytes(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    x = 0.2 * np.sin(2 * np.pi * 220 * np.arange(n) / 16000) + 0.02 * rng.standard_normal(n)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    return out.getvalue()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def queue_depth(broker: str, queue: str) -> int:
    with kombu.Connection(broker) as conn:
        try:
            return int(conn.channel().queue_declare(queue=queue, passive=True).message_count)
        except conn.channel_errors:
            return 0


# --------------------------------------------------------------------------- measurements


def receipts(engine: Engine, bucket: str) -> list[tuple[str, datetime, datetime | None, datetime | None]]:
    from earshot.db.models import Job
    from earshot.ingest.models import IngestReceipt

    with engine.connect() as conn:
        rows = conn.execute(
            select(Job.source_uri, IngestReceipt.received_at, IngestReceipt.enqueued_at, Job.started_at)
            .join(IngestReceipt, IngestReceipt.job_id == Job.id)
            .where(Job.source_uri.startswith(f"s3://{bucket}/"))
        ).all()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def job_count(engine: Engine, bucket: str) -> int:
    from earshot.db.models import Job

    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(Job.source_uri.startswith(f"s3://{bucket}/"))).scalar() or 0)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def throughput(
    source: str, *, env: dict[str, str], moto_url: str, broker: str, engine: Engine, events: int, dup: float,
    threads: int, logs: Path,
) -> dict[str, Any]:
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name=REGION)
    sqs = boto3.client("sqs", endpoint_url=moto_url, region_name=REGION)
    bucket = f"bench-{source}-{uuid.uuid4().hex[:6]}"
    s3.create_bucket(Bucket=bucket)
    body = wav_bytes(0.2, 0)
    keys = [f"in/{i // 100:03d}/clip {i:05d}.wav" for i in range(events)]
    dups = random.Random(1).sample(range(events), round(events * dup))
    if source == "sqs":
        queue = f"bench-events-{uuid.uuid4().hex[:6]}"
        sqs.create_queue(QueueName=queue)
        s3.put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={"QueueConfigurations": [
                {"QueueArn": f"arn:aws:sqs:{REGION}:123456789012:{queue}", "Events": ["s3:ObjectCreated:*"]}
            ]},
        )
        for key in keys:
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        # duplicates: the same S3 event body once more, as at-least-once delivery does
        bodies: dict[str, str] = {}
        seen: list[dict[str, Any]] = []
        while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=120).get("Messages", []):
            seen += batch
        for msg in seen:
            doc = json.loads(msg["Body"])
            if "Records" in doc:
                bodies[doc["Records"][0]["s3"]["object"]["key"]] = msg["Body"]
            sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=msg["ReceiptHandle"], VisibilityTimeout=0)
        for i in dups:
            sqs.send_message(QueueUrl=url, MessageBody=bodies[quote_plus(keys[i])])
        src = f"sqs://{queue}?endpoint_url={moto_url}&wait_s=1"
    else:
        queue = f"bench-minio-{uuid.uuid4().hex[:6]}"
        etag = s3.put_object(Bucket=bucket, Key="probe.wav", Body=body)["ETag"].strip('"')
        for key in keys:
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        with kombu.Connection(broker) as conn:
            q = kombu.Queue(queue, durable=True)
            q(conn.channel()).declare()
            producer = conn.Producer()
            for i in list(range(events)) + dups:
                record = {
                    "eventSource": "minio:s3", "eventName": "s3:ObjectCreated:Put",
                    "eventTime": datetime.now().astimezone().isoformat(),
                    "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(keys[i]), "size": len(body), "eTag": etag}},
                }
                producer.publish(
                    json.dumps({"EventName": "s3:ObjectCreated:Put", "Key": f"{bucket}/{keys[i]}", "Records": [record]}),
                    routing_key=queue, content_type="application/json", content_encoding="utf-8",
                )
        src = f"{broker}?queue={queue}&prefetch=20"
    delivered = events + len(dups)
    with process(
        [str(BIN / "earshot"), "ingest", "run", "--source", src, "--threads", str(threads)],
        env, logs / f"bridge-{source}.log",
    ):
        wait_for(lambda: job_count(engine, bucket) >= events, 600, "jobs")
        wait_for(lambda: all(r[2] is not None for r in receipts(engine, bucket)), 60, "enqueues")
        time.sleep(1.5)  # let duplicates that are still in flight arrive
    rows = receipts(engine, bucket)
    first = min(r[1] for r in rows)
    last = max(r[2] for r in rows if r[2] is not None)
    elapsed = (last - first).total_seconds()
    jobs = job_count(engine, bucket)
    return {
        "source": source,
        "events": delivered,
        "duplicates": len(dups),
        "jobs": jobs,
        "exactly_one_job_per_object": jobs == events,
        "seconds": round(elapsed, 2),
        "events_per_s": round(delivered / elapsed, 1),
        "jobs_per_s": round(jobs / elapsed, 1),
    }


def delay(
    *, env: dict[str, str], moto_url: str, broker: str, engine: Engine, rate: float, seconds: float,
    threads: int, logs: Path,
) -> dict[str, Any]:
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name=REGION)
    sqs = boto3.client("sqs", endpoint_url=moto_url, region_name=REGION)
    bucket = f"bench-delay-{uuid.uuid4().hex[:6]}"
    queue = f"bench-delay-{uuid.uuid4().hex[:6]}"
    s3.create_bucket(Bucket=bucket)
    sqs.create_queue(QueueName=queue)
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={"QueueConfigurations": [
            {"QueueArn": f"arn:aws:sqs:{REGION}:123456789012:{queue}", "Events": ["s3:ObjectCreated:*"]}
        ]},
    )
    body = wav_bytes(1.0, 7)
    n = int(rate * seconds)
    uploaded: dict[str, datetime] = {}
    src = f"sqs://{queue}?endpoint_url={moto_url}&wait_s=20"
    with ExitStack() as stack:
        stack.enter_context(process(
            [str(BIN / "earshot"), "worker", "--queues", "cpu", "--concurrency", "2"], env, logs / "worker.log"
        ))
        stack.enter_context(process(
            [str(BIN / "earshot"), "ingest", "run", "--source", src, "--threads", str(threads)], env,
            logs / "bridge-delay.log",
        ))
        time.sleep(8)  # both processes up (imports) before the clock starts
        start = time.monotonic()
        for i in range(n):
            target = start + i / rate
            time.sleep(max(0.0, target - time.monotonic()))
            key = f"live/{i:05d}.wav"
            s3.put_object(Bucket=bucket, Key=key, Body=body)
            uploaded[f"s3://{bucket}/{key}"] = datetime.now().astimezone()
        wait_for(lambda: sum(1 for r in receipts(engine, bucket) if r[3] is not None) >= n, 300, "jobs to start")
    rows = receipts(engine, bucket)
    to_enqueue = [((r[2] - uploaded[r[0]]).total_seconds()) for r in rows if r[2] is not None]
    to_start = [((r[3] - uploaded[r[0]]).total_seconds()) for r in rows if r[3] is not None]
    return {
        "uploads": n,
        "rate_per_s": rate,
        "upload_to_enqueued_s": {"p50": round(pct(to_enqueue, 0.5), 3), "p99": round(pct(to_enqueue, 0.99), 3)},
        "upload_to_job_start_s": {"p50": round(pct(to_start, 0.5), 3), "p99": round(pct(to_start, 0.99), 3),
                                  "mean": round(statistics.fmean(to_start), 3)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--dup", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rate", type=float, default=4.0, help="uploads per second in the delay run")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--sources", default="sqs,amqp")
    parser.add_argument("--skip-delay", action="store_true")
    args = parser.parse_args()

    out: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "args": vars(args),
    }
    with ExitStack() as stack:
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="earshot-bench-")))
        moto_url = stack.enter_context(moto(logs / "moto.log"))
        db_url = stack.enter_context(database())
        broker = stack.enter_context(vhost())
        scratch = logs / "scratch"
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": REGION,
            "EARSHOT_DATABASE_URL": db_url, "EARSHOT_BROKER_URL": broker,
            "EARSHOT_S3_ENDPOINT_URL": moto_url, "EARSHOT_INGEST_SQS_ENDPOINT_URL": moto_url,
            "EARSHOT_SCRATCH_URL": scratch.as_uri(), "EARSHOT_LOG_LEVEL": "WARNING",
            "EARSHOT_INGEST_TASKS": '["transcribe"]',
        }
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
        engine = create_engine(db_url)
        out["throughput"] = []
        for source in [s for s in args.sources.split(",") if s]:
            result = throughput(
                source, env=env, moto_url=moto_url, broker=broker, engine=engine, events=args.events,
                dup=args.dup, threads=args.threads, logs=logs,
            )
            result["process_job_messages"] = queue_depth(broker, "cpu")
            with kombu.Connection(broker) as conn:
                conn.channel().queue_purge("cpu")
            out["throughput"].append(result)
            print(json.dumps(result), flush=True)
        if not args.skip_delay:
            out["delay"] = delay(
                env=env, moto_url=moto_url, broker=broker, engine=engine, rate=args.rate,
                seconds=args.seconds, threads=args.threads, logs=logs,
            )
            print(json.dumps(out["delay"]), flush=True)
        out["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        engine.dispose()
    target = ROOT / "bench" / "out" / "ingest.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=2))
    print(f"written to {target}")


if __name__ == "__main__":
    main()
