"""User-agent parsing without a cliff: 1,000 distinct user agents, each parsed once.

Ingest caches (device, browser, os) per user agent string, so a bench that sends one user agent
measures the cache. Real traffic brings user agents not seen before (every browser release, every
phone model, in-app browsers), and each of those is a full parse. This generates N distinct,
realistic user agents (browser, OS and device versions varied deterministically from a seed, in
roughly a shop's mix: desktops, phones, tablets, crawlers), then times on each, once:

- the service: ``describe_user_agent`` (services/ingest/enrichment.py), its cache emptied first,
  so every call is a miss (checked with the cache's counters), through the process's parser
  (ua-parser's Rust resolver, ua-parser-rs);
- the reference: the same function body through ua-parser's pure-Python resolver (what ingest
  used before), ``describe_user_agent_with``.

One pass per parser, each user agent once: not alternately, user agent by user agent, which would
time the Rust parse right after a pure-Python one has evicted its CPU caches (a cost ingest never
pays: it doubled the measured p50). Before them, WARM_UP other distinct user agents go
through both, as the first ones a new process sees (the Rust core's regex engines build their
state lazily), reported apart. Reports p50/p99/max µs per parse for both and their ratio, the
1-minute load average (the machine may be shared), and whether there is no cliff: the service's
p99 within CLIFF_FACTOR x its p50, and at most CLIFF_CEILING_US (under a third of the 340 µs the
issue measured for the cheapest uncached pure-Python parse).
Progress goes to stderr, the result as JSON to stdout.

    .venv/bin/python bench/user_agents.py [--count 1000] [--seed 16] [--warm-up 200]
        [--out bench/results/user_agents.md] [--json result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ua_parser  # noqa: E402

from bench.report import machine_info  # noqa: E402
from services.ingest import enrichment  # noqa: E402

WARM_UP = 200
CLIFF_FACTOR = 5.0
CLIFF_CEILING_US = 100.0
OLD_UNCACHED_US = (340, 950)  # issue 16: an uncached parse with the pure-Python resolver

WEBKIT = "AppleWebKit/537.36 (KHTML, like Gecko)"
IOS_WEBKIT = "AppleWebKit/605.1.15 (KHTML, like Gecko)"
WINDOWS = ("Windows NT 10.0; Win64; x64", "Windows NT 10.0; WOW64", "Windows NT 6.1; Win64; x64")
MACS = ("10_15_7", "10_15_6", "11_7_10", "12_7_4", "13_6_6", "14_4_1", "14_5")
LINUXES = ("X11; Linux x86_64", "X11; Ubuntu; Linux x86_64", "X11; Fedora; Linux x86_64")
IOS = ("15_8_2", "16_6_1", "16_7_8", "17_2_1", "17_3_1", "17_4", "17_4_1", "17_5", "17_5_1")
ANDROID_PHONES = (
    "Pixel 6",
    "Pixel 7 Pro",
    "Pixel 8",
    "SM-S918B",
    "SM-S911U",
    "SM-A546B",
    "SM-A145F",
    "Redmi Note 12",
    "M2101K6G",
    "CPH2451",
    "moto g power (2022)",
    "motorola edge 40",
    "RMX3630",
    "V2230",
    "22101316G",
    "K",
)
ANDROID_TABLETS = ("SM-X710", "SM-X200", "SM-T870", "Lenovo TB-X606F", "TB128FU", "KFTRWI")
# UA strings of crawlers that shops see, with a version slot.
BOTS = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) {webkit} Chrome/{chrome} Mobile "
    "Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; "
    "+http://www.bing.com/bingbot.htm) Chrome/{chrome} Safari/537.36",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.{minor}; "
    "+https://openai.com/gptbot)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "curl/8.{minor}.{patch}",
    "python-requests/2.{minor}.{patch}",
    "Go-http-client/{minor}.{patch}",
    "Mozilla/5.0 (X11; Linux x86_64) {webkit} HeadlessChrome/{chrome} Safari/537.36",
)


def chrome_version(rng: random.Random) -> str:
    return f"{rng.randint(100, 126)}.0.{rng.randint(4800, 6500)}.{rng.randint(0, 250)}"


def firefox_android(form: str, android: int, rng: random.Random) -> str:
    v = f"{rng.randint(110, 127)}.0"
    return f"Mozilla/5.0 (Android {android}; {form}; rv:{v}) Gecko/{v} Firefox/{v}"


def make_user_agent(rng: random.Random) -> str:
    """One user agent of a shop's mix: ~40% desktop, ~42% phone, ~10% tablet, ~8% crawler."""
    kind = rng.random()
    chrome = chrome_version(rng)
    major = chrome.split(".")[0]
    if kind < 0.40:
        pick = rng.randrange(6)
        if pick == 0:
            return f"Mozilla/5.0 ({rng.choice(WINDOWS)}) {WEBKIT} Chrome/{chrome} Safari/537.36"
        if pick == 1:
            return (
                f"Mozilla/5.0 ({rng.choice(WINDOWS)}) {WEBKIT} Chrome/{major}.0.0.0 "
                f"Safari/537.36 Edg/{major}.0.{rng.randint(2000, 2600)}.{rng.randint(0, 99)}"
            )
        if pick == 2:
            mac = rng.choice(MACS)
            return (
                f"Mozilla/5.0 (Macintosh; Intel Mac OS X {mac}) {WEBKIT} Chrome/{chrome} "
                "Safari/537.36"
            )
        if pick == 3:
            safari = f"{rng.randint(15, 17)}.{rng.randint(0, 6)}"
            return (
                f"Mozilla/5.0 (Macintosh; Intel Mac OS X {rng.choice(MACS)}) {IOS_WEBKIT} "
                f"Version/{safari} Safari/605.1.15"
            )
        firefox = f"{rng.randint(100, 127)}.{rng.randint(0, 2)}"
        system = rng.choice((*WINDOWS, *LINUXES, "Macintosh; Intel Mac OS X 14.4"))
        if pick == 4:
            return f"Mozilla/5.0 ({system}; rv:{firefox}) Gecko/20100101 Firefox/{firefox}"
        return f"Mozilla/5.0 ({rng.choice(LINUXES)}) {WEBKIT} Chrome/{chrome} Safari/537.36"
    if kind < 0.82:
        pick = rng.randrange(6)
        if pick <= 1:
            ios = rng.choice(IOS)
            app = rng.choice(
                (
                    f"Version/{ios.split('_')[0]}.{ios.split('_')[1]} Mobile/15E148 Safari/604.1",
                    f"Version/{ios.split('_')[0]}.0 Mobile/15E148 Safari/604.1",
                    f"CriOS/{chrome} Mobile/15E148 Safari/604.1",
                    f"FxiOS/{rng.randint(110, 127)}.0 Mobile/15E148 Safari/605.1.15",
                    f"Mobile/15E148 Instagram {rng.randint(250, 330)}.0.0.{rng.randint(10, 40)}."
                    f"{rng.randint(10, 120)} (iPhone14,{rng.randint(2, 8)}; iOS {ios}; en_US; "
                    "en; scale=3.00; 1170x2532; 500000000)",
                )
            )
            return f"Mozilla/5.0 (iPhone; CPU iPhone OS {ios} like Mac OS X) {IOS_WEBKIT} {app}"
        android = rng.randint(9, 14)
        model = rng.choice(ANDROID_PHONES)
        if pick == 2:
            return (
                f"Mozilla/5.0 (Linux; Android {android}; SAMSUNG {model}) {WEBKIT} "
                f"SamsungBrowser/{rng.randint(20, 25)}.0 Chrome/{major}.0.0.0 Mobile Safari/537.36"
            )
        if pick == 3:
            return firefox_android("Mobile", android, rng)
        return (
            f"Mozilla/5.0 (Linux; Android {android}; {model}) {WEBKIT} Chrome/{chrome} Mobile "
            "Safari/537.36"
        )
    if kind < 0.92:
        pick = rng.randrange(3)
        if pick == 0:
            ios = rng.choice(IOS)
            return (
                f"Mozilla/5.0 (iPad; CPU OS {ios} like Mac OS X) {IOS_WEBKIT} Version/"
                f"{ios.split('_')[0]}.{ios.split('_')[1]} Mobile/15E148 Safari/604.1"
            )
        tablet = rng.choice(ANDROID_TABLETS)
        android = rng.randint(9, 14)
        if pick == 1:
            return (
                f"Mozilla/5.0 (Linux; Android {android}; {tablet}) {WEBKIT} Chrome/{chrome} "
                "Safari/537.36"
            )
        return firefox_android("Tablet", android, rng)
    template = rng.choice(BOTS)
    return template.format(
        webkit=WEBKIT, chrome=chrome, minor=rng.randint(0, 40), patch=rng.randint(0, 9)
    )


