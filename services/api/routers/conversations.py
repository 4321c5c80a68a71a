"""``/v1/conversations``: questions and multi-turn, multi-audio chat over processed files.

It uses the dependencies every router uses (``services.api.deps``); only the engine is its own
(``get_chat_engine``, overridable with ``app.dependency_overrides``). Reads need the ``read``
scope; questions and deletes need ``submit``, like every other write in the API. The chat
service is sync and waits on storage and the model, so each route runs it in one thread hop
(``deps.in_thread``) that opens and closes its own session.

Answers stream as server-sent events when the body says ``"stream": true``::

    event: token
    data: {"text": "A dog"}

    event: answer
    data: {"conversation_id": "...", "question": {...}, "answer": {...}}

(or ``event: error`` with ``{"code", "message"}`` if the model fails mid-stream).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from earshot import storage
from earshot.chat import service
from earshot.chat.schemas import (
    AnswerOut,
    ConversationCreate,
    ConversationOut,
    ConversationSummary,
    TurnCreate,
)
from earshot.config import Settings
from earshot.db.session import session_scope
from earshot.engines.base import Engine
from earshot.errors import EarshotError, EngineError, InputError, StorageError
from services.api.deps import ReadKey, SettingsDep, SubmitKey, answer, in_thread, tenant_scope
from services.api.problems import ApiProblem, responses

# every route needs a key: document the answers without one or with the wrong scope
router = APIRouter(prefix="/v1/conversations", tags=["conversations"], responses=responses(400, 401, 403, 413, 422))

SSE_MEDIA_TYPE = "text/event-stream"
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def get_chat_engine(request: Request) -> Engine:
    """The inference engine (tests override this dependency with a tiny model's)."""
    from earshot.engines import get_engine

    try:
        return get_engine(request.app.state.settings)
    except EarshotError as exc:
        # a missing or unreachable model is the server's problem, not the request's: 503, as
        # documented, with the reason (a 500 would say "bug")
        raise ApiProblem(503, f"the inference engine is not available: {exc.message}", code=exc.code) from exc


EngineDep = Annotated[Engine, Depends(get_chat_engine)]


# ---- helpers ----------------------------------------------------------------------------------


@contextmanager
def _problems() -> Iterator[None]:
    """Earshot errors as problem documents with the right status and a stable code."""
    try:
        yield
    except service.ConversationNotFound as exc:
        raise ApiProblem(404, exc.message, code=exc.code) from exc
    except service.ConversationConflict as exc:
        raise ApiProblem(409, exc.message, code=exc.code) from exc
    except InputError as exc:
        status_code = 409 if exc.code == "job_not_ready" else 404 if exc.code == "job_not_found" else 422
        raise ApiProblem(status_code, exc.message, code=exc.code) from exc
    except StorageError as exc:
        raise ApiProblem(404 if exc.code == "not_found" else 502, exc.message, code=exc.code) from exc
    except EngineError as exc:
        raise ApiProblem(503 if exc.retryable else 502, exc.message, code=exc.code) from exc
    except EarshotError as exc:
        raise ApiProblem(503 if exc.retryable else 500, exc.message, code=exc.code) from exc


def _sse(events: Iterable[service.StreamEvent]) -> Iterator[str]:
    for ev in events:
        yield f"event: {ev.event}\ndata: {json.dumps(ev.data, ensure_ascii=False)}\n\n"


def _answer(
    session: Session,
    settings: Settings,
    engine: Engine,
    *,
    conversation_id: str,
    body: ConversationCreate | TurnCreate,
    question: str,
    with_clips: bool,
    scope: str | None,
) -> AnswerOut | StreamingResponse:
    with _problems():
        prepared = service.prepare_turn(
            session,
            scope=scope,
            conversation_id=conversation_id,
            question=question,
            settings=settings,
            clips=body.all_clips() if with_clips else (),
            think=body.think,
            speak=body.speak,
            max_new_tokens=body.max_new_tokens,
        )
        # the prompt and audio are in hand: give the connection back while the model works
        session.rollback()
        if body.stream:
            events = service.stream_turn(
                prepared, engine=engine, settings=settings,
                session_scope=partial(session_scope, settings.database_url),
            )
            return StreamingResponse(_sse(events), media_type=SSE_MEDIA_TYPE, headers=_SSE_HEADERS)
        out = service.answer_turn(session, prepared, engine=engine, settings=settings)
        session.commit()
        return out


_STREAM_DOC = {
    "content": {SSE_MEDIA_TYPE: {"schema": {
        # one server-sent event: its name and its data (JSON text)
        "type": "object",
        "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
        "required": ["data"],
    }, "example": "event: token\ndata: {\"text\": \"A\"}\n\n"}},
    "description": "With `stream: true`: server-sent events `token`..., then `answer` (or `error`)",
}
# the shared problem schema, with descriptions that say what each status means here
_ERRORS = {
    status: {**entry, "description": text}
    for (status, entry), text in zip(
        responses(404, 409, 422, 503).items(),
        (
            "No such conversation or job",
            "The job is not processed yet, or another turn was stored meanwhile",
            "Invalid question or clips (too long, out of range, over the audio budget)",
            "The inference engine is unavailable",
        ),
        strict=True,
    )
}


# ---- routes -----------------------------------------------------------------------------------


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ConversationOut,
    summary="Start a conversation about one or several processed files",
    description=(
        "Attach clips (`clips` with optional windows, or `job_ids`). With a `question` the first "
        "turn is answered at once (or streamed); without, the clips wait for the first turn."
    ),
    responses={200: _STREAM_DOC, **_ERRORS},  # type: ignore[dict-item]
)
async def create_conversation(
    body: ConversationCreate, key: SubmitKey, settings: SettingsDep, engine: EngineDep
) -> Response:
    scope = tenant_scope(key)  # clips only from jobs this key may see

    def work(session: Session) -> tuple[str, ConversationOut | StreamingResponse]:
        with _problems():
            conv = service.create_conversation(
                session, settings=settings, title=body.title, clips=body.all_clips(),
                tenant_id=key.tenant_id, scope=scope,
            )
            session.commit()
            conversation_id = conv.id
        if body.question:
            result = _answer(
                session, settings, engine, conversation_id=conversation_id, body=body,
                question=body.question, with_clips=False, scope=scope,
            )
            if isinstance(result, StreamingResponse):
                return conversation_id, result
        with _problems():
            return conversation_id, service.conversation_out(
                service.get_conversation(session, conversation_id, scope=scope)
            )

    conversation_id, result = await in_thread(settings, work)
    location = f"{router.prefix}/{conversation_id}"
    if isinstance(result, StreamingResponse):
        result.headers["Location"] = location
        return result
    return answer(result, status_code=status.HTTP_201_CREATED, headers={"Location": location})


