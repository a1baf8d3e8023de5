"""What every page shares: templates (autoescaped), the signed-in visitor, CSRF-checked forms, and refusals
turned into pages in one place (`install`), as the CLI and the API each turn errors into output in one place."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import FormData

from tunelab.jobs.paths import jobs_dir
from tunelab.jobs.service import JobsService
from tunelab.serve.state import ServerState, state_of
from tunelab.serve.store import ApiKey
from tunelab.ui import session

env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape())
env.filters["utc"] = lambda ts: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts)))
env.filters["tojson_text"] = lambda v: json.dumps(v, ensure_ascii=False).replace("<", "\\u003c")
HEADERS = {
    "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; object-src 'none'; frame-ancestors 'none'; form-action 'self'",
}  # fmt: skip


class Refused(Exception):
    """A page that cannot be shown: 404 (not yours, or not there), 403 (a form without its token), 400."""

    def __init__(self, status: int, message: str, title: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.title = title or {404: "Not found", 403: "Refused", 400: "That did not work"}.get(status, "Error")


class SignIn(Exception):
    """Not signed in: the page sends the visitor to the sign-in page."""


@dataclass
class Visitor:
    key: ApiKey
    raw: str  # the key itself: never rendered, only used to check CSRF tokens and to call the API as this key
    csrf: str
    secret: bytes  # the per-install CSRF secret, read once per request
    svc: JobsService
    state: ServerState


def visitor(request: Request) -> Visitor | None:
    state = state_of(request)
    found = session.signed_in(request, state.store)
    if found is None:
        return None
    svc: JobsService = request.app.state.jobs
    sec = session.secret(jobs_dir(svc.cfg))
    return Visitor(found[0], found[1], session.csrf_token(found[1], sec), sec, svc, state)


def need(request: Request) -> Visitor:
    v = visitor(request)
    if v is None:
        raise SignIn()
    return v


def need_admin(request: Request) -> Visitor:
    v = need(request)
    if not v.key.admin:
        raise Refused(404, "There is no such page.")
    return v


def check_csrf(v: Visitor, sent: Any) -> None:
    if not session.csrf_ok(str(sent or ""), v.raw, v.secret):
        raise Refused(403, "This form is not from this page (its token is missing or stale): reload and try again.")


async def form(request: Request, v: Visitor) -> FormData:
    data = await request.form()
    check_csrf(v, data.get("csrf"))
    return data


def render(name: str, v: Visitor | None, status: int = 200, **ctx: Any) -> HTMLResponse:
    body = env.get_template(name).render(who=v.key if v else None, csrf=v.csrf if v else None, **ctx)
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def install(app: Any) -> None:
    """Refusals and sign-in redirects of the pages become pages (the API keeps OpenAI's error objects)."""

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        return render("error.html", visitor(request), exc.status, title=exc.title, message=exc.message)

    async def signin(request: Request, exc: Exception) -> Response:
        return redirect("/signin")

    app.add_exception_handler(Refused, refused)
    app.add_exception_handler(SignIn, signin)
