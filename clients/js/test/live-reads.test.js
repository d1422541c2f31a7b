// The spec's JavaScript example as written, one order checked through every read endpoint, and
// the streamed export, against the live main stack. The only test of the JS suites that tracks
// orders is here (the project is shared by the JS test files, which run in parallel).
import assert from 'node:assert/strict'
import { Commerce, CommerceError } from '../dist/index.js'
import { HTTP, KEY, MAIN, eventually, liveTest, unique } from './helpers.js'

const baseUrl = HTTP

liveTest(MAIN, "the spec's JavaScript example runs as written", async () => {
  const ids = []
  const fetch = async (url, init) => {
    const response = await globalThis.fetch(url, init)
    if (init?.method === 'POST' && String(url).endsWith('/analytics/event')) {
      ids.push({ sent: JSON.parse(init.body), status: response.status })
    }
    return response
  }
  // --- as in the spec (the key and base URL are the stack's) ---
  const commerce = new Commerce({ apiKey: KEY, baseUrl, fetch })
  await commerce.analytics.track('product_view', { productId: 'prod_abc123', userId: 'user_xyz789' })
  const sales = await commerce.analytics.getSales({ period: '30d' })
  const report = await commerce.analytics.query({ metrics: ['revenue', 'orders'], dimensions: ['product_category'], filters: { period: '7d' } })
  // ---
  assert.equal(ids.length, 1)
  assert.equal(ids[0].status, 201)
  const sent = ids[0].sent
  assert.match(sent.id, /^evt_[0-9a-f]{32}$/)
  assert.equal(sent.userId, 'user_xyz789', 'userId lifted to the top level')
  assert.deepEqual(sent.properties, { productId: 'prod_abc123' })
  assert.deepEqual(sent.context.library, { name: '@cartlytics/commerce', version: '0.1.0' })
  assert.ok(!Number.isNaN(Date.parse(sent.sentAt)))

  assert.equal(sales.period, '30d')
  assert.equal(typeof sales.revenue, 'number')
  assert.equal(typeof sales.orders, 'number')
  assert.equal(sales.series.length, 30)
  assert.ok(Array.isArray(report.rows))
  for (const row of report.rows) {
    assert.equal(typeof row.product_category, 'string')
    assert.equal(typeof row.revenue, 'number')
    assert.equal(typeof row.orders, 'number')
  }

  // Stored as sent: the export (streamed to a callback) has it, userId at the top level.
  const found = await eventually(async () => {
    let text = ''
    const decoder = new TextDecoder()
    const summary = await commerce.analytics.export(
      { type: 'events', format: 'ndjson', period: '1d' },
      { onChunk: (chunk) => { text += decoder.decode(chunk, { stream: true }) } })
    assert.equal(summary.contentType.split(';')[0], 'application/x-ndjson')
    assert.equal(summary.filename, 'events_1d.ndjson')
    assert.equal(summary.size, Buffer.byteLength(text))
    return text.split('\n').filter(Boolean).map((line) => JSON.parse(line)).find((e) => e.eventId === sent.id)
  }, (row) => row !== undefined)
  assert.ok(found, 'the tracked event is in the export')
  assert.equal(found.userId, 'user_xyz789')
  assert.equal(found.event, 'product_view')
  assert.equal(found.productId, 'prod_abc123')
  assert.deepEqual(found.properties, { productId: 'prod_abc123' })
})

