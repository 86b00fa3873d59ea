import { test } from 'node:test'
import assert from 'node:assert/strict'
import { browser, load, start } from '../testing/fake-browser.mjs'

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

test('events wait for the timer, then go out as one Segment batch', async () => {
  const { sdk, b } = await start({ release: '1.0.0' })
  sdk.track('Signed Up', { plan: 'pro' })
  sdk.track('Opened Editor')
  await b.advance(999)
  assert.equal(b.requests.length, 0)
  await b.advance(1)
  assert.equal(b.requests.length, 1)
  const [r] = b.requests
  assert.equal(r.url, 'https://collect.example/v1/batch')
  assert.deepEqual(r.headers, { 'Content-Type': 'text/plain' })
  assert.equal(r.body.writeKey, 'wk_test')
  assert.equal(r.body.sentAt, '2024-05-01T12:00:01.000Z')
  assert.deepEqual(
    r.body.batch.map(e => [e.type, e.event]),
    [['page', undefined], ['track', 'Signed Up'], ['track', 'Opened Editor']],
  )
  const e = r.body.batch[1]
  assert.deepEqual(e.properties, { plan: 'pro' })
  assert.match(e.anonymousId, UUID_V4)
  assert.equal(e.timestamp, '2024-05-01T12:00:00.000Z')
  assert.deepEqual(e.context.library, { name: 'leanloop-js', version: sdk.VERSION })
  assert.deepEqual(e.context.page, {
    url: 'https://shop.example/home',
    path: '/home',
    referrer: 'https://search.example/',
    title: 'Home',
    search: '',
  })
  assert.equal(e.context.userAgent, 'node-test')
  assert.equal(e.context.locale, 'en-US')
  assert.deepEqual(e.context.screen, { width: 1280, height: 800 })
  assert.equal(typeof e.context.timezone, 'string')
  assert.match(e.context.sessionId, UUID_V4)
  assert.deepEqual(b.queued(), [], 'delivered events leave the persisted queue')
})

test('the 20th event sends a batch at once', async () => {
  const { sdk, b } = await start()
  for (let i = 1; i < 19; i++) sdk.track(`e${i}`)
  await b.settle()
  assert.equal(b.requests.length, 0, 'the page view and 18 events wait')
  sdk.track('e19')
  await b.settle()
  assert.equal(b.requests.length, 1)
  assert.equal(b.requests[0].body.batch.length, 20)
  sdk.track('e20')
  await b.settle()
  assert.equal(b.requests.length, 1, 'the next one waits for the timer again')
})

test('a large backlog goes out in batches of 20', async () => {
  const { sdk, b } = await start()
  b.respond = () => new Error('offline')
  for (let i = 0; i < 49; i++) sdk.track(`e${i}`)
  await b.settle()
  b.respond = () => ({ status: 200 })
  b.requests.length = 0
  await sdk.flush()
  assert.deepEqual(b.requests.map(r => r.body.batch.length), [20, 20, 10])
})

test('failures back off exponentially with jitter in [d/2, d], capped at a minute', async () => {
  const { sdk, b } = await start()
  b.respond = () => ({ status: 503 })
  const delays = []
  for (const random of [0, 0.999, 0, 0.999, 0, 0, 0, 0, 0.999]) {
    b.random = random
    await sdk.flush()
    delays.push(b.timers.at(-1).ms)
  }
  const bounds = [
    [500, 1000],
    [1000, 2000],
    [2000, 4000],
    [4000, 8000],
    [8000, 16000],
    [16000, 32000],
    [30000, 60000],
    [30000, 60000],
    [30000, 60000],
  ]
  delays.forEach((d, n) => assert.ok(d >= bounds[n][0] && d <= bounds[n][1], `attempt ${n}: ${d} ms`))
  assert.equal(delays[0], 500)
  assert.ok(delays[1] > 1990)
  assert.equal(b.timers.length, 1, 'one retry pending, not one per attempt')
})

test('retries keep the messageId, so the server counts each event once', async () => {
  const { sdk, b } = await start()
  sdk.track('Paid')
  let calls = 0
  b.respond = () => (++calls == 1 ? new Error('network down') : calls == 2 ? { status: 500 } : { status: 200 })
  await b.advance(1000)
  assert.equal(b.requests.length, 1)
  await b.advance(1000) // first retry: 500..1000 ms
  assert.equal(b.requests.length, 2)
  await b.advance(2000) // second retry: 1000..2000 ms
  assert.equal(b.requests.length, 3)
  await b.advance(60000)
  assert.equal(b.requests.length, 3, 'nothing left to send')
  const ids = b.requests.map(r => r.body.batch.map(e => e.messageId).join())
  assert.equal(new Set(ids).size, 1)
})

