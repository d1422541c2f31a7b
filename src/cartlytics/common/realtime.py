"""Realtime counters in Redis: written at ingest, read by ``GET /analytics/realtime``.

The figures (../shared/spec/semantics.md, "realtime"; the rules below are the choices made):

- ``active_visitors``: distinct visitors with any event in the last 5 minutes, i.e. event time in
  ``(now - 300 s, now]``; an event time-stamped in the future counts as "now" (see below). A
  visitor is a person (semantics.md, "Identity"; "Identity" below): an event's userId, else the
  user its anonymousId is linked to (whenever the link was recorded), else its anonymousId, else
  its sessionId.
- ``orders_today`` / ``revenue_today``: distinct orders (by orderId) whose first event -- the
  earliest by (time to the millisecond, event id in byte order), as in ClickHouse -- is since local
  midnight today in the requested zone and in the requested currency; its total is the revenue.
  When a later-recorded event of an order is earlier than the one counted, the order moves to it.
- ``top_pages``: the 10 pages with the most distinct visitors (``page_view`` events) in the last 5
  minutes, most first, then by page.

Identity. An event carrying both a userId and an anonymousId links them; an anonymousId belongs
to the user of its first link, by (time to the millisecond, event id in byte order) as in
ClickHouse (``identity_links``, ``commerce.visitors.PEOPLE``): a later link to another user is not
merged; an earlier one recorded later takes the anonymousId over. Reads must stay a ``ZCOUNT`` per
set (polled every few seconds), so the sets are kept resolved -- members are persons -- and the
script keeps what it needs to move an anonymousId's visits exactly when its person changes:

- a link claim per anonymousId (user, time, event id): compared like an order's claim;
- the anonymousId's own *trail*: its latest anonymous event and latest view of each page;
- the *own* visits (an event with a userId, or only a sessionId: their person never changes),
  apart from the resolved sets, so that a person's time can be set again from what is left;
- per user, the anonymousIds it holds claims of.

When a claim is made or moves, the anonymousId's trail goes into the new person's entries
(``ZADD GT``: the latest time stays) and the previous person -- the anonymousId itself, or the
user it belonged to -- is set again to the latest of its own visits, its trail if it is an
unclaimed anonymousId, and the trails of the anonymousIds it still holds: an earlier link
recorded later lowers the user left behind exactly, in the visitors set and in every page set
the anonymousId is in (the trail names them). The result is a function of the recorded events,
whatever the order, batches or concurrency (tests check it against a plain-Python oracle). The
alternative, members keyed by the stored visitor id and resolved when reading, would make every
poll read every member of the window and look up its link: exact too, but a read as costly as the
window is large, where this costs each write a few more commands and only a claim's move more.

Bounds: a claim lives LINK_TTL (7 days) after the anonymousId was last seen (a link of it, or
an anonymous event of it still within RETENTION, renews it); after a week's silence a returning
anonymousId counts as itself until linked again, and a link then to another user would win here
though not in ClickHouse. The rebuild restores the claims of every anonymousId seen in LINK_TTL
from ClickHouse, with their true first link (it reads a week of events' anonymousIds for that).
The own sets double the visitor and page sets' memory. Sets written before this scheme hold
visitor ids and no own sets: for their 15 minutes a claim's move may lower a user too far.

ClickHouse remains the source of truth; these counters exist so a dashboard can poll every few
seconds without a scan. Everything lives under ``rt:{<project>}:``; the braces are a Redis Cluster
hash tag, so all of a project's keys share one slot and one Lua script may touch them all:

- ``rt:{p}:visitors`` sorted set: person -> latest event time (epoch seconds). TTL 15 min.
- ``rt:{p}:pages`` sorted set: page text -> latest page_view time. TTL 15 min.
- ``rt:{p}:page:<blake2b(page)>`` sorted set: person -> latest view of that page. 15 min.
  (The page is hashed for the key, as it may hold any character; its text is the index member.)
- ``rt:{p}:own:visitors``, ``rt:{p}:own:page:<blake2b(page)>`` sorted sets: the same, from own
  visits only (userId or sessionId: visitor id -> latest time). 15 min.
- ``rt:{p}:anon:<blake2b(anonymousId)>`` sorted set, its trail: ``v`` -> latest event without a
  userId, ``<blake2b(page)>`` -> latest view of that page. 15 min.
- ``rt:{p}:link:<blake2b(anonymousId)>`` hash, its claim: user ``u``, its ``blake2b`` ``d``, time
  ``t`` (epoch ms) and event id ``e`` of the first link. LINK_TTL (7 days), renewed when seen.
- ``rt:{p}:people:<blake2b(userId)>`` set: the blake2b of each anonymousId it holds a claim of
  (a member whose claim names another user is stale, skipped). LINK_TTL, renewed with them.
- ``rt:{p}:order:<blake2b(orderId)>`` hash, the order's claim: its current winner's time ``t``
  (epoch ms), event id ``e``, total ``v`` and currency ``c``, and where it was counted: day hash key
  ``h`` and quarter ``q`` (both empty when the winner is not counted, see ``record``). 3 days.
- ``rt:{p}:orders:<YYYYMMDD>:<CUR>`` hash: ``c<q>`` orders of quarter hour ``q`` (0..95) of that
  UTC day, in that currency, and their revenue in minor units, split so that no field can
  overflow: ``R<q>`` * 10^12 + ``r<q>``, the script keeping ``0 <= r<q> < 10^12`` (it carries the
  excess into ``R<q>``, exactly, by decimal digits). An order adds at most 10^12 - 1 to ``r<q>``
  and total // 10^12 + 1 to ``R<q>`` (2 at the 10^12 cap), so ``R<q>`` reaches 2^63 only after
  more than 2^62 orders in one quarter hour: never. A bucket written before the split (all of
  the revenue in ``r<q>``) reads the same, and is split on its next write. 4 days.

Two keys outside any project say whether the counters can be trusted (``realtime_rebuild.py``;
the tag ``{.meta}`` cannot be a project id, which is ``[A-Za-z0-9_-]``): ``rt:{.meta}:epoch``
(the ``run_id`` of the Redis server whose data we vouch for; absent: lost or never built) and
``rt:{.meta}:stale`` (hash: project -> pending rebuild). ``current_snapshot`` reads them in the
same round trip as the counters and answers None when the project's counters are behind.

Writes are one server-side Lua script per batch: one round trip, atomic (an order's claim and
its increments, or the move of its counts to an earlier winner, or a link's move of an
anonymousId's visits, cannot be separated by a crash or a concurrent retry), and idempotent
(``ZADD GT`` never lowers a time; a claim only ever moves to a strictly earlier (time, id), so
recording an event already recorded changes nothing). The script reads the old winner's day hash
from the claim, and names the identity keys itself, so those keys are not in ``KEYS``; they share
the project's hash tag, hence the slot, so this holds in a cluster too. Times come from the
application's clock, never from Redis ``TIME``, so "now" is the same for writers and readers and
tests can control it; TTLs are durations, not instants, for the same reason (Redis expires keys
by its own clock).

``erase`` removes a user and its anonymousIds from the visitor counters (erasure, for
``common/erasure.py``): one SCAN of the project's keys for its page sets, then one script.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NamedTuple, TypeVar
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis

ACTIVE_WINDOW = timedelta(minutes=5)
# Visitor and page sets keep entries twice as long as the window, so a reader whose clock lags a
# writer's by up to 5 minutes still sees everything; older entries are trimmed on every write.
RETENTION = timedelta(minutes=10)
# A window key lives 15 minutes after its last write: by then every entry in it (scores are never
# later than the write time, see ``clamp`` in ``record``) is older than RETENTION, so an idle
# project's sets vanish.
WINDOW_TTL_SECONDS = 15 * 60
# Orders: the elapsed time since local midnight is at most 25 hours in any zone (a day with a
# one-hour DST fall-back), whatever the zone's UTC offset: +14:00 or -12:00 only changes *which*
# UTC instant midnight is, not how long ago it was. So an order more than 25 h old can never be
# "today" again. ORDER_MAX_AGE doubles that: margin for writer/reader clock skew and for a zone
# whose government moves it back by more than an hour; still bounded. Ingestion refuses events
# more than an hour ahead, so anything later is not a real order time.
ORDER_MAX_AGE = timedelta(hours=48)
ORDER_MAX_AHEAD = timedelta(hours=1)
# An order claim must outlive every bucket its duplicates could be counted next to: a recorded
# event is at most ORDER_MAX_AHEAD ahead and is read at most ORDER_MAX_AGE after its time, so a
# claim of ORDER_MAX_AGE + ORDER_MAX_AHEAD suffices; three days is that plus a day of margin. The
# TTL is set again whenever the winner changes. Once a claim has expired the order is forgotten: a
# late duplicate still inside the bounds counts again (and a late earlier one cannot undo anything).
ORDER_CLAIM_TTL_SECONDS = 3 * 24 * 3600
# A day hash holds orders of UTC day D (times in [D, D+24h)) and is read until D + 24h + 48h; it
# is refreshed on every write, and its first write is at most an hour before D, so four days
# after the last write always covers it. It also outlives the claims written with it (3 days), so
# the claim of a counted order always finds the bucket to take it out of when its winner moves.
ORDER_BUCKETS_TTL_SECONDS = 4 * 24 * 3600
# An anonymousId's link claim (and its user's set of claimed anonymousIds) lives a week after
# the anonymousId was last seen (any event carrying it renews both); see "Identity" above.
LINK_TTL = timedelta(days=7)
LINK_TTL_SECONDS = int(LINK_TTL.total_seconds())
BUCKET = timedelta(minutes=15)  # a quarter hour: every zone's midnight falls on one (:30, :45)
TOP_PAGES = 10
# The snapshot counts visitors of at most this many candidate pages (those viewed most recently
# within the window). With more distinct pages active in 5 minutes, top pages are the top among
# these 1000, an approximation bounded in cost: one ZCOUNT each, pipelined.
MAX_CANDIDATE_PAGES = 1000
MAX_PAGE_CHARS = 512
# Revenue is kept as R * REVENUE_BASE + r (see the module docstring). A power of ten so that the
# script splits any decimal total exactly by its digits; 10^12 is also the largest amount.
REVENUE_DIGITS = 12
REVENUE_BASE = 10**REVENUE_DIGITS
EPOCH_KEY = "rt:{.meta}:epoch"
STALE_KEY = "rt:{.meta}:stale"

_K = TypeVar("_K")


class RealtimeEvent(NamedTuple):
    """The part of an accepted event the realtime counters need. A NamedTuple: the log writer
    makes one per stored event, and a frozen dataclass's __init__ costs several times more."""

    event_id: str
    event: str  # e.g. "page_view", "order_completed"
    ts: datetime  # tz-aware event time
    visitor_id: str
    page: str  # page of a page_view ("" otherwise; ignored on other events)
    order_id: str  # for order_completed
    total: int  # minor units, for order_completed
    currency: str  # for order_completed
    # Identity: both set on an event links the anonymousId to the userId; an anonymousId alone
    # makes the visit that anonymousId's (counted for its user once linked). Neither: the visit
    # is ``visitor_id``'s (a sessionId, or a userId set only there).
    user_id: str = ""
    anonymous_id: str = ""