liveTest(MAIN, 'one order, read back exactly through sales, products, customers, funnel, realtime, query and export', async () => {
  const commerce = new Commerce({ apiKey: KEY, baseUrl })
  const a = commerce.analytics
  const user = unique('user_js')
  const category = unique('cat')
  const lines = [
    { productId: unique('prod_a'), name: 'JS Tee', category, price: 1234, quantity: 2 },
    { productId: unique('prod_b'), name: 'JS Mug', category, price: 500, quantity: 1 }
  ]
  const total = lines.reduce((sum, l) => sum + l.price * l.quantity, 0)
  const orderId = unique('order_js')

  const salesBefore = await a.getSales({ period: '1d', currency: 'USD' })
  const customersBefore = await a.getCustomers({ period: '1d', currency: 'USD' })
  const realtimeBefore = await a.getRealtime({ currency: 'USD' })
  const funnelBefore = await a.getFunnel({ period: '1d', steps: ['product_view', 'order_completed'] })

  const view = await a.track('product_view', { productId: lines[0].productId, name: lines[0].name, userId: user })
  const order = await a.track('order_completed', {
    orderId, total, currency: 'USD', items: lines.length, products: lines, userId: user
  })
  assert.equal(order.event, 'order_completed')
  assert.match(order.id, /^evt_[0-9a-f]{32}$/)
  assert.ok(!Number.isNaN(Date.parse(order.timestamp)))
  assert.notEqual(view.id, order.id)

  const sales = await eventually(() => a.getSales({ period: '1d', currency: 'USD' }),
    (s) => s.orders >= salesBefore.orders + 1)
  assert.equal(sales.orders, salesBefore.orders + 1)
  assert.equal(sales.revenue, salesBefore.revenue + total)
  assert.equal(sales.averageOrderValue, Math.round(sales.revenue / sales.orders))
  assert.equal(sales.currency, 'USD')
  assert.equal(sales.series[0].orders, sales.orders)
  assert.equal(sales.series[0].revenue, sales.revenue)
  const hourly = await a.getSales({ period: '1d', granularity: 'hour', currency: 'USD', timezone: 'UTC' })
  assert.equal(hourly.series.reduce((n, b) => n + b.orders, 0), sales.orders)

  const products = await a.getProducts({ period: '1d', limit: 100, currency: 'USD' })
  for (const [i, line] of lines.entries()) {
    const p = products.topSellers.find((t) => t.productId === line.productId)
    assert.ok(p, `${line.productId} in the top sellers`)
    assert.equal(p.revenue, line.price * line.quantity)
    assert.equal(p.unitsSold, line.quantity)
    assert.equal(p.name, line.name)
    // Buyers / viewers * 100: the first product was viewed by its buyer, the second by nobody.
    assert.equal(p.conversionRate, i === 0 ? 100 : 0)
  }

  const customers = await a.getCustomers({ period: '1d', currency: 'USD', limit: 100 })
  assert.equal(customers.totalCustomers, customersBefore.totalCustomers + 1)
  assert.equal(customers.newCustomers, customersBefore.newCustomers + 1)
  const me = customers.topCustomers.find((c) => c.customerId === user)
  assert.deepEqual({ orders: me.orders, revenue: me.revenue }, { orders: 1, revenue: total })

  const funnel = await a.getFunnel({ period: '1d', steps: ['product_view', 'order_completed'] })
  assert.deepEqual(funnel.stages.map((s) => s.name), ['Product Views', 'Order Completed'])
  assert.equal(funnel.stages[0].count, funnelBefore.stages[0].count + 1)
  assert.equal(funnel.stages[1].count, funnelBefore.stages[1].count + 1)
  assert.equal(funnel.stages[0].rate, 100)
  const rate = Math.round((funnel.stages[1].count / funnel.stages[0].count) * 1000) / 10
  assert.equal(funnel.stages[1].rate, rate)
  assert.equal(funnel.conversionRate, rate)
  const csv = await a.getFunnel({ period: '1d', steps: 'product_view,order_completed', window: 3600 })
  assert.deepEqual(csv.stages.map((s) => s.count), funnel.stages.map((s) => s.count))

  const realtime = await a.getRealtime({ currency: 'USD', timezone: 'UTC' })
  assert.equal(realtime.ordersToday, realtimeBefore.ordersToday + 1)
  assert.equal(realtime.revenueToday, realtimeBefore.revenueToday + total)
  assert.ok(realtime.activeVisitors >= 1)
  assert.ok(Array.isArray(realtime.topPages))

  const report = await a.query({
    metrics: ['revenue', 'orders', 'units_sold'],
    dimensions: ['product_category'],
    filters: { period: '1d', product_category: category },
    orderBy: 'revenue:desc',
    limit: 10
  })
  assert.deepEqual(report.rows, [{
    product_category: category,
    revenue: total,
    orders: 1,
    units_sold: lines.reduce((n, l) => n + l.quantity, 0)
  }])

  // The orders export, read as a stream (result.body), has the order with its total.
  const result = await a.export({ type: 'orders', format: 'ndjson', period: '1d', currency: 'USD' })
  assert.equal(result.filename, 'orders_1d.ndjson')
  const reader = result.body.getReader()
  let text = ''
  const decoder = new TextDecoder()
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    assert.ok(value instanceof Uint8Array)
    text += decoder.decode(value, { stream: true })
  }
  const row = text.split('\n').filter(Boolean).map((l) => JSON.parse(l)).find((o) => o.orderId === orderId)
  assert.ok(row, 'the order is exported')
  assert.equal(row.total, total)
  assert.equal(row.eventId, order.id)
  assert.equal(row.userId, user)

  // And collected whole, as CSV.
  const csvExport = await a.export({ type: 'order_items', format: 'csv', period: '1d' })
  const csvText = await csvExport.text()
  assert.equal(csvText.split('\n')[0].split(',')[0], 'orderId')
  assert.equal(csvText.split('\n').filter((l) => l.startsWith(orderId + ',')).length, lines.length)
})

liveTest(MAIN, 'read errors are CommerceErrors naming the parameter, and are not retried', async () => {
  let calls = 0
  const commerce = new Commerce({
    apiKey: KEY,
    baseUrl,
    fetch: (url, init) => { calls++; return globalThis.fetch(url, init) }
  })
  await assert.rejects(commerce.analytics.getSales({ period: 'forever' }), (e) => {
    assert.ok(e instanceof CommerceError)
    assert.equal(e.code, 'INVALID_ARGUMENT')
    assert.equal(e.status, 400)
    assert.deepEqual(e.fieldViolations.map((v) => v.field), ['period'])
    return true
  })
  assert.equal(calls, 1)
  await assert.rejects(commerce.analytics.export({ type: 'nothing' }), (e) => e.code === 'INVALID_ARGUMENT' && e.fieldViolations[0].field === 'type')
  const bad = new Commerce({ apiKey: 'cak_not_a_key', baseUrl })
  await assert.rejects(bad.analytics.getRealtime(), (e) => e.code === 'UNAUTHENTICATED' && e.status === 401)
})