def user_agents(count: int, seed: int) -> list[str]:
    """``count`` distinct user agents, the same for the same seed."""
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    while len(seen) < count:
        seen.setdefault(make_user_agent(rng), None)
    return list(seen)


def percentiles(samples_us: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples_us)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "p50_us": round(statistics.median(ordered), 1),
        "p90_us": round(cuts[89], 1),
        "p99_us": round(cuts[98], 1),
        "max_us": round(ordered[-1], 1),
        "mean_us": round(statistics.fmean(ordered), 1),
    }


def timed(call: Callable[[str], tuple[str, str, str]], ua: str) -> tuple[float, tuple[str, ...]]:
    start = time.perf_counter_ns()
    result = call(ua)
    return (time.perf_counter_ns() - start) / 1000, result


def timed_pass(
    call: Callable[[str], tuple[str, str, str]], agents: Sequence[str], label: str
) -> tuple[list[float], list[tuple[str, ...]]]:
    """Each user agent through ``call`` once, in order: µs per call and the results."""
    times: list[float] = []
    results: list[tuple[str, ...]] = []
    for i, ua in enumerate(agents):
        us, result = timed(call, ua)
        times.append(us)
        results.append(result)
        if (i + 1) % 250 == 0 or i + 1 == len(agents):
            print(
                f"  {label}: {i + 1}/{len(agents)}, p50 {statistics.median(times):.1f} µs",
                file=sys.stderr,
            )
    return times, results


