import { test } from 'node:test'
import assert from 'node:assert/strict'
import { browser, load, memoryStorage, start } from '../testing/fake-browser.mjs'

// A second page load in the same browser: same storage and cookies, a new SDK.
async function reload(b, options = {}) {
  const sdk = await load()
  const next = browser({ storage: b.storage, cookies: b.cookies, now: b.now })
  sdk.init('wk_test', { host: 'https://collect.example', window: next.win, ...options })
  return { sdk, b: next }
}

test('offline, the queue keeps the newest 1,000 events and drops the oldest', async () => {
  const { sdk, b } = await start({ pageviews: false })
  b.respond = () => new Error('offline')
  for (let i = 0; i < 1100; i++) sdk.track(`e${i}`)
  await b.settle()
  const queued = b.queued()
  assert.equal(queued.length, 1000)
  assert.equal(queued[0].event, 'e100')
  assert.equal(queued.at(-1).event, 'e1099')
})

test('queued events survive a reload and are sent with their original messageIds', async () => {
  const first = await start()
  first.b.respond = () => new Error('offline')
  first.sdk.track('Added To Cart')
  await first.b.advance(1000)
  const before = first.b.queued().map(e => e.messageId)
  assert.equal(before.length, 2)

  const { b } = await reload(first.b)
  await b.advance(1000)
  const sent = b.events()
  assert.deepEqual(sent.map(e => e.event ?? e.type), ['page', 'Added To Cart', 'page'])
  assert.deepEqual(sent.slice(0, 2).map(e => e.messageId), before)
  assert.deepEqual(b.queued(), [])
})

test('ids live in localStorage and last across loads', async () => {
  const first = await start()
  first.sdk.identify('user-1', { plan: 'pro' })
  await first.sdk.flush()
  const anon = first.b.events()[0].anonymousId
  assert.equal(first.b.storage.getItem('ll_aid'), anon)

  const { sdk, b } = await reload(first.b)
  sdk.track('Back')
  await sdk.flush()
  const e = b.events().at(-1)
  assert.equal(e.anonymousId, anon)
  assert.equal(e.userId, 'user-1')
  assert.equal(b.cookies.size, 0, 'no cookies while localStorage works')
})

test('when localStorage throws, ids fall back to cookies', async () => {
  const blocked = {
    getItem() {
      throw new Error('SecurityError')
    },
    setItem() {
      throw new Error('SecurityError')
    },
  }
  const first = await start({}, { storage: blocked })
  first.sdk.identify('user-2')
  await first.sdk.flush()
  const anon = first.b.events()[0].anonymousId
  assert.equal(first.b.cookies.get('ll_aid'), anon)
  assert.equal(first.b.cookies.get('ll_uid'), 'user-2')
  assert.ok(!first.b.cookies.has('ll_q'), 'the queue is too big for a cookie')

  // Some browsers throw on merely reading window.localStorage.
  const sdk = await load()
  const b = browser({ cookies: first.b.cookies, now: first.b.now })
  Object.defineProperty(b.win, 'localStorage', {
    get() {
      throw new Error('SecurityError')
    },
  })
  sdk.init('wk_test', { host: 'https://collect.example', window: b.win })
  await sdk.flush()
  assert.equal(b.events()[0].anonymousId, anon)
  assert.equal(b.events()[0].userId, 'user-2')
})

test('when localStorage is full, ids are written to cookies and read back from them', async () => {
  const full = {
    getItem: () => null,
    setItem() {
      throw new Error('QuotaExceededError')
    },
  }
  const first = await start({}, { storage: full })
  await first.sdk.flush()
  const { sdk, b } = await reload(first.b)
  await sdk.flush()
  assert.equal(b.events()[0].anonymousId, first.b.events()[0].anonymousId)
  assert.equal(b.events()[0].context.sessionId, first.b.events()[0].context.sessionId)
})

