"""Full-text search over transcripts and summaries (earshot.search does the work)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from earshot.search import KINDS, search
from services.api import serializers
from services.api.cursors import MAX_SEARCH_OFFSET, decode_offset, encode_offset
from services.api.deps import DatabaseDep, ReadKey, answer, tenant_scope
from services.api.problems import responses
from services.api.schemas import SearchOut

router = APIRouter(prefix="/v1", tags=["search"])


@router.get(
    "/search",
    response_model=SearchOut,
    summary="Full-text search over transcripts and summaries, best match first",
    description=(
        "Web-search syntax (PostgreSQL `websearch_to_tsquery`): words are ANDed, `\"quoted phrases\"`, "
        "`or`, `-excluded`. Each hit carries its job, the absolute start/end second and a snippet "
        "with `<mark>` around the matches. Only the caller's tenant's jobs are searched (admin keys: all)."
    ),
    responses=responses(401, 403, 422),
)
async def search_route(
    db: DatabaseDep,
    key: ReadKey,
    q: Annotated[str, Query(min_length=1, max_length=500, description="What to look for")],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=64, description="`next_cursor` of the previous page")] = None,
    job_id: Annotated[uuid.UUID | None, Query(description="Only this job")] = None,
    kind: Annotated[Literal["utterance", "summary"] | None, Query(description="Only this kind of hit")] = None,
) -> Response:
    offset = decode_offset(cursor)
    async with db.reader() as conn:
        page = await search(
            conn, q, limit=limit, offset=offset, job_id=str(job_id) if job_id else None,
            kinds=[kind] if kind else KINDS, tenant_id=tenant_scope(key),
        )
    more = page.hits and page.has_more and offset + limit <= MAX_SEARCH_OFFSET
    return answer(serializers.search(q, page.hits, encode_offset(offset + limit) if more else None))
