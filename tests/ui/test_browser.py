"""The web app in a real browser (Debian's chromium driven by Playwright) on the real default model: sign in,
upload a CSV, read its audit, train, watch progress, open the comparison, rate 5 pairs with the keyboard, get a
streamed answer in the playground. axe-core (vendored in tests/ui/fixtures) checks every page for serious
accessibility violations; uploaded `<script>` payloads must never run; bad files get a message on the page.
Screenshots go to test-output/ui/ (or $TUNELAB_SCREENSHOTS)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.jobs.conftest import Service

pytestmark = pytest.mark.slow
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
AXE = Path(__file__).parent / "fixtures" / "axe.min.js"
XSS = "<script>window.__xss = 1</script>"
XSS_IMG = '<img src=x onerror="window.__xss = 1">'
LIMIT = 50_000_000
ISSUES = {
    "billing": ["I was charged twice for my order", "Why is there an extra fee on my invoice",
                "Please refund the payment you took by mistake", "My card was billed after I cancelled"],
    "shipping": ["My parcel has not arrived yet", "Where is my delivery, the tracking stopped",
                 "The courier left the box outside in the rain", "The package came damaged and late"],
    "account": ["I cannot log in to my account", "Reset my password please, the link expired",
                "Change the e-mail address on my profile", "My account was locked after three tries"],
}  # fmt: skip
PEOPLE = ["Ana", "Ben", "Chloe", "Dev", "Emil", "Farah", "Goran", "Hana", "Ivo", "Jun", "Kemal", "Lena"]
THINGS = ["the blue kettle", "a desk lamp", "two phone cases", "the garden chair", "a winter coat", "the router",
          "some printer ink", "a yoga mat", "the travel mug", "a pair of boots"]  # fmt: skip


def _csv(path: Path) -> Path:
    import csv
    import random

    rng = random.Random(0)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ticket", "team"])
        for i in range(60):
            team = list(ISSUES)[i % 3]
            w.writerow([f"Hi, {rng.choice(PEOPLE)} here about {rng.choice(THINGS)} (order {rng.randrange(10**6)}). "
                        f"{rng.choice(ISSUES[team])}.", team])  # fmt: skip
        w.writerow([f"{XSS} please help", "billing"])
        w.writerow([f"{XSS_IMG} write to jane.doe@example.com", "account"])
        for name in ("omar", "lucia", "tomas"):  # some land in the held-out part, which the audit does not scan
            w.writerow([f"Please update my e-mail to {name}.k@example.org for the account", "account"])
    return path


@pytest.fixture(scope="module")
def out_dir() -> Path:
    d = Path(os.environ.get("TUNELAB_SCREENSHOTS") or Path(__file__).parents[2] / "test-output" / "ui")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    from tunelab.models.loading import resolve_model

    model = resolve_model("default").path  # converted once into the user cache, shared with the other e2e tests
    svc = Service(tmp_path_factory.mktemp("browser-home"), model)
    svc.key("dana", "--max-file-bytes", str(LIMIT))
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


class Checker:
    """axe-core on each page visited (zero serious or critical violations), the XSS canary, screenshots."""

    def __init__(self, page: Any, out: Path) -> None:
        self.page, self.out, self.n = page, out, 0
        self.axe = AXE.read_text(encoding="utf-8")
        self.violations: list[str] = []

    def check(self, name: str) -> None:
        page = self.page
        page.wait_for_load_state("load")
        self.n += 1
        page.screenshot(path=str(self.out / f"{self.n:02d}-{name}.png"), full_page=True)
        assert page.evaluate("window.__xss") is None, f"an uploaded script ran on {page.url}"
        if not page.evaluate("typeof window.axe !== 'undefined'"):
            page.evaluate(self.axe)  # through the DevTools protocol: the page's CSP allows no inline script
        found = page.evaluate(
            "axe.run(document, {resultTypes: ['violations']}).then(r => r.violations.map(v => "
            "({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' '))})))"
        )
        for v in found:
            if v["impact"] in ("serious", "critical"):
                self.violations.append(f"{name}: {v['id']} ({v['impact']}) at {v['nodes'][:3]}")


def tab_to(page: Any, target: str, most: int = 80) -> None:
    """Press Tab until the focused element has the id `target` (or that text): every control on the way is
    reachable by keyboard, in the page's order."""
    for _ in range(most):
        page.keyboard.press("Tab")
        now = page.evaluate("[document.activeElement.id, (document.activeElement.textContent || '').trim()]")
        if target in now:
            return
    raise AssertionError(f"{target!r} is not reachable with Tab on {page.url}")


