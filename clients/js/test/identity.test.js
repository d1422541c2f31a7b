// Identity without a cartlytics server: a local HTTP server takes the SDK's requests (through the
// real fetch) and records the events' JSON as it arrived, to check the ids each carried.
import assert from 'node:assert/strict'
import { createServer } from 'node:http'
import { after, before, test } from 'node:test'
import { Commerce } from '../dist/index.js'
import { MemoryStorage } from './helpers.js'

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/
let server
let baseUrl
/** Every request received: {path, body (parsed JSON)}. */
const requests = []

before(async () => {
  server = createServer((req, res) => {
    let raw = ''
    req.setEncoding('utf8')
    req.on('data', (chunk) => { raw += chunk })
    req.on('end', () => {
      const body = JSON.parse(raw)
      requests.push({ path: req.url, body })
      res.setHeader('content-type', 'application/json')
      if (req.url === '/analytics/event/batch') {
        const accepted = body.events.map((e, index) => ({ index, id: e.id, event: e.event, timestamp: e.timestamp }))
        res.end(JSON.stringify({ acceptedCount: accepted.length, accepted }))
      } else {
        res.statusCode = 201
        res.end(JSON.stringify({ id: body.id, event: body.event, timestamp: body.timestamp }))
      }
    })
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  baseUrl = `http://127.0.0.1:${server.address().port}`
})
after(() => new Promise((resolve) => server.close(resolve)))

/** The events received since `from` (a request count), in order, each as it was sent. */
function eventsSince (from) {
  return requests.slice(from).flatMap((r) => r.path === '/analytics/event/batch' ? r.body.events : [r.body])
}

/** {event: [userId, anonymousId]} of those events; a missing key is undefined. */
function idsOf (events) {
  return Object.fromEntries(events.map((e) => [e.event, [e.userId, e.anonymousId]]))
}

const client = (options = {}) => new Commerce({ apiKey: 'k', baseUrl, flushIntervalMs: 3_600_000, ...options })

test('identify: later events carry the userId and the anonymousId; reset starts a new visitor', async () => {
  const from = requests.length
  const commerce = client()
  const a = commerce.analytics
  const anon = a.anonymousId
  assert.match(anon, UUID_V4)
  assert.equal(a.userId, undefined)

  await a.track('before', { n: 1 })
  a.enqueue('queued_before')
  const sent = requests.length
  a.identify('user_1')
  assert.equal(requests.length, sent, 'identify sends nothing')
  assert.equal(a.userId, 'user_1')
  assert.equal(a.anonymousId, anon)
  await a.track('after')
  a.enqueue('queued_after', { n: 2 })
  // The caller's ids win, whole: the client adds none of its own to an event naming one.
  await a.track('own_user_option', {}, { userId: 'user_other' })
  await a.track('own_anon_property', { anonymousId: 'anon_other' })
  await a.track('own_both', { userId: 'user_x' }, { anonymousId: 'anon_x' })
  a.enqueue('queued_own', { userId: 'user_q' })
  assert.deepEqual(await a.flush(), { delivered: 3, failed: 0, pending: 0 })

  a.reset()
  const fresh = a.anonymousId
  assert.match(fresh, UUID_V4)
  assert.notEqual(fresh, anon)
  assert.equal(a.userId, undefined)
  await a.track('after_reset')
  a.enqueue('queued_after_reset')
  await commerce.close()

  const events = eventsSince(from)
  assert.equal(events.length, 10, 'one event per call, nothing else')
  assert.deepEqual(idsOf(events), {
    before: [undefined, anon],
    queued_before: [undefined, anon], // queued before identify: not rewritten
    after: ['user_1', anon],
    queued_after: ['user_1', anon],
    own_user_option: ['user_other', undefined],
    own_anon_property: [undefined, 'anon_other'],
    own_both: ['user_x', 'anon_x'],
    queued_own: ['user_q', undefined],
    after_reset: [undefined, fresh],
    queued_after_reset: [undefined, fresh]
  })
  // Not in the properties: the ids are the event's own fields.
  assert.deepEqual(events.find((e) => e.event === 'after').properties, {})
  assert.deepEqual(events.find((e) => e.event === 'queued_after').properties, { n: 2 })
})

test('identify refuses an id the server would refuse; the anonymousId option is used', async () => {
  const a = client({ anonymousId: 'anon_given' }).analytics
  assert.equal(a.anonymousId, 'anon_given')
  for (const bad of ['', '   ', 'u'.repeat(257), undefined, 42]) assert.throws(() => a.identify(bad), TypeError)
  assert.equal(a.userId, undefined)
  a.identify('é'.repeat(256))
  assert.throws(() => client({ anonymousId: '' }), TypeError)
  // Without persistence each client is its own visitor.
  assert.notEqual(client().analytics.anonymousId, client().analytics.anonymousId)

  const from = requests.length
  a.identify('user_2')
  await a.track('given')
  assert.deepEqual(idsOf(eventsSince(from)), { given: ['user_2', 'anon_given'] })
  await a.close()
})

test('with persistence the visitor is kept in the storage: a reload and other tabs share it', async () => {
  const storage = new MemoryStorage()
  const options = { persistence: 'localStorage', storage }
  const first = client(options).analytics
  const anon = first.anonymousId
  assert.match(anon, UUID_V4)
  const key = [...storage.map.keys()].find((k) => k.startsWith('cartlytics:identity:'))
  assert.deepEqual(JSON.parse(storage.getItem(key)), { anonymousId: anon })
  first.identify('user_p')
  assert.deepEqual(JSON.parse(storage.getItem(key)), { anonymousId: anon, userId: 'user_p' })

  // The page after a reload (a new client over the same storage): the same visitor.
  const second = client(options).analytics
  assert.equal(second.anonymousId, anon)
  assert.equal(second.userId, 'user_p')
  // Another tab signs out: this one's next event is the new visitor's.
  second.reset()
  const from = requests.length
  await first.track('tab_after_reset')
  assert.deepEqual(idsOf(eventsSince(from)), { tab_after_reset: [undefined, second.anonymousId] })
  assert.notEqual(second.anonymousId, anon)
  assert.equal(first.anonymousId, second.anonymousId)
  second.identify('user_q')
  // A page giving its own anonymousId: the stored user is kept only for that same anonymousId.
  assert.equal(client({ ...options, anonymousId: second.anonymousId }).analytics.userId, 'user_q')
  const other = client({ ...options, anonymousId: 'anon_page' }).analytics
  assert.deepEqual([other.anonymousId, other.userId], ['anon_page', undefined])
  assert.deepEqual([first.anonymousId, first.userId], ['anon_page', undefined])

  // A storage that throws leaves the visitor in memory.
  const broken = { getItem () { throw new Error('denied') }, setItem () { throw new Error('denied') }, removeItem () {} }
  const c = client({ persistence: 'localStorage', storage: broken }).analytics
  const mine = c.anonymousId
  assert.match(mine, UUID_V4)
  c.identify('user_m')
  assert.equal(c.anonymousId, mine)
  assert.equal(c.userId, 'user_m')
  await Promise.all([first.close(), second.close(), c.close()])
})