test('opting out stops sending, clears the queue, and persists in a cookie and localStorage', async () => {
  const first = await start()
  first.sdk.track('before')
  first.sdk.optOut()
  first.sdk.track('after')
  first.sdk.page()
  await first.sdk.flush()
  await first.b.advance(5000)
  assert.equal(first.b.requests.length, 0)
  assert.equal(first.b.cookies.get('ll_optout'), '1')
  assert.equal(first.b.storage.getItem('ll_optout'), '1')

  const { sdk, b } = await reload(first.b)
  sdk.track('still out')
  await sdk.flush()
  assert.equal(b.requests.length, 0)

  // The cookie alone is enough, for sites that set it server-side.
  const cookieOnly = await reload({ storage: memoryStorage(), cookies: first.b.cookies, now: first.b.now })
  await cookieOnly.sdk.flush()
  assert.equal(cookieOnly.b.requests.length, 0)

  sdk.optIn()
  assert.ok(!b.cookies.has('ll_optout'))
  sdk.track('back in')
  await sdk.flush()
  assert.deepEqual(b.events().map(e => e.event), ['back in'])
})

test('Do-Not-Track and Global Privacy Control are honoured when respectDnt is set', async () => {
  for (const signal of [{ doNotTrack: '1' }, { globalPrivacyControl: true }]) {
    const b = browser()
    Object.assign(b.win.navigator, signal)
    const sdk = await load()
    sdk.init('wk_test', { host: 'https://collect.example', window: b.win, respectDnt: true })
    sdk.track('x')
    await sdk.flush()
    assert.equal(b.requests.length, 0)
  }
  const b = browser()
  b.win.navigator.doNotTrack = '1'
  const sdk = await load()
  sdk.init('wk_test', { host: 'https://collect.example', window: b.win })
  await sdk.flush()
  assert.equal(b.requests.length, 1, 'without respectDnt the signal is not acted on')
})

test('a session lasts until 30 minutes without events', async () => {
  const { sdk, b } = await start()
  await b.advance(29 * 60e3)
  sdk.track('a')
  await b.advance(29 * 60e3)
  sdk.track('b')
  await b.advance(30 * 60e3 + 1)
  sdk.track('c')
  await sdk.flush()
  const ids = b.events().map(e => e.context.sessionId)
  assert.equal(ids[0], ids[1])
  assert.equal(ids[1], ids[2])
  assert.notEqual(ids[2], ids[3])
})

test('the session carries over a reload, and reset() starts a new visitor', async () => {
  const first = await start()
  await first.sdk.flush()
  const { sdk, b } = await reload(first.b)
  await sdk.flush()
  const [one, two] = [first.b.events()[0], b.events()[0]]
  assert.equal(one.context.sessionId, two.context.sessionId)

  sdk.identify('u9')
  sdk.reset()
  sdk.track('after logout')
  await sdk.flush()
  const e = b.events().at(-1)
  assert.equal(e.userId, undefined)
  assert.notEqual(e.anonymousId, one.anonymousId)
  assert.notEqual(e.context.sessionId, one.context.sessionId)
})

test('with neither localStorage nor cookies (a sandboxed frame), ids, the session and an opt-out hold for the page', async () => {
  const b = browser()
  const refuse = () => {
    throw new Error('SecurityError')
  }
  Object.defineProperty(b.win, 'localStorage', { get: refuse })
  Object.defineProperty(b.doc, 'cookie', { get: refuse, set: refuse })
  const sdk = await load()
  sdk.init('wk_test', { host: 'https://collect.example', window: b.win })
  sdk.identify('u1')
  sdk.track('a')
  await b.advance(10 * 60e3)
  sdk.track('b')
  await sdk.flush()
  const events = b.events()
  assert.equal(events.length, 4)
  assert.equal(new Set(events.map(e => e.context.sessionId)).size, 1)
  assert.equal(new Set(events.map(e => e.anonymousId)).size, 1)
  assert.equal(events.at(-1).userId, 'u1')
  sdk.optOut()
  sdk.track('after opting out')
  await sdk.flush()
  assert.equal(b.events().length, 4)
})

