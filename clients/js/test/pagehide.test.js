// The browser path in Node: a window and a document (EventTargets) stand in for a page's, so that
// hiding the page sends the queue with fetch keepalive, in batches under 64 KB, to the live stack.
// (The real browser, headless Chromium on another origin, is tests/test_clients_live.py's.)
import assert from 'node:assert/strict'
import { HTTP, KEY, MAIN, MemoryStorage, liveTest, queueKeys, recordingFetch, settledCount, unique } from './helpers.js'

class FakeDocument extends EventTarget {
  visibilityState = 'visible'
}
globalThis.window = new EventTarget()
globalThis.document = new FakeDocument()
const { Commerce } = await import('../dist/index.js')

const hide = () => {
  document.visibilityState = 'hidden'
  document.dispatchEvent(new Event('visibilitychange'))
}

liveTest(MAIN, 'hiding the page sends the queue with keepalive, each batch under 64 KB', async () => {
  const name = unique('sdk_js_hide')
  const n = 300
  const { fetch, calls } = recordingFetch()
  const delivered = []
  const storage = new MemoryStorage()
  const commerce = new Commerce({
    apiKey: KEY, baseUrl: HTTP, fetch, flushIntervalMs: 600_000, flushAt: 1000,
    persistence: 'localStorage', storage, onSuccess: (events) => delivered.push(...events)
  })
  for (let i = 0; i < n; i++) commerce.analytics.enqueue(name, { i, pad: 'p'.repeat(400), anonymousId: 'anon_hide' })
  assert.equal(calls.length, 0, 'nothing sent before the page is hidden')

  hide()
  assert.ok(calls.length >= 3, `${calls.length} keepalive batches for ~150 KB`)
  assert.ok(calls.every((c) => c.keepalive && c.bytes < 64 * 1024), calls.map((c) => c.bytes).join(' '))
  window.dispatchEvent(new Event('pagehide')) // nothing left to send
  const sent = calls.length

  assert.deepEqual(await commerce.analytics.flush({ timeoutMs: 120_000 }), { delivered: n, failed: 0, pending: 0 })
  assert.equal(calls.length, sent)
  assert.equal(calls.reduce((k, c) => k + c.body.events.length, 0), n)
  assert.equal(delivered.length, n)
  assert.deepEqual(queueKeys(storage), [])
  assert.equal(await settledCount(commerce, name, n), n)
  await commerce.close()

  // After close the page's events are no longer listened to.
  document.visibilityState = 'visible'
  const closed = calls.length
  hide()
  assert.equal(calls.length, closed)
})

liveTest(MAIN, 'the browser default flush interval is 2 s', async () => {
  const name = unique('sdk_js_interval')
  const { fetch, calls } = recordingFetch()
  const commerce = new Commerce({ apiKey: KEY, baseUrl: HTTP, fetch })
  commerce.analytics.enqueue(name, { anonymousId: 'anon_interval' })
  const started = Date.now()
  while (calls.length === 0 && Date.now() - started < 30_000) await new Promise((resolve) => setTimeout(resolve, 50))
  const waited = Date.now() - started
  assert.ok(waited >= 1900 && waited < 15_000, `sent after ${waited} ms`)
  assert.equal(await settledCount(commerce, name, 1), 1)
  await commerce.close()
})
