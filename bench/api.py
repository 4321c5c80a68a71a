"""REST API benchmark: p50/p99 latency and requests/s for job lookup, transcript and search.

    .venv/bin/python bench/api.py [--jobs 100] [--per-job 1000] [--duration 5] [--concurrency 1,16,64]

What it does:

1. creates a throwaway PostgreSQL database (EARSHOT_TEST_PG_ADMIN or postgres@127.0.0.1), migrates
   it and seeds ``jobs * per_job`` utterances (100,000 by default) plus a file summary per job,
   with COPY; the texts are drawn from a 5,000-word vocabulary, so one search word matches
   ~240 utterances that must all be ranked;
2. starts the API with uvicorn (one worker process) in a subprocess;
3. runs the load generator in a *second* process (this file, ``load`` mode: asyncio, a minimal HTTP/1.1
   client, one keep-alive connection per concurrent client) for each endpoint and concurrency, for a fixed
   time after a short warm-up, and prints p50 / p99 / requests per second;
4. drops the database.

The numbers are for this machine with server, load generator and PostgreSQL on the same
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
SCENARIOS = ("job", "transcript", "search")


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


def seed(url: str, jobs: int, per_job: int, rng: random.Random) -> tuple[list[str], list[str]]:
    import psycopg

    words = _vocabulary(rng)
    now = datetime.now(UTC)
    job_ids: list[str] = []
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        audio_rows, job_rows, utt_rows, sum_rows = [], [], [], []
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
        conn.commit()
        conn.autocommit = True
        cur.execute("VACUUM ANALYZE")
    return job_ids, words


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
    for scenario in spec["scenarios"]:
        for concurrency in spec["concurrency"]:
            results.append(asyncio.run(_run_scenario(
                spec["base"], spec["token"], scenario, concurrency, spec["duration"], spec["warmup"],
                spec["job_ids"], spec["words"], 1234 + concurrency,
            )))
            r = results[-1]
            print(f"  {scenario:10s} c={concurrency:<3d} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
                  f"p99 {r['p99_ms']:7.1f} ms  ({r['requests']} requests, {r['errors']} errors)",
                  file=sys.stderr, flush=True)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "load"])
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--per-job", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
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
    server: subprocess.Popen[bytes] | None = None
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

        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "EARSHOT_DATABASE_URL": url, "EARSHOT_LOG_LEVEL": "WARNING"}
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "services.api.app:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(port), "--workers", str(args.workers), "--log-level", "warning", "--no-access-log"],
            cwd=ROOT, env=env,
        )
        _wait_ready(base, server)

        spec = {
            "base": base, "token": token, "duration": args.duration, "warmup": args.warmup,
            "concurrency": [int(c) for c in args.concurrency.split(",")],
            "scenarios": [s for s in args.scenarios.split(",") if s],
            "job_ids": job_ids, "words": words,
        }
        spec_path = Path(f"/tmp/earshot-bench-{name}.json")
        spec_path.write_text(json.dumps(spec))
        print(f"load: uvicorn x{args.workers} on {base}, generator in a second process, "
              f"{args.duration:.0f} s per point after {args.warmup:.0f} s warm-up; cpus={os.cpu_count()}", flush=True)
        out = subprocess.run(
            [sys.executable, __file__, "load", "--spec", str(spec_path)],
            cwd=ROOT, check=True, stdout=subprocess.PIPE,
        )
        spec_path.unlink(missing_ok=True)
        results = json.loads(out.stdout)

        print()
        print("| endpoint | concurrency | req/s | p50 ms | p99 ms | requests | errors |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        labels = {"job": "GET /v1/jobs/{id}", "transcript": "GET /v1/jobs/{id}/transcript (1000 utt.)",
                  "search": "GET /v1/search?q=word"}
        for r in results:
            print(f"| {labels[r['scenario']]} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | "
                  f"{r['p99_ms']:.1f} | {r['requests']} | {r['errors']} |")
        print(f"\ntotal {time.perf_counter() - t0:.0f} s")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(results, indent=2))
    finally:
        if server is not None:
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
