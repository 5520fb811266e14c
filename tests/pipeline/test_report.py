"""``vidsift stats OUT --html``: the report file, and the report as real headless Chromium renders it."""

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.pipeline.run_fixture import (
    HOSTILE_REASON,
    HOSTILE_SOURCE,
    IMG_CAPTION,
    N_ACCEPTED,
    REJECTED_REASONS,
    SCRIPT_CAPTION,
    synthetic_run,
)
from vidsift.pipeline.report import PAGE_SIZE, script_json

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("report")
    synthetic_run(base / "run")
    html_path = base / "report.html"
    r = run_cli("stats", str(base / "run"), "--html", str(html_path), "--compare", str(base / "run"))
    assert r.returncode == 0, r.stderr
    return html_path


def test_script_json_cannot_close_the_script():
    text = script_json({"c": "</script><script>x()</script>&\u2028\u2029"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert "\u2028" not in text and "\u2029" not in text
    assert json.loads(text) == {"c": "</script><script>x()</script>&\u2028\u2029"}


def test_report_file_is_self_contained_and_escaped(report):
    text = report.read_text()
    assert "<script>window.__pwned" not in text and "<img src=x" not in text and "<b>reason" not in text
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in text
    # the only scripts are our own and two JSON blocks; nothing is fetched from anywhere
    assert len(re.findall(r"<script\b", text)) == 3
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)
    assert "Content-Security-Policy" in text
    # gallery bounded: at most --gallery accepted clips (default 120) and one per page script
    assert text.count('class="card"') == N_ACCEPTED + sum(REJECTED_REASONS.values())


def test_gallery_size_caps_the_cards(tmp_path):
    synthetic_run(tmp_path / "run", n_accepted=20)
    out = tmp_path / "r.html"
    r = run_cli("stats", str(tmp_path / "run"), "--html", str(out), "--gallery", "4", "--json")
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)  # --json output stays clean when a report is written too
    # 4 accepted + max(1, 4 // 4) per rejection reason
    assert out.read_text().count('class="card"') == 4 + len(REJECTED_REASONS)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium is required for the report test: apt-get install -y chromium ({CHROMIUM} missing)"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _visible_cards(page) -> int:
    return page.locator("#gallery .card:visible").count()


def _wait_sprites(page, n: int) -> None:
    """Poll from Python: the report's CSP forbids the eval that page.wait_for_function needs."""
    js = (
        "Array.from(document.querySelectorAll('#gallery .card:not([hidden]) img.sprite'))"
        f".slice(0, {n}).map(i => i.complete && i.naturalWidth > 0)"
    )
    for _ in range(50):
        loaded = page.evaluate(js)
        if len(loaded) == n and all(loaded):
            return
        page.wait_for_timeout(100)
    pytest.fail(f"gallery sprites did not load: {loaded}")


def test_report_renders_filters_and_runs_no_data(browser, report):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(report.as_uri())

    # charts: every embedded PNG decoded to a real image
    charts = page.locator("img.chart")
    assert charts.count() >= 5
    sizes = page.evaluate(
        "Array.from(document.querySelectorAll('img.chart')).map(i => [i.complete, i.naturalWidth])"
    )
    assert all(ok and w > 100 for ok, w in sizes), sizes

    # gallery: one page of cards, their animated sprites loaded once scrolled into view
    total = N_ACCEPTED + sum(REJECTED_REASONS.values())
    assert _visible_cards(page) == PAGE_SIZE
    assert page.locator("#count").inner_text() == f"{total} clips match"
    page.locator("#gallery .card:visible").first.scroll_into_view_if_needed()
    _wait_sprites(page, 4)
    anim = page.evaluate(
        "getComputedStyle(document.querySelector('.card:not([hidden]) img.sprite')).animationName"
    )
    assert anim == "play"

    # filtering by status and by reason (the hostile reason round-trips through an <option> value)
    page.select_option("#filter", "rejected")
    assert _visible_cards(page) == sum(REJECTED_REASONS.values())
    page.select_option("#filter", f"reason:{HOSTILE_REASON}")
    assert _visible_cards(page) == REJECTED_REASONS[("filter_aesthetic", HOSTILE_REASON)]
    assert page.locator("#gallery .card:visible .reason").first.inner_text().endswith(HOSTILE_REASON)
    page.select_option("#filter", "accepted")
    assert _visible_cards(page) == PAGE_SIZE
    page.click("#next")
    page.click("#next")
    assert _visible_cards(page) == N_ACCEPTED - 2 * PAGE_SIZE

    # sorting by a score only some clips have: the highest first
    page.select_option("#sort", "aesthetic_score:desc")
    first = page.locator("#gallery .card:visible").first.inner_text()
    assert f"aesthetic_score {(N_ACCEPTED - 1) / 10:.4g}" in first

    # hostile captions and file names: shown as text, nothing ran, no element was injected
    page.fill("#search", "pwned")
    assert _visible_cards(page) == 2
    captions = page.locator("#gallery .card:visible .caption").all_inner_texts()
    assert SCRIPT_CAPTION in captions and IMG_CAPTION in captions
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert (
        page.locator("#gallery img[src='x']").count() == 0
        and page.locator("main b", has_text="reason").count() == 0
    )
    page.fill("#search", "")
    page.select_option("#filter", "all")
    page.select_option("#sort", "id")
    sources = page.locator(".src").evaluate_all("els => els.map(e => e.title)")
    assert HOSTILE_SOURCE in sources
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert errors == []
    page.close()


def test_escaping_alone_stops_hostile_data(browser, report):
    """With the CSP switched off, the escaping must still keep every hostile string inert."""
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    page.goto(report.as_uri())
    page.fill("#search", "pwned")
    page.wait_for_timeout(200)
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert (
        page.locator("img[src='x']").count() == 0 and page.locator("main b", has_text="reason").count() == 0
    )
    assert SCRIPT_CAPTION in page.locator("#gallery .card:visible .caption").all_inner_texts()
    context.close()


@pytest.mark.slow
def test_report_of_a_real_run(browser, bad_run, tmp_path_factory):
    _, out, _ = bad_run  # bad/ and hostile names, curated by the CLI once per session (conftest.py)
    html_path = tmp_path_factory.mktemp("real_report") / "report.html"
    r = run_cli("stats", str(out), "--html", str(html_path))
    assert r.returncode == 0, r.stderr
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(html_path.as_uri())
    n = _visible_cards(page)
    assert n >= 3  # accepted clips (realshort's copy, the dash file, ...) and rejected too-short scenes
    page.locator("#gallery .card:visible").first.scroll_into_view_if_needed()
    _wait_sprites(page, n)
    assert page.locator("#gallery .card:visible img.sprite").count() == n  # every real clip has frames
    page.select_option("#filter", "reason:scene_too_short")
    assert _visible_cards(page) >= 1
    page.close()
    shutil.rmtree(html_path.parent)
