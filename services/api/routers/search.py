"""Full-text search over transcripts and summaries (earshot.search does the work)."""

from __future__ import annotations

import base64
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from earshot.search import KINDS, search
from services.api.deps import ReadKey, SessionDep, reply
from services.api.problems import ApiProblem, responses
from services.api.schemas import SearchHitOut, SearchOut

router = APIRouter(prefix="/v1", tags=["search"])
MAX_OFFSET = 10_000


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("o:"):
            raise ValueError(raw)
        offset = int(raw[2:])
        if not 0 <= offset <= MAX_OFFSET:
            raise ValueError(raw)
        return offset
    except (ValueError, UnicodeDecodeError):
        raise ApiProblem(
            422, "cursor is not one this API returned", code="bad_cursor",
            errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "value_error"}],
        ) from None


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


@router.get(
    "/search",
    response_model=SearchOut,
    summary="Full-text search over transcripts and summaries, best match first",
    description=(
        "Web-search syntax (PostgreSQL `websearch_to_tsquery`): words are ANDed, `\"quoted phrases\"`, "
        "`or`, `-excluded`. Each hit carries its job, the absolute start/end second and a snippet "
        "with `<mark>` around the matches."
    ),
    responses=responses(401, 403, 422),
)
def search_route(
    session: SessionDep,
    _key: ReadKey,
    q: Annotated[str, Query(min_length=1, max_length=500, description="What to look for")],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=64, description="`next_cursor` of the previous page")] = None,
    job_id: Annotated[uuid.UUID | None, Query(description="Only this job")] = None,
    kind: Annotated[Literal["utterance", "summary"] | None, Query(description="Only this kind of hit")] = None,
) -> Response:
    offset = _offset(cursor)
    page = search(
        session, q, limit=limit, offset=offset, job_id=str(job_id) if job_id else None,
        kinds=[kind] if kind else KINDS,
    )
    return reply(session, SearchOut(
        query=q,
        hits=[
            SearchHitOut(kind=h.kind, job_id=h.job_id, source=h.source, start=h.start, end=h.end,
                         text=h.text, snippet=h.snippet, score=h.score, level=h.level)
            for h in page.hits
        ],
        next_cursor=_cursor(offset + limit) if page.hits and page.has_more and offset + limit <= MAX_OFFSET else None,
    ))
