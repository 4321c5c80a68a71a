"""Issue 14, "no tenant isolation" and "confused deputy on sources", at the library level.

The API and ingest call these functions; the route-level replay is test_auth_matrix.py.
Everything runs on the test PostgreSQL, migrated to every head.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from earshot.auth import create_key
from earshot.db import models as m
from earshot.db.base import new_id, utcnow
from earshot.db.session import session_factory
from earshot.tenants import (
    DEFAULT_TENANT,
    IdempotencyConflict,
    QuotaExceeded,
    RateLimited,
    RateLimiter,
    SourceNotAllowed,
    UnknownTenant,
    check_audio_budget,
    check_quota,
    check_source,
    create_tenant,
    find_idempotent,
    fingerprint,
    source_unavailable,
    tenant_for_source,
    update_tenant,
)


@pytest.fixture
def session(pg_url: str) -> Iterator[Session]:
    s = session_factory(pg_url)()
    try:
        yield s
    finally:
        s.rollback()
        s.close()


def _job(s: Session, tenant: str, *, key: str, status: str = "queued", duration_s: float | None = None,
         age: timedelta = timedelta(0), fp: str | None = None) -> m.Job:
    audio = m.AudioFile(uri=f"s3://media/{key}.wav", bucket="media", key=f"{key}.wav", version=new_id(),
                        duration_s=duration_s)
    s.add(audio)
    s.flush()
    job = m.Job(audio_file_id=audio.id, source_uri=audio.uri, engine="local", tasks=["transcribe"],
                idempotency_key=key, tenant_id=tenant, status=status, request_fingerprint=fp,
                created_at=utcnow() - age)
    s.add(job)
    s.flush()
    return job


def test_default_tenant_reads_no_caller_named_source(session: Session) -> None:
    for uri in ("s3://any-bucket/any-key.wav", "/etc/passwd", "file:///etc/passwd"):
        with pytest.raises(SourceNotAllowed) as caught:
            check_source(session, DEFAULT_TENANT, uri)
        # a denied object reads exactly like a missing one: no probing which buckets exist
        assert (caught.value.code, caught.value.message) == (
            source_unavailable(uri).code, source_unavailable(uri).message
        )


@pytest.mark.parametrize(
    ("uri", "allowed"),
    [
        ("s3://media/team-a/call.wav", True),
        ("s3://media/team-a/deep/er/call.wav", True),
        ("s3://media/team-ab/call.wav", False),  # a folder, not a string prefix
        ("s3://media-evil/team-a/call.wav", False),
        ("s3://media/team-a/../team-b/call.wav", False),
        ("s3://media/team-a/./call.wav", False),
        ("s3://MEDIA/team-a/call.wav", False),
        ("s3://media/team-a/", False),
        ("s3://media/team-a/call\x00.wav", False),
        ("s3://media/team-b/call.wav", False),
        ("/etc/passwd", False),
        ("file:///etc/passwd", False),
        ("http://169.254.169.254/latest/meta-data/", False),
    ],
)
def test_allow_list_admits_only_the_tenants_folders(session: Session, uri: str, allowed: bool) -> None:
    create_tenant(session, tenant_id="team-a", allowed_sources=["s3://media/team-a"])
    if allowed:
        assert check_source(session, "team-a", uri) == uri
    else:
        with pytest.raises(SourceNotAllowed):
            check_source(session, "team-a", uri)


def test_local_allow_list_resolves_links_and_dots(session: Session, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "ok.wav").write_bytes(b"x")
    (inbox / "escape.wav").symlink_to("/etc/passwd")
    create_tenant(session, tenant_id="local", allowed_sources=[inbox.as_uri()])
    assert check_source(session, "local", str(inbox / "ok.wav")) == (inbox / "ok.wav").as_uri()
    for uri in (str(inbox / "escape.wav"), f"{inbox}/../inbox/../../etc/passwd", inbox.as_uri() + "/%2e%2e/%2e%2e/etc/passwd"):
        with pytest.raises(SourceNotAllowed):
            check_source(session, "local", uri)


def test_ingest_gives_an_object_to_its_most_specific_owner_only(session: Session) -> None:
    create_tenant(session, tenant_id="all-media", allowed_sources=["s3://media/"])
    create_tenant(session, tenant_id="team-a", allowed_sources=["s3://media/team-a/"])
    create_tenant(session, tenant_id="twin", allowed_sources=["s3://shared/x/"])
    create_tenant(session, tenant_id="twin2", allowed_sources=["s3://shared/x/"])
    assert tenant_for_source(session, "s3://media/team-a/a.wav") == "team-a"
    assert tenant_for_source(session, "s3://media/other/a.wav") == "all-media"
    assert tenant_for_source(session, "s3://shared/x/a.wav") is None  # two owners: nobody's
    assert tenant_for_source(session, "s3://someone-elses-bucket/a.wav") is None


def test_concurrent_jobs_quota_answers_retry_later(session: Session) -> None:
    create_tenant(session, tenant_id="small", max_concurrent_jobs=2)
    _job(session, "small", key="a")
    check_quota(session, "small")
    running = _job(session, "small", key="b", status="running")
    with pytest.raises(QuotaExceeded) as caught:
        check_quota(session, "small")
    assert caught.value.code == "quota_exceeded" and caught.value.retry_after_s > 0
    check_quota(session, DEFAULT_TENANT)  # another tenant's load is not this one's
    running.status = "succeeded"
    session.flush()
    check_quota(session, "small")


def test_daily_audio_hours_quota_counts_a_rolling_day(session: Session) -> None:
    create_tenant(session, tenant_id="hourly", max_audio_hours_per_day=1.0, max_concurrent_jobs=None)
    _job(session, "hourly", key="yesterday", status="succeeded", duration_s=3600.0, age=timedelta(hours=25))
    check_quota(session, "hourly")
    _job(session, "hourly", key="today", status="succeeded", duration_s=2700.0, age=timedelta(hours=1))
    check_quota(session, "hourly")  # 0.75 h used
    silent = _job(session, "hourly", key="silence", duration_s=3600.0)
    with pytest.raises(QuotaExceeded):  # the worker's check once the file's length is known
        check_audio_budget(session, "hourly", silent.id, 3600.0)
    with pytest.raises(QuotaExceeded) as caught:
        check_quota(session, "hourly")
    # the oldest counted job leaves the window in about 23 h
    assert 22 * 3600 < caught.value.retry_after_s <= 23 * 3600 + 60


def test_rate_limit_refuses_with_retry_after_per_tenant() -> None:
    limiter = RateLimiter()
    for i in range(3):
        limiter.check("busy", 3, now=100.0 + i * 0.01)
    with pytest.raises(RateLimited) as caught:
        limiter.check("busy", 3, now=100.05)
    assert caught.value.code == "rate_limited" and 1 <= caught.value.retry_after_s <= 20
    limiter.check("quiet", 3, now=100.05)  # one tenant's burst does not limit another
    limiter.check("busy", 3, now=100.05 + caught.value.retry_after_s)
    limiter.check("unlimited", None)


def test_idempotency_key_belongs_to_its_tenant(session: Session) -> None:
    create_tenant(session, tenant_id="other")
    body = fingerprint({"uri": "s3://media/a.wav", "tasks": ["transcribe"]})
    mine = _job(session, DEFAULT_TENANT, key="same-key", fp=body)
    theirs = _job(session, "other", key="same-key", fp=body)  # allowed: another tenant's key space
    assert mine.id != theirs.id
    assert find_idempotent(session, "other", "same-key", body) is theirs
    assert find_idempotent(session, "nobody", "same-key", body) is None
    with pytest.raises(IdempotencyConflict):  # same key, different body: 409, never the old job
        find_idempotent(session, DEFAULT_TENANT, "same-key", fingerprint({"uri": "s3://media/b.wav"}))
    with pytest.raises(IntegrityError), session.begin_nested():
        _job(session, DEFAULT_TENANT, key="same-key")


def test_every_key_belongs_to_an_existing_tenant(session: Session) -> None:
    key, _ = create_key(session, name="plain", scopes=["read"])
    assert key.tenant_id == DEFAULT_TENANT
    with pytest.raises(UnknownTenant):
        create_key(session, name="ghost", scopes=["read"], tenant_id="ghost")
    create_tenant(session, tenant_id="team-a")
    assert create_key(session, name="a", scopes=["submit"], tenant_id="team-a")[0].tenant_id == "team-a"
    update_tenant(session, "team-a", allow=["s3://media/team-a/"])
    assert check_source(session, "team-a", "s3://media/team-a/x.wav")


def test_model_output_with_nul_is_stored_cleaned(session: Session) -> None:
    job = _job(session, DEFAULT_TENANT, key="nul")
    session.add(m.Utterance(job_id=job.id, segment_index=0, seq=0, start_s=0, end_s=1, text="a\x00b\ud800c"))
    job.error_message = "model said \x00"
    session.flush()  # PostgreSQL refused this insert before: the job failed
    session.expire_all()
    stored = session.query(m.Utterance).filter_by(job_id=job.id).one()
    assert stored.text == "a\ufffdb\ufffdc"
    assert session.get(m.Job, job.id).error_message == "model said \ufffd"  # type: ignore[union-attr]