test("tabs share the stored queue: one tab's offline events are not overwritten by another's", async () => {
  const a = await start({ pageviews: false })
  a.b.respond = () => new Error('offline')
  a.sdk.track('A1')
  a.sdk.track('A2')
  // A second tab of the same site: the same storage, a page of its own.
  const sdk = await load()
  const b = browser({ storage: a.b.storage, cookies: a.b.cookies, now: a.b.now })
  sdk.init('wk_test', { host: 'https://collect.example', window: b.win, pageviews: false })
  sdk.track('B1')
  a.sdk.track('A3')
  assert.deepEqual(a.b.queued().map(e => e.event), ['A1', 'A2', 'B1', 'A3'])
  // The first tab closes while offline; the second sends everything.
  await sdk.flush()
  assert.deepEqual(b.events().map(e => e.event), ['A1', 'A2', 'B1', 'A3'])
  assert.deepEqual(b.queued(), [])
})

test('when storage stops taking the queue, the events added since stay in memory', async () => {
  const storage = memoryStorage()
  const setItem = storage.setItem
  let writes = 0
  storage.setItem = (k, v) => {
    if (k.startsWith('ll_q') && writes++ > 0) throw new Error('QuotaExceededError')
    setItem(k, v)
  }
  const { sdk, b } = await start({ pageviews: false }, { storage })
  for (const name of ['a', 'b', 'c']) sdk.track(name)
  await sdk.flush()
  assert.deepEqual(b.events().map(e => e.event), ['a', 'b', 'c'])
})

test("a tab that read the queue before another tab wrote it loses none of that tab's events", async () => {
  const a = await start({ pageviews: false })
  a.b.respond = () => new Error('offline')
  // The second tab's read after the first tab's write is out of date
  // (browsers pass writes between tabs late).
  let stale = false
  const view = { ...a.b.storage, getItem: k => (stale && k.startsWith('ll_q') ? ((stale = false), null) : a.b.storage.getItem(k)) }
  const sdk = await load()
  const b = browser({ storage: view, cookies: a.b.cookies, now: a.b.now })
  sdk.init('wk_test', { host: 'https://collect.example', window: b.win, pageviews: false })
  a.sdk.track('A1')
  stale = true
  sdk.track('B1')
  assert.deepEqual(a.b.queued().map(e => e.event), ['B1'], 'the stale write dropped A1 from storage')
  a.sdk.track('A2')
  assert.deepEqual(a.b.queued().map(e => e.event), ['B1', 'A1', 'A2'], 'the first tab put its own back')
  await sdk.flush()
  assert.deepEqual(b.events().map(e => e.event), ['B1', 'A1', 'A2'])
})

test("each write key keeps a queue of its own: another project's page never sends this one's events", async () => {
  const first = await start({ pageviews: false })
  first.b.respond = () => new Error('offline')
  first.sdk.track('Project One')
  const sdk = await load()
  const b = browser({ storage: first.b.storage, cookies: first.b.cookies, now: first.b.now })
  sdk.init('wk_other', { host: 'https://collect.example', window: b.win, pageviews: false })
  sdk.track('Project Two')
  await sdk.flush()
  assert.deepEqual(b.events().map(e => [e.event, b.requests[0].body.writeKey]), [['Project Two', 'wk_other']])
  assert.deepEqual(first.b.queued().map(e => e.event), ['Project One'])
})

test('entries of a stored queue that are not events are dropped, and the rest is sent', async () => {
  const storage = memoryStorage()
  const event = { type: 'track', event: 'Kept', messageId: 'm-1', anonymousId: 'a' }
  storage.setItem('ll_q:wk_test', JSON.stringify([null, 1, 'x', [], event]))
  const { sdk, b } = await start({ pageviews: false }, { storage })
  await sdk.flush()
  assert.deepEqual(b.events().map(e => e.event), ['Kept'])
  assert.deepEqual(b.queued(), [])
})

test('an event another tab sent is not sent again by the tab that tracked it', async () => {
  const a = await start({ pageviews: false })
  const sdk = await load()
  const b = browser({ storage: a.b.storage, cookies: a.b.cookies, now: a.b.now })
  sdk.init('wk_test', { host: 'https://collect.example', window: b.win, pageviews: false })
  sdk.track('B1')
  // The first tab sends the queue the tabs share.
  await a.sdk.flush()
  assert.deepEqual(a.b.events().map(e => e.event), ['B1'])
  sdk.track('B2')
  await sdk.flush()
  assert.deepEqual(b.events().map(e => e.event), ['B2'], 'B1 was sent by the other tab')
  assert.deepEqual(b.queued(), [])
})

