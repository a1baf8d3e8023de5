"""The web pages over a real server: sign-in cookie, CSRF, ownership, escaping, live progress over SSE."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.jobs.conftest import FAST, Service, chat_rows, httpx, write_jsonl

XSS = '<script>alert("x")</script>'
XSS_NAME = "<img src=x onerror=alert(1)>"  # a file name keeps no '/'


@pytest.fixture(scope="module")
def web(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(tmp_path_factory.mktemp("ui-home"), tiny_model_dir)
    svc.key("alice")
    svc.key("bob")
    svc.start()
    yield svc
    svc.stop()


def _browser(svc: Service, who: str) -> httpx.Client:
    b = httpx.Client(base_url=svc.url, timeout=30)
    r = b.post("/signin", data={"key": svc.keys[who]})
    assert r.status_code == 303 and r.headers["location"] == "/runs"
    return b


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert m, html[:500]
    return m.group(1)


@pytest.fixture(scope="module")
def run(web: Service, tmp_path_factory: pytest.TempPathFactory) -> Any:
    d = tmp_path_factory.mktemp("ui-data")
    c = web.client("alice")
    path = write_jsonl(d / "train.jsonl", chat_rows(30))
    f = c.files.create(file=(f"{XSS_NAME}.jsonl", path.read_bytes()), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, seed=1, metadata={"sweep": XSS},
                                    extra_body={"tunelab": FAST})  # fmt: skip
    return web.wait(job.id, ("succeeded", "failed"), name="alice")


def test_sign_in_sets_an_httponly_strict_cookie_and_no_secret_reaches_the_page(web: Service) -> None:
    b = httpx.Client(base_url=web.url, timeout=30)
    assert b.get("/").headers["location"] == "/signin"
    assert b.get("/runs").status_code == 303
    bad = b.post("/signin", data={"key": "tl-nope-nope"})
    assert bad.status_code == 401 and "not valid" in bad.text
    r = b.post("/signin", data={"key": web.keys["alice"]})
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/" in cookie
    page = b.get("/runs")
    assert page.status_code == 200 and "Signed in as alice" in page.text
    assert web.keys["alice"] not in page.text and web.keys["alice"] not in str(page.url)
    assert "default-src 'self'" in page.headers["content-security-policy"]
    b.close()


def test_a_run_page_escapes_uploaded_text_and_shows_the_verdict(web: Service, run: Any) -> None:
    b = _browser(web, "alice")
    listing = b.get("/runs").text
    assert run.id in listing and XSS not in listing and XSS_NAME not in listing
    assert "&lt;script&gt;alert" in listing and "&lt;img src=x onerror=alert(1)&gt;.jsonl" in listing
    page = b.get(f"/runs/{run.id}")
    assert page.status_code == 200 and XSS_NAME not in page.text and "&lt;img src=x" in page.text
    assert "The tuned model is" in page.text and "step 4 of 4" in page.text
    curve = json.loads(re.search(r'<script id="curve-data" type="application/json">(.*?)</script>', page.text,
                                 re.S).group(1))  # type: ignore[union-attr]  # fmt: skip
    assert [s for s, _ in curve] == [1, 2, 3, 4]
    assert b.get("/ui/static/run.js").status_code == 200 and b.get("/ui/static/app.css").status_code == 200
    b.close()


def test_another_key_gets_404_and_forms_need_the_csrf_token(web: Service, run: Any, tmp_path: Path) -> None:
    bob = _browser(web, "bob")
    assert bob.get(f"/runs/{run.id}").status_code == 404
    assert bob.get(f"/runs/{run.id}/stream").status_code == 404
    assert run.id not in bob.get("/runs").text
    bob.close()
    alice = _browser(web, "alice")
    c = web.client("alice")
    f = c.files.create(file=("t.jsonl", write_jsonl(tmp_path / "t.jsonl", chat_rows(25)).read_bytes()),
                       purpose="fine-tune")  # fmt: skip
    long = c.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id,
                                     extra_body={"tunelab": {**FAST, "max_steps": 5000}})  # fmt: skip
    page = alice.get(f"/runs/{long.id}").text
    assert "Cancel this run" in page
    refused = alice.post(f"/runs/{long.id}/cancel", data={"csrf": "0" * 32})
    assert refused.status_code == 403 and c.fine_tuning.jobs.retrieve(long.id).status != "cancelled"
    ok = alice.post(f"/runs/{long.id}/cancel", data={"csrf": _csrf(page)})
    assert ok.status_code == 303 and c.fine_tuning.jobs.retrieve(long.id).status == "cancelled"
    assert alice.post("/signout", data={"csrf": "bad"}).status_code == 403
    out = alice.post("/signout", data={"csrf": _csrf(page)})
    assert out.status_code == 303 and alice.get("/runs").status_code == 303
    alice.close()


def test_the_stream_sends_every_event_then_the_end(web: Service, run: Any) -> None:
    b = _browser(web, "alice")
    with b.stream("GET", f"/runs/{run.id}/stream") as r:
        text = "".join(r.iter_text())
    datas = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert datas[-1] == {"status": "succeeded"} and "event: end" in text
    messages = [d["message"] for d in datas[:-1]]
    assert messages[0].startswith("Created fine-tuning job") and any(m.startswith("Step 4/4") for m in messages)
    b.close()