def test_the_whole_path_in_a_browser_by_keyboard(web: Service, browser: Any, out_dir: Path, tmp_path: Path) -> None:
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    c = Checker(page, out_dir)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    expect = sync_api.expect  # polls in Playwright's own world: the page's CSP allows no eval
    keys = page.keyboard

    # sign in
    page.goto(web.url + "/")
    c.check("signin")
    tab_to(page, "key")
    keys.type(web.keys["dana"])
    keys.press("Enter")
    page.wait_for_url("**/runs")
    c.check("runs-empty")
    assert web.keys["dana"] not in page.content()

    # upload: licence and source, then the file (its chooser opened with the space bar)
    tab_to(page, "Upload examples")
    keys.press("Enter")
    page.wait_for_url("**/upload")
    c.check("upload")
    tab_to(page, "licence")
    keys.press("ArrowDown")  # the first choice: "I own this data"
    assert page.locator("#licence").input_value() == "LicenseRef-Owned"
    tab_to(page, "source")
    keys.type("support inbox export <b>2026</b>")
    tab_to(page, "file")
    with page.expect_file_chooser() as chooser:
        keys.press("Space")
    chooser.value.set_files(str(_csv(tmp_path / "tickets.csv")))
    tab_to(page, "Upload")
    keys.press("Enter")
    page.wait_for_url("**/upload/*")
    c.check("mapping")

    # columns: the label column by arrow keys; the preview follows
    assert page.locator("#input").input_value() == "ticket"
    tab_to(page, "label")
    keys.press("ArrowDown")
    keys.press("ArrowDown")  # (none) -> ticket -> team
    assert page.locator("#label").input_value() == "team"
    assert page.locator("#output").input_value() == ""  # the page cleared the free-text answer
    tab_to(page, "system")
    keys.type("Route the ticket to a team.")
    preview = page.locator("#preview").inner_text()
    assert "Route the ticket to a team." in preview and "billing" in preview  # redrawn by the page's script
    tab_to(page, "use-columns")
    keys.press("Enter")
    page.wait_for_url("**/files/*")
    c.check("audit")
    body = page.locator("main").inner_text()
    assert "Ready to train" in body and re.search(r"Found: \d+ x email", body), body
    assert "LicenseRef-Owned is allowed" in body

    # redact and continue, then train with a few steps (the advanced settings opened by keyboard)
    tab_to(page, "redact")
    original = page.url
    keys.press("Enter")
    page.wait_for_url(lambda u: "/files/" in u and u != original)  # the redacted copy's own page
    assert "No personal data or secrets found." in page.locator("main").inner_text()
    c.check("audit-redacted")
    tab_to(page, "suffix")
    keys.type("tickets")
    tab_to(page, "advanced")
    keys.press("Enter")
    tab_to(page, "steps")
    keys.type("6")
    tab_to(page, "train")
    keys.press("Enter")
    page.wait_for_url("**/runs/ftjob-*")
    run_url = page.url
    c.check("run-started")

    # progress arrives over SSE; the page reloads itself when the job succeeds
    expect(page.locator("#progress")).to_contain_text("step 6 of 6", timeout=600_000)
    page.screenshot(path=str(out_dir / "run-progress.png"), full_page=True)
    page.wait_for_selector("#open-compare", timeout=900_000)
    c.check("run-done")
    assert page.locator("#curve polyline").count() == 1

    # comparison, and its filter by keyboard
    tab_to(page, "open-compare")
    keys.press("Enter")
    page.wait_for_url("**/compare")
    c.check("compare")
    assert page.locator("#verdict").inner_text().strip().startswith(("Better.", "Worse.", "No clear change."))
    assert "accuracy" in page.locator("main").inner_text()
    tab_to(page, "q")
    keys.type("no such words anywhere")
    expect(page.locator("#shown-count")).to_have_text("0 shown.")

    # blind A/B: 5 pairs with the keys 1/2/3
    tab_to(page, "to-rate")
    keys.press("Enter")
    page.wait_for_url("**/rate")
    c.check("rate")
    for i in range(5):
        expect(page.locator("#progress-text")).to_contain_text(f"{i} of")
        keys.press("123"[i % 3])
        expect(page.locator("#progress-text")).to_contain_text(f"{i + 1} of")
    tab_to(page, "rate-results")
    keys.press("Enter")
    page.wait_for_url("**/results")
    c.check("rate-results")
    assert "Tuned wins" in page.locator("main").inner_text()

    # playground: a streamed answer
    page.goto(run_url)
    tab_to(page, "open-try")
    keys.press("Enter")
    page.wait_for_url("**/try")
    c.check("try")
    model = page.locator("#model-name").inner_text()
    assert model.startswith("ft:") and model in page.locator("#snippet-python").inner_text()
    # tried as it was trained: the instruction the examples began with is sent first, and in the snippets
    assert page.locator("#system").input_value() == "Route the ticket to a team."
    assert '"Route the ticket to a team."' in page.locator("#snippet-curl").inner_text()
    tab_to(page, "message")
    keys.type("My parcel never came (ticket 999)")
    tab_to(page, "send")
    keys.press("Enter")
    page.wait_for_selector("#chat-log p[data-done='1']", timeout=120_000)
    answer = page.locator("#chat-log p").last.inner_text()
    assert answer.startswith("assistant") and len(answer) > len("assistant")
    c.check("try-answered")

    # the runs list shows the run with its verdict
    page.goto(web.url + "/runs")
    c.check("runs")
    assert "tickets" in page.locator("main").inner_text()
    assert not errors, errors
    assert not c.violations, "\n".join(c.violations)
    ctx.close()


