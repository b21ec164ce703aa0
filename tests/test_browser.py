"""The web UI in a real headless Chromium (Debian's `chromium`, driven by Playwright).

One rechat (`serve` in front of the fake upstream) holds the example sessions, a session with
hostile content and one with code; the tests load the UI, search and filter, watch exchanges
arrive live, open a conversation and a request, and check that injected script never runs.
With RECHAT_SCREENSHOTS=DIR set, the main views are saved there (docs/screenshots/ is made
that way: `RECHAT_SCREENSHOTS=docs/screenshots make test PYTEST_ARGS=tests/test_browser.py`).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from conftest import FakeUpstream, Rechat

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EXAMPLES = Path(__file__).resolve().parent.parent / "sessions"
WAIT_MS = 8000  # every wait in the page is bounded by this

HOSTILE = """---
model: evil-model
---

### user

<blockquote>

Look: <script>window.__pwned = 1</script> <img src=x onerror="window.__pwned = 2">
<svg onload="window.__pwned = 3"></svg> [click](javascript:window.__pwned=4)

</blockquote>

### assistant

<blockquote>

<script>window.__pwned = 5</script>Nothing to see.

</blockquote>
"""

CODE = """---
model: gpt-4o-mini
---

### user

<blockquote>

Show me a Python function that adds two numbers.

</blockquote>

### assistant

<blockquote>

Here it is:

```python
def add(a: int, b: int) -> int:
    return a + b
```

> Call it as `add(2, 3)`.

