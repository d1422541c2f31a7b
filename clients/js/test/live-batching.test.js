// The batching mode, retries and persistence against the live main stack (docs/clients.md).
// Faults are injected with the `fetch` option around the real server; every count is read back
// from the server with a custom event name of the test's own.
import assert from 'node:assert/strict'
import { Commerce, CommerceError } from '../dist/index.js'
import {
  HTTP, KEY, MAIN, MemoryStorage, countEvents, liveTest, queueKeys, recordingFetch, settledCount, unavailable, unique
} from './helpers.js'

const baseUrl = HTTP
const HOUR = 3_600_000
const isBatch = (url) => String(url).endsWith('/analytics/event/batch')

liveTest(MAIN, 'enqueued events go in batches; flush delivers them all, each counted once', async () => {
  const name = unique('sdk_js_batch')
  const n = 25
  const delivered = []
  const failed = []
  const { fetch, calls } = recordingFetch()
  const commerce = new Commerce({
    apiKey: KEY, baseUrl, fetch, flushAt: 10, flushIntervalMs: HOUR,
    onSuccess: (events) => delivered.push(...events),
    onFailure: (events, error) => failed.push({ events, error })
  })
  const ids = []
  for (let i = 0; i < n; i++) ids.push(commerce.analytics.enqueue(name, { i, anonymousId: `anon_${i % 3}` }))
  assert.equal(new Set(ids).size, n)
  for (const id of ids) assert.match(id, /^evt_[0-9a-f]{32}$/)

  const result = await commerce.analytics.flush({ timeoutMs: 120_000 })
  assert.deepEqual(result, { delivered: n, failed: 0, pending: 0 })
  assert.deepEqual(failed, [])
  assert.deepEqual(delivered.map((e) => e.id).sort(), [...ids].sort())
  for (const e of delivered) {
    assert.equal(e.event, name)
    assert.equal(e.source.id, e.id)
    assert.ok(e.source.anonymousId.startsWith('anon_'), 'anonymousId lifted')
    assert.equal(e.source.properties.anonymousId, undefined)
    assert.ok(!Number.isNaN(Date.parse(e.timestamp)))
  }
  // flushAt 10: batches of at most 10 (two full ones sent as they filled, the rest by flush).
  const batches = calls.filter((c) => isBatch(c.url))
  assert.equal(batches.reduce((k, c) => k + c.body.events.length, 0), n)
  assert.ok(batches.every((c) => c.body.events.length <= 10 && c.status === 200))
  for (const c of batches) for (const e of c.body.events) assert.ok(e.sentAt && e.id && e.timestamp)

  assert.equal(await settledCount(commerce, name, n), n)
  assert.deepEqual(await commerce.close(), { delivered: 0, failed: 0, pending: 0 })
})

liveTest(MAIN, 'close flushes the queue, then refuses new events', async () => {
  const name = unique('sdk_js_close')
  const commerce = new Commerce({ apiKey: KEY, baseUrl, flushAt: 1000, flushIntervalMs: HOUR })
  for (let i = 0; i < 7; i++) commerce.analytics.enqueue(name, { i, userId: 'u_close' })
  assert.equal(commerce.analytics.queuedEvents, 7)
  assert.deepEqual(await commerce.close({ timeoutMs: 120_000 }), { delivered: 7, failed: 0, pending: 0 })
  assert.equal(commerce.analytics.queuedEvents, 0)
  assert.throws(() => commerce.analytics.enqueue(name, { userId: 'u_close' }),
    (e) => e instanceof CommerceError && e.code === 'CLOSED')
  await assert.rejects(commerce.analytics.track(name, { userId: 'u_close' }), (e) => e.code === 'CLOSED')
  assert.equal(await settledCount(commerce, name, 7), 7)
})

