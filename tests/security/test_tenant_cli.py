"""`earshot tenants` and `earshot keys create --tenant`: an operator gives each team its own key,
sources and quotas from the command line."""

from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

from earshot.auth.models import ApiKey
from earshot.db.session import session_scope
from earshot.tenants import Tenant, check_source
from services.cli.main import app
from tests.fixtures.earshot import apply_env


def test_operator_sets_up_a_tenant_with_its_sources_quotas_and_key(
    monkeypatch: pytest.MonkeyPatch, pg_url: str
) -> None:
    apply_env(monkeypatch, database_url=pg_url)
    team = f"cli-{uuid.uuid4().hex[:8]}"  # the database is shared by the session's tests
    run = CliRunner().invoke
    made = run(app, ["tenants", "create", team, "--allow", "s3://media/team-a",
                     "--max-concurrent-jobs", "none", "--audio-hours-per-day", "2", "--json"])
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["allowed_sources"] == ["s3://media/team-a/"]
    changed = run(app, ["tenants", "update", team, "--allow", "s3://media/shared/",
                        "--disallow", "s3://media/team-a/", "--requests-per-minute", "30", "--json"])
    assert changed.exit_code == 0, changed.output
    key = run(app, ["keys", "create", "-n", "svc", "-s", "submit", "--tenant", team, "--json"])
    assert key.exit_code == 0, key.output
    assert json.loads(key.stdout)["tenant"] == team
    assert run(app, ["keys", "create", "-n", "x", "-s", "read", "--tenant", "nobody"]).exit_code == 2
    assert run(app, ["tenants", "create", "Bad Name!"]).exit_code == 2

    with session_scope(pg_url) as s:
        tenant = s.get(Tenant, team)
        assert tenant is not None
        assert (tenant.max_concurrent_jobs, tenant.max_audio_hours_per_day, tenant.requests_per_minute) == (
            None, 2.0, 30)
        assert check_source(s, team, "s3://media/shared/a.wav")
        assert [k.tenant_id for k in s.query(ApiKey).filter_by(name="svc")] == [team]