def measure(count: int, seed: int, warm_up: int) -> dict[str, Any]:
    agents = user_agents(count, seed)
    measured = set(agents)
    first = [ua for ua in user_agents(count + warm_up, seed + 1) if ua not in measured][:warm_up]
    print(
        f"{len(agents)} distinct user agents generated (seed {seed}), and {len(first)} others "
        "to parse first",
        file=sys.stderr,
    )
    load_before = os.getloadavg()

    started = time.perf_counter()
    _, resolver_name = enrichment.user_agent_parser()  # built outside the clock, as at start-up
    print(
        f"service parser ({resolver_name}) built in {time.perf_counter() - started:.2f} s",
        file=sys.stderr,
    )
    started = time.perf_counter()
    pure_python = ua_parser.Parser(ua_parser.BasicResolver(ua_parser.load_builtins()))
    print(
        f"pure-Python reference parser built in {time.perf_counter() - started:.2f} s",
        file=sys.stderr,
    )

    def reference(ua: str) -> tuple[str, str, str]:
        return enrichment.describe_user_agent_with(pure_python, ua)

    enrichment._describe.cache_clear()
    # The first user agents a new process sees: the regex engines build their state as they go.
    first_us, _ = timed_pass(enrichment.describe_user_agent, first, "service, first after start")
    timed_pass(reference, first, "pure Python, first after start")
    before = enrichment._describe.cache_info()
    # The measured pass: every user agent new to the process (and to the cache), one pass per
    # parser, so that neither runs right after the other's parse has evicted its CPU caches.
    service_us, got = timed_pass(enrichment.describe_user_agent, agents, "service")
    reference_us, expected = timed_pass(reference, agents, "pure Python")
    after = enrichment._describe.cache_info()
    load_after = os.getloadavg()

    browser_os_differ = [
        ua for ua, g, e in zip(agents, got, expected, strict=True) if g[1:] != e[1:]
    ]
    device_differ = [
        {"user_agent": ua, "service": g[0], "reference": e[0]}
        for ua, g, e in zip(agents, got, expected, strict=True)
        if g[1:] == e[1:] and g[0] != e[0]
    ]
    service = percentiles(service_us)
    pure = percentiles(reference_us)
    no_cliff = (
        service["p99_us"] <= CLIFF_FACTOR * service["p50_us"]
        and service["p99_us"] <= CLIFF_CEILING_US
    )
    return {
        "user_agents": len(agents),
        "seed": seed,
        "cache_misses": after.misses - before.misses,
        "cache_hits": after.hits - before.hits,
        "service": {"resolver": resolver_name, **service},
        "pure_python": {"resolver": "ua_parser.basic", **pure},
        "service_first_after_start": {
            "resolver": resolver_name,
            "user_agents": len(first),
            **percentiles(first_us),
        },
        "ratio": {
            "p50": round(pure["p50_us"] / service["p50_us"], 1),
            "p99": round(pure["p99_us"] / service["p99_us"], 1),
            "max": round(pure["max_us"] / service["max_us"], 1),
        },
        "browser_os_differ": browser_os_differ,
        "device_differ": device_differ,
        "no_cliff": {
            "holds": no_cliff,
            "rule": f"service p99 <= {CLIFF_FACTOR:g} x its p50 and <= {CLIFF_CEILING_US:g} µs",
            "factor": CLIFF_FACTOR,
            "ceiling_us": CLIFF_CEILING_US,
            "p99_over_p50": round(service["p99_us"] / service["p50_us"], 2),
        },
        "load_average_1min": {"before": load_before[0], "after": load_after[0]},
        "versions": {
            name: metadata.version(name)
            for name in ("ua-parser", "ua-parser-rs", "ua-parser-builtins")
        },
    }


