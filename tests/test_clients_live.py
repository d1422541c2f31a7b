"""The SDKs' own suites, each in its language, against live stacks that this module starts.

``go test`` in clients/go, ``node --test`` in clients/js (after building the package) and pytest
over clients/python/client/tests run against two real ``cartlytics run`` systems
(tests/client_stacks.py: one with default settings, one whose ingest limit makes real 429s), each
language in a project of its own. Then a real browser: Debian's headless Chromium loads a page from
another origin whose script uses the built JavaScript bundle to track events and read sales.
docs/clients.md says what the suites check.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.client_stacks import ClientStacks, start_client_stacks
from tests.rest import call

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "clients" / "js"


@pytest.fixture(scope="module")
def client_stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientStacks]:
    stacks = start_client_stacks(tmp_path_factory.mktemp("client-stacks"))
    yield stacks
    stacks.stop()


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 840) -> str:
    result = subprocess.run(
        args,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-20000:]}"
    return result.stdout


def built_js() -> Path:
    """Build clients/js (tsc into dist/, esbuild's browser bundle) once per session."""
    bundle = JS / "dist" / "browser" / "commerce.js"
    npm = shutil.which("npm")
    assert npm, "npm is needed for clients/js (installed on these machines)"
    _run([npm, "run", "--silent", "build"], JS, {}, timeout=300)
    assert bundle.is_file(), f"the build made no {bundle}"
    return bundle


@pytest.mark.timeout(900)
def test_go_sdk_suite(client_stacks: ClientStacks) -> None:
    go = shutil.which("go")
    assert go, "go is needed for clients/go (installed on these machines)"
    out = _run(
        [go, "test", "-race", "-count=1", "./..."], ROOT / "clients" / "go", client_stacks.env("go")
    )
    # The SDK package ran its tests (a package without any would print "no test files").
    assert re.search(r"^ok\s+github.com/cartlytics/cartlytics/clients/go/sdk\s", out, re.M), out


@pytest.mark.timeout(900)
def test_js_sdk_suite(client_stacks: ClientStacks) -> None:
    built_js()
    node = shutil.which("node")
    assert node, "node is needed for clients/js"
    out = _run([node, "--test", "test/"], JS, client_stacks.env("js"))
    assert "# fail 0" in out and "# skipped 0" in out, out[-5000:]


@pytest.mark.timeout(900)
def test_python_sdk_suite(client_stacks: ClientStacks) -> None:
    args = [
        sys.executable,
        "-m",
        "pytest",
        "clients/python/client/tests",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rs",
    ]
    out = _run(args, ROOT, client_stacks.env("python"))
    assert " skipped" not in out, out[-5000:]


# The page a shop would write (tests/browser_page/index.html): the SDK bundle beside it, the
# API on another origin.
PAGE = Path(__file__).parent / "browser_page" / "index.html"


@dataclass
class PageServer:
    origin: str
    server: http.server.ThreadingHTTPServer

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _serve_page(directory: Path) -> PageServer:
    """Serve ``directory`` on ``localhost`` (the gateway is on 127.0.0.1: another origin)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return PageServer(origin=f"http://localhost:{server.server_address[1]}", server=server)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _chromium() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver, "Debian's chromium and chromium-driver are needed (.ci/run)"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


@pytest.fixture(scope="module")
def page(client_stacks: ClientStacks, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("page")
    shutil.copy(built_js(), directory / "commerce.js")
    shutil.copy(PAGE, directory / "index.html")
    server = _serve_page(directory)
    yield f"{server.origin}/index.html"
    server.stop()


def _text_when_done(driver: Any, element: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = driver.find_element("id", "status").text
        if status != "loading":
            assert status == "done", status
            return str(driver.find_element("id", element).text)
        time.sleep(0.2)
    raise AssertionError(f"the page did not finish: {driver.find_element('id', 'status').text}")


@pytest.mark.timeout(300)
def test_a_page_from_another_origin_tracks_and_reads_sales(
    client_stacks: ClientStacks, page: str
) -> None:
    env = client_stacks.env("browser")
    api, key = env["CARTLYTICS_TEST_HTTP"], env["CARTLYTICS_TEST_KEY"]
    total = 4599
    order = f"order_{uuid.uuid4().hex[:12]}"
    fragment = urllib.parse.urlencode(
        {
            "mode": "sales",
            "api": api,
            "key": key,
            "user": "u_browser",
            "order": order,
            "total": total,
        }
    )
    driver = _chromium()
    try:
        driver.get(f"{page}#{fragment}")
        # The project is this test's own: its revenue is the one order the page tracked.
        assert _text_when_done(driver, "revenue") == str(total)
        assert driver.find_element("id", "orders").text == "1"
    finally:
        driver.quit()
    sales = call("GET", f"{api}/analytics/sales?period=1d&currency=USD", key).json()
    assert (sales["revenue"], sales["orders"]) == (total, 1)


@pytest.mark.timeout(300)
def test_queued_events_are_sent_when_the_page_is_hidden(
    client_stacks: ClientStacks, page: str
) -> None:
    env = client_stacks.env("browser")
    api, key = env["CARTLYTICS_TEST_HTTP"], env["CARTLYTICS_TEST_KEY"]
    name, count = f"browser_hide_{uuid.uuid4().hex[:8]}", 5
    fragment = urllib.parse.urlencode(
        {"mode": "queue", "api": api, "key": key, "name": name, "count": count}
    )
    query = {
        "metrics": ["events"],
        "dimensions": ["event"],
        "filters": {"event": name, "period": "1d"},
    }
    rows: list[Any] = []
    driver = _chromium()
    try:
        driver.get(f"{page}#{fragment}")
        _text_when_done(driver, "status")
        driver.get("about:blank")  # the page is hidden, then unloaded: keepalive requests
        # Read while the browser lives on, as a shopper's does: quitting it at once could kill
        # its network process before a keepalive request leaves (seen on a loaded machine).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = call("POST", f"{api}/analytics/query", key, body=query).json()["rows"]
            if rows and rows[0]["events"] == count:
                break
            time.sleep(0.5)
    finally:
        driver.quit()
    assert rows == [{"event": name, "events": count}]


def _readme_block(language: str, contains: str) -> str:
    """The README's fenced ``language`` block that contains ``contains``."""
    readme = (ROOT / "README.md").read_text()
    blocks: list[str] = re.findall(rf"```{language}\n(.*?)```", readme, re.S)
    matching = [block for block in blocks if contains in block]
    assert len(matching) == 1, f"one README {language} block with {contains!r}: {len(matching)}"
    return matching[0]


@pytest.mark.timeout(300)
def test_readme_javascript_example_runs_as_written(
    client_stacks: ClientStacks, tmp_path: Path
) -> None:
    env = client_stacks.env("js")
    code = _readme_block("js", "new Commerce(")
    index = (JS / "dist" / "index.js").as_uri()
    built_js()
    # Only where the package lives, the key and the gateway change; the code is the README's.
    script = (
        code.replace("'@cartlytics/commerce'", f"'{index}'")
        .replace("'your_key'", f"'{env['CARTLYTICS_TEST_KEY']}'")
        .replace("'http://127.0.0.1:8080'", f"'{env['CARTLYTICS_TEST_HTTP']}'")
    )
    script += "console.log(JSON.stringify({sales, report}))\n"
    (tmp_path / "example.mjs").write_text(script)
    node = shutil.which("node")
    assert node
    out = _run([node, str(tmp_path / "example.mjs")], tmp_path, {})
    answer = json.loads(out.strip().splitlines()[-1])
    assert answer["sales"]["period"] == "30d" and "rows" in answer["report"], answer


@pytest.mark.timeout(300)
def test_readme_python_example_runs_as_written(client_stacks: ClientStacks, tmp_path: Path) -> None:
    env = client_stacks.env("python")
    code = _readme_block("python", "from cartlytics_client import Client")
    script = f"key = {env['CARTLYTICS_TEST_KEY']!r}\n" + code.replace(
        '"127.0.0.1:50051"', repr(env["CARTLYTICS_TEST_GRPC"])
    )
    script += "print(sales.period, len(report) >= 0)\n"
    (tmp_path / "example.py").write_text(script)
    out = _run([sys.executable, str(tmp_path / "example.py")], tmp_path, {})
    assert out.split() == ["30d", "True"], out


@pytest.mark.timeout(600)
def test_go_quickstart_is_the_readme_example_and_runs(client_stacks: ClientStacks) -> None:
    quickstart = ROOT / "clients" / "go" / "examples" / "quickstart" / "main.go"
    source = quickstart.read_text()
    for line in _readme_block("go", "sdk.NewClient(").splitlines():
        # The quickstart reads the endpoint from the environment; the rest is the README's.
        statement = line.split("//")[0].strip().replace('"127.0.0.1:50051"', "endpoint")
        if statement and not statement.startswith("if err != nil"):
            assert statement in source, f"README's Go line not in the quickstart: {line}"
    env = client_stacks.env("go")
    go = shutil.which("go")
    assert go
    out = _run(
        [go, "run", "./examples/quickstart"],
        ROOT / "clients" / "go",
        {
            "CARTLYTICS_API_KEY": env["CARTLYTICS_TEST_KEY"],
            "CARTLYTICS_ENDPOINT": env["CARTLYTICS_TEST_GRPC"],
        },
    )
    assert "sales over 30d:" in out, out
