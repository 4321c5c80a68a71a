"""Issue 14: "a 180 KB FLAC of silence becomes 1 h of model work". The API counts the audio it
knows of; a worker checks each file's length against its tenant's day before any model work."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from earshot import storage
from earshot.audio import synth
from earshot.config import Settings
from earshot.db import models as m
from earshot.db.session import session_scope
from earshot.errors import InputError
from earshot.jobs.service import create_job
from earshot.pipeline.prepare import prepare_job
from earshot.tenants import create_tenant


def test_a_file_past_the_tenants_daily_audio_fails_before_model_work(earshot_env: Settings, tmp_path: Path) -> None:
    tenant = f"aud-{uuid.uuid4().hex[:8]}"
    silence = synth.encode_file(synth.tone_with_silences(6.0), tmp_path / "quiet.flac")
    with session_scope(earshot_env.database_url) as s:
        create_tenant(s, tenant_id=tenant, max_audio_hours_per_day=5.0 / 3600)  # 5 s a day
        job, _ = create_job(s, source=storage.head(silence.as_uri()), tasks=["transcribe"], engine="local",
                            tenant_id=tenant)
        job_id = job.id
    with pytest.raises(InputError) as caught:
        prepare_job(job_id, earshot_env)
    assert caught.value.code == "quota_exceeded" and "per day" in caught.value.message
    with session_scope(earshot_env.database_url) as s:
        assert s.query(m.Segment).filter_by(job_id=job_id).count() == 0  # nothing was cut or stored