test('new events during a backoff do not cut the wait short', async () => {
  const { sdk, b } = await start()
  b.respond = () => ({ status: 500 })
  b.random = 0.999
  await sdk.flush()
  await sdk.flush() // second failure: the wait is now about 2 s
  for (let i = 0; i < 25; i++) sdk.track(`e${i}`)
  await b.advance(1500)
  assert.equal(b.requests.length, 2)
  b.respond = () => ({ status: 200 })
  await b.advance(600)
  assert.deepEqual(b.requests.slice(2).map(r => r.body.batch.length), [20, 6], 'the retry drains the backlog')
})

test('429 and 503 wait exactly Retry-After seconds', async () => {
  for (const status of [429, 503]) {
    const { sdk, b } = await start()
    b.respond = () => ({ status, headers: { 'Retry-After': '7' } })
    await sdk.flush()
    assert.equal(b.timers.length, 1)
    assert.equal(b.timers[0].ms, 7000)
    b.respond = () => ({ status: 200 })
    await b.advance(6999)
    assert.equal(b.requests.length, 1)
    await b.advance(1)
    assert.equal(b.requests.length, 2)
    assert.deepEqual(b.queued(), [])
  }
})

test('a 4xx other than 429 drops the request with a warning, a few a page load', async () => {
  const { sdk, b } = await start()
  b.respond = () => ({ status: 400 })
  await sdk.flush()
  for (let i = 0; i < 7; i++) {
    sdk.track('again')
    await sdk.flush()
  }
  assert.equal(b.requests.length, 8)
  assert.deepEqual(b.queued(), [])
  assert.equal(b.timers.length, 0, 'no retry')
  assert.equal(b.warnings.length, 5)
  assert.match(b.warnings[0], /400/)
})

test('hiding the page hands the queue to sendBeacon', async () => {
  const { sdk, b } = await start()
  sdk.track('Read Article')
  b.doc.visibilityState = 'hidden'
  b.dispatch(b.doc, 'visibilitychange')
  assert.equal(b.beacons.length, 1)
  assert.equal(b.beacons[0].url, 'https://collect.example/v1/batch')
  assert.deepEqual(b.beacons[0].body.batch.map(e => e.type), ['page', 'track'])
  assert.equal(b.beacons[0].body.writeKey, 'wk_test')
  // A beacon may be lost (the collector unreachable): the events stay stored.
  assert.equal(b.queued().length, 2)
  sdk.track('Left')
  b.dispatch(b.win, 'pagehide')
  assert.equal(b.beacons.length, 2)
  assert.deepEqual(b.beacons[1].body.batch.map(e => e.event), ['Left'], 'each event is beaconed once per page')
  // The page lived on: the regular send repeats them (the server dedups by messageId).
  await b.advance(5000)
  assert.equal(b.requests.length, 1)
  assert.deepEqual(b.queued(), [])
})

test('a refused beacon keeps the events for the next page; no sendBeacon means fetch keepalive', async () => {
  const { sdk, b } = await start()
  b.win.navigator.sendBeacon = () => false
  b.dispatch(b.win, 'pagehide')
  assert.equal(b.queued().length, 1)
  delete b.win.navigator.sendBeacon
  sdk.track('x')
  b.dispatch(b.win, 'pagehide')
  assert.equal(b.requests.length, 1)
  assert.equal(b.requests[0].keepalive, true)
  assert.equal(b.requests[0].body.batch.length, 2)
})

test('every messageId is a unique UUID v4, with or without crypto.randomUUID', async () => {
  for (const crypto of [globalThis.crypto, undefined]) {
    const { sdk, b } = await start()
    b.win.crypto = crypto
    b.win.Math.random = Math.random
    for (let i = 0; i < 999; i++) sdk.track('e')
    await sdk.flush()
    const ids = b.events().map(e => e.messageId)
    assert.equal(ids.length, 1000)
    assert.equal(new Set(ids).size, 1000)
    for (const id of ids) assert.match(id, UUID_V4)
  }
})

