"""The bridge under outages and unknown failures (SQLite; the queue and S3 HEAD are stand-ins
passed through the Bridge's seams): outages never dead-letter and ask the runner to pause;
`gave_up` dead letters name their object and are resolved once the object's job succeeds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu.exceptions import OperationalError as BrokerDown

from earshot import storage
from earshot.config import Settings
from earshot.db import migrate
from earshot.db import models as m
from earshot.db.base import utcnow
from earshot.db.session import session_scope
from earshot.ingest.bridge import Bridge, Delivery
from earshot.ingest.deadletters import list_dead_letters, pending_count, resolve_dead_letters
from earshot.ingest.models import DeadLetter
from tests.fixtures.earshot import apply_env

EVENT = json.dumps({"Records": [{
    "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
    "s3": {"bucket": {"name": "calls"}, "object": {"key": "in/a.wav", "size": 100, "eTag": "e1"}},
}]}).encode()


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Settings]:
    monkeypatch.delenv("EARSHOT_BROKER_URL", raising=False)
    s = apply_env(
        monkeypatch, database_url=f"sqlite:///{tmp_path / 'o.db'}", ingest_max_receives="3",
        output_url=(tmp_path / "out").as_uri(), scratch_url=(tmp_path / "scratch").as_uri(),
    )
    migrate.upgrade("heads", url=s.database_url)
    yield s


def head(bucket: str, key: str, version_id: str | None) -> storage.ObjectInfo:
    return storage.ObjectInfo(uri=f"s3://{bucket}/{key}", size=100, etag="e1", version_id=None)


def test_a_broker_outage_is_retried_without_dead_letters_and_pauses_the_bridge(settings: Settings) -> None:
    def down(job_id: str) -> None:
        raise BrokerDown("connection refused")

    def probe() -> None:
        raise BrokerDown("still down")

    bridge = Bridge(settings, enqueue=down, head=head, probe_broker=probe)
    for receives in (1, 5, 50):  # far past EARSHOT_INGEST_MAX_RECEIVES
        outcome = bridge.handle(Delivery(body=EVENT, source="sqs:q", message_id="m1", receive_count=receives))
        assert outcome.action == "retry" and outcome.outage == "broker_unavailable"
    assert bridge.ready() == "broker_unavailable"
    with session_scope() as s:
        assert s.query(DeadLetter).count() == 0
    # back up: the same message makes one job and is acked
    sent: list[str] = []
    ok = Bridge(settings, enqueue=sent.append, head=head, probe_broker=lambda: None)
    assert ok.ready() is None
    outcome = ok.handle(Delivery(body=EVENT, source="sqs:q", message_id="m1", receive_count=51))
    assert outcome.action == "ack" and len(sent) == 1 and outcome.jobs[0].job_id == sent[0]


def test_gave_up_names_its_object_and_is_resolved_when_the_job_succeeds(settings: Settings) -> None:
    def broken(job_id: str) -> None:
        raise ZeroDivisionError("a bug, not an outage")

    bridge = Bridge(settings, enqueue=broken, head=head)
    first = bridge.handle(Delivery(body=EVENT, source="sqs:q", message_id="m2", receive_count=1))
    assert first.action == "retry" and first.outage is None
    last = bridge.handle(Delivery(body=EVENT, source="sqs:q", message_id="m2", receive_count=3))
    assert last.action == "ack" and [r for r, _ in last.dead_letters] == ["gave_up"]
    with session_scope() as s:
        [dead] = list_dead_letters(s, include_replayed=False)
        assert (dead.bucket, dead.key, dead.reason) == ("calls", "in/a.wav", "gave_up")
        assert pending_count(s) == 1
        assert resolve_dead_letters(s) == 0  # its job has not succeeded
        job = s.query(m.Job).filter(m.Job.source_uri == "s3://calls/in/a.wav").one()
        job.status, job.finished_at = "succeeded", utcnow()
    with session_scope() as s:
        assert resolve_dead_letters(s) == 1
    with session_scope() as s:
        assert pending_count(s) == 0 and list_dead_letters(s, include_replayed=False) == []
        assert list_dead_letters(s)[0].resolved_at is not None