liveTest(MAIN, 'a retried event keeps its id and is stored once (track)', async () => {
  const name = unique('sdk_js_retry')
  // The first POST reaches the real server, then its answer is replaced by a 503.
  const { fetch, calls } = recordingFetch(async (url, init, real, n) => {
    const response = await real(url, init)
    return n === 1 ? unavailable() : response
  })
  const commerce = new Commerce({ apiKey: KEY, baseUrl, fetch, minBackoffMs: 20, maxBackoffMs: 200 })
  const ack = await commerce.analytics.track(name, { userId: 'u_retry', n: 1 })
  assert.equal(calls.length, 2)
  assert.deepEqual(calls.map((c) => c.status), [503, 201])
  assert.equal(calls[0].body.id, calls[1].body.id)
  assert.equal(ack.id, calls[0].body.id)
  assert.ok(calls[1].body.sentAt >= calls[0].body.sentAt, 'sentAt stamped per attempt')
  assert.equal(await settledCount(commerce, name, 1), 1)
})

liveTest(MAIN, 'a retried batch keeps its ids and is stored once (enqueue)', async () => {
  const name = unique('sdk_js_retry_batch')
  const { fetch, calls } = recordingFetch(async (url, init, real, n) => {
    const response = await real(url, init)
    return n === 1 ? unavailable() : response
  })
  const delivered = []
  const commerce = new Commerce({
    apiKey: KEY, baseUrl, fetch, minBackoffMs: 20, maxBackoffMs: 200, flushIntervalMs: HOUR,
    onSuccess: (events) => delivered.push(...events)
  })
  for (let i = 0; i < 5; i++) commerce.analytics.enqueue(name, { i, userId: 'u_retry' })
  assert.deepEqual(await commerce.analytics.flush({ timeoutMs: 120_000 }), { delivered: 5, failed: 0, pending: 0 })
  assert.deepEqual(calls.map((c) => c.status), [503, 200])
  assert.deepEqual(calls[0].body.events.map((e) => e.id), calls[1].body.events.map((e) => e.id))
  assert.equal(delivered.length, 5, 'onSuccess once per event')
  assert.equal(await settledCount(commerce, name, 5), 5)
})

liveTest(MAIN, 'a 400 is not retried: CommerceError with the field violation', async () => {
  const { fetch, calls } = recordingFetch()
  const commerce = new Commerce({ apiKey: KEY, baseUrl, fetch, minBackoffMs: 20 })
  await assert.rejects(commerce.analytics.track('Not A Name', { userId: 'u_400' }), (e) => {
    assert.ok(e instanceof CommerceError)
    assert.equal(e.code, 'INVALID_ARGUMENT')
    assert.equal(e.status, 400)
    assert.equal(e.reason, 'INVALID_ARGUMENT')
    assert.equal(e.fieldViolations.length, 1)
    assert.equal(e.fieldViolations[0].field, 'event')
    assert.ok(e.fieldViolations[0].description.length > 0)
    assert.ok(e.message.length > 0)
    return true
  })
  assert.equal(calls.length, 1)
  // An event naming no visitor gets the client's anonymousId; a userId over 256 characters is refused.
  await assert.rejects(commerce.analytics.track('sdk_js_anonymous', { n: 1, userId: 'u'.repeat(257) }),
    (e) => e.code === 'INVALID_ARGUMENT' && e.fieldViolations[0].field === 'userId')
  assert.equal(calls.length, 2)
})

liveTest(MAIN, 'a 500 is not retried; a 503 is retried at most maxRetries times', async () => {
  let status = 500
  const { fetch, calls } = recordingFetch(async () => new Response(
    JSON.stringify({ code: status === 500 ? 13 : 14, message: 'boom', details: [] }), { status }))
  const commerce = new Commerce({ apiKey: KEY, baseUrl, fetch, minBackoffMs: 1, maxBackoffMs: 5, maxRetries: 3 })
  await assert.rejects(commerce.analytics.track('sdk_js_never', { userId: 'u' }), (e) => e.code === 'INTERNAL' && e.status === 500)
  assert.equal(calls.length, 1)
  status = 503
  await assert.rejects(commerce.analytics.getSales(), (e) => e.code === 'UNAVAILABLE' && e.status === 503)
  assert.equal(calls.length, 1 + 4)
  // A connection failure is retried too, and reported as UNAVAILABLE.
  let attempts = 0
  const down = new Commerce({
    apiKey: KEY, baseUrl, minBackoffMs: 1, maxBackoffMs: 5, maxRetries: 2,
    fetch: async () => { attempts++; throw new TypeError('fetch failed') }
  })
  await assert.rejects(down.analytics.getRealtime(), (e) => e.code === 'UNAVAILABLE' && e.status === 0)
  assert.equal(attempts, 3)
})

