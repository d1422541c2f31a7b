// Shared by the live suites: where the stacks are (tests/client_stacks.py sets the variables),
// and small waiting helpers. Expected figures are always computed by the tests from what they sent.
import { randomBytes } from 'node:crypto'
import { test } from 'node:test'

export const HTTP = process.env.CARTLYTICS_TEST_HTTP
export const KEY = process.env.CARTLYTICS_TEST_KEY
export const THROTTLED_HTTP = process.env.CARTLYTICS_TEST_THROTTLED_HTTP
export const THROTTLED_KEY = process.env.CARTLYTICS_TEST_THROTTLED_KEY
const REQUIRE = process.env.CARTLYTICS_TEST_REQUIRE === '1'

/**
 * `test` when the variables are set; else a skipped test, or a failing one when
 * CARTLYTICS_TEST_REQUIRE=1 (the lead's wrapper sets it: a missing stack is an error there).
 */
export function liveTest (names, title, options, fn) {
  if (typeof options === 'function') { fn = options; options = {} }
  const missing = names.filter((n) => !process.env[n])
  if (missing.length === 0) return test(title, { timeout: 180_000, ...options }, fn)
  if (REQUIRE) {
    return test(title, () => { throw new Error(`CARTLYTICS_TEST_REQUIRE=1 but ${missing.join(', ')} unset`) })
  }
  return test(title, { skip: `${missing.join(', ')} unset (start tests/client_stacks.py)` }, fn)
}

export const MAIN = ['CARTLYTICS_TEST_HTTP', 'CARTLYTICS_TEST_KEY']
export const THROTTLED = ['CARTLYTICS_TEST_THROTTLED_HTTP', 'CARTLYTICS_TEST_THROTTLED_KEY']

export function unique (prefix) {
  return `${prefix}_${randomBytes(6).toString('hex')}`
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Calls `read` until `done(value)` or the timeout; returns the last value (the test asserts it). */
export async function eventually (read, done, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs
  let value
  for (;;) {
    value = await read()
    if (done(value) || Date.now() > deadline) return value
    await sleep(300)
  }
}

/** The distinct events named `name` stored today (docs/query.md's `events` metric). */
export async function countEvents (commerce, name) {
  const { rows } = await commerce.analytics.query({
    metrics: ['events'], dimensions: ['event'], filters: { event: name, period: '1d' }
  })
  return rows.length ? rows[0].events : 0
}

/** Waits until `expected` events named `name` are counted, then returns the count seen. */
export async function settledCount (commerce, name, expected) {
  const n = await eventually(() => countEvents(commerce, name), (c) => c >= expected)
  await sleep(500) // anything counted twice would show up by now
  return Math.max(n, await countEvents(commerce, name))
}

/** A fetch that records every request (method, url, parsed body, keepalive) and forwards it. */
export function recordingFetch (respond = (url, init, real) => real(url, init)) {
  const calls = []
  const fetch = async (url, init = {}) => {
    const call = {
      method: init.method ?? 'GET',
      url: String(url),
      body: typeof init.body === 'string' ? JSON.parse(init.body) : undefined,
      bytes: typeof init.body === 'string' ? Buffer.byteLength(init.body) : 0,
      keepalive: init.keepalive === true
    }
    calls.push(call)
    const response = await respond(url, init, (u, i) => globalThis.fetch(u, i), calls.length)
    call.status = response.status
    return response
  }
  return { fetch, calls }
}

/** A 503 as the gateway answers it (a google.rpc.Status). */
export function unavailable () {
  return new Response(JSON.stringify({
    code: 14,
    message: 'backend unavailable',
    details: [{ '@type': 'type.googleapis.com/google.rpc.ErrorInfo', reason: 'UNAVAILABLE', domain: 'cartlytics', metadata: {} }]
  }), { status: 503, headers: { 'content-type': 'application/json' } })
}

/** A minimal Web Storage (Node has no localStorage). */
export class MemoryStorage {
  constructor () { this.map = new Map() }
  getItem (key) { return this.map.has(key) ? this.map.get(key) : null }
  setItem (key, value) { this.map.set(key, String(value)) }
  removeItem (key) { this.map.delete(key) }
}

/** The keys of a storage holding queued events (the visitor is kept beside them, under its own key). */
export function queueKeys (storage) {
  return [...storage.map.keys()].filter((key) => key.startsWith('cartlytics:queue:'))
}
