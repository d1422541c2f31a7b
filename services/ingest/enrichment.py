"""What commerce analysts expect next to an event, derived from its ``context`` and ``properties``.

Device, browser and OS come from the user agent; country and region from ``context.location``;
UTM fields from ``context.campaign`` or the page URL's query; the referrer's host from the first
referrer URL given. The client IP is never stored: at most a salted hash of it (``ip_mode``
"hash"), or nothing ("drop"), and the context to store is a copy without any ``ip`` key.

Plain Python over plain data, like validation: no gRPC, no storage. Events come from clients we do
not control, so every function here is total: a value of the wrong type, or an unparseable one,
yields an empty field, never an exception.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import threading
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

import structlog
import ua_parser

log = structlog.get_logger(__name__)

MAX_UA_LENGTH = 1024
MAX_UTM_LENGTH = 200
MAX_REGION_LENGTH = 64
# Longer URLs are not parsed: no real page or referrer URL needs more, and parsing is linear.
MAX_URL_LENGTH = 8192
MAX_QUERY_FIELDS = 256
IP_HASH_HEX_CHARS = 32
# context.campaign names the campaign "name"; the URL parameter is utm_campaign.
CAMPAIGN_KEYS = {
    "source": "source",
    "medium": "medium",
    "campaign": "name",
    "term": "term",
    "content": "content",
}

_CAMPAIGN_ITEMS = tuple(CAMPAIGN_KEYS.items())

# Automated clients that ua-parser does not classify as "Spider" (it does catch Googlebot, bingbot,
# GPTBot, ...). Whole words only, so that phone makers such as Cubot are not taken for bots.
BOT_MARKERS = re.compile(
    r"\b(?:bot|crawler|spider|slurp)\b"
    r"|^(?:curl|wget|python-requests|python-urllib|libwww-perl|go-http-client|scrapy)/"
    r"|headlesschrome|phantomjs",
    re.IGNORECASE,
)
# Text one of BOT_MARKERS' matches must contain, lower-cased: an ASCII user agent without any is
# no match, found without the regex (half of a new user agent's parse: decision 64). Exact for
# ASCII, where IGNORECASE is lower-casing; any other user agent goes to the regex.
BOT_WORDS = ("bot", "crawler", "spider", "slurp", "curl/", "wget/", "python-requests/",
             "python-urllib/", "libwww-perl/", "go-http-client/", "scrapy/", "headlesschrome",
             "phantomjs")  # fmt: skip


def _automated(user_agent: str) -> bool:
    if user_agent.isascii():
        lowered = user_agent.lower()
        if not any(word in lowered for word in BOT_WORDS):
            return False
    return BOT_MARKERS.search(user_agent) is not None


HOST_LABELS = re.compile(r"[^\W_](?:[\w-]*[^\W_])?(?:\.[^\W_](?:[\w-]*[^\W_])?)*")

# ISO 3166-1 alpha-2, officially assigned (249), plus XK (Kosovo), which GeoIP databases use.
_COUNTRY_CODES = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR
    BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ
    EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW
    GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY
    KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV
    MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY
    QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG
    TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM
    ZW XK
"""
COUNTRIES = frozenset(_COUNTRY_CODES.split())


class Enrichment(NamedTuple):
    """The derived columns of one event, every one a string ("" when unknown). A NamedTuple: a
    frozen dataclass sets each field through object.__setattr__, a fifth of enriching an
    event."""

    device: str  # "desktop" | "mobile" | "tablet" | "bot" | "" (no user agent)
    browser: str  # ua-parser's family: "Chrome", "Chrome Mobile", "Mobile Safari", "Edge", ...
    os: str  # ua-parser's family: "Windows", "Mac OS X", "iOS", "Android", "Linux", ...
    ip_hash: str  # first 32 hex chars of HMAC-SHA256(ip_salt, ip) in ip_mode "hash"
    country: str  # ISO 3166-1 alpha-2, upper-case
    region: str
    utm_source: str
    utm_medium: str
    utm_campaign: str
    utm_term: str
    utm_content: str
    referrer_host: str  # lower-case, without "www."
    context: dict[str, Any]  # the context to store: a copy without any "ip" key, at any depth