def render_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    service, pure, ratio = result["service"], result["pure_python"], result["ratio"]
    first = result["service_first_after_start"]
    cliff = result["no_cliff"]
    load = result["load_average_1min"]
    versions = ", ".join(f"{name} {version}" for name, version in result["versions"].items())
    lines = [
        "# User-agent parsing: 1,000 distinct user agents, each parsed once",
        "",
        f"- **Command**: `{result['command']}`",
        f"- **Machine**: {m['cpu_model']}, {m['cores']} cores, {m['platform']}, "
        f"Python {m['python']}; 1-minute load average {load['before']:.2f} before, "
        f"{load['after']:.2f} after (shared machine)",
        f"- **Date**: {m['date']}; **commit** {m['git_commit'][:12]}"
        + (" (with uncommitted changes)" if m["git_dirty"] else ""),
        f"- **Packages**: {versions}",
        "",
        f"{result['user_agents']:,} distinct generated user agents (seed {result['seed']}: "
        "desktop, phone and tablet browsers of many versions, in-app browsers, crawlers). "
        "Each is described once by the service's `describe_user_agent`, its cache emptied "
        f"first ({result['cache_misses']:,} misses, {result['cache_hits']} hits), then "
        "once by the same code over ua-parser's pure-Python resolver (what ingest used before), "
        f"one pass each, after {first['user_agents']} other distinct user agents went through "
        "both (the first row: the first user agents a new process sees). µs per call:",
        "",
        "| parser | user agents | p50 µs | p90 µs | p99 µs | max µs | mean µs |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, count, row in (
        (f"service ({first['resolver']}), first after start", first["user_agents"], first),
        (f"service ({service['resolver']})", result["user_agents"], service),
        (f"pure Python ({pure['resolver']})", result["user_agents"], pure),
    ):
        lines.append(
            f"| {label} | {count:,} | {row['p50_us']} | {row['p90_us']} | {row['p99_us']} | "
            f"{row['max_us']} | {row['mean_us']} |"
        )
    lines += [
        "",
        f"Pure Python / service: {ratio['p50']}x at p50, {ratio['p99']}x at p99, "
        f"{ratio['max']}x at the max.",
        "",
        f"**No cliff: {'holds' if cliff['holds'] else 'does NOT hold'}** ({cliff['rule']}; "
        f"p99/p50 = {cliff['p99_over_p50']}; the pure-Python parse took "
        f"{OLD_UNCACHED_US[0]}-{OLD_UNCACHED_US[1]} µs in issue 16).",
        "",
        f"Browser or OS different between the two: {len(result['browser_os_differ'])} user "
        f"agents; device different: {len(result['device_differ'])}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="User-agent parsing of N distinct user agents.")
    parser.add_argument("--count", type=int, default=1000, help="distinct user agents")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument(
        "--warm-up", type=int, default=WARM_UP, help="other user agents parsed first, apart"
    )
    parser.add_argument("--out", type=Path, help="also write a Markdown report there")
    parser.add_argument("--json", type=Path, help="write the JSON there instead of stdout")
    args = parser.parse_args(argv)
    if args.count < 100 or args.warm_up < 100:
        parser.error("--count and --warm-up must be at least 100 (a p99 needs them)")

    result = measure(args.count, args.seed, args.warm_up)
    script = Path(sys.argv[0]).resolve()
    shown = [
        script.relative_to(ROOT).as_posix() if script.is_relative_to(ROOT) else str(script),
        *(argv if argv is not None else sys.argv[1:]),
    ]
    result["command"] = ".venv/bin/python " + " ".join(shown)
    result["machine"] = machine_info()
    holds = result["no_cliff"]["holds"]
    print(
        f"no cliff: {'holds' if holds else 'does NOT hold'} ({result['no_cliff']['rule']}: "
        f"p50 {result['service']['p50_us']} µs, p99 {result['service']['p99_us']} µs)",
        file=sys.stderr,
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render_markdown(result))
        print(f"wrote {args.out}", file=sys.stderr)
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if args.json:
        # A file of its own: the service's modules may log to stdout (structlog's default).
        args.json.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