test('going back online sends at once', async () => {
  const { sdk, b } = await start()
  b.respond = () => new Error('offline')
  await sdk.flush()
  b.respond = () => ({ status: 200 })
  sdk.track('x')
  b.dispatch(b.win, 'online')
  await b.settle()
  assert.equal(b.requests.length, 2)
  assert.equal(b.requests[1].body.batch.length, 2)
})

test('a beacon refused as too large goes out one event a beacon, each that fits', async () => {
  const { sdk, b } = await start()
  // Browsers refuse beacons past 64 KB in flight.
  const beacon = b.win.navigator.sendBeacon
  let room = 64 * 1024
  b.win.navigator.sendBeacon = (u, body) => body.length <= room && ((room -= body.length), beacon(u, body))
  for (let i = 0; i < 4; i++) sdk.track(`big${i}`, { blob: 'y'.repeat(25000) })
  sdk.track('small')
  b.dispatch(b.win, 'pagehide')
  assert.deepEqual(b.beacons.map(x => x.body.batch.map(e => e.event ?? e.type)), [['page'], ['big0'], ['big1'], ['small']])
  assert.equal(b.queued().length, 6, 'beaconed or not, events stay queued until a request is answered')
})

test('events a batch refuses are named in a console warning, a few a page load', async () => {
  const { sdk, b } = await start({ pageviews: false })
  const rejected = [{ index: 1, field: 'event', reason: 'event is larger than 32768 bytes' }]
  b.respond = () => ({ status: 200, json: { success: true, rejected } })
  for (let i = 0; i < 8; i++) {
    sdk.track(`e${i}`)
    sdk.track(`big${i}`)
    await sdk.flush()
  }
  assert.deepEqual(b.queued(), [], 'the batch is done with: a retry would be refused again')
  assert.equal(b.warnings.length, 5)
  assert.equal(b.warnings[0], 'leanloop: big0 refused (event): event is larger than 32768 bytes')
})

test('circular objects and BigInts are sent as far as they go, never thrown into the app', async () => {
  const { sdk, b } = await start({ pageviews: false })
  const o = { name: 'x', list: [1] }
  o.self = o
  o.list.push(o)
  // Shared, not circular: sent whole wherever it appears.
  const shared = { k: 1 }
  o.a = shared
  o.b = [shared, shared]
  sdk.track('Cycle', { o, n: 10n })
  sdk.track('Unserialisable', {
    toJSON() {
      throw new Error('no')
    },
  })
  sdk.track('After')
  await sdk.flush()
  assert.deepEqual(
    b.events().map(e => [e.event, e.properties]),
    [
      ['Cycle', { o: { name: 'x', list: [1, '[Circular]'], self: '[Circular]', a: { k: 1 }, b: [{ k: 1 }, { k: 1 }] }, n: '10' }],
      ['After', undefined],
    ],
  )
  assert.equal(b.warnings.length, 1)
  assert.match(b.warnings[0], /dropped: Error: no/)
})

test('no call throws into the page, whatever it is given', async () => {
  const { sdk, b } = await start({ pageviews: false })
  const boom = {
    get boom() {
      throw new Error('getter')
    },
  }
  sdk.feedback(null)
  sdk.page('P', boom)
  sdk.identify(Symbol('id'))
  sdk.track('After')
  await sdk.flush()
  assert.ok(b.events().some(e => e.event == 'After'))
  assert.ok(b.warnings.some(w => /getter/.test(w)), b.warnings.join('\n'))
})

test('an event far over 32 KB is dropped alone, with a warning, and its neighbours are sent', async () => {
  const { sdk, b } = await start({ pageviews: false })
  sdk.track('Before')
  sdk.track('Upload', { dataUrl: 'data:image/png;base64,' + 'A'.repeat(40_000) })
  sdk.track('After')
  await sdk.flush()
  assert.deepEqual(b.events().map(e => e.event), ['Before', 'After'])
  assert.match(b.warnings[0], /dropped: over 32 KB/)
})

test('an event tracked while the page is hidden is beaconed at once: no timer may fire again', async () => {
  const { sdk, b } = await start({ pageviews: false })
  b.doc.visibilityState = 'hidden'
  b.dispatch(b.doc, 'visibilitychange')
  sdk.track('Hidden')
  assert.deepEqual(b.beacons.map(r => r.body.batch.map(e => e.event)), [['Hidden']])
  sdk.track('Later')
  assert.deepEqual(b.beacons.at(-1).body.batch.map(e => e.event), ['Later'], 'each event is beaconed once')
})