liveTest(MAIN, 'a full queue refuses the next event at once (QUEUE_FULL)', async () => {
  const name = unique('sdk_js_full')
  const { fetch, calls } = recordingFetch()
  const commerce = new Commerce({ apiKey: KEY, baseUrl, fetch, maxQueueEvents: 3, flushIntervalMs: HOUR })
  for (let i = 0; i < 3; i++) commerce.analytics.enqueue(name, { i, userId: 'u_full' })
  const started = Date.now()
  assert.throws(() => commerce.analytics.enqueue(name, { i: 3, userId: 'u_full' }),
    (e) => e instanceof CommerceError && e.code === 'QUEUE_FULL' && e.status === 0)
  assert.ok(Date.now() - started < 100)
  assert.equal(calls.length, 0)
  assert.deepEqual(await commerce.close(), { delivered: 3, failed: 0, pending: 0 })
  assert.equal(await settledCount(commerce, name, 3), 3)

  const bytes = new Commerce({ apiKey: KEY, baseUrl, fetch, maxQueueBytes: 2000, flushIntervalMs: HOUR })
  bytes.analytics.enqueue(name, { pad: 'x'.repeat(1000), userId: 'u_full' })
  assert.throws(() => bytes.analytics.enqueue(name, { pad: 'x'.repeat(1000), userId: 'u_full' }), (e) => e.code === 'QUEUE_FULL')
  await bytes.close()
})

liveTest(MAIN, 'an event over 32 KB is refused before anything is sent (EVENT_TOO_LARGE)', async () => {
  const { fetch, calls } = recordingFetch()
  const commerce = new Commerce({ apiKey: KEY, baseUrl, fetch, flushIntervalMs: HOUR })
  const big = { blob: 'x'.repeat(33 * 1024), userId: 'u_big' }
  assert.throws(() => commerce.analytics.enqueue('sdk_js_big', big),
    (e) => e instanceof CommerceError && e.code === 'EVENT_TOO_LARGE')
  await assert.rejects(commerce.analytics.track('sdk_js_big', big), (e) => e.code === 'EVENT_TOO_LARGE')
  assert.equal(commerce.analytics.queuedEvents, 0)
  assert.equal(calls.length, 0)
  // Sizes are the server's (Python's json.dumps): each '€' is 6 characters (\u20ac), so 5,500
  // of them (16.5 KB of UTF-8) are over the limit, and the server agrees.
  const euros = { t: '€'.repeat(5_500) }
  assert.throws(() => commerce.analytics.enqueue('sdk_js_big', { ...euros, userId: 'u' }),
    (e) => e.code === 'EVENT_TOO_LARGE')
  assert.equal(calls.length, 0)
  const raw = await globalThis.fetch(`${baseUrl}/analytics/event`, {
    method: 'POST',
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ event: 'sdk_js_big', userId: 'u', properties: euros })
  })
  assert.equal(raw.status, 400)
  assert.equal((await raw.json()).details.find((d) => d.fieldViolations).fieldViolations[0].field, 'properties')
  // Just under it is sent and stored (32 KB less the context's size and the JSON around).
  const name = unique('sdk_js_under')
  const ack = await commerce.analytics.track(name, { t: 'x'.repeat(31 * 1024), userId: 'u' })
  assert.equal(ack.event, name)
  await commerce.close()
})

