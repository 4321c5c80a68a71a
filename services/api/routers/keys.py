"""API keys over the API (admin scope): list, create, revoke. The CLI does the same."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from earshot.auth import create_key, list_keys, revoke_key
from services.api import serializers
from services.api.db import run_sync
from services.api.deps import AdminKey, DatabaseDep, answer
from services.api.problems import ApiProblem, responses
from services.api.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, ApiKeyPage

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.get("", response_model=ApiKeyPage, summary="Every key (never the secrets)", responses=responses(401, 403))
async def get_keys(db: DatabaseDep, _key: AdminKey) -> Response:
    async with db.reader() as conn:
        keys = await run_sync(conn, lambda s: [serializers.key(k) for k in list_keys(s)])
    return answer({"keys": keys})


@router.post("", response_model=ApiKeyCreated, status_code=201, summary="Create a key; the token is shown once",
             responses=responses(400, 401, 403, 404, 413, 422))
async def post_key(db: DatabaseDep, key: AdminKey, body: ApiKeyCreate) -> Response:
    tenant_id = body.tenant_id or key.tenant_id
    async with db.transaction() as tx:
        created = await run_sync(tx, lambda s: _create(s, body, tenant_id))
    return answer(created, status_code=201, headers={"Cache-Control": "no-store"})


def _create(session: Session, body: ApiKeyCreate, tenant_id: str) -> dict[str, object]:
    key, token = create_key(session, name=body.name, scopes=body.scopes, tenant_id=tenant_id)
    return {**serializers.key(key), "token": token}


@router.post("/{key_id}/revoke", response_model=ApiKeyOut,
             summary="Revoke a key (by id or prefix); at once in this process, within the key cache window elsewhere",
             responses=responses(401, 403, 404, 422))
async def post_revoke(request: Request, db: DatabaseDep, _key: AdminKey, key_id: str) -> Response:
    async with db.transaction() as tx:
        revoked = await run_sync(tx, lambda s: _revoke(s, key_id))
    if revoked is None:
        raise ApiProblem(404, f"no key {key_id[:64]!r}", code="not_found")
    request.app.state.key_cache.forget(revoked["id"])
    return answer(revoked)


def _revoke(session: Session, ref: str) -> dict[str, object] | None:
    key = revoke_key(session, ref)
    return serializers.key(key) if key is not None else None