def enrich(
    properties: Mapping[str, Any],
    context: Mapping[str, Any],
    *,
    ip_salt: bytes,
    ip_mode: str = "hash",
    client_ip: str = "",
) -> Enrichment:
    """Derive an event's analytics columns; never raises and never mutates its inputs.

    ``client_ip`` (the peer or X-Forwarded-For address) is used when ``context.ip`` is absent or
    invalid. Any ``ip_mode`` but "hash", and an empty salt, keep nothing of the IP: an unsalted hash
    of an IPv4 address is reversed by trying all 2**32 of them.
    """
    props = _mapping(properties)
    ctx = _mapping(context)
    get = ctx.get
    user_agent = get("userAgent")
    device, browser, os = describe_user_agent(user_agent) if user_agent is not None else _NO_UA
    location = get("location")
    if location is None:
        country = region = ""
    else:
        location = _mapping(location)
        country = _country(location.get("country"))
        region = _text(location.get("region"), MAX_REGION_LENGTH)
    source, medium, campaign, term, content = _utm(props, ctx)
    return Enrichment(
        device,
        browser,
        os,
        _ip_hash(get("ip"), client_ip, ip_salt, ip_mode),
        country,
        region,
        source,
        medium,
        campaign,
        term,
        content,
        _referrer_host(props, ctx),
        _without_ip(ctx),
    )


_NO_UA = ("", "", "")


def describe_user_agent(user_agent: object) -> tuple[str, str, str]:
    """(device, browser, os) of a user agent; ("", "", "") without one."""
    if not isinstance(user_agent, str):
        return "", "", ""
    return _describe(user_agent[:MAX_UA_LENGTH])


def describe_user_agent_with(
    resolver: ua_parser.Resolver, user_agent: object
) -> tuple[str, str, str]:
    """describe_user_agent through a given parser (or resolver), without the cache:
    bench/user_agents.py compares the resolvers through it."""
    if not isinstance(user_agent, str):
        return "", "", ""
    return _describe_uncached(resolver, user_agent[:MAX_UA_LENGTH])


RUST = "ua-parser-rs"
PURE_PYTHON = "ua_parser.basic"
_parser: tuple[ua_parser.Parser, str] | None = None
_parser_lock = threading.Lock()


def user_agent_parser() -> tuple[ua_parser.Parser, str]:
    """The process's one user-agent parser and the name of its resolver, built on first use.

    ua-parser's regexes run in its Rust core (``ua_parser.regex``, package ua-parser-rs): tens of
    µs a parse, where the pure-Python resolver takes 300-1,000 µs for a user agent not seen before
    (bench/user_agents.py). Browser and OS come out the same (tests/test_enrichment.py compares
    them); the device differs only where the Rust core, which reads the regexes' ``.{0,100}`` as
    ``.*``, finds a crawler's name past the 100th character: "bot" rather than "desktop". The
    pure-Python resolver is only the fallback when the Rust core cannot be loaded; which one is
    used is logged once. Building either takes ~0.25 s (the regexes are compiled), so not at
    import. No cache inside the parser: ``_describe`` caches (device, browser, os) per user agent.
    """
    global _parser
    if _parser is None:
        with _parser_lock:
            if _parser is None:
                _parser = _build_user_agent_parser()
                log.info("user-agent parser ready", resolver=_parser[1])
    return _parser


def _build_user_agent_parser() -> tuple[ua_parser.Parser, str]:
    try:
        from ua_parser.regex import Resolver as RustResolver

        return ua_parser.Parser(RustResolver(ua_parser.load_lazy_builtins())), RUST
    except Exception as error:  # not installed, or no wheel for this platform
        log.warning(
            "ua-parser-rs unavailable: user agents are parsed in pure Python, ~20x slower",
            error=repr(error),
        )
    return ua_parser.Parser(ua_parser.BasicResolver(ua_parser.load_builtins())), PURE_PYTHON


