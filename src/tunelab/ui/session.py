"""Sign-in for the web pages: the API key in an HttpOnly, SameSite=Strict cookie, and a CSRF token on every form.

The token is an HMAC of the key under a secret kept beside the jobs (created once, mode 0600): a page of one
key carries a token that is valid for that key only, and nothing secret is ever in a page or a URL.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from fastapi import Request

from tunelab.serve.store import ApiKey, Store

COOKIE = "tunelab_key"


def secret(directory: Path) -> bytes:
    p = directory / "ui-secret"
    try:
        return bytes.fromhex(p.read_text().strip())
    except (OSError, ValueError):
        directory.mkdir(parents=True, exist_ok=True)
        value = secrets.token_hex(32)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value)
        return bytes.fromhex(value)


def csrf_token(key: str, sec: bytes) -> str:
    return hmac.new(sec, key.encode(), hashlib.sha256).hexdigest()[:32]


def signed_in(request: Request, store: Store) -> tuple[ApiKey, str] | None:
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    key = store.verify(raw)
    return (key, raw) if key is not None else None


def csrf_ok(sent: str | None, raw_key: str, sec: bytes) -> bool:
    return bool(sent) and hmac.compare_digest(str(sent), csrf_token(raw_key, sec))
