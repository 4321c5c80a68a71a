"""REST API benchmark: Earshot against the floor that Python and PostgreSQL allow.

    .venv/bin/python bench/api.py [--jobs 100] [--per-job 1000] [--duration 5] [--concurrency 1,16,64]

What it does:

1. creates a throwaway PostgreSQL database (EARSHOT_TEST_PG_ADMIN or postgres@127.0.0.1), migrates
   it and seeds ``jobs * per_job`` utterances (100,000 by default), 20 events and a file summary
   per job, with COPY; the texts are drawn from a 5,000-word vocabulary, so one search word
   matches ~240 utterances that must all be ranked;
2. starts two servers with uvicorn, one worker each: Earshot's API, and the *floor*, a minimal
   Starlette app on a psycopg async pool (``floor_app`` below) that runs the same SQL for each
   endpoint (the key by SHA-256, then the job, scoped to the key's tenant, then its rows) and
   answers JSON with orjson. The floor has no framework, no dependencies, no metrics and no
   key cache: it is what the work costs at least in Python;
3. runs the load generator in a *third* process (``load`` mode: asyncio, a minimal HTTP/1.1
   client, one keep-alive connection per concurrent client). For every endpoint and concurrency
   it measures the floor and then Earshot, back to back, so both see the same machine load;
   the ratio is Earshot's req/s over the floor's. Then c=256 against each, counting errors;
4. prints the table with the load average before and after, writes JSON (``--json``), drops
   the database.

The numbers are for this machine with servers, load generator and PostgreSQL on the same
cores; they are a regression yardstick, not a capacity plan. Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PG_ADMIN = os.environ.get("EARSHOT_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
SCENARIOS = ("job", "transcript", "events", "list", "search")
TARGET = ("earshot", "floor")


# --------------------------------------------------------------------------- seeding


def _vocabulary(rng: random.Random, size: int = 5000) -> list[str]:
    letters = "abcdefghijklmnoprstuvw"
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(4, 9))))
    return sorted(words)


def _copy(cur: Any, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


EVENT_LABELS = ("speech", "music", "siren", "dog barking", "door", "laughter", "applause", "engine")


def seed(url: str, jobs: int, per_job: int, rng: random.Random) -> tuple[list[str], list[str]]:
    import psycopg

    words = _vocabulary(rng)
    now = datetime.now(UTC)
    job_ids: list[str] = []
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        audio_rows, job_rows, utt_rows, sum_rows, ev_rows = [], [], [], [], []
        for j in range(jobs):
            audio_id, job_id = str(uuid.uuid4()), str(uuid.uuid4())
            job_ids.append(job_id)
            uri = f"s3://bench/calls/{j:05d}.wav"
            created = now - timedelta(minutes=jobs - j)
            audio_rows.append((audio_id, uri, "bench", f"calls/{j:05d}.wav", "v1", per_job * 4.0, created))
            job_rows.append((
                job_id, audio_id, uri, "succeeded", '["transcribe","summarize"]', "[]", "{}", "local", 1,
                1.0, f"bench:{job_id}", created, created, created, created + timedelta(minutes=3),
                '{"analyze_s": 170.0}', per_job // 150 + 1,
            ))
            t = 0.0
            for k in range(per_job):
                n = rng.randint(6, 18)
                text = " ".join(rng.choice(words) for _ in range(n))
                utt_rows.append((job_id, int(t // 600), k, t, t + n * 0.33, text))
                t += n * 0.33 + rng.uniform(0.1, 0.8)
            for k in range(20):
                start = rng.uniform(0, t)
                label = rng.choice(EVENT_LABELS)
                ev_rows.append((job_id, int(start // 600), k, label, start, start + rng.uniform(0.5, 8), f"[{start:.1f}] {label}"))
            summary = " ".join(rng.choice(words) for _ in range(60))
            sum_rows.append((job_id, "file", 0, 0.0, t, None, summary))
        _copy(cur, "audio_files", ("id", "uri", "bucket", "key", "version", "duration_s", "created_at"), audio_rows)
        _copy(cur, "jobs", (
            "id", "audio_file_id", "source_uri", "status", "tasks", "questions", "options", "engine", "attempts",
            "progress", "idempotency_key", "created_at", "updated_at", "started_at", "finished_at", "timings",
            "segment_count",
        ), job_rows)
        _copy(cur, "utterances", ("job_id", "segment_index", "seq", "start_s", "end_s", "text"), utt_rows)
        _copy(cur, "summaries", ("job_id", "level", "idx", "start_s", "end_s", "title", "text"), sum_rows)
        _copy(cur, "events", ("job_id", "segment_index", "seq", "label", "start_s", "end_s", "raw"), ev_rows)
        # the bench measures speed, not the default tenant's rate limit
        cur.execute("UPDATE tenants SET requests_per_minute = NULL, max_concurrent_jobs = NULL, "
                    "max_audio_hours_per_day = NULL")
        conn.commit()
        conn.autocommit = True
        cur.execute("VACUUM ANALYZE")
    return job_ids, words


# --------------------------------------------------------------------------- the floor app


def floor_app() -> Any:
    """The reference: Starlette + a psycopg async pool + orjson, the same SQL as Earshot.

    Served by uvicorn like the API (``uvicorn bench.api:floor_app --factory``), with
    ``EARSHOT_DATABASE_URL`` pointing at the bench database.
    """
    import hashlib
    from contextlib import asynccontextmanager

    import orjson
    from psycopg.rows import namedtuple_row
    from psycopg_pool import AsyncConnectionPool
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from earshot.search import postgres_params, postgres_sql, safe_snippet

    url = os.environ["EARSHOT_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    pool = AsyncConnectionPool(url, min_size=10, max_size=30, open=False,
                               kwargs={"autocommit": True, "row_factory": namedtuple_row})
    key_sql = "SELECT id, scopes, revoked_at, tenant_id FROM api_keys WHERE key_hash = %s"
    job_sql = (
        "SELECT j.id, j.status, j.source_uri, j.tasks, j.questions, j.engine, j.model_id, j.progress, j.attempts, "
        "j.segment_count, j.created_at, j.updated_at, j.started_at, j.finished_at, j.timings, j.error_code, "
        "j.error_message, j.options, a.duration_s, j.tenant_id "
        "FROM jobs j LEFT OUTER JOIN audio_files a ON a.id = j.audio_file_id"
    )
    utt_sql = "SELECT start_s, end_s, text FROM utterances WHERE job_id = %s ORDER BY start_s, segment_index, seq"
    ev_sql = ("SELECT start_s, end_s, label, raw FROM events WHERE job_id = %s "
              "ORDER BY start_s, segment_index, seq")
    search_sql = postgres_sql(("utterance", "summary"), job_filter=False, tenant_filter=True)
    opts = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z

    def job_json(r: Any) -> dict[str, Any]:
        return {"id": r.id, "status": r.status, "source": r.source_uri, "tasks": r.tasks, "questions": r.questions,
                "engine": r.engine, "model_id": r.model_id, "progress": r.progress, "attempts": r.attempts,
                "segment_count": r.segment_count, "duration_s": r.duration_s, "created_at": r.created_at,
                "updated_at": r.updated_at, "started_at": r.started_at, "finished_at": r.finished_at,
                "timings": r.timings, "error": None, "outputs": {}}

    def json(data: Any, status: int = 200) -> Response:
        return Response(orjson.dumps(data, option=opts), status_code=status, media_type="application/json")

    async def tenant_of(request: Request, cur: Any) -> str | None:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        await cur.execute(key_sql, (hashlib.sha256(token.encode()).hexdigest(),))
        key = await cur.fetchone()
        return None if key is None or key.revoked_at is not None else key.tenant_id

    async def one_job(cur: Any, job_id: str, tenant: str) -> Any:
        await cur.execute(job_sql + " WHERE j.id = %s AND j.tenant_id = %s", (job_id, tenant))
        return await cur.fetchone()

    async def job(request: Request) -> Response:
        async with pool.connection() as conn, conn.cursor() as cur:
            tenant = await tenant_of(request, cur)
            if tenant is None:
                return json({"status": 401}, 401)
            row = await one_job(cur, request.path_params["job_id"], tenant)
        return json(job_json(row)) if row else json({"status": 404}, 404)

    async def job_rows(request: Request, sql: str) -> tuple[Any, list[Any]] | Response:
        """The key's job and the rows ``sql`` selects for it; a 401/404 answer instead when not."""
        async with pool.connection() as conn, conn.cursor() as cur:
            tenant = await tenant_of(request, cur)
            if tenant is None:
                return json({"status": 401}, 401)
            row = await one_job(cur, request.path_params["job_id"], tenant)
            if row is None:
                return json({"status": 404}, 404)
            await cur.execute(sql, (row.id,))
            return row, await cur.fetchall()

    async def transcript(request: Request) -> Response:
        found = await job_rows(request, utt_sql)
        if isinstance(found, Response):
            return found
        row, rows = found
        return json({"job_id": row.id, "status": row.status,
                     "utterances": [{"start": r.start_s, "end": r.end_s, "text": r.text} for r in rows]})

    async def events(request: Request) -> Response:
        found = await job_rows(request, ev_sql)
        if isinstance(found, Response):
            return found
        row, rows = found
        return json({"job_id": row.id, "status": row.status, "events": [
            {"start": e.start_s, "end": e.end_s, "duration": e.end_s - e.start_s, "label": e.label, "raw": e.raw or ""}
            for e in rows]})

    async def jobs(request: Request) -> Response:
        limit = int(request.query_params.get("limit", "50"))
        async with pool.connection() as conn, conn.cursor() as cur:
            tenant = await tenant_of(request, cur)
            if tenant is None:
                return json({"status": 401}, 401)
            await cur.execute(job_sql + " WHERE j.tenant_id = %s ORDER BY j.created_at DESC, j.id DESC LIMIT %s",
                              (tenant, limit + 1))
            rows: list[Any] = await cur.fetchall()
        return json({"jobs": [job_json(r) for r in rows[:limit]], "next_cursor": "x" if len(rows) > limit else None})

    async def search(request: Request) -> Response:
        q = request.query_params["q"]
        limit = int(request.query_params.get("limit", "20"))
        async with pool.connection() as conn, conn.cursor() as cur:
            tenant = await tenant_of(request, cur)
            if tenant is None:
                return json({"status": 401}, 401)
            params = postgres_params(q, limit + 1, 0, None, tenant)
            # the same text as Earshot's; SQLAlchemy's :name placeholders become psycopg's %(name)s
            await cur.execute(_pyformat(search_sql), params)
            rows: list[Any] = await cur.fetchall()
        hits = [{"kind": r.kind, "job_id": r.job_id, "source": r.source_uri, "start": r.start_s, "end": r.end_s,
                 "text": r.text, "snippet": safe_snippet(r.snippet or ""), "score": r.score, "level": r.level}
                for r in rows[:limit]]
        return json({"query": q, "hits": hits, "next_cursor": None})

    async def readyz(request: Request) -> Response:
        return json({"status": "ok"})

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        await pool.open()
        yield
        await pool.close()

    return Starlette(routes=[
        Route("/readyz", readyz),
        Route("/v1/jobs", jobs),
        Route("/v1/jobs/{job_id}", job),
        Route("/v1/jobs/{job_id}/transcript", transcript),
        Route("/v1/jobs/{job_id}/events", events),
        Route("/v1/search", search),
    ], lifespan=lifespan)


