"""`earshot keys ...`, `earshot export ...` and `earshot api` against the test PostgreSQL."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from earshot.config import Settings
from earshot.exports import validate_srt, validate_vtt
from services.cli.main import app
from tests.fixtures.api import QueueRecorder, bearer, make_app

runner = CliRunner()


def test_cli_created_key_works_until_the_cli_revokes_it(api_env: Settings, api_queue: QueueRecorder) -> None:
    # no key cache, so the CLI's revocation shows at once (the cache window has its own test)
    uncached = TestClient(make_app(api_env.model_copy(update={"api_key_cache_s": 0}), api_queue))
    with uncached as api_client:
        _keys_round_trip(api_client)


def _keys_round_trip(api_client: TestClient) -> None:
    made = runner.invoke(app, ["keys", "create", "--name", "cli-test", "--scope", "read,submit", "--json"])
    assert made.exit_code == 0, made.output
    row = json.loads(made.stdout)
    assert row["scopes"] == ["read", "submit"] and row["token"].startswith(row["prefix"])
    assert api_client.get("/v1/jobs", headers=bearer(row["token"])).status_code == 200

    listed = runner.invoke(app, ["keys", "list", "--json"])
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    mine = next(r for r in rows if r["id"] == row["id"])
    assert "token" not in mine and mine["revoked_at"] is None
    assert runner.invoke(app, ["keys", "list"]).exit_code == 0  # the table

    revoked = runner.invoke(app, ["keys", "revoke", row["prefix"]])
    assert revoked.exit_code == 0, revoked.output
    assert api_client.get("/v1/jobs", headers=bearer(row["token"])).status_code == 401
    active = runner.invoke(app, ["keys", "list", "--active", "--json"]).stdout
    assert row["id"] not in active

    assert runner.invoke(app, ["keys", "revoke", "ek_nosuchkey"]).exit_code == 2
    bad = runner.invoke(app, ["keys", "create", "--name", "x", "--scope", "root"])
    assert bad.exit_code == 2 and "unknown scope" in bad.output

    plain = runner.invoke(app, ["keys", "create", "--name", "human", "--scope", "admin"])
    assert plain.exit_code == 0 and plain.stdout.strip().splitlines()[-1].startswith("ek_")


def test_export_uses_the_api_writers(
    api_env: Settings, api_client: TestClient, seeded: Callable[..., str], tmp_path: Path
) -> None:
    job = seeded(
        utterances=[(5.0, 7.0, "second"), (0.0, 5.5, "first, overlapping"), (3600.0, 3601.0, "an hour in")],
        summaries=[("file", 0, 0.0, 3601.0, None, "Short.")],
        events=[(1.0, 2.0, "beep")],
    )
    token = runner.invoke(app, ["keys", "create", "--name", "exp", "--scope", "read", "--json"])
    headers = bearer(json.loads(token.stdout)["token"])
    for fmt in ("srt", "vtt", "txt", "md"):
        out = tmp_path / f"t.{fmt}"
        r = runner.invoke(app, ["export", job, "--format", fmt, "-o", str(out)])
        assert r.exit_code == 0, r.output
        api = api_client.get(f"/v1/jobs/{job}/transcript", params={"format": fmt}, headers=headers)
        assert out.read_text() == api.text, fmt
    srt = (tmp_path / "t.srt").read_text()
    assert validate_srt(srt) == [] and "01:00:00,000 --> 01:00:01,000" in srt
    assert validate_vtt((tmp_path / "t.vtt").read_text()) == []

    as_json = runner.invoke(app, ["export", job])  # stdout, the whole report
    report = json.loads(as_json.stdout)
    assert report["job_id"] == job and report["summary"] == "Short." and report["events"][0]["label"] == "beep"

    assert runner.invoke(app, ["export", job, "--format", "docx"]).exit_code == 2
    assert runner.invoke(app, ["export", "00000000-0000-4000-8000-000000000000"]).exit_code == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "api", "--port", str(port), "--log-level", "warning", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # importing the app takes long on a loaded machine
    while True:
        try:
            httpx.get(f"{base}/healthz", timeout=2)
            return proc, base
        except httpx.TransportError:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "earshot api did not start"
            time.sleep(0.2)


def test_earshot_api_serves_readiness_and_requires_a_key(api_env: Settings) -> None:
    proc, base = _serve({**os.environ, "EARSHOT_DATABASE_URL": api_env.database_url})
    try:
        r = httpx.get(f"{base}/readyz", timeout=5)
        assert r.status_code == 200 and r.json() == {"status": "ok", "database": "ok"}
        assert httpx.get(f"{base}/v1/jobs").status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_earshot_api_workers_add_up_their_metrics(api_env: Settings, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "prom"
    env = {**os.environ, "EARSHOT_DATABASE_URL": api_env.database_url, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    proc, base = _serve(env, "--workers", "2")
    try:
        requests = 60
        for _ in range(requests):  # a new connection each time: the kernel spreads them over the workers
            assert httpx.get(f"{base}/v1/jobs", headers={"Connection": "close"}).status_code == 401
        served_by = {f.stem.rsplit("_", 1)[-1] for f in metrics_dir.glob("counter_*.db")}
        assert len(served_by) == 2, served_by  # both workers answered and wrote samples
        line = f'earshot_api_requests_total{{method="GET",route="/v1/jobs",status="401"}} {float(requests)}'
        for _ in range(6):  # whichever worker answers /metrics reports the sum of all of them
            assert line in httpx.get(f"{base}/metrics", headers={"Connection": "close"}).text
    finally:
        proc.terminate()
        proc.wait(timeout=20)
