"""Many concurrent requests must neither deadlock nor fail.

The old sync routes held pooled connections while waiting for a thread; once every thread
waited for a connection, the server hung (the first test, kept as a regression guard, limits
the thread pool to 4 and drives 96 requests). The async routes hold at most one connection of
the main pool and look keys up in a pool of their own; the second test drives 256 concurrent
requests with cold key caches, more than the pool holds (30), through every hot path and the
writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio.to_thread
import httpx
from fastapi import FastAPI

from earshot.auth import create_key
from earshot.db.session import session_scope
from tests.fixtures.api import Tokens, bearer


def test_no_deadlock_with_few_threads(api_app: FastAPI, api_tokens: Tokens, seeded: Callable[..., str]) -> None:
    job = seeded(utterances=[(float(i), i + 0.5, f"line {i}") for i in range(50)], events=[(1.0, 2.0, "beep")])
    paths = [f"/v1/jobs/{job}", f"/v1/jobs/{job}/transcript", f"/v1/jobs/{job}/events", "/v1/search?q=line",
             "/v1/jobs?limit=5", f"/v1/jobs/{job}/transcript?format=srt"]

    async def main() -> list[int]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 4  # this event loop only
        transport = httpx.ASGITransport(app=api_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=bearer(api_tokens.read)) as c:
            async def one(i: int) -> int:
                return (await c.get(paths[i % len(paths)])).status_code

            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(96))), timeout=25)

    assert set(asyncio.run(main())) == {200}


def test_no_errors_or_deadlock_at_256_concurrent_requests(api_app: FastAPI, seeded: Callable[..., str]) -> None:
    jobs = [seeded(utterances=[(float(i), i + 0.5, f"word{i % 7} line") for i in range(200)],
                   events=[(1.0, 2.0, "beep")]) for _ in range(4)]
    failed = [seeded(status="failed", error=("engine_error", "boom")) for _ in range(8)]
    queued = [seeded(status="queued") for _ in range(8)]
    with session_scope() as s:  # 16 keys, none cached yet: 16 concurrent auth misses
        tokens = [create_key(s, name=f"load-{i}", scopes=["read", "submit"])[1] for i in range(16)]
    reads = [f"/v1/jobs/{j}" for j in jobs] + [f"/v1/jobs/{j}/transcript" for j in jobs] + [
        f"/v1/jobs/{jobs[0]}/events?label=be", "/v1/search?q=word3", "/v1/jobs?limit=20",
        f"/v1/jobs/{jobs[1]}/summary", f"/v1/jobs/{jobs[2]}/transcript?format=vtt",
    ]

    async def main() -> list[int]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 4
        transport = httpx.ASGITransport(app=api_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=60) as c:
            async def one(i: int) -> int:
                headers = bearer(tokens[i % len(tokens)])
                if i < len(failed):
                    return (await c.post(f"/v1/jobs/{failed[i]}/retry", headers=headers)).status_code
                if i < len(failed) + len(queued):
                    return (await c.post(f"/v1/jobs/{queued[i - len(failed)]}/cancel", headers=headers)).status_code
                return (await c.get(reads[i % len(reads)], headers=headers)).status_code

            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(256))), timeout=60)

    assert set(asyncio.run(main())) == {200}