def test_bad_files_get_a_message_on_the_page(web: Service, browser: Any, out_dir: Path, tmp_path: Path) -> None:
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(web.url + "/signin")
    page.get_by_label("API key").fill(web.keys["dana"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/runs")
    big = tmp_path / "big.csv"
    with open(big, "wb") as f:  # 200 MB of rows
        f.write(b"q,a\n")
        line = b'"' + b"x" * 98 + b'",y\n'
        f.write(line * (200_000_000 // len(line)))
    bad = {
        "photo.png": (b"\x89PNG\r\n\x1a\n" + bytes(64), "this is an image, not a table of examples"),
        "empty.csv": (b"", "empty"),
        "broken.csv": (b'q,a\n"fine",yes\n"never closed,no\nz,w\n', "line 3"),
    }
    for name, (data, _) in bad.items():
        (tmp_path / name).write_bytes(data)
    page.goto(web.url + "/upload")  # a file dropped on the form becomes the form's file
    dt = page.evaluate_handle("() => { const d = new DataTransfer(); d.items.add(new File([''], 'dropped.csv')); "
                              "return d; }")  # fmt: skip
    page.dispatch_event("#upload-form", "drop", {"dataTransfer": dt})
    assert page.locator("#size-error").inner_text() == "That file is empty."
    assert page.evaluate("document.getElementById('file').files[0].name") == "dropped.csv"
    cases = [*bad.items(), ("big.csv", (None, "larger than your limit of 50 MB"))]
    for name, (_, want) in cases:
        page.goto(web.url + "/upload")
        page.get_by_label("Licence of the data").select_option("CC0-1.0")
        page.get_by_label("Source").fill("a test")
        page.get_by_label("File (.csv or .jsonl").set_input_files(str(tmp_path / name))
        page.get_by_role("button", name="Upload").click()
        page.wait_for_selector("[role=alert]:not([hidden])")
        text = page.locator("[role=alert]:not([hidden])").first.inner_text()
        page.screenshot(path=str(out_dir / f"bad-{name}.png"))
        assert want in text, (name, text)
        assert page.get_by_label("Source").input_value() == "a test"  # what was typed is kept
    files = list((web.home / "jobs" / "files").glob("*")) if (web.home / "jobs" / "files").is_dir() else []
    assert not [p for p in files if p.name.startswith((".upload-", ".staged-"))], files
    ctx.close()