@dataclass(frozen=True)
class RealtimeSnapshot:
    active_visitors: int
    orders_today: int
    revenue_today: int
    top_pages: list[tuple[str, int]]  # (page, distinct visitors), most first then by page


# Shared by the record and erase scripts, which declare before it: P (the project's key prefix),
# horizon (text) and horizon_n (number), window_ttl, link_ttl. Members of an anonymousId's trail:
# 'v' for its latest event, a page digest for its latest view of that page.
_PEOPLE_LUA = """
local function person_key(m)
  if m == 'v' then return P .. 'visitors' end
  return P .. 'page:' .. m
end

local function own_key(m)
  if m == 'v' then return P .. 'own:visitors' end
  return P .. 'own:page:' .. m
end

-- Keys given single members: trimmed and given their TTL once, at the end.
local touched, touched_list = {}, {}
local function touch(key)
  if not touched[key] then
    touched[key] = true
    table.insert(touched_list, key)
  end
end
local function trim_touched()
  for _, key in ipairs(touched_list) do
    redis.call('ZREMRANGEBYSCORE', key, '-inf', horizon)
    redis.call('EXPIRE', key, window_ttl)
  end
end

-- The person's entry in one set (m) set again from what it is made of: its own events, its
-- trail while it is an anonymousId without a claim, and the trails of the anonymousIds claimed
-- by it (a member of its people set whose claim names someone else is stale: skipped). Scores
-- stay the strings Redis gave: a Lua number would be formatted with 14 digits.
local function recompute(person, digest, m)
  local best, best_n = nil, nil
  local function consider(score)
    if score then
      local n = tonumber(score)
      if best_n == nil or n > best_n then best, best_n = score, n end
    end
  end
  consider(redis.call('ZSCORE', own_key(m), person))
  if redis.call('EXISTS', P .. 'link:' .. digest) == 0 then
    consider(redis.call('ZSCORE', P .. 'anon:' .. digest, m))
  end
  for _, xd in ipairs(redis.call('SMEMBERS', P .. 'people:' .. digest)) do
    if redis.call('HGET', P .. 'link:' .. xd, 'd') == digest then
      consider(redis.call('ZSCORE', P .. 'anon:' .. xd, m))
    end
  end
  local key = person_key(m)
  if best_n ~= nil and best_n > horizon_n then
    redis.call('ZADD', key, best, person)
    touch(key)
  else
    redis.call('ZREM', key, person)
  end
end

-- The anonymousId (digest xd) has just been claimed by `to` (digest td), away from `from`: its
-- previous owner (owned) or itself. Its trail's times go to `to`; `from` keeps what else it has.
local function move(xd, owned, from, fd, to, td)
  if owned then redis.call('SREM', P .. 'people:' .. fd, xd) end
  local people = P .. 'people:' .. td
  redis.call('SADD', people, xd)
  redis.call('EXPIRE', people, link_ttl)
  local trail = redis.call('ZRANGEBYSCORE', P .. 'anon:' .. xd, '(' .. horizon, '+inf',
                           'WITHSCORES')
  for i = 1, #trail, 2 do
    local m = trail[i]
    local key = person_key(m)
    redis.call('ZADD', key, 'GT', trail[i + 1], to)
    touch(key)
    recompute(from, fd, m)
  end
end
"""

