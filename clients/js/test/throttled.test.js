// Real 429s: the throttled stack lets one ingest call a second through (burst 1).
import assert from 'node:assert/strict'
import { Commerce, CommerceError } from '../dist/index.js'
import { THROTTLED, THROTTLED_HTTP, THROTTLED_KEY, liveTest, recordingFetch, settledCount, sleep, unique } from './helpers.js'

liveTest(THROTTLED, 'a 429 is retried after its Retry-After, with the same id; both events stored', async () => {
  const name = unique('sdk_js_throttled')
  const { fetch, calls } = recordingFetch()
  const commerce = new Commerce({ apiKey: THROTTLED_KEY, baseUrl: THROTTLED_HTTP, fetch, minBackoffMs: 10, maxBackoffMs: 100 })
  await sleep(1100) // a full token whatever ran before
  // Back to back (started together, so that the second is refused however slow the first is).
  const started = performance.now()
  const done = []
  const track = (n) => commerce.analytics.track(name, { n, userId: 'u_throttled' })
    .then((ack) => { done.push(performance.now() - started); return ack })
  const [first, second] = await Promise.all([track(1), track(2)])
  assert.notEqual(first.id, second.id)
  const posts = calls.filter((c) => c.method === 'POST')
  const refused = posts.filter((c) => c.status === 429)
  assert.ok(refused.length >= 1, `a 429 was met: ${posts.map((c) => c.status)}`)
  assert.equal(posts.filter((c) => c.status === 201).length, 2)
  // Every attempt carried its event's id; the refused one went through a second after the first.
  const later = refused[0].body.id
  assert.ok([first.id, second.id].includes(later))
  assert.ok(posts.filter((c) => c.body.id !== first.id && c.body.id !== second.id).length === 0)
  assert.equal(posts.filter((c) => c.body.id === later && c.status === 201).length, 1)
  assert.ok(Math.max(...done) >= 900, `the second stored after ${Math.max(...done)} ms`)
  assert.equal(await settledCount(commerce, name, 2), 2)
})

liveTest(THROTTLED, "without retries a 429 is a CommerceError carrying the server's delay", async () => {
  const commerce = new Commerce({ apiKey: THROTTLED_KEY, baseUrl: THROTTLED_HTTP, maxRetries: 0 })
  await sleep(1100)
  const results = await Promise.allSettled([1, 2].map((n) =>
    commerce.analytics.track('sdk_js_throttled_once', { n, userId: 'u_throttled' })))
  assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1)
  const e = results.find((r) => r.status === 'rejected').reason
  assert.ok(e instanceof CommerceError)
  assert.equal(e.code, 'RESOURCE_EXHAUSTED')
  assert.equal(e.status, 429)
  assert.equal(e.reason, 'RATE_LIMITED')
  assert.ok(e.retryAfterMs > 0 && e.retryAfterMs <= 1000, `retryAfterMs ${e.retryAfterMs}`)
})

liveTest(THROTTLED, 'batches honour 429s too: every event delivered once', async () => {
  const name = unique('sdk_js_throttled_batch')
  const { fetch, calls } = recordingFetch()
  const delivered = []
  const commerce = new Commerce({
    apiKey: THROTTLED_KEY, baseUrl: THROTTLED_HTTP, fetch, flushAt: 5, flushIntervalMs: 3_600_000,
    minBackoffMs: 10, maxBackoffMs: 100, onSuccess: (events) => delivered.push(...events)
  })
  await sleep(1100)
  for (let i = 0; i < 15; i++) commerce.analytics.enqueue(name, { i, userId: 'u_throttled' })
  assert.deepEqual(await commerce.close({ timeoutMs: 120_000 }), { delivered: 15, failed: 0, pending: 0 })
  assert.equal(delivered.length, 15)
  const ok = calls.filter((c) => c.status === 200)
  assert.equal(ok.length, 3)
  assert.equal(new Set(ok.flatMap((c) => c.body.events.map((e) => e.id))).size, 15)
  // A refused batch is sent again as it was (same ids), after the server's delay.
  calls.forEach((c, i) => {
    if (c.status === 429) assert.deepEqual(calls[i + 1].body.events.map((e) => e.id), c.body.events.map((e) => e.id))
  })
  assert.equal(await settledCount(commerce, name, 15), 15)
})
