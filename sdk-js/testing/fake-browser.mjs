// A pretend browser for the unit tests: just enough window for the SDK, with a
// clock and timers the test drives, a fetch that records requests and answers
// what the test says, and storage that outlives a "reload". It lives outside
// test/ because `node --test test/` would run every module there as a test.

let loads = 0

// A fresh copy of the SDK, as after a page load: module state starts over.
export const load = () => import(`../src/leanloop.js?load=${++loads}`)

export function memoryStorage() {
  const m = new Map()
  return {
    map: m,
    getItem: k => (m.has(k) ? m.get(k) : null),
    setItem: (k, v) => void m.set(k, String(v)),
    removeItem: k => void m.delete(k),
  }
}

export function browser({ url = 'https://shop.example/home', storage = memoryStorage(), cookies = new Map(), now } = {}) {
  const win = new EventTarget()
  const doc = new EventTarget()
  const b = {
    win,
    doc,
    storage,
    cookies,
    now: now ?? Date.parse('2024-05-01T12:00:00Z'),
    random: 0.5,
    timers: [],
    requests: [],
    beacons: [],
    warnings: [],
    // What fetch answers: a status, optional headers and JSON body, or an Error to throw.
    respond: () => ({ status: 200 }),
  }
  let ids = 0
  const location = {}
  const go = u => {
    const x = new URL(u, location.href || url)
    Object.assign(location, { href: x.href, origin: x.origin, pathname: x.pathname, search: x.search, hash: x.hash })
  }
  go(url)
  b.go = go

  Object.defineProperty(doc, 'cookie', {
    configurable: true,
    get: () => [...cookies].map(([k, v]) => `${k}=${v}`).join('; '),
    set: text => {
      const [pair, ...attributes] = text.split(';')
      const [k, v] = pair.split('=')
      if (attributes.some(a => a.trim() == 'max-age=0')) cookies.delete(k)
      else cookies.set(k, v)
    },
  })
  Object.assign(doc, { title: 'Home', referrer: 'https://search.example/', visibilityState: 'visible', body: null })

  Object.assign(win, {
    document: doc,
    location,
    history: {
      pushState: (state, title, u) => go(u),
      replaceState: (state, title, u) => u && go(u),
    },
    navigator: {
      userAgent: 'node-test',
      language: 'en-US',
      sendBeacon: (u, body) => (b.beacons.push({ url: u, body: JSON.parse(body) }), true),
    },
    screen: { width: 1280, height: 800 },
    localStorage: storage,
    crypto: globalThis.crypto,
    Date: { now: () => b.now },
    Math: { random: () => b.random },
    console: { warn: (...a) => b.warnings.push(a.join(' ')) },
    setTimeout: (fn, ms) => {
      b.timers.push({ id: ++ids, fn, ms, at: b.now + ms })
      return ids
    },
    clearTimeout: id => {
      const i = b.timers.findIndex(t => t.id === id)
      if (i >= 0) b.timers.splice(i, 1)
    },
    fetch: async (u, init) => {
      const request = { url: u, body: JSON.parse(init.body), headers: init.headers, keepalive: init.keepalive }
      b.requests.push(request)
      // A request the SDK gives up on fails as fetch's does.
      const aborted = new Promise((_, fail) => init.signal?.addEventListener('abort', () => fail(new Error('AbortError'))))
      const r = await Promise.race([b.respond(request), aborted])
      if (r instanceof Error) throw r
      const ok = r.status >= 200 && r.status < 300
      return { status: r.status, ok, headers: new Headers(r.headers), json: async () => r.json ?? { success: ok } }
    },
  })

  // Lets pending promises (fetch answers, flush loops) run.
  b.settle = async () => {
    for (let i = 0; i < 20; i++) await new Promise(r => setImmediate(r))
  }
  // Moves the clock forward, firing due timers in order.
  b.advance = async ms => {
    const end = b.now + ms
    for (;;) {
      await b.settle()
      const due = b.timers.filter(t => t.at <= end).sort((x, y) => x.at - y.at)[0]
      if (!due) break
      b.timers.splice(b.timers.indexOf(due), 1)
      b.now = Math.max(b.now, due.at)
      due.fn()
    }
    b.now = end
    await b.settle()
  }
  // Every event delivered so far, by fetch or beacon, in order.
  b.events = () => [...b.requests, ...b.beacons].flatMap(r => r.body.batch || [])
  b.feedback = () => [...b.requests, ...b.beacons].filter(r => !r.body.batch).map(r => r.body)
  // The stored queue of the write key the tests use.
  b.queued = (writeKey = 'wk_test') => JSON.parse(storage.getItem(`ll_q:${writeKey}`) || '[]')
  // Fields are defined rather than assigned: some (target) are getters on Event.
  b.dispatch = (target, type, fields = {}) => {
    const e = new Event(type)
    for (const [k, v] of Object.entries(fields)) Object.defineProperty(e, k, { value: v })
    target.dispatchEvent(e)
  }
  return b
}

// A loaded SDK initialised against a fresh pretend browser.
export async function start(options = {}, browserOptions) {
  const sdk = await load()
  const b = browser(browserOptions)
  sdk.init(options.writeKey ?? 'wk_test', { host: 'https://collect.example', window: b.win, prompt: await import('../src/prompt.js'), ...options })
  return { sdk, b }
}