# KEYS: visitors, pages index, then one set per page with own views, one claim per order, one
#   hash per day. Other keys of the project (same hash tag, hence slot) are named by the script.
# ARGV: horizon, window TTL, claim TTL, buckets TTL, #pages, #orders, revenue digits, key prefix,
#   link TTL, then
#   own visits:  n, then n pairs (score, visitor)       (events with a userId, or only a session)
#   index:       n, then n pairs (score, page)          (every page viewed)
#   per page:    page digest, n, then n pairs (score, visitor)   (own views; n_pages of them)
#   links:       n, then per link: anonymousId, its digest, userId, its digest, epoch ms, event id
#   anonymous:   n, then per anonymousId: the id, its digest, k, then k pairs (score, member):
#                member 'v' (any event) or a page digest (a view of that page)
#   per order:   day-hash index (1-based among the hash keys; 0: too old to count), time (epoch
#                ms), event id, total, currency, quarter, total % 10^12, total // 10^12
# Returns the number of order claims written: orders newly counted, or moved to an earlier event.
_RECORD_LUA = (
    """
local horizon = ARGV[1]
local horizon_n = tonumber(horizon)
local window_ttl = tonumber(ARGV[2])
local claim_ttl = tonumber(ARGV[3])
local buckets_ttl = tonumber(ARGV[4])
local n_pages = tonumber(ARGV[5])
local n_orders = tonumber(ARGV[6])
local DIGITS = tonumber(ARGV[7])
local P = ARGV[8]
local link_ttl = tonumber(ARGV[9])
local at = 10
"""
    + _PEOPLE_LUA
    + """
local function pairs_arg()
  local n = tonumber(ARGV[at])
  local first = at + 1
  at = first + 2 * n
  return first, first + 2 * n - 1
end

-- GT: a retried or late event never moves a time back. Chunked to stay far below Lua's stack
-- limit on unpack.
local function window_write(key, first, last)
  for s = first, last, 400 do
    redis.call('ZADD', key, 'GT', unpack(ARGV, s, math.min(s + 399, last)))
  end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', horizon)
  redis.call('EXPIRE', key, window_ttl)
end

-- (t1, e1) < (t2, e2): times as numbers (epoch ms, exact in a double), ids byte by byte. Not Lua's
-- '<' on strings: that is strcoll, which follows the server's locale.
local function earlier(t1, e1, t2, e2)
  if t1 ~= t2 then return t1 < t2 end
  for i = 1, math.min(#e1, #e2) do
    local a, b = string.byte(e1, i), string.byte(e2, i)
    if a ~= b then return a < b end
  end
  return #e1 < #e2
end

-- Own visits: the visitor is the person, whatever any link says.
local first, last = pairs_arg()
if last >= first then
  window_write(P .. 'own:visitors', first, last)
  window_write(KEYS[1], first, last)
end
first, last = pairs_arg()
if last >= first then window_write(KEYS[2], first, last) end
for p = 1, n_pages do
  local page_digest = ARGV[at]
  at = at + 1
  first, last = pairs_arg()
  window_write(P .. 'own:page:' .. page_digest, first, last)
  window_write(KEYS[2 + p], first, last)
end

-- Links: an anonymousId's claim moves only to a strictly earlier (time, id); when its user
-- changes, its trail moves with it.
local n_links = tonumber(ARGV[at])
at = at + 1
for l = 1, n_links do
  local x, xd, u, ud, t, e = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4],
                             ARGV[at + 5]
  at = at + 6
  local claim = P .. 'link:' .. xd
  local old = redis.call('HMGET', claim, 'u', 't', 'e', 'd')
  local owner_d = old[4]
  if not old[1] or earlier(tonumber(t), e, tonumber(old[2]), old[3]) then
    redis.call('HSET', claim, 'u', u, 't', t, 'e', e, 'd', ud)
    owner_d = ud
    if not old[1] then
      move(xd, false, x, xd, u, ud)
    elseif old[1] ~= u then
      move(xd, true, old[1], old[4], u, ud)
    end
  end
  redis.call('EXPIRE', claim, link_ttl)
  local people = P .. 'people:' .. owner_d
  redis.call('SADD', people, xd)
  redis.call('EXPIRE', people, link_ttl)
end

-- Anonymous visits: kept in the anonymousId's trail, and counted for its person: the user of
-- its claim, else itself.
local n_anonymous = tonumber(ARGV[at])
at = at + 1
for a = 1, n_anonymous do
  local x, xd = ARGV[at], ARGV[at + 1]
  at = at + 2
  first, last = pairs_arg()
  window_write(P .. 'anon:' .. xd, first, last)
  local claim = P .. 'link:' .. xd
  local owner = redis.call('HMGET', claim, 'u', 'd')
  local person = x
  if owner[1] then
    person = owner[1]
    redis.call('EXPIRE', claim, link_ttl)
    local people = P .. 'people:' .. owner[2]
    redis.call('SADD', people, xd)
    redis.call('EXPIRE', people, link_ttl)
  end
  for i = first, last, 2 do
    local key = person_key(ARGV[i + 1])
    redis.call('ZADD', key, 'GT', ARGV[i], person)
    touch(key)
  end
end
trim_touched()

-- Revenue is R<q> * 10^12 + r<q>. Bring r<q> back into [0, 10^12): a borrow after taking an
-- order out, or a carry of every digit above the low twelve -- by string, so exactly, whatever
-- the size (a bucket from before the split holds all of its revenue in r<q>). Arguments to
-- HINCRBY are always strings: Lua numbers would be formatted as floats.
local function settle(day_key, quarter)
  local r = 'r' .. quarter
  local low = redis.call('HGET', day_key, r)
  if not low then return end
  local n = tonumber(low)
  if n < 0 then
    redis.call('HINCRBY', day_key, r, '1' .. string.rep('0', DIGITS))
    redis.call('HINCRBY', day_key, 'R' .. quarter, '-1')
  elseif #low > DIGITS then
    local high = string.sub(low, 1, -DIGITS - 1)
    redis.call('HINCRBY', day_key, r, '-' .. high .. string.rep('0', DIGITS))
    redis.call('HINCRBY', day_key, 'R' .. quarter, high)
  end
end

local function put_in(day_key, quarter, low, high)
  settle(day_key, quarter)
  redis.call('HINCRBY', day_key, 'c' .. quarter, 1)
  redis.call('HINCRBY', day_key, 'r' .. quarter, low)
  if high ~= '0' then redis.call('HINCRBY', day_key, 'R' .. quarter, high) end
  settle(day_key, quarter)
end

-- Take a counted order out of its bucket. Guarded so that a bucket lost early (eviction, manual
-- deletion) is neither recreated without a TTL nor driven negative.
local function take_out(day_key, quarter, total)
  local c, r = 'c' .. quarter, 'r' .. quarter
  local count = tonumber(redis.call('HGET', day_key, c))
  if not count or count < 1 then return end
  if count == 1 then
    redis.call('HDEL', day_key, c, r, 'R' .. quarter)
    return
  end
  redis.call('HINCRBY', day_key, c, '-1')
  if string.sub(total, 1, 1) == '-' then
    redis.call('HINCRBY', day_key, r, string.sub(total, 2))
  else
    -- total = high * 10^12 + low, read off its decimal digits
    local low = tonumber(string.sub(total, -DIGITS))
    local high = string.sub(total, 1, -DIGITS - 1)
    if low ~= 0 then redis.call('HINCRBY', day_key, r, string.format('-%d', low)) end
    if high ~= '' then redis.call('HINCRBY', day_key, 'R' .. quarter, '-' .. high) end
  end
  settle(day_key, quarter)
end

local hashes = 2 + n_pages + n_orders
local written = 0
for o = 1, n_orders do
  local claim = KEYS[2 + n_pages + o]
  local index, t, e, total = tonumber(ARGV[at]), ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local currency, quarter = ARGV[at + 4], ARGV[at + 5]
  local low, high = ARGV[at + 6], ARGV[at + 7]
  at = at + 8
  -- A string here is a claim written before claims were hashes: it holds no time to compare,
  -- so it is left to win, as it did then, until it expires.
  local old = redis.pcall('HMGET', claim, 't', 'e', 'h', 'q', 'v')
  if not old.err then
    local claimed = old[1] ~= false
    -- Unclaimed and too old: nothing to count and nothing to undo; leave no claim (bounded memory
    -- when old orders are backfilled).
    if (claimed and earlier(tonumber(t), e, tonumber(old[1]), old[2]))
        or (not claimed and index > 0) then
      if claimed and old[3] and old[3] ~= '' then take_out(old[3], old[4], old[5]) end
      local day_key = ''
      if index > 0 then
        day_key = KEYS[hashes + index]
        put_in(day_key, quarter, low, high)
        redis.call('EXPIRE', day_key, buckets_ttl)
      else
        quarter = ''
      end
      redis.call('HSET', claim, 't', t, 'e', e, 'v', total, 'c', currency, 'h', day_key,
                 'q', quarter)
      redis.call('EXPIRE', claim, claim_ttl)
      written = written + 1
    end
  end
end
return written
"""
)

