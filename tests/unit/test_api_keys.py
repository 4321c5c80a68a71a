"""API keys on the embedded SQLite database: tokens, hashing, scopes, revocation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from earshot.auth import (
    SCOPES,
    authenticate,
    create_key,
    get_key,
    hash_token,
    list_keys,
    revoke_key,
    scope_allows,
)
from earshot.auth.service import normalize_scopes
from earshot.db import migrate
from earshot.db.session import dispose_all, session_factory
from earshot.errors import InputError


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    migrate.upgrade("heads", url=url)
    with session_factory(url)() as s:
        yield s
    dispose_all()


def test_token_is_shown_once_and_stored_hashed(session: Session) -> None:
    key, token = create_key(session, name="  dashboard ", scopes=["read"])
    session.commit()
    assert token.startswith("ek_") and len(token) == 46
    assert key.prefix == token[:11] and key.name == "dashboard"
    assert key.key_hash == hash_token(token) and token not in (key.key_hash, key.prefix)
    other_key, other = create_key(session, name="b", scopes=["read"])
    assert other != token and other_key.key_hash != key.key_hash


def test_a_revoked_key_no_longer_authenticates(session: Session) -> None:
    key, token = create_key(session, name="svc", scopes=["submit"])
    session.commit()
    found = authenticate(session, token)
    assert found is not None and found.id == key.id and found.last_used_at is not None
    for bad in (None, "", "ek_wrong", token + "x", token[3:], "x" * 500):
        assert authenticate(session, bad) is None
    assert revoke_key(session, key.prefix) is key
    first = key.revoked_at
    assert revoke_key(session, key.id) is key and key.revoked_at == first  # idempotent
    session.commit()
    assert authenticate(session, token) is None
    assert revoke_key(session, "nope") is None and get_key(session, "bad\x00ref") is None
    assert [k.id for k in list_keys(session, include_revoked=False)] == []
    assert [k.id for k in list_keys(session)] == [key.id]


def test_admin_scope_allows_everything_and_unknown_scopes_are_refused() -> None:
    assert SCOPES == ("read", "submit", "admin")
    assert normalize_scopes(["read, submit", "READ"]) == ["read", "submit"]
    for bad in (["root"], [], [" , "]):
        with pytest.raises(InputError):
            normalize_scopes(bad)
    assert scope_allows(["read"], "read") and not scope_allows(["read"], "submit")
    assert all(scope_allows(["admin"], s) for s in SCOPES)
    assert not scope_allows(["read", "submit"], "admin")


def test_key_needs_a_name(session: Session) -> None:
    with pytest.raises(InputError):
        create_key(session, name="   ", scopes=["read"])