def _pyformat(sql: str) -> str:
    import re

    return re.sub(r"(?<!:):([a-z_]+)", r"%(\1)s", sql.replace("%", "%%"))


# --------------------------------------------------------------------------- load generator (second process)


class _Connection:
    """A minimal HTTP/1.1 keep-alive client: a fraction of httpx's CPU per request, so the load
    generator (sharing the cores with the server) stays out of the way. It reads responses
    with Content-Length, which is what the API sends for these endpoints."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.head = f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\nAccept: */*\r\n\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> int:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        try:
            self.writer.write(f"GET {path} HTTP/1.1\r\n{self.head}".encode())
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length, close = 0, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            await self.reader.readexactly(length)
            if close:
                self.close()
            return status
        except (OSError, asyncio.IncompleteReadError, ValueError):
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _run_scenario(
    base: str, token: str, scenario: str, concurrency: int, duration: float, warmup: float,
    job_ids: list[str], words: list[str], seed_value: int,
) -> dict[str, Any]:
    rng = random.Random(seed_value)
    host, port = base.removeprefix("http://").split(":")

    def path() -> str:
        if scenario == "job":
            return f"/v1/jobs/{rng.choice(job_ids)}"
        if scenario == "transcript":
            return f"/v1/jobs/{rng.choice(job_ids)}/transcript"
        if scenario == "events":
            return f"/v1/jobs/{rng.choice(job_ids)}/events"
        if scenario == "list":
            return "/v1/jobs?limit=50"
        return f"/v1/search?q={rng.choice(words)}&limit=20"

    latencies: list[float] = []
    errors = 0
    connections = [_Connection(host, int(port), token) for _ in range(concurrency)]

    async def worker(conn: _Connection, until: float, record: bool) -> None:
        nonlocal errors
        while time.perf_counter() < until:
            started = time.perf_counter()
            try:
                ok = await conn.get(path()) == 200
            except (OSError, asyncio.IncompleteReadError, ValueError):  # counted, not fatal
                ok = False
            if record:
                latencies.append(time.perf_counter() - started)
                errors += not ok

    warm_until = time.perf_counter() + warmup
    await asyncio.gather(*(worker(c, warm_until, False) for c in connections))
    started = time.perf_counter()
    until = started + duration
    await asyncio.gather(*(worker(c, until, True) for c in connections))
    elapsed = time.perf_counter() - started
    for c in connections:
        c.close()
    latencies.sort()
    return {
        "scenario": scenario,
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


def load_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    results = []

    def point(target: str, scenario: str, concurrency: int) -> None:
        r = asyncio.run(_run_scenario(
            spec["bases"][target], spec["token"], scenario, concurrency, spec["duration"], spec["warmup"],
            spec["job_ids"], spec["words"], 1234 + concurrency,
        ))
        r["target"] = target
        results.append(r)
        print(f"  {target:8s} {scenario:10s} c={concurrency:<3d} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
              f"p99 {r['p99_ms']:7.1f} ms  ({r['requests']} requests, {r['errors']} errors)",
              file=sys.stderr, flush=True)

    for scenario in spec["scenarios"]:
        for concurrency in spec["concurrency"]:
            # back to back, so both see the same machine load; the order alternates
            order = TARGET if concurrency % 2 == 0 else TARGET[::-1]
            for target in order:
                point(target, scenario, concurrency)
    for target in TARGET:
        point(target, "job", spec["overload"])
    print(json.dumps(results))


# --------------------------------------------------------------------------- orchestration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the API server exited")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the API server did not become ready")


def _start(args: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", *args, "--factory", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--log-level", "warning", "--no-access-log"],
        cwd=ROOT, env=env,
    )


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def table(results: list[dict[str, Any]]) -> str:
    labels = {"job": "`GET /v1/jobs/{id}`", "transcript": "`GET /v1/jobs/{id}/transcript` (1,000 utt.)",
              "events": "`GET /v1/jobs/{id}/events` (20)", "list": "`GET /v1/jobs?limit=50`",
              "search": "`GET /v1/search?q=word` (top 20)"}
    by = {(r["target"], r["scenario"], r["concurrency"]): r for r in results}
    lines = ["| endpoint | c | Earshot req/s | floor req/s | ratio | Earshot p50 / p99 ms | floor p50 / p99 ms | errors E/F |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (target, scenario, c), e in by.items():
        if target != "earshot":
            continue
        f = by[("floor", scenario, c)]
        lines.append(
            f"| {labels[scenario]} | {c} | {e['rps']:.0f} | {f['rps']:.0f} | {e['rps'] / max(f['rps'], 1e-9):.2f}x | "
            f"{e['p50_ms']:.1f} / {e['p99_ms']:.1f} | {f['p50_ms']:.1f} / {f['p99_ms']:.1f} | {e['errors']} / {f['errors']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "load"])
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--per-job", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--overload", type=int, default=256, help="concurrency of the error check")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--json", dest="json_out", help="also write the results here")
    args = parser.parse_args()
    if args.mode == "load":
        load_main(args.spec)
        return

    import psycopg

    from earshot.auth import create_key
    from earshot.db import migrate
    from earshot.db.session import dispose_all, session_scope

    name = f"earshot_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    plain_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    url = plain_url.replace("postgresql://", "postgresql+psycopg://")
    servers: list[subprocess.Popen[bytes]] = []
    t0 = time.perf_counter()
    try:
        migrate.upgrade("heads", url=url)
        rng = random.Random(7)
        job_ids, words = seed(plain_url, args.jobs, args.per_job, rng)
        with session_scope(url) as s:
            _, token = create_key(s, name="bench", scopes=["read"])
        dispose_all()
        seeded_s = time.perf_counter() - t0
        print(f"seeded {args.jobs * args.per_job:,} utterances in {args.jobs} jobs in {seeded_s:.1f} s", flush=True)

        env = {**os.environ, "EARSHOT_DATABASE_URL": url, "EARSHOT_LOG_LEVEL": "WARNING"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        ports = {"earshot": _free_port(), "floor": _free_port()}
        servers.append(_start(["services.api.app:create_app"], env, ports["earshot"]))
        servers.append(_start(["bench.api:floor_app"], env, ports["floor"]))
        bases = {t: f"http://127.0.0.1:{p}" for t, p in ports.items()}
        for server, base in zip(servers, bases.values(), strict=True):
            _wait_ready(base, server)

        spec = {
            "bases": bases, "token": token, "duration": args.duration, "warmup": args.warmup,
            "concurrency": [int(c) for c in args.concurrency.split(",")], "overload": args.overload,
            "scenarios": [s for s in args.scenarios.split(",") if s],
            "job_ids": job_ids, "words": words,
        }
        spec_path = Path(f"/tmp/earshot-bench-{name}.json")
        spec_path.write_text(json.dumps(spec))
        load_before = _load()
        print(f"load: uvicorn x1 each (Earshot, floor), generator in a third process, {args.duration:.0f} s per point "
              f"after {args.warmup:.0f} s warm-up, floor and Earshot back to back; cpus={os.cpu_count()}; "
              f"load average before {load_before}", flush=True)
        out = subprocess.run(
            [sys.executable, __file__, "load", "--spec", str(spec_path)],
            cwd=ROOT, check=True, stdout=subprocess.PIPE,
        )
        spec_path.unlink(missing_ok=True)
        results = json.loads(out.stdout)
        load_after = _load()

        print()
        print(table(results))
        over = {r["target"]: r for r in results if r["concurrency"] == args.overload}
        print(f"\nc={args.overload} (job lookup): Earshot {over['earshot']['errors']} errors of "
              f"{over['earshot']['requests']}, p99 {over['earshot']['p99_ms']:.0f} ms; floor "
              f"{over['floor']['errors']} errors of {over['floor']['requests']}, p99 {over['floor']['p99_ms']:.0f} ms")
        print(f"load average before {load_before}, after {load_after} (cpus={os.cpu_count()})")
        print(f"total {time.perf_counter() - t0:.0f} s")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(
                {"when": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
                 "load_before": load_before, "load_after": load_after, "jobs": args.jobs, "per_job": args.per_job,
                 "duration_s": args.duration, "results": results}, indent=2))
    finally:
        for server in servers:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        dispose_all()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
