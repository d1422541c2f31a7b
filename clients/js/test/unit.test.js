// What needs no server: the package's shape, the bundle, the event's JSON, error parsing, timers.
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { Commerce, CommerceError, LIBRARY_NAME, VERSION } from '../dist/index.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'))

/** A fetch that answers every call with `answer()` and records what it was sent. */
function scripted (answer) {
  const calls = []
  return {
    calls,
    fetch: async (url, init) => {
      calls.push({ url, init, body: init.body ? JSON.parse(init.body) : undefined })
      return answer(calls.length)
    }
  }
}
const created = () => new Response(JSON.stringify({ id: 'x', event: 'e', timestamp: '2024-01-15T10:36:00Z' }), { status: 201 })

test('the version and name are the package\'s; the package is side-effect free', () => {
  assert.equal(VERSION, pkg.version)
  assert.equal(LIBRARY_NAME, pkg.name)
  assert.equal(pkg.sideEffects, false)
})

test('the browser bundle is one self-contained ES module exporting Commerce', async () => {
  const bundle = readFileSync(new URL('../dist/browser/commerce.js', import.meta.url), 'utf8')
  assert.doesNotMatch(bundle, /\bfrom\s*["'](node:|fs|crypto|http|https|path|url|buffer)["']/)
  assert.doesNotMatch(bundle, /\brequire\(/)
  assert.doesNotMatch(bundle, /\bimport\s*\(/)
  assert.doesNotMatch(bundle, /(^|[^.\w])process\./, 'no bare process reference')
  assert.ok(bundle.length < 60_000, `${bundle.length} bytes`)
  const mod = await import('../dist/browser/commerce.js')
  assert.equal(typeof mod.Commerce, 'function')
  assert.equal(typeof mod.CommerceError, 'function')
})

test('track sends the Event JSON: lifted fields, ids, sentAt, context.library, auth', async () => {
  const { fetch, calls } = scripted(created)
  const commerce = new Commerce({ apiKey: 'k1', baseUrl: 'http://api.example/', fetch })
  await commerce.analytics.track('order_completed', {
    orderId: 'o1', total: 6578, currency: 'USD', userId: 'u1', anonymousId: 'a1', sessionId: 's1',
    timestamp: new Date('2024-01-15T10:35:00Z'), context: { page: '/checkout' }
  })
  const { url, init, body } = calls[0]
  assert.equal(url, 'http://api.example/analytics/event')
  assert.equal(init.method, 'POST')
  assert.equal(init.headers.Authorization, 'Bearer k1')
  assert.match(body.id, /^evt_[0-9a-f]{32}$/)
  assert.deepEqual(
    { ...body, id: undefined, sentAt: undefined },
    {
      id: undefined,
      sentAt: undefined,
      event: 'order_completed',
      userId: 'u1',
      anonymousId: 'a1',
      sessionId: 's1',
      timestamp: '2024-01-15T10:35:00.000Z',
      properties: { orderId: 'o1', total: 6578, currency: 'USD' },
      context: { page: '/checkout', library: { name: '@cartlytics/commerce', version: pkg.version } }
    })
  // The options win over the properties; a caller's context.library is kept.
  await commerce.analytics.track('page_view', { page: '/', userId: 'ignored' },
    { id: 'my_id', userId: 'u2', context: { library: { name: 'shop', version: '9' } } })
  assert.equal(calls[1].body.id, 'my_id')
  assert.equal(calls[1].body.userId, 'u2')
  assert.deepEqual(calls[1].body.properties, { page: '/' })
  assert.deepEqual(calls[1].body.context, { library: { name: 'shop', version: '9' } })
})

test('query strings: REST names, repeated steps, empty values left out', async () => {
  const { fetch, calls } = scripted(() => new Response('{}', { status: 200 }))
  const a = new Commerce({ apiKey: 'k', baseUrl: 'http://h', fetch }).analytics
  await a.getSales({ period: '30d', granularity: 'day', currency: undefined })
  await a.getFunnel({ period: '7d', steps: ['product_view', 'add_to_cart'], window: 600 })
  await a.getProducts({ limit: 5 })
  await a.getCustomers({ period: '12m', timezone: 'Europe/Paris' })
  await a.getRealtime()
  assert.deepEqual(calls.map((c) => c.url), [
    'http://h/analytics/sales?period=30d&granularity=day',
    'http://h/analytics/funnel?period=7d&window=600&steps=product_view&steps=add_to_cart',
    'http://h/analytics/products?limit=5',
    'http://h/analytics/customers?period=12m&timezone=Europe%2FParis',
    'http://h/analytics/realtime'
  ])
})

test('a google.rpc.Status becomes a CommerceError; 429 waits at least the RetryInfo delay', async () => {
  const status = {
    code: 8,
    message: 'rate limit exceeded',
    details: [
      { '@type': 'type.googleapis.com/google.rpc.ErrorInfo', reason: 'RATE_LIMITED', domain: 'cartlytics' },
      { '@type': 'type.googleapis.com/google.rpc.RetryInfo', retryDelay: '0.25s' }
    ]
  }
  const { fetch, calls } = scripted((n) => n === 1
    ? new Response(JSON.stringify(status), { status: 429, headers: { 'retry-after': '1', 'x-request-id': 'r1' } })
    : created())
  const commerce = new Commerce({ apiKey: 'k', baseUrl: 'http://h', fetch, minBackoffMs: 1, maxBackoffMs: 2 })
  const started = performance.now()
  await commerce.analytics.track('e', { userId: 'u' })
  assert.ok(performance.now() - started >= 240)
  assert.equal(calls[0].body.id, calls[1].body.id)

  const once = new Commerce({ apiKey: 'k', baseUrl: 'http://h', maxRetries: 0, fetch: async () =>
    new Response(JSON.stringify(status), { status: 429, headers: { 'retry-after': '1', 'x-request-id': 'r1' } }) })
  await assert.rejects(once.analytics.getSales(), (e) => {
    assert.ok(e instanceof CommerceError && e instanceof Error)
    assert.deepEqual([e.code, e.status, e.reason, e.retryAfterMs, e.requestId, e.message],
      ['RESOURCE_EXHAUSTED', 429, 'RATE_LIMITED', 250, 'r1', 'rate limit exceeded'])
    return true
  })
  // A body that is no Status (a proxy's page) still gives a code from the HTTP status.
  const proxy = new Commerce({ apiKey: 'k', baseUrl: 'http://h', maxRetries: 0, fetch: async () =>
    new Response('<html>bad gateway</html>', { status: 502 }) })
  await assert.rejects(proxy.analytics.getSales(), (e) => e.code === 'UNAVAILABLE' && e.status === 502)
})

test('an attempt that takes too long times out and is retried; a caller abort is not', async () => {
  let n = 0
  const slow = (url, init) => new Promise((resolve, reject) => {
    n++
    if (n === 2) { resolve(created()); return }
    init.signal.addEventListener('abort', () => reject(init.signal.reason))
  })
  const commerce = new Commerce({ apiKey: 'k', baseUrl: 'http://h', fetch: slow, timeoutMs: 100, minBackoffMs: 1 })
  await commerce.analytics.track('e', { userId: 'u' })
  assert.equal(n, 2)
  const stuck = new Commerce({ apiKey: 'k', baseUrl: 'http://h', timeoutMs: 50, maxRetries: 0,
    fetch: (url, init) => new Promise((resolve, reject) => init.signal.addEventListener('abort', () => reject(new Error('aborted')))) })
  await assert.rejects(stuck.analytics.getRealtime(), (e) => e.code === 'DEADLINE_EXCEEDED')
  const controller = new AbortController()
  const pending = new Commerce({ apiKey: 'k', baseUrl: 'http://h', fetch: slow }).analytics.getSales({}, { signal: controller.signal })
  controller.abort(new Error('stop'))
  await assert.rejects(pending, /stop/)
})

test('the options are checked', () => {
  assert.throws(() => new Commerce({}), TypeError)
  assert.throws(() => new Commerce({ apiKey: 'k', flushAt: 0 }), TypeError)
  assert.throws(() => new Commerce({ apiKey: 'k', maxRetries: -1 }), TypeError)
})

test('the background timer never keeps a Node process alive', () => {
  const script = `
    import { Commerce } from './dist/index.js'
    const c = new Commerce({ apiKey: 'k', baseUrl: 'http://127.0.0.1:9', flushIntervalMs: 600000 })
    c.analytics.enqueue('e', { userId: 'u' })
    console.log('queued', c.analytics.queuedEvents)
  `
  const started = Date.now()
  const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: root, encoding: 'utf8', timeout: 30_000 })
  assert.equal(run.status, 0, run.stderr)
  assert.equal(run.stdout.trim(), 'queued 1')
  assert.ok(Date.now() - started < 20_000)
})

test("an event's size is measured as the server measures it (Python's json.dumps)", async () => {
  const { fetch } = scripted(created)
  const a = new Commerce({ apiKey: 'k', baseUrl: 'http://h', fetch }).analytics
  // The context is {"library": {"name": "@cartlytics/commerce", "version": "x.y.z"}}.
  const context = JSON.stringify({ library: { name: LIBRARY_NAME, version: VERSION } }).length + 4
  // {"t": "..."}: 9 characters around the text.
  const fits = 32 * 1024 - context - 9
  await a.track('e', { t: 'a'.repeat(fits), userId: 'u' })
  await assert.rejects(a.track('e', { t: 'a'.repeat(fits + 1), userId: 'u' }), (e) => e.code === 'EVENT_TOO_LARGE')
  await a.track('e', { t: 'é'.repeat(Math.floor(fits / 6)), userId: 'u' })
  await assert.rejects(a.track('e', { t: 'é'.repeat(Math.floor(fits / 6) + 1), userId: 'u' }), (e) => e.code === 'EVENT_TOO_LARGE')
  await a.track('e', { t: '😀'.repeat(Math.floor(fits / 12)), userId: 'u' })
  await assert.rejects(a.track('e', { t: '😀'.repeat(Math.floor(fits / 12) + 1), userId: 'u' }), (e) => e.code === 'EVENT_TOO_LARGE')
})

test('a batch event refused because its id is in flight is sent again, within the retry budget', async () => {
  const IN_FLIGHT = 'an event with this id is being stored by another request; retry'
  const answer = (events, inFlight) => new Response(JSON.stringify({
    acceptedCount: events.length - inFlight.length,
    rejectedCount: inFlight.length,
    accepted: events.map((e, index) => ({ index, id: e.id, event: e.event, timestamp: '2024-01-15T10:36:00Z' }))
      .filter((a) => !inFlight.includes(a.index)),
    rejected: inFlight.map((index) => ({ index, field: 'id', description: IN_FLIGHT }))
  }), { status: 200 })
  const bodies = []
  const fetch = async (url, init) => {
    const { events } = JSON.parse(init.body)
    bodies.push(events.map((e) => e.id))
    return answer(events, bodies.length === 1 ? [1] : [])
  }
  const ok = []
  const a = new Commerce({ apiKey: 'k', baseUrl: 'http://h', fetch, minBackoffMs: 1, flushIntervalMs: 60_000,
    onSuccess: (events) => ok.push(...events.map((e) => e.id)) }).analytics
  const ids = [a.enqueue('e', { userId: 'u' }), a.enqueue('e', { userId: 'u' })]
  assert.deepEqual(await a.flush(), { delivered: 2, failed: 0, pending: 0 })
  assert.deepEqual(bodies, [ids, [ids[1]]])
  assert.deepEqual(ok, ids)

  // Always in flight: given up once the budget (maxRetries 2: three requests) is spent.
  const failed = []
  let requests = 0
  const stuck = new Commerce({
    apiKey: 'k', baseUrl: 'http://h', minBackoffMs: 1, maxRetries: 2, flushIntervalMs: 60_000,
    fetch: async (url, init) => { requests++; return answer(JSON.parse(init.body).events, [0]) },
    onFailure: (events, error) => failed.push(error.code)
  }).analytics
  stuck.enqueue('e', { userId: 'u' })
  assert.deepEqual(await stuck.flush(), { delivered: 0, failed: 1, pending: 0 })
  assert.equal(requests, 3)
  assert.deepEqual(failed, ['ABORTED'])
})
