"""The dashboard at `/`, end to end: a real `cartlytics run`, the demo shop loaded through
`cartlytics demo --into`, and Debian's headless Chromium (through Selenium) using the page as a
shop owner would: entering the key, reading the panels, changing filters, going back, exporting.

Every expected figure is the API's JSON, fetched by the test itself with the same filters (the
API's figures are tested against independent oracles elsewhere), or computed here from it
(conversion, money in minor units). The page exposes each raw figure in a `data-value`
attribute next to the text a person reads; panels say which filters they show in
`data-filters`, so the test waits for the current ones instead of sleeping.

Artefacts: screenshots at desktop and phone width go to tests/artifacts/dashboard/ (ignored by
git), or to $CARTLYTICS_ARTIFACTS when set; the path is printed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.rest import call, midday_zone
from tests.servers import System, start_system

ROOT = Path(__file__).resolve().parent.parent
AXE = ROOT / "dashboard" / "node_modules" / "axe-core" / "axe.min.js"
KEY = "cak_dashboard_test_key"
DEMO_EVENTS = 6000  # a few thousand: every panel has figures, the load takes seconds
PANELS = ("cards", "sales", "products", "funnel", "customers", "realtime", "explorer", "export")
WAIT = 90.0  # generous: a loaded 2-core machine

T = TypeVar("T")


def artifacts_dir() -> Path:
    configured = os.environ.get("CARTLYTICS_ARTIFACTS")
    path = (
        Path(configured) / "dashboard" if configured else ROOT / "tests" / "artifacts" / "dashboard"
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Stack:
    system: System
    downloads: Path

    @property
    def url(self) -> str:
        return self.system.http_url

    def api(self, path: str, **params: str | int) -> Any:
        query = urllib.parse.urlencode(params)
        reply = call("GET", f"{self.url}{path}?{query}", KEY)
        assert reply.status == 200, (path, reply.status, reply.body[:500])
        return reply.json()

    def query(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        reply = call("POST", f"{self.url}/analytics/query", KEY, body=body)
        assert reply.status == 200, reply.body[:500]
        rows: list[dict[str, Any]] = reply.json().get("rows", [])
        return rows


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("dashboard")
    system = start_system(directory / "data", KEY)
    try:
        # The demo shop through the CLI, as a user would load it into a running server.
        loaded = subprocess.run(
            [sys.executable, "-m", "cartlytics", "demo", "--into", system.http_url,
             "--key", KEY, "--events", str(DEMO_EVENTS), "--seed", "7"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        assert "events stored in" in loaded.stderr, loaded.stderr[-3000:]
        downloads = directory / "downloads"
        downloads.mkdir()
        yield Stack(system, downloads)
    finally:
        system.stop()


@pytest.fixture(scope="module")
def driver(stack: Stack) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and chromedriver, "Debian's chromium and chromium-driver are needed (.ci/run)"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1366,900",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(stack.downloads),
            "download.prompt_for_download": False,
            "intl.accept_languages": "en-US",
        },
    )
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    chrome.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(stack.downloads)}
    )
    yield chrome
    chrome.quit()


# ---------------------------------------------------------------------- helpers


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:  # the DOM is being replaced under us: try again
            last_error = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last error: {last_error!r})")


def open_dashboard(driver: Any, stack: Stack, search: str, key: str = KEY) -> None:
    """Load the page fresh (no key in this tab), enter ``key``."""
    driver.get(f"{stack.url}/{search}")
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"{stack.url}/{search}")
    field = wait_for(lambda: _displayed(driver, "#key-input"), "the key form")
    field.send_keys(key)
    driver.find_element("css selector", "[data-testid=key-submit]").click()


def _displayed(driver: Any, selector: str) -> Any:
    found = driver.find_elements("css selector", selector)
    return found[0] if found and found[0].is_displayed() else None


def url_state(driver: Any) -> dict[str, str]:
    search: str = driver.execute_script("return location.search")
    return dict(urllib.parse.parse_qsl(search.lstrip("?")))


def wait_until_loaded(driver: Any) -> dict[str, str]:
    """Every panel ready, each for the filters the URL shows; returns those filters."""

    def loaded() -> dict[str, str] | None:
        search = driver.execute_script("return location.search")
        panels = driver.execute_script(
            "return [...document.querySelectorAll('[data-panel]')].map("
            "p => [p.dataset.panel, p.dataset.state, p.dataset.filters, "
            "p.querySelector('.panel-error').textContent])"
        )
        errors = [(name, text) for name, state, _, text in panels if state == "error"]
        assert not errors, f"panels failed: {errors}"
        done = {
            name for name, state, filters, _ in panels if state == "ready" and filters == search
        }
        return url_state(driver) if done == set(PANELS) else None

    return wait_for(loaded, "every panel to load for the URL's filters")


@contextlib.contextmanager
def viewport(driver: Any, width: int, height: int, mobile: bool = False) -> Iterator[None]:
    """The page laid out at exactly ``width`` x ``height`` CSS pixels (a phone when
    ``mobile``), whatever the window's own limits; the window's size again afterwards."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )
    try:
        yield
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def value(driver: Any, selector: str) -> str:
    element = driver.find_element("css selector", selector)
    return str(element.get_attribute("data-value"))