</blockquote>
"""

playwright = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        msg = f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    sessions = tmp / "sessions"
    shutil.copytree(EXAMPLES, sessions)
    (sessions / "hostile.md").write_text(HOSTILE)
    (sessions / "python-add.md").write_text(CODE)
    up = FakeUpstream().start()
    r = Rechat("serve", up.url, "--sessions", str(sessions), "--log-db", str(tmp / "log.sqlite"),
               cwd=tmp)
    try:
        c = r.client()
        france = [{"role": "user", "content": "What is the capital of France?"}]
        c.chat.completions.create(model="gpt-4o-mini", messages=france)               # replay
        list(c.chat.completions.create(model="gpt-4o-mini", stream=True, messages=[    # replay
            {"role": "user", "content": "Write a haiku about a caching proxy."}]))
        c.chat.completions.create(model="gpt-4o-mini", temperature=0.3, messages=[     # replay
            {"role": "system", "content": "You are a concise assistant for a cooking blog."},
            {"role": "user", "content": "How long should I boil an egg for a runny yolk?"}])
        c.chat.completions.create(model="gpt-4o-mini", messages=[                      # record
            {"role": "user", "content": "Do I need an umbrella in Rome today?"}], tools=[
            {"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city",
                                              "parameters": {"type": "object", "properties": {
                                                  "city": {"type": "string"}}, "required": ["city"]}}}])
        c.embeddings.create(model="text-embedding-3-small", input="rechat")           # record
        try:
            c.chat.completions.create(model="fail", messages=[                       # forward 500
                {"role": "user", "content": "Please fail."}])
        except Exception:
            pass
        c.chat.completions.create(model="gpt-4o-mini", messages=[                      # record
            {"role": "user", "content": "What is the capital of Spain?"}])
        c.chat.completions.create(model="gpt-4o-mini", messages=france)               # replay
        yield {"rechat": r, "upstream": up, "sessions": sessions}
    finally:
        r.stop()
        up.stop()


@pytest.fixture
def page(browser, site):
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
    outside: list[str] = []
    pg.on("request", lambda req: outside.append(req.url)
          if not req.url.startswith(site["rechat"].base) and not req.url.startswith("data:") else None)
    yield pg
    ctx.close()
    assert errors == [], errors
    assert outside == [], f"the UI fetched something from elsewhere: {outside}"


def shot(pg, name: str) -> None:
    folder = os.environ.get("RECHAT_SCREENSHOTS")
    if folder:
        os.makedirs(folder, exist_ok=True)
        for scheme in ("light", "dark"):
            pg.emulate_media(color_scheme=scheme)
            time.sleep(0.2)
            pg.screenshot(path=os.path.join(folder, f"{name}-{scheme}.png"))
        pg.emulate_media(color_scheme="light")


def test_live_feed_shows_requests_in_flight_and_new_exchanges(page, site):
    r = site["rechat"]
    page.goto(r.base + "/")
    page.wait_for_selector(".conn.on")
    page.wait_for_selector("table.log tbody tr.row")
    before = page.locator("table.log tbody tr.row").count()
    assert before == 8
    assert page.locator("#summary").inner_text().startswith("8 requests")
    assert page.locator("table.log tbody tr.row .badge").all_inner_texts() == [
        "replay", "record", "forward", "record", "record", "replay", "replay", "replay"]

    done = threading.Event()

    def slow() -> None:
        list(r.client().chat.completions.create(model="slow", stream=True, messages=[
            {"role": "user", "content": "Tell me something slowly"}]))
        done.set()

    threading.Thread(target=slow, daemon=True).start()
    row = page.wait_for_selector(".inflight-table tr")
    assert "slow" in row.inner_text() and "/v1/chat/completions" in row.inner_text()
    first = row.query_selector(".elapsed").inner_text()
    page.wait_for_function("(t) => { const e = document.querySelector('.inflight-table .elapsed');"
                           " return e && e.textContent !== t; }", arg=first)
    shot(page, "live")
    assert done.wait(10)
    page.wait_for_selector(".inflight .none")
    newest = page.locator("table.log tbody tr.row").first
    newest.locator("text=Tell me something slowly").wait_for()
    assert newest.locator(".badge").inner_text() == "record"
    assert "new" in newest.get_attribute("class")
    assert page.locator("table.log tbody tr.row").count() == before + 1
    # the same request again is answered from the session it was just recorded into
    r.client().chat.completions.create(model="gpt-4o-mini", messages=[
        {"role": "user", "content": "What is the capital of France?"}])
    page.wait_for_function(f"() => document.querySelectorAll('table.log tbody tr.row').length === {before + 2}")
    assert page.locator("table.log tbody tr.row").first.locator(".badge").inner_text() == "replay"
    page.wait_for_function(f"() => document.querySelector('#summary').textContent.startsWith('{before + 2} requests')")


def test_log_filters(page, site):
    page.goto(site["rechat"].base + "/#/?kind=record")
    page.wait_for_selector("table.log tbody tr.row")
    kinds = page.locator("table.log tbody tr.row .badge").all_inner_texts()
    assert kinds and set(kinds) == {"record"}
    page.select_option("select[aria-label=kind]", "")
    page.fill("input[type=search]", "haiku")
    page.wait_for_function("() => [...document.querySelectorAll('table.log tbody tr.row')]"
                           ".every(r => r.textContent.includes('haiku'))")
    assert "q=haiku" in page.url


def test_sessions_search_and_filter(page, site):
    page.goto(site["rechat"].base + "/")
    page.wait_for_selector("table.log")
    page.keyboard.press("2")
    page.wait_for_selector("table.sessions tbody tr.row")
    names = page.locator("table.sessions tbody tr.row td:first-child a").all_inner_texts()
    assert {"france.md", "streamed-haiku.md", "tool-call-weather.md", "multi-turn-eggs.md",
            "hostile.md", "python-add.md"} <= set(names)
    shot(page, "sessions")
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.type") == "search"
    page.keyboard.type("umbrella paris")
    page.wait_for_function("() => document.querySelectorAll('table.sessions tbody tr.row').length === 1")
    assert page.locator("table.sessions tbody tr.row a").inner_text() == "tool-call-weather.md"
    page.fill("input[type=search]", "")
    page.select_option("select[aria-label=kind]", "stream")
    page.wait_for_function("() => { const rows = [...document.querySelectorAll('table.sessions tbody tr.row')];"
                           " return rows.length && rows.every(r => r.textContent.includes('stream')); }")
    assert "streamed-haiku.md" in page.locator("table.sessions tbody tr.row td:first-child a").all_inner_texts()
    assert "python-add.md" not in page.locator("table.sessions tbody").inner_text()
    page.select_option("select[aria-label=kind]", "")
    page.select_option("select[aria-label=model]", "evil-model")
    page.wait_for_function("() => document.querySelectorAll('table.sessions tbody tr.row').length === 1")
    assert page.locator("table.sessions tbody tr.row a").inner_text() == "hostile.md"
    page.select_option("select[aria-label=model]", "")
    page.fill("input[aria-label='from date']", "2000-01-01")
    page.fill("input[aria-label='to date']", "2000-01-02")
    page.locator("input[aria-label='to date']").dispatch_event("change")
    page.wait_for_selector("table.sessions td.empty")


def test_open_a_conversation(page, site):
    page.goto(site["rechat"].base + "/#/sessions")
    page.wait_for_selector("table.sessions tbody tr.row")
    page.keyboard.press("/")
    page.keyboard.type("python function")
    page.wait_for_function("() => document.querySelectorAll('table.sessions tbody tr.row').length === 1")
    page.keyboard.press("Escape")
    page.keyboard.press("j")
    page.keyboard.press("Enter")
    page.wait_for_selector("article.session")
    assert page.locator("h1").inner_text() == "python-add.md"
    roles = page.locator("section.msg h3.role").all_inner_texts()
    assert [x.split()[0] for x in roles] == ["user", "assistant"]
    assert page.locator("section.role-assistant blockquote.content").count() == 1
    code = page.locator("section.role-assistant .hl pre")
    assert "def add(a: int, b: int)" in code.inner_text()
    assert page.locator("section.role-assistant .hl span.k").first.inner_text() == "def"  # highlighted
    assert page.locator("section.role-assistant blockquote.content blockquote").inner_text() == "Call it as add(2, 3)."
    page.keyboard.press("s")
    assert "### assistant" in page.locator(".panel:not([hidden])").inner_text()
    page.keyboard.press("r")
    # a tool call, rendered
    page.goto(site["rechat"].base + "/#/s/tool-call-weather.md?answer=0")
    page.wait_for_selector(".tool-call")
    assert "get_weather" in page.locator(".tool-call h4").inner_text()
    assert '"city"' in page.locator(".tool-call .hl").inner_text()
    assert page.locator("section.msg.focus").get_attribute("data-answer") == "0"
    shot(page, "session")


def test_request_detail_with_the_diff_to_the_nearest_recording(page, site):
    page.goto(site["rechat"].base + "/#/?q=Rome")
    row = page.wait_for_selector("table.log tbody tr.row")
    row.click()
    page.wait_for_selector(".diff")
    head = page.locator("h2", has_text="Nearest recording").inner_text()
    assert "tool-call-weather.md" in head
    diff = page.locator(".diff").inner_text()
    assert "-Do I need an umbrella in Paris today?" in diff and "+Do I need an umbrella in Rome today?" in diff
    assert "get_weather" in page.locator(".conversation .tool-call").inner_text()
    assert page.locator("dl.facts").inner_text().count("gpt-4o-mini") >= 1
    shot(page, "request")


def test_injected_script_never_runs(page, site):
    r = site["rechat"]
    page.goto(r.base + "/#/s/hostile.md")
    page.wait_for_selector("article.session")
    text = page.locator("section.role-user blockquote.content").inner_text()
    assert "<script>window.__pwned = 1</script>" in text
    assert '<img src=x onerror="window.__pwned = 2">' in text
    assert page.locator("article.session script, article.session img, article.session svg").count() == 0
    assert page.locator("article.session a[href^='javascript']").count() == 0
    # the same content arriving live, as a request, through the feed and the detail page
    page.goto(r.base + "/")
    page.wait_for_selector(".conn.on")
    r.client().chat.completions.create(model="gpt-4o-mini", messages=[
        {"role": "user", "content": '<img src=x onerror="window.__pwned = 6"><script>window.__pwned = 7</script>'}])
    page.locator("table.log tbody tr.row").first.locator("text=<script>window.__pwned = 7</script>").wait_for()
    page.locator("table.log tbody tr.row").first.click()
    page.wait_for_selector(".conversation")
    assert "window.__pwned = 7" in page.locator(".conversation").inner_text()
    time.sleep(0.3)  # give an onerror handler every chance to fire
    assert page.evaluate("window.__pwned") is None


def test_stats(page, site):
    page.goto(site["rechat"].base + "/#/stats")
    page.wait_for_selector(".card.hit-rate")
    assert page.locator(".card.hit-rate .value").inner_text().endswith("%")
    assert page.locator("svg.chart rect").count() >= 2
    assert "gpt-4o-mini" in page.locator("table.grid").first.inner_text()
    page.keyboard.press("1")
    page.wait_for_selector("table.log")
    page.keyboard.press("3")
    page.wait_for_selector("svg.chart")
    shot(page, "stats")
