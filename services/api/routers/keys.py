"""API keys over the API (admin scope): list, create, revoke. The CLI does the same."""

from __future__ import annotations

from fastapi import APIRouter, Response

from earshot.auth import ApiKey, create_key, list_keys, revoke_key
from services.api.deps import AdminKey, SessionDep, reply
from services.api.problems import ApiProblem, responses
from services.api.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, ApiKeyPage

router = APIRouter(prefix="/v1/keys", tags=["keys"])


def key_out(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(id=key.id, name=key.name, prefix=key.prefix, scopes=list(key.scopes),
                     created_at=key.created_at, last_used_at=key.last_used_at, revoked_at=key.revoked_at)


@router.get("", response_model=ApiKeyPage, summary="Every key (never the secrets)", responses=responses(401, 403))
def get_keys(session: SessionDep, _key: AdminKey) -> Response:
    return reply(session, ApiKeyPage(keys=[key_out(k) for k in list_keys(session)]))


@router.post("", response_model=ApiKeyCreated, status_code=201, summary="Create a key; the token is shown once",
             responses=responses(400, 401, 403, 422))
def post_key(session: SessionDep, _key: AdminKey, body: ApiKeyCreate) -> Response:
    key, token = create_key(session, name=body.name, scopes=body.scopes)
    session.commit()
    created = ApiKeyCreated(**key_out(key).model_dump(), token=token)
    return reply(session, created, status_code=201, headers={"Cache-Control": "no-store"})


@router.post("/{key_id}/revoke", response_model=ApiKeyOut, summary="Revoke a key (by id or prefix); at once",
             responses=responses(401, 403, 404, 422))
def post_revoke(session: SessionDep, _key: AdminKey, key_id: str) -> Response:
    key = revoke_key(session, key_id)
    if key is None:
        raise ApiProblem(404, f"no key {key_id[:64]!r}", code="not_found")
    session.commit()
    return reply(session, key_out(key))