def number(text: str) -> float:
    return float(text)


def table_rows(driver: Any, testid: str) -> list[list[str]]:
    """Each row's cells' data-value (raw figures), in the table's order."""
    rows: list[list[str]] = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(tr => "
        "[...tr.querySelectorAll('td[data-value]')].map(td => td.dataset.value))",
        f"[data-testid={testid}-row]",
    )
    return rows


def percent_one_decimal(numerator: int, denominator: int) -> float:
    """numerator / denominator * 100, one decimal, half away from zero (semantics.md)."""
    if not denominator:
        return 0.0
    ratio = Decimal(numerator) * 100 / Decimal(denominator)
    return float(ratio.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def money_text(amount: int, currency: str) -> str:
    """How en-US writes ``amount`` minor units (digits of the currency's minor unit: JPY 0,
    USD/EUR/GBP 2), without the symbol: the figure's text must contain it."""
    digits = {"JPY": 0}.get(currency, 2)
    return f"{Decimal(amount) / (10**digits):,.{digits}f}"


def check_panels(driver: Any, stack: Stack, state: dict[str, str]) -> None:
    """Every panel's figures equal the API's for ``state`` (the URL's filters)."""
    period, currency, zone = state["period"], state["currency"], state["timezone"]
    granularity = state["granularity"]
    common = {"period": period, "currency": currency, "timezone": zone}

    # Top cards: sales (and its growth), visitors from the query, conversion computed here.
    sales = stack.api("/analytics/sales", granularity=granularity, **common)
    revenue, orders = int(sales.get("revenue", 0)), int(sales.get("orders", 0))
    aov = int(sales.get("averageOrderValue", 0))
    assert value(driver, "[data-testid=card-revenue] [data-role=value]") == str(revenue)
    assert value(driver, "[data-testid=card-orders] [data-role=value]") == str(orders)
    assert value(driver, "[data-testid=card-aov] [data-role=value]") == str(aov)
    revenue_text = driver.find_element("css selector", "[data-testid=card-revenue] .figure").text
    assert money_text(revenue, currency) in revenue_text, (revenue, currency, revenue_text)
    growth = sales.get("growth", {})
    for name in ("revenue", "orders"):
        shown = value(driver, f"[data-testid=card-{name}] [data-role=growth]")
        if name in growth:
            assert number(shown) == growth[name], (name, shown, growth)
        else:  # no previous figure: the API leaves the growth out, the page shows none
            assert shown == "", (name, shown, growth)
    if "revenue" in growth and "orders" in growth:
        shown = value(driver, "[data-testid=card-aov] [data-role=growth]")
        if growth["orders"] == -100:
            # No order in the period after some before: no AOV to compare, none shown.
            assert shown == "", (shown, growth)
        else:
            # AOV's growth follows from the two: (1 + r) / (1 + o) - 1, shown to one decimal.
            derived = ((1 + growth["revenue"] / 100) / (1 + growth["orders"] / 100) - 1) * 100
            assert abs(number(shown) - derived) <= 0.05 + 1e-9, (shown, derived)
    visitors_rows = stack.query(
        {"metrics": ["visitors"], "filters": {"period": period, "timezone": zone}}
    )
    visitors = int(visitors_rows[0].get("visitors", 0))
    assert value(driver, "[data-testid=card-visitors] [data-role=value]") == str(visitors)
    conversion = number(value(driver, "[data-testid=card-conversion] [data-role=value]"))
    assert conversion == percent_one_decimal(orders, visitors)

    # The sales chart's figures, oldest first.
    series = list(reversed(sales.get("series", [])))
    expected_series = [
        [b["date"], str(int(b.get("revenue", 0))), str(int(b.get("orders", 0)))] for b in series
    ]
    assert table_rows(driver, "sales-series") == expected_series

    products = stack.api("/analytics/products", limit=10, **common).get("topSellers", [])
    assert [
        [r[0], number(r[1]), number(r[2]), number(r[3])] for r in table_rows(driver, "products")
    ] == [
        [p["productId"], p.get("revenue", 0), p.get("unitsSold", 0), p.get("conversionRate", 0)]
        for p in products
    ]

    funnel = stack.api("/analytics/funnel", period=period, timezone=zone)
    counts = driver.execute_script(
        "return [...document.querySelectorAll('[data-testid=funnel-stage] [data-role=count]')]"
        ".map(e => Number(e.dataset.value))"
    )
    rates = driver.execute_script(
        "return [...document.querySelectorAll('[data-testid=funnel-stage] [data-role=rate]')]"
        ".map(e => Number(e.dataset.value))"
    )
    stages = funnel.get("stages", [])
    assert counts == [s.get("count", 0) for s in stages]
    assert rates == [s.get("rate", 0) for s in stages[1:]]
    assert number(value(driver, "[data-testid=funnel-conversion]")) == funnel.get(
        "conversionRate", 0
    )

    customers = stack.api("/analytics/customers", limit=5, **common)
    for testid, field in (
        ("customers-total", "totalCustomers"),
        ("customers-new", "newCustomers"),
        ("customers-returning", "returningCustomers"),
        ("customers-repeat", "repeatPurchaseRate"),
        ("customers-rpc", "revenuePerCustomer"),
    ):
        assert number(value(driver, f"[data-testid={testid}]")) == customers.get(field, 0), field
    assert [[r[0], number(r[1]), number(r[2])] for r in table_rows(driver, "top-customers")] == [
        [c["customerId"], c.get("orders", 0), c.get("revenue", 0)]
        for c in customers.get("topCustomers", [])
    ]

    # The explorer's default query: revenue and orders by date.
    rows = stack.query(
        {"metrics": ["revenue", "orders"], "dimensions": ["date"], "filters": common, "limit": 1000}
    )
    assert table_rows(driver, "explorer") == [
        [r["date"], str(int(r.get("revenue", 0))), str(int(r.get("orders", 0)))] for r in rows
    ]

    # Realtime moves by itself (visitors leave the 5-minute window): the tiles equal the API
    # once the two are read between the same changes.
    def realtime_agrees() -> bool:
        answer = stack.api("/analytics/realtime", timezone=zone, currency=currency)
        shown = [
            value(driver, f"[data-testid={t}]") for t in ("rt-active", "rt-orders", "rt-revenue")
        ]
        pages = table_rows(driver, "top-pages")
        again = stack.api("/analytics/realtime", timezone=zone, currency=currency)
        expected = [
            str(int(answer.get(f, 0))) for f in ("activeVisitors", "ordersToday", "revenueToday")
        ]
        expected_pages = [[p["page"], str(int(p["visitors"]))] for p in answer.get("topPages", [])]
        return answer == again and shown == expected and pages == expected_pages

    wait_for(realtime_agrees, "the realtime tiles to equal the API")


def select(driver: Any, name: str, option: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("css selector", f"[data-testid={name}]")).select_by_value(option)


# ---------------------------------------------------------------------- tests


@pytest.mark.timeout(600)
def test_a_bad_key_shows_a_clear_message(driver: Any, stack: Stack) -> None:
    open_dashboard(driver, stack, "?period=30d", key="cak_not_a_real_key")
    message = wait_for(lambda: _displayed(driver, "[data-testid=page-error]"), "the key error")
    assert "not accepted" in message.text and "401" in message.text, message.text
    assert _displayed(driver, "#key-input"), "the key form is offered again"
    assert not _displayed(driver, "#dashboard")
    stored = driver.execute_script("return Object.keys(sessionStorage)")
    assert stored == [], "a refused key is not kept"


@pytest.mark.timeout(600)
def test_every_panel_shows_the_api_figures(driver: Any, stack: Stack) -> None:
    open_dashboard(driver, stack, "?period=30d&granularity=day&currency=USD&timezone=UTC")
    state = wait_until_loaded(driver)
    assert state == {
        "period": "30d",
        "granularity": "day",
        "currency": "USD",
        "timezone": "UTC",
        "project": "default",
    }
    # The key is in this tab's session storage, never in the URL.
    assert KEY not in driver.current_url
    assert (
        driver.execute_script("return sessionStorage.getItem('cartlytics.readKey.default')") == KEY
    )
    # The demo shop has figures in every panel (else the comparisons below prove little).
    assert int(value(driver, "[data-testid=card-orders] [data-role=value]")) > 0
    assert table_rows(driver, "products") and table_rows(driver, "top-customers")
    check_panels(driver, stack, state)
    # No script error and nothing the page's Content-Security-Policy had to refuse.
    problems = [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry.get("source") == "javascript" or "Content Security Policy" in entry["message"]
    ]
    assert problems == []
    out = artifacts_dir()
    with viewport(driver, 1366, 2600):
        driver.save_screenshot(str(out / "desktop.png"))
    # Phone width (a 390 px wide touch screen): everything fits the width, no sideways
    # scrolling; then a screenshot of the whole page.
    with viewport(driver, 390, 844, mobile=True):
        assert driver.execute_script("return window.innerWidth") == 390
        wait_for(
            lambda: driver.execute_script(
                "return document.documentElement.scrollWidth <= window.innerWidth"
            ),
            "the page to fit a phone's width",
        )
        height = driver.execute_script("return document.documentElement.scrollHeight")
    with viewport(driver, 390, min(int(height), 8000), mobile=True):
        driver.save_screenshot(str(out / "phone.png"))
    print(f"\ndashboard screenshots: {out / 'desktop.png'} and {out / 'phone.png'}")


@pytest.mark.timeout(600)
def test_changing_period_and_currency_updates_every_panel_and_the_url(
    driver: Any, stack: Stack
) -> None:
    open_dashboard(driver, stack, "?period=30d&granularity=day&currency=USD&timezone=UTC")
    first = wait_until_loaded(driver)

    select(driver, "period", "90d")
    wait_for(lambda: url_state(driver)["period"] == "90d", "the URL to show 90d")
    state = wait_until_loaded(driver)
    assert state["period"] == "90d" and state["currency"] == "USD"
    check_panels(driver, stack, state)

    select(driver, "currency", "JPY")
    wait_for(lambda: url_state(driver)["currency"] == "JPY", "the URL to show JPY")
    state = wait_until_loaded(driver)
    assert state["period"] == "90d"
    check_panels(driver, stack, state)  # JPY amounts are shown with no decimals
    revenue = driver.find_element("css selector", "[data-testid=card-revenue] .figure").text
    assert "." not in revenue and "¥" in revenue, revenue

    # Time zone and granularity: the same, e.g. weeks starting on Tokyo's Mondays.
    select(driver, "timezone", "Asia/Tokyo")
    wait_for(lambda: url_state(driver)["timezone"] == "Asia/Tokyo", "the URL to show Tokyo")
    select(driver, "granularity", "week")
    wait_for(lambda: url_state(driver)["granularity"] == "week", "the URL to show weeks")
    state = wait_until_loaded(driver)
    assert (state["currency"], state["timezone"]) == ("JPY", "Asia/Tokyo")
    check_panels(driver, stack, state)

    # Back: the previous filters, in the URL and in every panel; back again, to 30d in USD.
    driver.back()
    wait_for(lambda: url_state(driver)["granularity"] == "day", "back to days")
    state = wait_until_loaded(driver)
    assert (state["currency"], state["timezone"]) == ("JPY", "Asia/Tokyo")
    check_panels(driver, stack, state)
    driver.back()
    driver.back()
    wait_for(lambda: url_state(driver)["currency"] == "USD", "back to USD")
    state = wait_until_loaded(driver)
    assert state["period"] == "90d"
    check_panels(driver, stack, state)
    driver.back()
    wait_for(lambda: url_state(driver)["period"] == "30d", "back to 30d")
    assert wait_until_loaded(driver) == first
    check_panels(driver, stack, first)


@pytest.mark.timeout(600)
def test_realtime_changes_after_an_event_is_tracked(driver: Any, stack: Stack) -> None:
    # A zone where it is midday: "today" cannot end while the test runs.
    zone = midday_zone()
    open_dashboard(driver, stack, f"?period=7d&currency=EUR&timezone={urllib.parse.quote(zone)}")
    assert wait_until_loaded(driver)["timezone"] == zone
    before_orders = int(value(driver, "[data-testid=rt-orders]"))
    before_revenue = int(value(driver, "[data-testid=rt-revenue]"))
    order = {
        "event": "order_completed",
        "userId": f"u_{uuid.uuid4().hex[:8]}",
        "properties": {"orderId": f"o_{uuid.uuid4().hex}", "total": 4321, "currency": "EUR"},
    }
    reply = call("POST", f"{stack.url}/analytics/event", KEY, body=order)
    assert reply.status == 201, reply.body
    # No reload: the tiles refresh on their own.
    wait_for(
        lambda: (
            int(value(driver, "[data-testid=rt-orders]")) == before_orders + 1
            and int(value(driver, "[data-testid=rt-revenue]")) == before_revenue + 4321
        ),
        "the realtime tiles to count the new order",
    )
    answer = stack.api("/analytics/realtime", timezone=zone, currency="EUR")
    assert int(answer["ordersToday"]) == int(value(driver, "[data-testid=rt-orders]"))


def _downloaded(directory: Path, suffix: str, before: set[Path]) -> Path | None:
    done = [
        p
        for p in directory.iterdir()
        if p not in before and p.suffix == suffix and p.stat().st_size
    ]
    partial = [p for p in directory.iterdir() if p.suffix == ".crdownload"]
    return done[0] if done and not partial else None


@pytest.mark.timeout(600)
def test_export_buttons_download_files_that_parse(driver: Any, stack: Stack) -> None:
    open_dashboard(driver, stack, "?period=30d&currency=USD&timezone=UTC")
    state = wait_until_loaded(driver)
    select(driver, "export-type", "orders")
    params = {"type": "orders", "period": state["period"], "currency": "USD", "timezone": "UTC"}
    query = urllib.parse.urlencode({**params, "format": "csv"})
    reference = call("GET", f"{stack.url}/analytics/export?{query}", KEY)
    assert reference.status == 200
    expected_rows = list(csv.DictReader(io.StringIO(reference.body.decode())))
    assert expected_rows, "the demo shop has orders in the last 30 days"

    files: dict[str, Path] = {}
    for fmt in ("csv", "json", "xlsx"):
        before = set(stack.downloads.iterdir())
        driver.find_element("css selector", f"[data-testid=export-{fmt}]").click()
        suffix = f".{fmt}"

        def arrived(before: set[Path] = before, suffix: str = suffix) -> Path | None:
            return _downloaded(stack.downloads, suffix, before)

        files[fmt] = wait_for(arrived, f"the {fmt} download")
        status = driver.find_element("css selector", "[data-testid=export-status]").text
        assert status.startswith("Downloaded"), status

    rows = list(csv.DictReader(io.StringIO(files["csv"].read_text())))
    assert sorted(map(str, rows)) == sorted(map(str, expected_rows))
    parsed = json.loads(files["json"].read_text())
    assert isinstance(parsed, list) and len(parsed) == len(expected_rows)
    import openpyxl

    sheet = openpyxl.load_workbook(files["xlsx"], read_only=True).active
    assert sheet is not None
    assert sum(1 for _ in sheet.iter_rows()) == len(expected_rows) + 1  # a header row


@pytest.mark.timeout(600)
def test_no_serious_accessibility_issue(driver: Any, stack: Stack) -> None:
    assert AXE.is_file(), "axe-core is a dev dependency of dashboard/: run `make tools`"
    results: dict[str, Any] = {}
    open_dashboard(driver, stack, "?period=30d&currency=USD&timezone=UTC")
    wait_until_loaded(driver)
    # The check can fail: an image without a text alternative, added for a moment, is found.
    driver.execute_script(AXE.read_text())
    control = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const img = document.createElement('img'); img.id = 'axe-control'; img.src = 'data:,';"
        "document.body.append(img);"
        "axe.run('#axe-control').then(r => { img.remove(); done(r.violations.map(v => v.id)); })"
        ".catch(e => { img.remove(); done(['axe-error: ' + e]); });"
    )
    assert "image-alt" in control, control
    for width, mobile in ((1366, False), (390, True)):
        with viewport(driver, width, 900, mobile=mobile):
            results[f"dashboard@{width}"] = driver.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "axe.run(document, {resultTypes: ['violations']})"
                ".then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, "
                "help: v.help, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}))))"
                ".catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e)}]));"
            )
    driver.find_element("id", "sign-out").click()  # the first screen: the key form
    wait_for(lambda: _displayed(driver, "#key-input"), "the key form")
    driver.execute_script(AXE.read_text())
    results["key form"] = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        ".then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help}))))"
        ".catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e)}]));"
    )
    (artifacts_dir() / "axe.json").write_text(json.dumps(results, indent=2))
    serious = {
        screen: [v for v in found if v["impact"] in ("serious", "critical")]
        for screen, found in results.items()
    }
    assert serious == {screen: [] for screen in results}, json.dumps(serious, indent=2)


