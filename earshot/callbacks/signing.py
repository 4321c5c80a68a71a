"""HMAC-SHA256 over the raw body: what Earshot sends and what its webhook accepts."""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["SIGNATURE_HEADER", "sign", "verify"]

SIGNATURE_HEADER = "X-Earshot-Signature"


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, signature: str | None, secret: str) -> bool:
    """What a receiver does: compare in constant time over the raw body bytes."""
    return bool(signature) and hmac.compare_digest(str(signature).encode(), sign(body, secret).encode())
