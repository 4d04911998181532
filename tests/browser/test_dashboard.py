"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright (never a downloaded
browser). The page loads with no console error, shows the KPI figures the API answers, lets an admin
approve a held call (which then passes), hides admin controls from a viewer, keeps the key out of URLs and
localStorage, and fits 1280 and 390 px wide screens. Screenshots go to tests/browser/screenshots/."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser import scenario
from tests.fakes.upstream import FakeUpstream
from tests.harness import ADMIN, AGENT, ROOT, VIEWER, Proxy, make_settings
from tests.pg import service_unavailable

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(__file__).resolve().parent / "screenshots"
LOAD_TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        service_unavailable(f"no Chromium at {CHROMIUM} (Debian package `chromium`; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    expect.set_options(timeout=LOAD_TIMEOUT_MS)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def factory(browser: Any, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory,
            closed_port: int) -> Iterator[tuple[Proxy, dict[str, Any], str]]:
    """A running proxy over five months of history, live calls, events and one held call:
    (proxy, the held call's body, its approval id). Asks for the browser first: no Chromium, no set-up."""
    tmp = tmp_path_factory.mktemp("dashboard")
    now = scenario.now_utc()
    data = scenario.history(now)
    store_url = f"sqlite+aiosqlite:///{tmp / 'spendgate.db'}"
    scenario.write_history(store_url, data)
    settings = make_settings(upstream, tmp, closed_port, store_url=store_url, models=scenario.models(upstream),
                             budgets=scenario.budgets(data.month_spend_usd(now)),
                             approvals={"wait_seconds": 0, "grant_usd": 0.01})
    with Proxy(settings) as proxy:
        scenario.post_events(proxy, scenario.events(now, data.runs))
        scenario.live_calls(proxy)
        body, approval_id = scenario.held_call(proxy)
        yield proxy, body, approval_id


class Page:
    """One page in its own browser context, recording every console error, page error and failed request."""

    def __init__(self, browser: Any, width: int = 1280, scheme: str = "light") -> None:
        self.context = browser.new_context(viewport={"width": width, "height": 900}, color_scheme=scheme)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.urls: list[str] = []
        self.page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}")
                     if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url} {r.failure}"))
        self.page.on("request", lambda r: self.urls.append(r.url))
        self.page.on("response", lambda r: r.status >= 400 and self.problems.append(f"{r.status} {r.url}"))

    def open(self, base: str, key: str) -> Any:
        self.page.goto(f"{base}/dashboard#key={key}")
        try:
            self.page.wait_for_selector("body[data-loaded='1']", timeout=LOAD_TIMEOUT_MS)
        except Exception as exc:
            raise AssertionError(f"the dashboard did not load: {self.problems}") from exc
        return self.page

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    pages: list[Page] = []

    def make(**options: Any) -> Page:
        pages.append(Page(browser, **options))
        return pages[-1]

    yield make
    for p in pages:
        p.close()