@pytest.mark.timeout(120)
def test_the_page_is_served_with_its_own_origin_policy(stack: Stack) -> None:
    page = call("GET", f"{stack.url}/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert page.headers["Referrer-Policy"] == "no-referrer"
    script = call("GET", f"{stack.url}/dashboard/app.js")
    assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript")
    # The first paint needs nothing but the page's own assets: it names only /dashboard/ files
    # and no API URL is fetched before a key is entered (the key form is the first screen).
    text = page.body.decode()
    assert "/analytics/" not in text
    missing = call("GET", f"{stack.url}/dashboard/nope.js")
    assert missing.status == 404 and missing.json()["code"] == 5  # the API's error shape


@pytest.mark.timeout(600)
def test_each_panel_shows_its_own_error(driver: Any, stack: Stack) -> None:
    # A time zone the API refuses: every panel that sends it says so, in words, on its own.
    open_dashboard(driver, stack, "?period=7d&currency=USD&timezone=Mars/Olympus_Mons")

    def failed() -> list[Any] | None:
        panels = driver.execute_script(
            "return [...document.querySelectorAll('[data-panel]')].map("
            "p => [p.dataset.panel, p.dataset.state, p.querySelector('.panel-error').innerText])"
        )
        pending = [p for p in panels if p[0] != "export" and p[1] != "error"]
        return None if pending else panels

    for name, _state, text in wait_for(failed, "every panel to show its error"):
        if name != "export":
            assert "400" in text and "timezone" in text, (name, text)
    # The page stays usable: a valid zone, and every panel loads.
    select(driver, "timezone", "UTC")
    check_panels(driver, stack, wait_until_loaded(driver))

    # One panel failing leaves the others be: a query the API refuses (visitors split by
    # currency, docs/query.md) fails in the explorer only, which keeps its form.
    driver.find_element("id", "m-revenue").click()  # unticked
    driver.find_element("id", "m-orders").click()
    driver.find_element("id", "m-visitors").click()
    select_by_id(driver, "dim1", "currency")
    driver.find_element("css selector", "[data-testid=explorer-run]").click()
    error = wait_for(
        lambda: _displayed(driver, "[data-panel=explorer] .panel-error"), "the explorer's error"
    )
    assert "400" in error.text and "currency" in error.text, error.text
    assert _displayed(driver, "[data-testid=explorer-form]")
    states = driver.execute_script(
        "return [...document.querySelectorAll('[data-panel]')].map(p => p.dataset.state)"
    )
    assert states.count("error") == 1, states


def select_by_id(driver: Any, element_id: str, option: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", element_id)).select_by_value(option)


@pytest.mark.timeout(600)
def test_the_first_paint_needs_only_the_page_s_own_assets(driver: Any, stack: Stack) -> None:
    driver.get(f"{stack.url}/?period=7d")
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"{stack.url}/?period=7d")
    wait_for(lambda: _displayed(driver, "#key-input"), "the key form")
    fetched = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).pathname)"
    )
    assert sorted(fetched) == ["/dashboard/app.css", "/dashboard/app.js"], fetched