def _process_parser(user_agent: str, domains: ua_parser.Domain, /) -> ua_parser.PartialResult:
    return user_agent_parser()[0](user_agent, domains)


@lru_cache(maxsize=4096)
def _describe(user_agent: str) -> tuple[str, str, str]:
    """Cached per UA string: a few browser builds make most of the traffic."""
    return _describe_uncached(_process_parser, user_agent)


def _describe_uncached(resolver: ua_parser.Resolver, user_agent: str) -> tuple[str, str, str]:
    if not user_agent.strip():
        return "", "", ""
    try:
        result = resolver(user_agent, ua_parser.Domain.ALL)
    except Exception:  # a library bug (or a parser that cannot be built) must not lose the event
        return _device(user_agent, spider=False), "", ""
    browser = result.user_agent.family if result.user_agent is not None else ""
    os = result.os.family if result.os is not None else ""
    spider = result.device is not None and result.device.family == "Spider"
    return _device(user_agent, spider), _known(browser), _known(os)


def _known(family: str) -> str:
    return "" if family == "Other" else family


def _device(user_agent: str, spider: bool) -> str:
    """Bots first (Googlebot's smartphone UA says Android Mobile), then tablets before phones
    (an iPad's says "Mobile/15E148")."""
    if spider or _automated(user_agent):
        return "bot"
    android = "Android" in user_agent
    if "iPad" in user_agent or "Tablet" in user_agent or (android and "Mobile" not in user_agent):
        return "tablet"
    if "iPhone" in user_agent or "iPod" in user_agent or "Mobi" in user_agent:
        return "mobile"
    return "desktop"


def _ip_hash(context_ip: object, client_ip: object, salt: object, mode: object) -> str:
    if mode != "hash" or not isinstance(salt, bytes | bytearray) or not salt:
        return ""
    salt = bytes(salt)
    if isinstance(context_ip, str):
        found = _hash_of(context_ip, salt)
        if found:
            return found
    return _hash_of(client_ip, salt) if isinstance(client_ip, str) else ""


@lru_cache(maxsize=16384)
def _hash_of(value: str, salt: bytes) -> str:
    """The salted hash of an address's canonical text ("" for no valid address). Cached: a shop's
    shoppers send many events each, and parsing plus HMAC cost more than the rest of enrichment.
    The cache holds hashes only of addresses already seen, keyed by what was sent."""
    address = _ip(value)
    if not address:
        return ""
    digest = hmac.new(salt, address.encode(), hashlib.sha256).hexdigest()
    return digest[:IP_HASH_HEX_CHARS]


def _ip(value: object) -> str:
    """The canonical text of an IP address, so that one address has one hash ("" if invalid)."""
    if not isinstance(value, str) or len(value) > 64:
        return ""
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _country(value: object) -> str:
    if not isinstance(value, str):
        return ""
    code = value.strip().upper()
    return code if code in COUNTRIES else ""


_NO_UTM = ("", "", "", "", "")


def _utm(props: Mapping[str, Any], ctx: Mapping[str, Any]) -> tuple[str, str, str, str, str]:
    """(source, medium, campaign, term, content) from context.campaign when it has any field
    (the SDK read it off the landing URL), else from the page URL's utm_* parameters; never a
    mix of both."""
    campaign = ctx.get("campaign")
    if campaign is not None:
        fields = _mapping(campaign)
        if fields:
            utm = tuple(_text(fields.get(key), MAX_UTM_LENGTH) for key in CAMPAIGN_KEYS.values())
            if any(utm):
                return utm  # type: ignore[return-value]
    page = ctx.get("page")
    page_fields = _mapping(page) if page is not None else _EMPTY
    candidates = (
        page_fields.get("url"),
        page_fields.get("search"),
        props.get("url"),
        page if type(page) is str else None,
        props.get("page"),
    )
    for url in candidates:
        if type(url) is str and "?" in url:  # no query, no utm_* (most events)
            found = _utm_from_url(url)
            if any(found.values()):
                source, medium, name, term, content = found.values()
                return source, medium, name, term, content
    return _NO_UTM