# KEYS: every sorted set of the project with visitors as members (visitors, own:visitors, page:*,
#   own:page:*). ARGV: key prefix, horizon, window TTL, link TTL, the user, its digest, then per
#   anonymousId: the id, its digest.
# The anonymousIds erased are those given and every one claimed by the user. Each loses its claim
# and trail; a person other than the user that owned one is set again without it (``recompute``);
# then the user and the given ids leave every set. Returns the number of anonymousIds erased.
_ERASE_LUA = (
    """
local P = ARGV[1]
local horizon = ARGV[2]
local horizon_n = tonumber(horizon)
local window_ttl = tonumber(ARGV[3])
local link_ttl = tonumber(ARGV[4])
local user, ud = ARGV[5], ARGV[6]
"""
    + _PEOPLE_LUA
    + """
local ids, digests, seen = {user}, {}, {}
local function erase_digest(xd)
  if not seen[xd] then
    seen[xd] = true
    table.insert(digests, xd)
  end
end
for i = 7, #ARGV, 2 do
  table.insert(ids, ARGV[i])
  erase_digest(ARGV[i + 1])
end
for _, xd in ipairs(redis.call('SMEMBERS', P .. 'people:' .. ud)) do
  if redis.call('HGET', P .. 'link:' .. xd, 'd') == ud then erase_digest(xd) end
end
for _, xd in ipairs(digests) do
  local claim, trail = P .. 'link:' .. xd, P .. 'anon:' .. xd
  local owner = redis.call('HMGET', claim, 'u', 'd')
  local members = redis.call('ZRANGEBYSCORE', trail, '(' .. horizon, '+inf')
  redis.call('DEL', claim, trail)
  if owner[1] and owner[2] ~= ud then
    redis.call('SREM', P .. 'people:' .. owner[2], xd)
    for _, m in ipairs(members) do recompute(owner[1], owner[2], m) end
  end
end
redis.call('DEL', P .. 'people:' .. ud)
for _, key in ipairs(KEYS) do
  for s = 1, #ids, 400 do
    redis.call('ZREM', key, unpack(ids, s, math.min(s + 399, #ids)))
  end
end
trim_touched()
return #digests
"""
)