@pytest.mark.timeout(300)
def test_the_demo_command_runs_the_system_and_loads_the_shop(tmp_path: Path) -> None:
    """`cartlytics demo` (what `make demo` runs): the system starts, the shop is loaded into
    it, the dashboard's URL and key are printed; a second start does not load it again."""
    env = {
        **os.environ,
        "ANALYTICS_DATA_DIR": str(tmp_path / "data"),
        "ANALYTICS_BOOTSTRAP_KEY": KEY,
        "ANALYTICS_HTTP_PORT": "0",
        "ANALYTICS_GRPC_PORT": "0",
        "CLICKHOUSE_URL": "",
        "REDIS_URL": "",
    }
    for run in (1, 2):
        log = tmp_path / f"demo{run}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "cartlytics", "demo", "--events", "400"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:

            def ready_line(log: Path = log) -> str | None:
                text = log.read_text()
                return text if "demo shop is ready" in text else None

            text = wait_for(ready_line, "the demo's ready line", timeout=180)
            url = text.split("demo shop is ready: open ")[1].split("/ and enter the key")[0]
            assert f"enter the key {KEY}" in text
            assert ("already in" in text) == (run == 2), text[-2000:]
            orders = sum(
                int(call("GET", f"{url}/analytics/sales?period=12m&currency={c}", KEY)
                    .json().get("orders", 0))
                for c in ("USD", "EUR", "GBP", "JPY")
            )  # fmt: skip
            assert orders > 0, "the demo shop has orders"
            assert call("GET", f"{url}/").status == 200
        finally:
            process.terminate()
            process.wait(timeout=60)