test('while another tab holds the send lock, a tab leaves the shared queue to it', async () => {
  const { sdk, b } = await start({ pageviews: false })
  let held = true
  const asked = []
  b.win.navigator.locks = {
    request: (name, options, f) => (asked.push([name, options.ifAvailable]), Promise.resolve(f(held ? null : { name }))),
  }
  sdk.track('Mine')
  await sdk.flush()
  assert.equal(b.requests.length, 0, 'the tab holding the lock sends')
  assert.deepEqual(asked[0], ['ll_send:wk_test', true])
  held = false
  await b.advance(1000)
  assert.deepEqual(b.events().map(e => e.event), ['Mine'])
})

test("opting out in one tab stops another tab's queued events too", async () => {
  const a = await start({ pageviews: false })
  const sdk = await load()
  const b = browser({ storage: a.b.storage, cookies: a.b.cookies, now: a.b.now })
  sdk.init('wk_test', { host: 'https://collect.example', window: b.win, pageviews: false })
  b.respond = () => new Error('offline')
  sdk.track('B1')
  a.sdk.optOut()
  // The second tab's retry comes while the person is opted out.
  await b.advance(60e3)
  a.sdk.optIn()
  b.respond = () => ({ status: 200 })
  sdk.track('B2')
  await sdk.flush()
  assert.deepEqual(b.requests.at(-1).body.batch.map(e => e.event), ['B2'])
})

test('a tab the browser refuses locks (an opaque origin) sends on its own', async () => {
  for (const request of [
    () => {
      throw new DOMException('Access to the Locks API is denied in this context.', 'SecurityError')
    },
    () => Promise.reject(new DOMException('Access to the Locks API is denied in this context.', 'SecurityError')),
  ]) {
    const { sdk, b } = await start({ pageviews: false })
    b.win.navigator.locks = { request }
    sdk.track('Framed')
    await sdk.flush()
    assert.deepEqual(b.events().map(e => e.event), ['Framed'])
  }
})

test("identify and reset() in one tab reach the site's other tabs at their next event", async () => {
  const a = await start({ pageviews: false })
  const sdk = await load()
  const b = browser({ storage: a.b.storage, cookies: a.b.cookies, now: a.b.now })
  sdk.init('wk_test', { host: 'https://collect.example', window: b.win, pageviews: false })
  a.sdk.identify('u-1')
  sdk.track('while identified')
  await sdk.flush()
  const identified = b.events().at(-1)
  assert.equal(identified.userId, 'u-1')
  a.sdk.reset()
  sdk.track('after logout')
  await sdk.flush()
  const after = b.events().at(-1)
  assert.equal(after.event, 'after logout')
  assert.equal(after.userId, undefined, 'the logged-out user is not named')
  assert.notEqual(after.anonymousId, identified.anonymousId, 'a new visitor, not the one linked to u-1')
})

test('a storage too full for the whole queue keeps the newest events that fit', async () => {
  const storage = memoryStorage()
  const setItem = storage.setItem
  storage.setItem = (k, v) => {
    if (k.startsWith('ll_q') && String(v).length > 4000) throw new Error('QuotaExceededError')
    setItem(k, v)
  }
  const first = await start({ pageviews: false }, { storage })
  first.b.respond = () => new Error('offline')
  for (let i = 0; i < 40; i++) first.sdk.track(`e${i}`)
  const kept = first.b.queued().map(e => e.event)
  assert.ok(kept.length > 0 && kept.length < 40, `${kept.length} kept`)
  assert.equal(kept.at(-1), 'e39', 'the newest event is kept')
  // The page goes away offline; the next load sends what was kept.
  const { sdk, b } = await reload(first.b, { pageviews: false })
  await sdk.flush()
  assert.deepEqual(b.events().map(e => e.event), kept)
})