@router.get(
    "",
    response_model=list[ConversationSummary],
    summary="Conversations, most recently active first",
)
async def list_conversations(
    key: ReadKey, settings: SettingsDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> Response:
    def work(session: Session) -> list[dict[str, object]]:
        return [service.conversation_summary(c).model_dump(mode="json")
                for c in service.list_conversations(session, limit=limit, scope=tenant_scope(key))]

    return answer(await in_thread(settings, work))


@router.get(
    "/{conversation_id}",
    response_model=ConversationOut,
    summary="A conversation with its clips and every turn (answers, reasoning traces)",
    responses={404: _ERRORS[404]},
)
async def get_conversation(conversation_id: str, key: ReadKey, settings: SettingsDep) -> Response:
    def work(session: Session) -> ConversationOut:
        with _problems():
            return service.conversation_out(
                service.get_conversation(session, conversation_id, scope=tenant_scope(key))
            )

    return answer(await in_thread(settings, work))


@router.delete(
    "/{conversation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a conversation and its turns",
    responses={404: _ERRORS[404]},
)
async def delete_conversation(conversation_id: str, key: SubmitKey, settings: SettingsDep) -> Response:
    def work(session: Session) -> None:
        with _problems():
            service.delete_conversation(session, conversation_id, scope=tenant_scope(key))

    await in_thread(settings, work)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{conversation_id}/turns",
    status_code=status.HTTP_201_CREATED,
    response_model=AnswerOut,
    summary="Ask a question; later questions can refer back to earlier audio",
    description="Attach more clips with `clips`/`job_ids`. `think`, `speak` and `stream` as documented.",
    responses={200: _STREAM_DOC, **_ERRORS},  # type: ignore[dict-item]
)
async def add_turn(
    conversation_id: str, body: TurnCreate, key: SubmitKey, settings: SettingsDep, engine: EngineDep
) -> Response:
    result = await in_thread(settings, lambda session: _answer(
        session, settings, engine, conversation_id=conversation_id, body=body,
        question=body.question, with_clips=True, scope=tenant_scope(key),
    ))
    if isinstance(result, StreamingResponse):
        return result
    return answer(result, status_code=status.HTTP_201_CREATED)


@router.get(
    "/{conversation_id}/turns/{seq}/speech",
    response_class=Response,
    summary="The spoken answer of a turn (WAV)",
    responses={200: {"content": {"audio/wav": {}}, "description": "The spoken answer"}, 404: _ERRORS[404]},
)
async def turn_speech(conversation_id: str, seq: int, key: ReadKey, settings: SettingsDep) -> Response:
    def work(session: Session) -> bytes:
        with _problems():
            conv = service.get_conversation(session, conversation_id, scope=tenant_scope(key))
            turn = next((t for t in conv.turns if t.seq == seq), None)
            if turn is None or not turn.speech_uri:
                raise ApiProblem(404, f"turn {seq} of conversation {conversation_id} has no spoken answer",
                                 code="not_found")
            return storage.read_bytes(turn.speech_uri, settings=settings)

    return answer(await in_thread(settings, work), media_type="audio/wav")