def _member(text: str) -> bytes:
    """Bytes for an id only ever compared, never shown: keeps every distinct string distinct.

    ``surrogatepass`` because a JSON body may carry a lone surrogate (``"\\ud800"``), which plain
    UTF-8 encoding (what redis-py does with ``str``) refuses.
    """
    return text.encode("utf-8", "surrogatepass")


def _page_text(page: str) -> str:
    """The page as stored and shown: at most 512 characters, always valid UTF-8."""
    return page[:MAX_PAGE_CHARS].encode("utf-8", "replace").decode("utf-8")


def _digest(text: str | bytes) -> str:
    """A fixed-length, separator-free key part for arbitrary user strings (pages, order ids)."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _text(value: str | bytes) -> str:
    """Works whether or not the client was created with ``decode_responses``."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _epoch(moment: datetime) -> float:
    if moment.tzinfo is None:
        raise ValueError("realtime times must be timezone-aware")
    return moment.timestamp()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _millis(moment: datetime) -> int:
    """Epoch milliseconds, truncated as storage keeps them (DateTime64(3)); exact, no float."""
    if moment.tzinfo is None:
        raise ValueError("realtime times must be timezone-aware")
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _order_key(event: RealtimeEvent) -> tuple[int, bytes]:
    """What decides an order's first event: time to the millisecond, then event id bytes."""
    return _millis(event.ts), _member(event.event_id)


