"""Many concurrent requests against few worker threads must not deadlock.

Sync routes run in a thread pool and hold pooled database connections; a request that keeps its
connection while it waits for a thread (FastAPI validates sync routes' return values in a
second thread hop) deadlocks once every thread waits for a connection. Routes therefore hand
their connection back before returning (services.api.deps.reply). This drives 96 concurrent
requests through 4 threads and a 30-connection pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio.to_thread
import httpx
from fastapi import FastAPI

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