test('flush called while a send is under way waits for events queued meanwhile', async () => {
  const { sdk, b } = await start({ pageviews: false })
  sdk.flush()
  sdk.track('Stranded')
  await sdk.flush()
  assert.deepEqual(b.events().map(e => e.event), ['Stranded'])
  assert.deepEqual(b.queued(), [])
})

test('init takes a URL object as the host', async () => {
  const { sdk, b } = await start({ pageviews: false, host: new URL('https://collect.example/') })
  sdk.track('x')
  await sdk.flush()
  assert.equal(b.requests[0].url, 'https://collect.example/v1/batch')
})

test('without a host, events go to the page origin, whatever a <base href> says', async () => {
  const sdk = await load()
  const b = browser()
  sdk.init('wk_test', { window: b.win, pageviews: false })
  sdk.track('Here')
  await sdk.flush()
  assert.equal(b.requests[0].url, 'https://shop.example/v1/batch')
})

test('a browser without Array.prototype.at (before 2022) sends events', async () => {
  const at = Array.prototype.at
  delete Array.prototype.at
  try {
    const { sdk, b } = await start({ pageviews: false })
    sdk.track('Old browser', { nested: { list: [1, { deep: true }] } })
    await sdk.flush()
    assert.deepEqual(b.events().map(e => [e.event, e.properties]), [['Old browser', { nested: { list: [1, { deep: true }] } }]])
  } finally {
    Array.prototype.at = at
  }
})

test('a page that gives built-in types a toJSON (Prototype.js) changes nothing sent or stored', async () => {
  const types = [Array, String, Number]
  const own = types.map(t => Object.getOwnPropertyDescriptor(t.prototype, 'toJSON'))
  // Prototype.js 1.6: each turns its value into quoted text.
  Array.prototype.toJSON = function () {
    return '[' + [...this].map(x => JSON.stringify(x)).join(',') + ']'
  }
  String.prototype.toJSON = function () {
    return '"' + this + '"'
  }
  Number.prototype.toJSON = function () {
    return '' + this
  }
  const pages = types.map(t => t.prototype.toJSON)
  try {
    const { sdk, b } = await start({ pageviews: false })
    b.respond = () => new Error('offline')
    sdk.track('Listed', { tags: ['a', 'b'], n: 2 })
    await sdk.flush()
    assert.deepEqual(b.queued().map(e => [e.event, e.properties]), [['Listed', { tags: ['a', 'b'], n: 2 }]], 'stored')
    b.respond = () => ({ status: 200 })
    await b.advance(60e3)
    const sent = b.requests.map(r => r.body.batch.map(e => [e.event, e.properties]))
    assert.deepEqual(sent, [[['Listed', { tags: ['a', 'b'], n: 2 }]], [['Listed', { tags: ['a', 'b'], n: 2 }]]], 'sent, then sent again')
    assert.deepEqual(types.map(t => t.prototype.toJSON), pages, "the page's own are put back")
  } finally {
    types.forEach((t, i) => (own[i] ? Object.defineProperty(t.prototype, 'toJSON', own[i]) : delete t.prototype.toJSON))
  }
})

test('a request that never answers is given up after 10 s and retried', async () => {
  const { sdk, b } = await start({ pageviews: false })
  b.win.AbortController = AbortController
  b.respond = () => new Promise(() => {})
  sdk.track('Stalled')
  await b.advance(1000)
  assert.equal(b.requests.length, 1)
  b.respond = () => ({ status: 200 })
  await b.advance(10e3 + 2e3)
  assert.deepEqual(b.requests.map(r => r.body.batch[0].event), ['Stalled', 'Stalled'], 'aborted, then sent again')
  assert.deepEqual(b.queued(), [])
})

test('a page whose origin is opaque (a sandboxed frame) sends nowhere relative without a host', async () => {
  const sdk = await load()
  const b = browser()
  b.win.location.origin = 'null'
  sdk.init('wk_test', { window: b.win, pageviews: false })
  sdk.track('Framed')
  await sdk.flush()
  assert.equal(b.requests[0].url, '/v1/batch')
})