def api(proxy: Proxy, path: str, key: str = ADMIN) -> Any:
    r = httpx.get(proxy.url + path, headers={"authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


# The page's formats (proxy/static/format.js), written again here: en-US, rounding half away from zero on
# the exact binary value, as Intl.NumberFormat and Number.toFixed do.
def money(usd: float) -> str:
    digits = 2 if usd == 0 or abs(usd) >= 1 else (4 if abs(usd) >= 0.01 else 6)
    return "$" + format(Decimal(usd).quantize(Decimal(1).scaleb(-digits), ROUND_HALF_UP), ",f")


def pct(value: float) -> str:
    return f"{Decimal(value).quantize(Decimal('0.1'), ROUND_HALF_UP)}%"


def test_page_loads_without_console_errors_and_keeps_the_key_out_of_urls(factory: Any, open_page: Any) -> None:
    proxy, _, _ = factory
    view = open_page()
    page = view.open(proxy.url, ADMIN)
    page.wait_for_timeout(300)  # charts drawn, late requests (favicon) answered
    assert view.problems == []
    assert "#" not in page.url and ADMIN not in page.url  # the fragment was cleared from the address bar
    assert page.evaluate("sessionStorage.getItem('spendgate.key')") == ADMIN
    assert page.evaluate("localStorage.length") == 0
    assert not [u for u in view.urls if ADMIN in u]  # never in a request URL
    for panel in ("kpis", "ticker", "budgets", "approvals", "daily", "agents", "trend", "top-runs", "stations",
                  "issues", "calls", "prices"):
        text = page.locator(f"#{panel}").inner_text().strip()
        assert text and "Could not load" not in text, (panel, text)
    assert page.locator("#daily svg .col").count() == 30
    assert page.locator("#calls tbody tr").count() == 50
    assert page.locator("#top-runs tbody tr").count() == 5


def test_kpi_cards_show_what_the_api_answers(factory: Any, open_page: Any) -> None:
    proxy, _, _ = factory
    page = open_page().open(proxy.url, ADMIN)
    summary = api(proxy, "/api/ai-cost/org-summary")
    assert summary["totalJobs"] > 0 and summary["budgetPct"] is not None
    shown = {card: page.locator(f"#{card} .kpi-value").inner_text()
             for card in ("kpi-spend", "kpi-tokens", "kpi-jobs", "kpi-budget")}
    assert shown == {"kpi-spend": money(summary["totalCost"]), "kpi-tokens": f"{summary['totalTokens']:,}",
                     "kpi-jobs": f"{summary['totalJobs']:,}", "kpi-budget": pct(summary["budgetPct"])}
    # One project: the cards switch to that project's monthly summary.
    page.select_option("#project", "api")
    project = api(proxy, "/api/ai-cost/monthly-summary?projectId=api")
    expect(page.locator("#agents-title .scope-project")).to_have_text("api")
    expect(page.locator("#kpi-jobs .kpi-value")).to_have_text(f"{project['totalJobs']:,}")
    assert page.locator("#kpi-spend .kpi-value").inner_text() == money(project["totalCost"])
    ticker = api(proxy, "/api/v1/admin/metrics/cost-optimization")
    assert money(ticker["total_cost_month"]) in page.locator("#ticker").inner_text()


def test_daily_bars_show_their_figures_on_hover_and_from_the_keyboard(factory: Any, open_page: Any) -> None:
    proxy, _, _ = factory
    page = open_page().open(proxy.url, ADMIN)
    page.locator("#range button[data-days='14']").click()
    expect(page.locator("#daily svg .col")).to_have_count(14)
    days = api(proxy, "/api/factory/daily-spend?days=14")["days"]
    tooltip = page.locator("#tooltip")
    page.locator("#daily svg .col").nth(13).hover()
    expected = [days[13]["date"], f"Cost {money(days[13]['cost'])}", f"Tokens {days[13]['tokens']:,}",
                f"Jobs {days[13]['jobs']:,}"]
    expect(tooltip).to_be_visible()
    assert tooltip.inner_text().splitlines()[:4] == expected
    page.mouse.move(0, 0)
    expect(tooltip).to_be_hidden()
    page.locator("#daily svg .col").nth(13).focus()  # the chart's one tab stop
    page.keyboard.press("ArrowLeft")
    expect(tooltip).to_contain_text(days[12]["date"])
    assert page.evaluate("document.activeElement.getAttribute('aria-label')").startswith(days[12]["date"])
    page.keyboard.press("Home")
    expect(tooltip).to_contain_text(days[0]["date"])


def test_an_empty_spendgate_says_what_to_do_in_every_panel(proxy: Proxy, open_page: Any) -> None:
    view = open_page()
    page = view.open(proxy.url, ADMIN)
    for panel in ("budgets", "approvals", "daily", "agents", "trend", "top-runs", "stations", "issues", "calls"):
        empty = page.locator(f"#{panel} .empty")
        expect(empty).to_be_visible()
        assert len(empty.inner_text().strip()) > 20, panel
    assert f"point an agent at {proxy.url}/v1 or run spendgate demo" in page.locator("#calls").inner_text()
    assert page.locator("#kpi-spend .kpi-value").inner_text() == "$0.00"
    assert page.locator("#kpi-budget .kpi-value").inner_text() == "No budget"
    assert page.locator("#prices tbody tr").count() == len(proxy.settings.models)
    assert view.problems == []


def test_layout_fits_1280_and_390_px_wide(factory: Any, open_page: Any) -> None:
    proxy, _, _ = factory
    SHOTS.mkdir(exist_ok=True)
    for width, scheme in ((1280, "light"), (390, "light"), (390, "dark"), (1280, "dark")):
        view = open_page(width=width, scheme=scheme)
        page = view.open(proxy.url, ADMIN)
        overflow = page.evaluate("document.scrollingElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{width}px {scheme}: the page is {overflow}px wider than the window"
        page.screenshot(path=str(SHOTS / f"dashboard-{width}-{scheme}.png"), full_page=True)
        assert view.problems == []


def test_run_view_and_issue_drill_down_open_from_the_page(factory: Any, open_page: Any) -> None:
    proxy, _, _ = factory
    page = open_page().open(proxy.url, ADMIN)
    top = api(proxy, "/api/ai-cost/org-summary")["topRuns"][0]
    page.locator("#top-runs button.link").first.click()
    dialog = page.locator("#detail")
    dialog.locator(".facts").wait_for()
    assert page.locator("#detail-title").inner_text() == f"Pipeline run {top['runId']}"
    calls = [c for c in api(proxy, f"/api/calls?run={top['runId']}&limit=1000")["calls"] if c["status"] != "refused"]
    assert dialog.locator("h3 + .table-wrap tbody tr").first.is_visible()
    assert dialog.locator("text=Per agent").is_visible()
    assert money(sum(c["cost_usd"] for c in calls)) in dialog.locator(".facts").inner_text()
    page.keyboard.press("Escape")
    assert not dialog.is_visible()
    issue = api(proxy, "/api/factory/cost-per-issue?timeRange=30d&limit=1")["issues"][0]["issue"]
    page.locator("#issues button.link").first.click()
    expect(page.locator("#detail-title")).to_have_text(f"Issue {issue}")
    detail = api(proxy, f"/api/factory/cost-per-issue/{issue}")  # the issue's whole history
    expect(dialog.locator(".facts")).to_contain_text(money(detail["totalCostUsd"]))
    assert dialog.locator("text=By station").is_visible()


def test_a_viewer_sees_no_admin_controls(factory: Any, open_page: Any) -> None:
    proxy, _, approval_id = factory
    page = open_page().open(proxy.url, VIEWER)
    assert page.locator(f".approval[data-id='{approval_id}']").is_visible()
    assert page.locator("button.approve, button.deny").count() == 0
    assert page.locator("text=Change limit").count() == 0


def test_an_admin_of_every_org_reads_one_org_at_a_time(factory: Any, open_page: Any) -> None:
    proxy, _, _ = factory
    view = open_page()
    page = view.open(proxy.url, ROOT)
    expect(page.locator("#org")).to_have_value("acme")  # offered from the orgs of the latest calls
    r = httpx.get(proxy.url + "/api/ai-cost/org-summary", headers={"authorization": f"Bearer {ROOT}",
                                                                    "x-org-id": "acme"})
    assert page.locator("#kpi-spend .kpi-value").inner_text() == money(r.json()["totalCost"])
    page.locator("#org").fill("")
    page.locator("#org").dispatch_event("change")
    expect(page.locator("#kpis .empty")).to_contain_text("name one in the Org field")
    assert view.problems == []


def test_approving_in_the_page_lets_the_held_call_through(factory: Any, open_page: Any) -> None:
    proxy, body, approval_id = factory
    page = open_page().open(proxy.url, ADMIN)
    page.locator(f".approval[data-id='{approval_id}'] button.approve").click()
    page.locator(f".approval[data-id='{approval_id}']").wait_for(state="detached", timeout=LOAD_TIMEOUT_MS)
    decided = api(proxy, "/api/approvals?status=approved")["approvals"]
    assert [a["decided_by"] for a in decided if a["id"] == approval_id] == ["admin"]
    retried = httpx.post(proxy.base + "/chat/completions", json=body, timeout=30, headers={
        "authorization": f"Bearer {ADMIN}", "x-spendgate-station": scenario.GATED_STATION,
        "x-spendgate-agent": "security", "x-spendgate-project": "web", "x-spendgate-approval": approval_id})
    assert retried.status_code == 200, retried.text


def test_an_admin_changes_a_budget_limit_in_the_page(factory: Any, open_page: Any) -> None:
    proxy, _, _ = factory
    page = open_page().open(proxy.url, ADMIN)
    budget = page.locator(".budget", has=page.locator("strong", has_text="agent-daily"))
    budget.locator("text=Change limit").click()
    budget.locator("input").fill("6.5")
    budget.locator("button[type=submit]").click()
    expect(budget.locator(".counter-figures").first).to_contain_text("of $6.50")
    limits = {b["limit_usd"] for b in api(proxy, "/api/budgets")["budgets"] if b["name"] == "agent-daily"}
    assert limits == {6.5}


def test_a_bad_key_gets_the_sign_in_form(factory: Any, open_page: Any) -> None:
    proxy, _, _ = factory
    view = open_page()
    page = view.page
    page.goto(f"{proxy.url}/dashboard")
    page.locator("#key-input").fill("sk-not-a-key")
    page.locator("#login-form button[type=submit]").click()
    expect(page.locator("#login-msg")).to_contain_text("not valid")
    assert page.evaluate("sessionStorage.getItem('spendgate.key')") is None
    page.locator("#key-input").fill(AGENT)  # an agent key reads only its own calls: not a dashboard key
    page.locator("#login-form button[type=submit]").click()
    expect(page.locator("#login-msg")).to_contain_text("agent role")
    page.locator("#key-input").fill(VIEWER)
    page.locator("#login-form button[type=submit]").click()
    page.wait_for_selector("body[data-loaded='1']", timeout=LOAD_TIMEOUT_MS)
    assert "viewer" in page.locator("#who").inner_text()