@pytest.mark.timeout(600)
def test_the_explorer_runs_the_chosen_query(driver: Any, stack: Stack) -> None:
    open_dashboard(driver, stack, "?period=12m&currency=USD&timezone=UTC")
    wait_until_loaded(driver)
    driver.find_element("id", "m-orders").click()  # unticked: revenue alone
    driver.find_element("id", "m-aov").click()
    select_by_id(driver, "dim1", "currency")
    driver.find_element("css selector", "[data-testid=explorer-run]").click()
    wait_for(
        lambda: (
            len(table_rows(driver, "explorer")) > 1
            and driver.execute_script(
                "return document.querySelector('[data-panel=explorer]').dataset.state"
            )
            == "ready"
        ),
        "the explorer's rows by currency",
    )
    rows = stack.query(
        {"metrics": ["revenue", "aov"], "dimensions": ["currency"],
         "filters": {"period": "12m", "timezone": "UTC"}, "orderBy": "revenue:desc", "limit": 1000}
    )  # fmt: skip
    assert {r["currency"] for r in rows} == {"USD", "EUR", "GBP", "JPY"}  # the demo's four
    assert table_rows(driver, "explorer") == [
        [r["currency"], str(int(r["revenue"])), str(int(r["aov"]))] for r in rows
    ]
    # Each row's money in its own currency's minor units: yen have none.
    texts = driver.execute_script(
        "return [...document.querySelectorAll('[data-testid=explorer-row]')].map("
        "tr => [...tr.children].map(td => td.textContent))"
    )
    for (currency, revenue_text, _), row in zip(texts, rows, strict=True):
        assert money_text(int(row["revenue"]), currency) in revenue_text, (currency, revenue_text)