def _utm_from_url(url: object) -> dict[str, str]:
    utm = dict.fromkeys(CAMPAIGN_KEYS, "")
    if not isinstance(url, str) or "?" not in url or len(url) > MAX_URL_LENGTH:
        return utm
    try:
        query = urlsplit(url).query
        pairs = parse_qsl(query, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:
        return utm
    for key, value in pairs:
        prefix, _, name = key.lower().partition("_")
        if prefix == "utm" and name in utm and not utm[name]:  # the first occurrence wins
            utm[name] = _text(value, MAX_UTM_LENGTH)
    return utm


def _referrer_host(props: Mapping[str, Any], ctx: Mapping[str, Any]) -> str:
    """Host of the first referrer given; a bad one does not fall through to the next."""
    page = ctx.get("page")
    candidates = (
        props.get("referrer"),
        ctx.get("referrer"),
        _mapping(page).get("referrer") if page is not None else None,
    )
    for value in candidates:
        if type(value) is str and value.strip():
            return _host(value.strip())
    return ""


def _host(url: str) -> str:
    if len(url) > MAX_URL_LENGTH:
        return ""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return ""
    host = host.rstrip(".")
    if ":" in host:  # an IPv6 literal
        return _ip(host)
    if len(host) > 253 or not HOST_LABELS.fullmatch(host):
        return ""
    return host.removeprefix("www.")


def _without_ip(ctx: Mapping[str, Any]) -> dict[str, Any]:
    """A copy to store with every "ip" key removed at any depth; iterative, so no nesting depth
    can exhaust the stack, and a container reached twice (or cyclically) is copied once. A
    context of plain, flat values (most) is copied in one step."""
    if type(ctx) is dict:
        flat, has_ip = True, False
        for key, value in ctx.items():
            if type(value) in _CONTAINERS or type(key) is not str:
                flat = False
                break
            # Only a 2-character key can lower-case to "ip" (no character lower-cases to none).
            if len(key) == 2 and key.lower() == "ip":
                has_ip = True
        if flat:
            if not has_ip:
                return dict(ctx)
            return {k: v for k, v in ctx.items() if not (len(k) == 2 and k.lower() == "ip")}
    root: dict[str, Any] = {}
    copies: dict[int, Any] = {id(ctx): root}
    pending: list[tuple[Mapping[Any, Any] | list[Any] | tuple[Any, ...], Any]] = [(ctx, root)]
    while pending:
        source, target = pending.pop()
        items = source.items() if isinstance(source, Mapping) else enumerate(source)
        for key, value in items:
            if isinstance(key, str) and key.lower() == "ip" and isinstance(source, Mapping):
                continue
            if isinstance(value, Mapping | list | tuple):
                if id(value) not in copies:
                    copies[id(value)] = {} if isinstance(value, Mapping) else []
                    pending.append((value, copies[id(value)]))
                value = copies[id(value)]
            if isinstance(target, dict):
                target[key] = value
            else:
                target.append(value)
    return root


_CONTAINERS = (dict, list, tuple)


def _mapping(value: object) -> Mapping[str, Any]:
    # dict and None first: decoded JSON is made of dicts, most optional fields are absent, and
    # the ABC check costs more than the rest.
    if type(value) is dict:
        return value
    if value is None or not isinstance(value, Mapping):
        return _EMPTY
    return value


_EMPTY: Mapping[str, Any] = {}


def _text(value: object, limit: int) -> str:
    return value.strip()[:limit].strip() if isinstance(value, str) else ""
