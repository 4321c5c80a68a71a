"""API keys: hashed tokens with scopes (``read``, ``submit``, ``admin``)."""

from earshot.auth.models import ApiKey
from earshot.auth.service import (
    SCOPES,
    TOKEN_PREFIX,
    authenticate,
    create_key,
    get_key,
    hash_token,
    list_keys,
    revoke_key,
    scope_allows,
)

__all__ = [
    "SCOPES",
    "TOKEN_PREFIX",
    "ApiKey",
    "authenticate",
    "create_key",
    "get_key",
    "hash_token",
    "list_keys",
    "revoke_key",
    "scope_allows",
]