liveTest(MAIN, 'a batch with one invalid event: onFailure for exactly that event, the others stored', async () => {
  const name = unique('sdk_js_partial')
  const ok = []
  const failures = []
  const commerce = new Commerce({
    apiKey: KEY, baseUrl, flushIntervalMs: HOUR,
    onSuccess: (events) => ok.push(...events),
    onFailure: (events, error) => failures.push({ events, error })
  })
  const good = []
  good.push(commerce.analytics.enqueue(name, { i: 0, userId: 'u_partial' }))
  good.push(commerce.analytics.enqueue(name, { i: 1, userId: 'u_partial' }))
  const bad = commerce.analytics.enqueue(name, { i: 2, userId: 'u'.repeat(257) }) // over 256 characters
  good.push(commerce.analytics.enqueue(name, { i: 3, userId: 'u_partial' }))
  assert.deepEqual(await commerce.analytics.flush({ timeoutMs: 120_000 }), { delivered: 3, failed: 1, pending: 0 })
  assert.equal(failures.length, 1)
  assert.deepEqual(failures[0].events.map((e) => e.id), [bad])
  assert.deepEqual(failures[0].events[0].properties, { i: 2 })
  assert.ok(failures[0].error instanceof CommerceError)
  assert.equal(failures[0].error.code, 'INVALID_ARGUMENT')
  assert.deepEqual(failures[0].error.fieldViolations.map((v) => v.field), ['userId'])
  assert.deepEqual(ok.map((e) => e.id).sort(), [...good].sort())
  assert.equal(await settledCount(commerce, name, 3), 3)
  await commerce.close()
})

liveTest(MAIN, 'persistence: events stored before a flush are sent by the next client over the storage', async () => {
  const name = unique('sdk_js_persist')
  const storage = new MemoryStorage()
  const options = { apiKey: KEY, baseUrl, persistence: 'localStorage', storage, flushIntervalMs: HOUR, flushAt: 1000 }

  // A page that queued events and went away before sending them.
  const { fetch: noFetch, calls: noCalls } = recordingFetch()
  const first = new Commerce({ ...options, fetch: noFetch })
  const ids = []
  for (let i = 0; i < 4; i++) ids.push(first.analytics.enqueue(name, { i, userId: 'u_persist' }))
  await Promise.resolve() // the write is coalesced into one microtask
  const stored = JSON.parse(storage.getItem(queueKeys(storage)[0]))
  assert.deepEqual(stored.map(([id]) => id), ids)
  assert.equal(noCalls.length, 0)

  // After the reload: a new client over the same storage sends them, then forgets them.
  const delivered = []
  const second = new Commerce({ ...options, onSuccess: (events) => delivered.push(...events) })
  assert.equal(second.analytics.queuedEvents, 4)
  assert.deepEqual(await second.analytics.flush({ timeoutMs: 120_000 }), { delivered: 4, failed: 0, pending: 0 })
  assert.deepEqual(delivered.map((e) => e.id), ids)
  assert.deepEqual(queueKeys(storage), [], 'answered events leave the storage')
  assert.equal(await settledCount(second, name, 4), 4)
  await second.close()
  assert.equal(await countEvents(second, name), 4)
})

liveTest(MAIN, 'persistence: an event the server never answered stays stored; a refused one does not', async () => {
  const name = unique('sdk_js_offline')
  const storage = new MemoryStorage()
  const options = { apiKey: KEY, baseUrl, persistence: 'localStorage', storage, flushIntervalMs: HOUR, maxRetries: 0 }
  const failures = []
  const offline = new Commerce({
    ...options,
    fetch: async () => { throw new TypeError('Failed to fetch') },
    onFailure: (events, error) => failures.push({ ids: events.map((e) => e.id), code: error.code })
  })
  const kept = offline.analytics.enqueue(name, { userId: 'u_offline' })
  assert.deepEqual(await offline.close(), { delivered: 0, failed: 1, pending: 0 })
  assert.deepEqual(failures, [{ ids: [kept], code: 'UNAVAILABLE' }])
  assert.equal(JSON.parse(storage.getItem(queueKeys(storage)[0]))[0][0], kept)

  const online = new Commerce({ ...options })
  const refused = online.analytics.enqueue(name, { n: 1, userId: 'u'.repeat(257) }) // a 400 for that event
  assert.deepEqual(await online.analytics.flush({ timeoutMs: 120_000 }), { delivered: 1, failed: 1, pending: 0 })
  assert.deepEqual(queueKeys(storage), [])
  assert.notEqual(refused, kept)
  assert.equal(await settledCount(online, name, 1), 1)
  await online.close()
})
