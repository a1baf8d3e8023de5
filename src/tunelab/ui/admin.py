"""Keys, for admins: every key with its limits, a new key (shown once, on the page that made it, never again),
and revoking one (it stops working at once: the API and the pages check keys on every request)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tunelab.errors import ConfigError
from tunelab.ui.web import Refused, Visitor, form, need_admin, redirect, render

router = APIRouter(include_in_schema=False)


def _page(v: Visitor, status: int = 200, made: dict[str, str] | None = None, error: str | None = None) -> Response:
    keys = [{**k.to_json(), "created_s": time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created)),
             "me": k.id == v.key.id} for k in v.state.store.list_keys()]  # fmt: skip
    return render("keys.html", v, status, title="Keys", keys=keys, made=made, error=error)


@router.get("/admin/keys")
async def keys_page(request: Request) -> Response:
    return _page(need_admin(request))


def _int(q: object, name: str) -> int | None:
    s = str(q or "").strip()
    if not s:
        return None
    if not s.isdigit() or int(s) < 1:
        raise ConfigError(f"{name} must be a whole number above 0 (or empty: no limit)", field=name)
    return int(s)


@router.post("/admin/keys")
async def create_key(request: Request) -> Response:
    v = need_admin(request)
    q = await form(request, v)
    try:
        rpm, mb = _int(q.get("rpm"), "requests per minute"), _int(q.get("max_file_mb"), "file limit (MB)")
        kid, key = v.state.store.create_key(str(q.get("name") or "").strip(), rpm=rpm, admin=q.get("admin") == "on",
                                            max_file_bytes=mb * 1_000_000 if mb else None)  # fmt: skip
    except ConfigError as e:
        return _page(v, 400, error=e.message)
    return _page(v, made={"id": kid, "key": key, "name": str(q.get("name"))})


@router.post("/admin/keys/{kid}/revoke")
async def revoke(request: Request, kid: str) -> Response:
    v = need_admin(request)
    await form(request, v)
    if kid == v.key.id:
        raise Refused(400, "You cannot revoke the key you are signed in with.")
    if not v.state.store.revoke(kid):
        raise Refused(404, "There is no such key, or it is revoked already.")
    return redirect("/admin/keys")