def _quarter(moment: datetime) -> tuple[date, int]:
    """The UTC day and quarter-hour index (0..95) a moment falls in."""
    utc = moment.astimezone(UTC)
    return utc.date(), (utc.hour * 60 + utc.minute) // 15


def project_key_pattern(project_id: str) -> str:
    """A SCAN pattern matching every counter key of the project (and no other project's)."""
    prefix = _Keys(project_id).prefix
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in prefix) + "*"


class _Keys:
    """Key names for one project; the hash tag keeps them on one cluster slot."""

    def __init__(self, project_id: str) -> None:
        # A brace inside the id would end (or start) the hash tag early, splitting the project
        # across slots and making key names ambiguous between projects.
        if not project_id or "{" in project_id or "}" in project_id:
            raise ValueError(f"project id unusable in a Redis key: {project_id!r}")
        self.prefix = f"rt:{{{project_id}}}:"
        self.visitors = self.prefix + "visitors"
        self.own_visitors = self.prefix + "own:visitors"
        self.pages = self.prefix + "pages"

    def page(self, page: str) -> str:
        return f"{self.prefix}page:{_digest(page)}"

    def order(self, order_id: str) -> str:
        return f"{self.prefix}order:{_digest(order_id)}"

    def orders(self, day: date, currency: str) -> str:
        # The day has a fixed width and comes first, so any currency string stays unambiguous.
        return f"{self.prefix}orders:{day:%Y%m%d}:{currency}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class RealtimeTally:
    """A batch of events summed up as ``RealtimeCounters.record`` sends them to Redis, each
    visitor's and page's latest event time not yet clamped to the clock (``record_tally`` does
    that when it counts): the tallies of two batches merge (``add``) into the tally of both, so
    an ingest worker tallies a request and the log writer merges a block's requests."""

    __slots__ = ("first_orders", "links", "own", "pages", "trails", "viewed")

    def __init__(self) -> None:
        # Visits whose visitor is the person (userId or session) -> latest.
        self.own: dict[bytes, float] = {}
        self.pages: dict[str, dict[bytes, float]] = {}  # page -> own viewer -> latest view
        self.viewed: dict[str, float] = {}  # every page viewed -> latest view
        # anonymousId -> 'v' (any visit) or a page's digest -> latest.
        self.trails: dict[bytes, dict[str, float]] = {}
        # anonymousId -> (its first link's order key, the userId).
        self.links: dict[bytes, tuple[tuple[int, bytes], bytes]] = {}
        self.first_orders: dict[str, RealtimeEvent] = {}

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.own, self.pages, self.viewed, self.trails, self.links, self.first_orders)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.own, self.pages, self.viewed, self.trails, self.links, self.first_orders = state

    @classmethod
    def of(cls, events: Iterable[RealtimeEvent]) -> RealtimeTally:
        tally = cls()
        own, pages, viewed, trails = tally.own, tally.pages, tally.viewed, tally.trails
        links, first_orders = tally.links, tally.first_orders
        for event in events:
            ts = _epoch(event.ts)
            if event.event == "order_completed" and event.order_id and event.currency:
                # Within a batch only the first order event (``_order_key``) can matter, as in
                # ClickHouse; the script then compares it with the order's claim, if any.
                seen = first_orders.get(event.order_id)
                if seen is None or _order_key(event) < _order_key(seen):
                    first_orders[event.order_id] = event
            if event.user_id and event.anonymous_id:
                # Only the batch's first link of an anonymousId can matter (as for orders).
                anonymous = _member(event.anonymous_id)
                claim = _order_key(event)
                held = links.get(anonymous)
                if held is None or claim < held[0]:
                    links[anonymous] = (claim, _member(event.user_id))
            own_id = event.user_id or ("" if event.anonymous_id else event.visitor_id)
            if not (own_id or event.anonymous_id):
                continue
            page = _page_text(event.page) if event.event == "page_view" and event.page else ""
            if page:
                _keep_latest(viewed, page, ts)
            if own_id:
                visitor = _member(own_id)
                _keep_latest(own, visitor, ts)
                if page:
                    _keep_latest(pages.setdefault(page, {}), visitor, ts)
            else:
                trail = trails.setdefault(_member(event.anonymous_id), {})
                _keep_latest(trail, "v", ts)
                if page:
                    _keep_latest(trail, _digest(page), ts)
        return tally

    def add(self, other: RealtimeTally) -> None:
        """Merge ``other`` in: afterwards this is the tally of both batches."""
        _merge_latest(self.own, other.own)
        _merge_latest(self.viewed, other.viewed)
        for page, viewers in other.pages.items():
            _merge_latest(self.pages.setdefault(page, {}), viewers)
        for anonymous, trail in other.trails.items():
            _merge_latest(self.trails.setdefault(anonymous, {}), trail)
        for anonymous, link in other.links.items():
            held = self.links.get(anonymous)
            if held is None or link[0] < held[0]:
                self.links[anonymous] = link
        for order_id, event in other.first_orders.items():
            seen = self.first_orders.get(order_id)
            if seen is None or _order_key(event) < _order_key(seen):
                self.first_orders[order_id] = event


