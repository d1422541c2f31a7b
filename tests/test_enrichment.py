"""Enrichment of events: what analysts read next to an event, and what is never kept (the raw IP).

Expected values are written by hand from the rules (and, for browser/OS families, from the names
ua-parser's regexes give those well-known user agents).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import sys
from typing import Any

import pytest
import ua_parser
from hypothesis import given, settings
from hypothesis import strategies as st
from ua_parser.basic import Resolver as PurePythonResolver
from ua_parser.regex import Resolver as RustResolver

from services.ingest import enrichment
from services.ingest.enrichment import Enrichment, describe_user_agent, enrich

SALT = b"test-salt-0123456789"
IP = "203.0.113.7"

CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
SAFARI_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4.1 Safari/605.1.15"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1"
)
IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4.1 Mobile/15E148 Safari/604.1"
)
ANDROID_PHONE = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.82 Mobile Safari/537.36"
)
ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.82 Safari/537.36"
)
FIREFOX_ANDROID_TABLET = "Mozilla/5.0 (Android 14; Tablet; rv:125.0) Gecko/125.0 Firefox/125.0"
CUBOT_PHONE = (
    "Mozilla/5.0 (Linux; Android 9; CUBOT X19) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36"
)
EDGE_WINDOWS = CHROME_WINDOWS + " Edg/124.0.2478.67"
FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
GOOGLEBOT_SMARTPHONE = (
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36 "
    "(compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
)
CURL = "curl/8.7.1"
# No "bot" as a word: only ua-parser's "Spider" device says it is one.
AHREFSBOT = "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)"
HEADLESS_CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/124.0.0.0 Safari/537.36"
)


def run(
    context: Any = None,
    properties: Any = None,
    *,
    ip_salt: bytes = SALT,
    ip_mode: str = "hash",
    client_ip: str = "",
) -> Enrichment:
    return enrich(
        {} if properties is None else properties,
        {} if context is None else context,
        ip_salt=ip_salt,
        ip_mode=ip_mode,
        client_ip=client_ip,
    )


def expected_hash(ip: str, salt: bytes = SALT) -> str:
    return hmac.new(salt, ip.encode(), hashlib.sha256).hexdigest()[:32]


def scalar_fields(e: Enrichment) -> dict[str, str]:
    return {k: v for k, v in e._asdict().items() if k != "context"}


# --- user agent -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_agent", "device", "browser", "os"),
    [
        (CHROME_WINDOWS, "desktop", "Chrome", "Windows"),
        (EDGE_WINDOWS, "desktop", "Edge", "Windows"),
        (SAFARI_MAC, "desktop", "Safari", "Mac OS X"),
        (FIREFOX_LINUX, "desktop", "Firefox", "Linux"),
        (IPHONE, "mobile", "Mobile Safari", "iOS"),
        (IPAD, "tablet", "Mobile Safari", "iOS"),
        (ANDROID_PHONE, "mobile", "Chrome Mobile", "Android"),
        (CUBOT_PHONE, "mobile", "Chrome Mobile", "Android"),
        (ANDROID_TABLET, "tablet", "Chrome", "Android"),
        (FIREFOX_ANDROID_TABLET, "tablet", "Firefox Mobile", "Android"),
        (GOOGLEBOT, "bot", "Googlebot", ""),
        (GOOGLEBOT_SMARTPHONE, "bot", "Googlebot", "Android"),
        (AHREFSBOT, "bot", "AhrefsBot", ""),
        (CURL, "bot", "curl", ""),
        ("python-requests/2.31.0", "bot", "Python Requests", ""),
        (HEADLESS_CHROME, "bot", "HeadlessChrome", "Linux"),
    ],
)
def test_user_agents(user_agent: str, device: str, browser: str, os: str) -> None:
    e = run({"userAgent": user_agent})
    assert (e.device, e.browser, e.os) == (device, browser, os)


# Real-world user agents, one or a few of each kind the shop sees: desktop browsers, phones (and
# their in-app browsers), tablets, a console and a TV, crawlers and scripts.
APPLEBOT = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)"
)
WEBKIT = "AppleWebKit/537.36 (KHTML, like Gecko)"
IOS_WEBKIT = "AppleWebKit/605.1.15 (KHTML, like Gecko)"
REAL_WORLD_USER_AGENTS = (
    CHROME_WINDOWS,
    f"Mozilla/5.0 (Windows NT 6.1; Win64; x64) {WEBKIT} Chrome/109.0.0.0 Safari/537.36",
    f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) {WEBKIT} Chrome/125.0.0.0 Safari/537.36",
    f"Mozilla/5.0 (X11; Linux x86_64) {WEBKIT} Chrome/123.0.0.0 Safari/537.36",
    f"Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) {WEBKIT} Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:126.0) Gecko/20100101 Firefox/126.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.4; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:124.0) Gecko/20100101 Firefox/124.0",
    FIREFOX_LINUX,
    SAFARI_MAC,
    EDGE_WINDOWS,
    f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) {WEBKIT} Chrome/124.0.0.0 Safari/537.36 "
    "Edg/124.0.2478.80",
    CHROME_WINDOWS + " OPR/110.0.0.0",
    f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) {WEBKIT} Chrome/122.0.0.0 YaBrowser/24.4.0.0 "
    "Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; WOW64; Trident/7.0; rv:11.0) like Gecko",
    IPHONE,
    f"Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) {IOS_WEBKIT} "
    "CriOS/125.0.6422.80 Mobile/15E148 Safari/604.1",
    f"Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) {IOS_WEBKIT} "
    "FxiOS/126.0 Mobile/15E148 Safari/605.1.15",
    f"Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) {IOS_WEBKIT} "
    "Version/17.0 EdgiOS/124.2478.89 Mobile/15E148 Safari/605.1.15",
    f"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) {IOS_WEBKIT} Mobile/15E148 "
    "Instagram 330.0.3.12.90 (iPhone15,3; iOS 17_4; en_US; en; scale=3.00; 1290x2796; 604431229)",
    f"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) {IOS_WEBKIT} Mobile/15E148 "
    "[FBAN/FBIOS;FBAV/461.0.0.38.108;FBBV/589010185;FBDV/iPhone14,5;FBMD/iPhone;FBSN/iOS;"
    "FBSV/17.4.1;FBSS/3;FBID/phone;FBLC/en_US;FBOP/5]",
    ANDROID_PHONE,
    f"Mozilla/5.0 (Linux; Android 10; K) {WEBKIT} Chrome/125.0.0.0 Mobile Safari/537.36",
    f"Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) {WEBKIT} SamsungBrowser/25.0 "
    "Chrome/121.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Android 14; Mobile; rv:126.0) Gecko/126.0 Firefox/126.0",
    f"Mozilla/5.0 (Linux; Android 10; K) {WEBKIT} Chrome/124.0.0.0 Mobile Safari/537.36 "
    "EdgA/124.0.2478.64",
    f"Mozilla/5.0 (Linux; Android 13; SM-A536B Build/TP1A.220624.014; wv) {WEBKIT} Version/4.0 "
    "Chrome/124.0.6367.82 Mobile Safari/537.36",
    f"Mozilla/5.0 (Linux; Android 10; VOG-L29) {WEBKIT} Chrome/124.0.0.0 Mobile Safari/537.36 "
    "OPR/81.1.4292.78896",
    f"Mozilla/5.0 (Linux; U; Android 12; en-gb; Redmi Note 11 Build/SKQ1.211103.001) {WEBKIT} "
    "Version/4.0 Chrome/112.0.5615.136 Mobile Safari/537.36 XiaoMi/MiuiBrowser/14.5.1-gn",
    CUBOT_PHONE,
    IPAD,
    f"Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) {IOS_WEBKIT} CriOS/125.0.6422.80 "
    "Mobile/15E148 Safari/604.1",
    ANDROID_TABLET,
    f"Mozilla/5.0 (Linux; Android 13; SM-X200) {WEBKIT} SamsungBrowser/24.0 Chrome/117.0.0.0 "
    "Safari/537.36",
    f"Mozilla/5.0 (Linux; Android 9; KFTRWI) {WEBKIT} Silk/124.2.1 like Chrome/124.0.6367.111 "
    "Safari/537.36",
    FIREFOX_ANDROID_TABLET,
    "Mozilla/5.0 (PlayStation; PlayStation 5/2.26) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/13.0 Safari/605.1.15",
    f"Mozilla/5.0 (SMART-TV; LINUX; Tizen 6.0) {WEBKIT} 76.0.3809.146/6.0 TV Safari/537.36",
    GOOGLEBOT,
    GOOGLEBOT_SMARTPHONE,
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; "
    "+https://openai.com/gptbot)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
    AHREFSBOT,
    "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
    APPLEBOT,
    "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "Twitterbot/1.0",
    HEADLESS_CHROME,
    CURL,
    "Wget/1.21.4",
    "python-requests/2.31.0",
    "Go-http-client/2.0",
)
# ua-parser-rs rewrites bounded repetitions of 100 or more to unbounded ones (``.{0,100}`` to
# ``.*``: smaller automata), so its "Spider" device regex, ``^.{0,100}(bot|...)``, also finds a
# crawler's name past the 100th character. The only difference over uap-core's 30,871 test user
# agents: ten of them, all crawlers, are "Spider" for the Rust resolver and not for the pure-Python
# one (Applebot is one); browser and OS never differed.
SPIDER_ONLY_FOR_RUST = {APPLEBOT}


@pytest.fixture(scope="module")
def resolvers() -> tuple[ua_parser.Resolver, ua_parser.Resolver]:
    """The reference implementation's two resolvers over the same regexes, not the service's."""
    rust = RustResolver(ua_parser.load_lazy_builtins())
    pure_python = PurePythonResolver(ua_parser.load_builtins())
    return rust, pure_python


def test_the_user_agents_cover_what_shops_see() -> None:
    described = [describe_user_agent(ua) for ua in REAL_WORLD_USER_AGENTS]
    assert len(set(REAL_WORLD_USER_AGENTS)) == len(REAL_WORLD_USER_AGENTS) >= 50
    assert {device for device, _, _ in described} == {"desktop", "mobile", "tablet", "bot"}
    assert len({browser for _, browser, _ in described}) >= 30
    assert {"Windows", "Mac OS X", "Linux", "iOS", "Android"} <= {os for _, _, os in described}


@pytest.mark.parametrize("user_agent", REAL_WORLD_USER_AGENTS)
def test_the_rust_resolver_parses_as_the_pure_python_one(
    user_agent: str, resolvers: tuple[ua_parser.Resolver, ua_parser.Resolver]
) -> None:
    rust, pure_python = (r(user_agent, ua_parser.Domain.ALL) for r in resolvers)
    assert rust.user_agent is not None and rust.user_agent.family != "Other"
    assert rust.user_agent == pure_python.user_agent  # family and every version field
    assert rust.os == pure_python.os
    if user_agent in SPIDER_ONLY_FOR_RUST:
        assert rust.device is not None and rust.device.family == "Spider"
        assert pure_python.device is None or pure_python.device.family != "Spider"
    else:
        assert rust.device == pure_python.device


@pytest.mark.parametrize("user_agent", REAL_WORLD_USER_AGENTS)
def test_the_service_names_browser_and_os_as_the_reference(
    user_agent: str, resolvers: tuple[ua_parser.Resolver, ua_parser.Resolver]
) -> None:
    reference = resolvers[1](user_agent, ua_parser.Domain.ALL)
    browser = reference.user_agent.family if reference.user_agent else ""
    os = reference.os.family if reference.os else ""
    expected = tuple("" if family == "Other" else family for family in (browser, os))
    assert describe_user_agent(user_agent)[1:] == expected


def test_the_service_parses_with_the_rust_resolver() -> None:
    parser, name = enrichment.user_agent_parser()
    assert name == enrichment.RUST
    assert isinstance(parser.resolver, RustResolver)
    assert enrichment.user_agent_parser()[0] is parser  # one per process
    assert describe_user_agent(APPLEBOT)[0] == "bot"


def test_without_the_rust_core_the_pure_python_resolver_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ua_parser.regex", None)  # import raises ImportError
    parser, name = enrichment._build_user_agent_parser()
    assert name == enrichment.PURE_PYTHON
    assert isinstance(parser.resolver, PurePythonResolver)
    assert enrichment.describe_user_agent_with(parser, IPAD) == ("tablet", "Mobile Safari", "iOS")


@pytest.mark.parametrize("context", [{}, {"userAgent": ""}, {"userAgent": "   "}])
def test_no_user_agent_leaves_device_unknown(context: dict[str, Any]) -> None:
    e = run(context)
    assert (e.device, e.browser, e.os) == ("", "", "")


def test_unrecognised_user_agent_is_a_desktop_of_unknown_browser() -> None:
    e = run({"userAgent": "zzz"})
    assert (e.device, e.browser, e.os) == ("desktop", "", "")


def test_huge_user_agent_is_truncated_not_refused() -> None:
    e = run({"userAgent": IPHONE + " x" * 100_000})
    assert (e.device, e.browser, e.os) == ("mobile", "Mobile Safari", "iOS")


# --- IP -------------------------------------------------------------------------------------


def test_ip_hash_is_a_salted_hmac() -> None:
    first = run({"ip": IP}).ip_hash
    assert first == expected_hash(IP)
    assert len(first) == 32
    assert run({"ip": IP}).ip_hash == first
    assert run({"ip": IP}, ip_salt=b"another salt").ip_hash == expected_hash(IP, b"another salt")
    assert run({"ip": IP}, ip_salt=b"another salt").ip_hash != first
    assert run({"ip": "198.51.100.1"}).ip_hash not in ("", first)


def test_one_address_has_one_hash_whatever_its_spelling() -> None:
    assert run({"ip": f" {IP} "}).ip_hash == expected_hash(IP)
    assert run({"ip": f"::ffff:{IP}"}).ip_hash == expected_hash(IP)
    assert run({"ip": "2001:DB8:0:0::1"}).ip_hash == expected_hash("2001:db8::1")


def test_raw_ip_is_never_returned() -> None:
    context = {
        "ip": IP,
        "userAgent": CHROME_WINDOWS,
        "device": {"ip": IP, "id": "d1", "IP": IP},
        "traits": [{"ip": IP, "name": "a"}],
        "location": {"country": "de", "region": "Berlin"},
    }
    for mode in ("hash", "drop"):
        e = run(context, {"page": "/"}, ip_mode=mode)
        assert IP not in json.dumps(scalar_fields(e))
        assert IP not in json.dumps(e.context)
        assert e.context == {
            "userAgent": CHROME_WINDOWS,
            "device": {"id": "d1"},
            "traits": [{"name": "a"}],
            "location": {"country": "de", "region": "Berlin"},
        }


def test_drop_mode_keeps_nothing_of_the_ip() -> None:
    assert run({"ip": IP}, ip_mode="drop").ip_hash == ""
    assert run({}, ip_mode="drop", client_ip=IP).ip_hash == ""


def test_an_unknown_mode_or_an_empty_salt_keeps_nothing() -> None:
    assert run({"ip": IP}, ip_mode="raw").ip_hash == ""
    assert run({"ip": IP}, ip_salt=b"").ip_hash == ""


@pytest.mark.parametrize("bad", ["not-an-ip", "999.1.1.1", "1.2.3", "", 5, None, ["1.2.3.4"]])
def test_invalid_ip_counts_as_absent(bad: object) -> None:
    assert run({"ip": bad}).ip_hash == ""


def test_client_ip_is_the_fallback() -> None:
    assert run({}, client_ip=IP).ip_hash == expected_hash(IP)
    assert run({"ip": "garbage"}, client_ip=IP).ip_hash == expected_hash(IP)
    assert run({"ip": "198.51.100.1"}, client_ip=IP).ip_hash == expected_hash("198.51.100.1")
    assert run({}, client_ip="garbage").ip_hash == ""


# --- UTM ------------------------------------------------------------------------------------


def test_utm_from_context_campaign() -> None:
    campaign = {
        "source": " newsletter ",
        "medium": "email",
        "name": "spring_sale",
        "term": "shoes",
        "content": "hero",
    }
    page = {"url": "https://shop.example/?utm_source=other"}
    e = run({"campaign": campaign, "page": page})
    assert (e.utm_source, e.utm_medium, e.utm_campaign, e.utm_term, e.utm_content) == (
        "newsletter",
        "email",
        "spring_sale",
        "shoes",
        "hero",
    )


def test_utm_from_page_url_query() -> None:
    url = (
        "https://shop.example/p/1?utm_source=google&utm_medium=cpc&utm_campaign=black+friday"
        "&utm_term=red%20shoes&utm_content=ad-2&utm_source=ignored"
    )
    e = run({"page": {"path": "/p/1", "url": url}})
    assert (e.utm_source, e.utm_medium, e.utm_campaign, e.utm_term, e.utm_content) == (
        "google",
        "cpc",
        "black friday",
        "red shoes",
        "ad-2",
    )


def test_utm_from_properties_url_and_page_strings() -> None:
    assert run({}, {"url": "https://shop.example/?utm_source=fb"}).utm_source == "fb"
    assert run({"page": "/landing?utm_medium=social"}).utm_medium == "social"
    assert run({}, {"page": "/landing?utm_campaign=x1"}).utm_campaign == "x1"
    assert run({"page": "/landing"}).utm_source == ""


def test_utm_values_are_capped() -> None:
    e = run({"campaign": {"source": "s" * 500}, "page": "/?utm_term=" + "t" * 500})
    assert e.utm_source == "s" * 200
    e = run({"page": "/?utm_term=" + "t" * 500})
    assert e.utm_term == "t" * 200


# --- referrer -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("referrer", "host"),
    [
        ("https://www.Google.com/search?q=x", "google.com"),
        ("http://news.ycombinator.com:8080/item?id=1", "news.ycombinator.com"),
        ("https://user:pw@WWW.example.co.uk./", "example.co.uk"),
        ("https://m.facebook.com/", "m.facebook.com"),
        ("//www.bing.com/search", "bing.com"),
        ("/checkout/cart", ""),
        ("search?q=1", ""),
        ("google.com/search", ""),
        ("not a url at all", ""),
        ("https://exa mple.com/", ""),
        ("http://[::1", ""),
        ("https://", ""),
    ],
)
def test_referrer_host(referrer: str, host: str) -> None:
    assert run({}, {"referrer": referrer}).referrer_host == host


def test_referrer_sources_in_order() -> None:
    page = {"referrer": "https://c.example/"}
    both = {"referrer": "https://b.example/", "page": page}
    assert run(both, {"referrer": "https://a.example/"}).referrer_host == "a.example"
    assert run(both, {"referrer": ""}).referrer_host == "b.example"
    assert run({"page": page}).referrer_host == "c.example"
    # Segment's context.referrer is an object naming a referral programme, not a URL.
    assert run({"referrer": {"type": "x", "id": "1"}, "page": page}).referrer_host == "c.example"
    assert run({}).referrer_host == ""


# --- location -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("country", "expected"),
    [("us", "US"), (" DE ", "DE"), ("USA", ""), ("ZZ", ""), ("U1", ""), (5, ""), (None, "")],
)
def test_country(country: object, expected: str) -> None:
    assert run({"location": {"country": country}}).country == expected


def test_region_is_trimmed_and_capped() -> None:
    assert run({"location": {"region": "  California "}}).region == "California"
    assert run({"location": {"region": "r" * 100}}).region == "r" * 64
    assert run({"location": {"region": 7}}).region == ""


# --- hostile input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("properties", "context"),
    [
        ({}, {"userAgent": 5, "campaign": "x", "location": []}),
        (
            {"referrer": 5, "url": ["x"], "page": {"a": 1}},
            {"page": 7, "ip": {}, "referrer": None, "campaign": [], "location": "US"},
        ),
        (
            {"referrer": "h" * 1_000_000},
            {"page": {"url": 3, "referrer": []}, "campaign": {"source": 1, "name": None}},
        ),
        ([], None),
        ("properties", 42),
    ],
)
def test_hostile_inputs_give_empty_fields(properties: Any, context: Any) -> None:
    e = enrich(properties, context, ip_salt=SALT)
    assert set(scalar_fields(e).values()) == {""}


CONTEXT_KEYS = "ip userAgent page url path referrer campaign location country region source medium"
KEYS = st.sampled_from([*CONTEXT_KEYS.split(), "name", "term", "content", "search", "IP", "x"])
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from([IP, IPHONE, "https://www.a.example/?utm_source=s", "us", "[::1"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=30,
)


def keys_of(value: Any) -> set[str]:
    """Every key of every dict inside value (iteratively: stored contexts may be deep)."""
    found: set[str] = set()
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            found.update(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return found


@settings(database=None)  # each run stands alone: no replay of examples saved by earlier runs
@given(properties=JSON, context=JSON, client_ip=st.sampled_from(["", IP, "junk"]))
def test_any_json_is_enriched_without_error_or_raw_ip(
    properties: Any, context: Any, client_ip: str
) -> None:
    e = enrich(properties, context, ip_salt=SALT, client_ip=client_ip)
    assert all(isinstance(v, str) for v in scalar_fields(e).values())
    assert e.device in ("", "desktop", "mobile", "tablet", "bot")
    assert IP not in json.dumps(scalar_fields(e))
    assert not {"ip", "IP"} & keys_of(e.context)


def test_deeply_nested_context_is_copied_without_recursion() -> None:
    context: dict[str, Any] = {}
    inner = context
    for _ in range(10_000):
        inner["ip"] = IP
        inner["next"] = {}
        inner = inner["next"]
    stored = run(context).context
    depth = 0
    while stored:
        assert set(stored) == {"next"}
        stored = stored["next"]
        depth += 1
    assert depth == 10_000


def test_input_is_not_mutated() -> None:
    properties = {"page": "/p?utm_source=x", "referrer": "https://www.google.com/"}
    context = {
        "ip": IP,
        "userAgent": IPHONE,
        "page": {"url": "https://shop.example/?utm_medium=y", "referrer": "https://b.example/"},
        "campaign": {"source": " a "},
        "location": {"country": "us", "region": " CA "},
        "device": {"ip": IP},
        "list": [{"ip": IP}],
    }
    before_props, before_ctx = copy.deepcopy(properties), copy.deepcopy(context)
    e = run(context, properties)
    assert properties == before_props
    assert context == before_ctx
    assert e.context is not context
    e.context["device"]["x"] = 1
    assert context["device"] == {"ip": IP}


def test_a_full_event() -> None:
    context = {
        "ip": IP,
        "userAgent": CHROME_WINDOWS,
        "page": {
            "path": "/shoes",
            "url": "https://shop.example/shoes?utm_source=google&utm_medium=cpc",
            "referrer": "https://www.google.com/",
        },
        "location": {"country": "fr", "region": "Île-de-France", "city": "Paris"},
        "locale": "fr-FR",
    }
    assert run(context, {"page": "/shoes"}) == Enrichment(
        device="desktop",
        browser="Chrome",
        os="Windows",
        ip_hash=expected_hash(IP),
        country="FR",
        region="Île-de-France",
        utm_source="google",
        utm_medium="cpc",
        utm_campaign="",
        utm_term="",
        utm_content="",
        referrer_host="google.com",
        context={k: v for k, v in context.items() if k != "ip"},
    )


_MARKER_PIECES = st.sampled_from(
    ["bot", "BOT", "Bot", "cubot", "crawler", "Spider", "slurp", "curl/", "Wget/", "scrapy/",
     "python-requests/", "HeadlessChrome", "phantomjs", " ", "/", "-",
     # Letters that IGNORECASE matches to ASCII ones: long s, Kelvin sign, dotless i.
     "\u017fpider", "\u212abot", "sp\u0131der",
     "Mozilla/5.0 (Linux; Android 14)", "\u00df", "\u0130"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_MARKER_PIECES, st.text(max_size=8)), max_size=8).map("".join))
def test_the_bot_word_shortcut_agrees_with_the_bot_markers(user_agent: str) -> None:
    """The shortcut that skips the BOT_MARKERS regex for ASCII user agents holding none of its
    words gives the regex's own answer, ASCII or not."""
    assert enrichment._automated(user_agent) == (
        enrichment.BOT_MARKERS.search(user_agent) is not None
    )