def _window(latest: dict[_K, float], now_s: float, horizon: float) -> dict[_K, float]:
    """The latest times clamped to now, those still after the horizon.

    An event time-stamped ahead of the clock (skew; ingestion allows an hour) counts as happening
    now: kept in the future it would either pin the visitor "active" for up to an hour or, as the
    latest time under ZADD GT, hide their real current activity. One older than the horizon can
    never be in the window again. Clamping the latest time is clamping each (min and max
    commute), so tallies merge before this."""
    clamped = {key: min(ts, now_s) for key, ts in latest.items()}
    return {key: score for key, score in clamped.items() if score > horizon}


def _merge_latest(into: dict[_K, float], other: dict[_K, float]) -> None:
    for key, score in other.items():
        held = into.get(key)
        if held is None or score > held:
            into[key] = score


class RealtimeCounters:
    """Records accepted events into Redis and reads the realtime figures back.

    Redis errors propagate: the caller decides whether a failed counter update fails the request
    (it should not: ClickHouse has the event) and what to answer when Redis is down.
    """

    def __init__(self, redis: aioredis.Redis, clock: Callable[[], datetime] = _utc_now) -> None:
        self._redis = redis
        self._clock = clock
        self._record_script = redis.register_script(_RECORD_LUA)
        self._erase_script = redis.register_script(_ERASE_LUA)

    async def record(self, project_id: str, events: Sequence[RealtimeEvent]) -> None:
        """Add a batch of accepted events, in one round trip; safe to repeat."""
        await self.record_tally(project_id, RealtimeTally.of(events))

    async def record_tally(self, project_id: str, tally: RealtimeTally) -> None:
        """Add the events ``tally`` sums up (``record``), in one round trip; safe to repeat."""
        keys = _Keys(project_id)
        now = self._clock()
        now_s = _epoch(now)
        horizon = now_s - RETENTION.total_seconds()

        own = _window(tally.own, now_s, horizon)
        viewed = _window(tally.viewed, now_s, horizon)
        pages = {
            page: kept
            for page, viewers in tally.pages.items()
            if (kept := _window(viewers, now_s, horizon))
        }
        # A trail's "v" is at least as late as its pages: the trail is kept if "v" is.
        trails = {
            anonymous: recent
            for anonymous, trail in tally.trails.items()
            if (recent := _window(trail, now_s, horizon))
        }
        links = tally.links
        first_orders = tally.first_orders

        # Outside these bounds an order can never be "today" (see ORDER_MAX_AGE), so it is never
        # counted. An order more than ORDER_MAX_AHEAD ahead is not a real order time (ingestion
        # refuses it): ignored. One more than ORDER_MAX_AGE old still goes to the script: if it is
        # earlier than the order's claimed winner, the claim moves to it and the old winner's
        # counts are taken out, with nothing counted in their place (the order is not today
        # anywhere). Without a claim it leaves no trace.
        earliest, latest = now - ORDER_MAX_AGE, now + ORDER_MAX_AHEAD
        orders = [e for e in first_orders.values() if e.ts <= latest]
        if not own and not trails and not links and not orders:
            return

        page_list = sorted(pages)
        day_keys: dict[str, int] = {}
        order_args: list[str | bytes | int] = []
        for order in orders:
            day, quarter = _quarter(order.ts)
            index = 0
            if order.ts >= earliest:
                day_key = keys.orders(day, order.currency)
                index = day_keys.setdefault(day_key, len(day_keys) + 1)
            high, low = divmod(order.total, REVENUE_BASE)
            order_args += [index, _millis(order.ts), _member(order.event_id), order.total]
            order_args += [order.currency, quarter, low, high]

        args: list[str | bytes | int | float] = [
            horizon,
            WINDOW_TTL_SECONDS,
            ORDER_CLAIM_TTL_SECONDS,
            ORDER_BUCKETS_TTL_SECONDS,
            len(page_list),
            len(orders),
            REVENUE_DIGITS,
            keys.prefix,
            LINK_TTL_SECONDS,
        ]
        args += _pairs(own)
        args += _pairs(viewed)
        for page in page_list:
            args.append(_digest(page))
            args += _pairs(pages[page])
        args.append(len(links))
        for anonymous, ((ms, event_id), user) in links.items():
            args += [anonymous, _digest(anonymous), user, _digest(user), ms, event_id]
        args.append(len(trails))
        for anonymous, trail in trails.items():
            args += [anonymous, _digest(anonymous), *_pairs(trail)]
        args += order_args
        script_keys = [keys.visitors, keys.pages]
        script_keys += [keys.page(page) for page in page_list]
        script_keys += [keys.order(order.order_id) for order in orders]
        script_keys += list(day_keys)
        await self._record_script(keys=script_keys, args=args)

    async def erase(self, project_id: str, user_id: str, anonymous_ids: Sequence[str]) -> None:
        """Remove every trace of ``user_id`` and of ``anonymous_ids`` (and of any other
        anonymousId claimed by the user) from the project's visitor counters: afterwards they
        read as if those visits had never been recorded, and no key or member holds the ids.

        What is erased: the user's own visits (events with its userId), the visits of each
        anonymousId alone, the anonymousIds' link claims. A visit carrying another user's userId
        is that user's and stays. Orders are left to the caller (a rebuild). One SCAN of the
        project's keys (to find its page sets), then one script: atomic, and safe to repeat.
        """
        keys = _Keys(project_id)
        horizon = _epoch(self._clock()) - RETENTION.total_seconds()
        page_sets = (keys.prefix + "page:", keys.prefix + "own:page:")
        sets = [keys.visitors, keys.own_visitors]
        async for key in self._redis.scan_iter(match=project_key_pattern(project_id), count=1000):
            name = _text(key)
            if name.startswith(page_sets):
                sets.append(name)
        args: list[str | bytes | int | float] = [
            keys.prefix,
            horizon,
            WINDOW_TTL_SECONDS,
            LINK_TTL_SECONDS,
            _member(user_id),
            _digest(user_id),
        ]
        for anonymous in dict.fromkeys(anonymous_ids):
            args += [_member(anonymous), _digest(anonymous)]
        await self._erase_script(keys=sets, args=args)

    async def snapshot(self, project_id: str, zone: ZoneInfo, currency: str) -> RealtimeSnapshot:
        """The realtime figures now, "today" being the local day in ``zone``.

        Two pipelined round trips: the visitor count, the order buckets and the candidate pages;
        then the visitor count of each candidate page.
        """
        snapshot = await self._snapshot(project_id, zone, currency, check=False)
        assert snapshot is not None
        return snapshot

    async def current_snapshot(
        self, project_id: str, zone: ZoneInfo, currency: str
    ) -> RealtimeSnapshot | None:
        """``snapshot``, or None when the counters are known to be behind ClickHouse: Redis lost
        its data (no epoch key) or the project awaits a rebuild (in the stale hash). Checked
        in the first round trip, with the counters."""
        return await self._snapshot(project_id, zone, currency, check=True)

    async def _snapshot(
        self, project_id: str, zone: ZoneInfo, currency: str, check: bool
    ) -> RealtimeSnapshot | None:
        keys = _Keys(project_id)
        now = self._clock()
        since = f"({_epoch(now) - ACTIVE_WINDOW.total_seconds()!r}"
        local_day = now.astimezone(zone).date()
        # fold=0: if midnight is repeated, the first one; if it is skipped (DST at 00:00), the
        # pre-transition offset, which gives the instant the day actually began.
        midnight = datetime.combine(local_day, time(0), tzinfo=zone).astimezone(UTC)
        fields = _bucket_fields(midnight, now)

        pipe = self._redis.pipeline(transaction=False)
        pipe.zcount(keys.visitors, since, "+inf")
        pipe.zrange(
            keys.pages, "+inf", since, desc=True, byscore=True, offset=0, num=MAX_CANDIDATE_PAGES
        )
        for day, names in fields.items():
            pipe.hmget(keys.orders(day, currency), names)
        if check:
            pipe.exists(EPOCH_KEY)
            pipe.hexists(STALE_KEY, project_id)
        active, candidates, *buckets = await pipe.execute()
        if check:
            *buckets, epoch, stale = buckets
            if not epoch or stale:
                return None

        orders = revenue = 0
        for values in buckets:  # HMGET answers in request order: c<q>, r<q>, R<q>, c<q+1>, ...
            orders += sum(int(value) for value in values[0::3] if value is not None)
            revenue += sum(int(value) for value in values[1::3] if value is not None)
            revenue += REVENUE_BASE * sum(int(v) for v in values[2::3] if v is not None)

        pages = [_text(page) for page in candidates]
        counts: list[int] = []
        if pages:
            pipe = self._redis.pipeline(transaction=False)
            for page in pages:
                pipe.zcount(keys.page(page), since, "+inf")
            counts = [int(count) for count in await pipe.execute()]
        ranked = sorted(
            ((page, count) for page, count in zip(pages, counts, strict=True) if count > 0),
            key=lambda item: (-item[1], item[0]),
        )
        return RealtimeSnapshot(
            active_visitors=int(active),
            orders_today=orders,
            revenue_today=revenue,
            top_pages=ranked[:TOP_PAGES],
        )


def _bucket_fields(start: datetime, now: datetime) -> dict[date, list[str]]:
    """Hash fields per UTC day for every quarter hour from ``start`` through the one with ``now``.

    Local midnight is on a quarter hour in every zone in use today; were it not, flooring would
    include that one partial quarter. The quarter holding ``now`` counts whole, so an order
    time-stamped a few minutes ahead (within the same quarter) already shows.
    """
    moment = start.astimezone(UTC).replace(second=0, microsecond=0)
    moment -= timedelta(minutes=moment.minute % 15)
    fields: dict[date, list[str]] = {}
    while moment <= now:
        day, quarter = _quarter(moment)
        fields.setdefault(day, []).extend((f"c{quarter}", f"r{quarter}", f"R{quarter}"))
        moment += BUCKET
    return fields


def _keep_latest(into: dict[_K, float], key: _K, score: float) -> None:
    into[key] = max(score, into.get(key, score))


def _pairs(members: dict[bytes, float] | dict[str, float]) -> list[str | bytes | int | float]:
    """Flatten ``{member: score}`` to a count then ``score, member`` pairs, as ZADD wants them."""
    flat: list[str | bytes | int | float] = [len(members)]
    for member, score in members.items():
        flat += [score, member]
    return flat
