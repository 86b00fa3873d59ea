// Leanloop browser SDK: product events, sessions, errors, web vitals and
// feedback, sent in the Segment wire format. build.mjs turns this module into
// the drop-in script the collector serves at /sdk.js, so every byte counts.
//
// Browser globals are read through `w` (init's `window` option, else the real
// one), so tests can hand in a fake window with their own fetch, storage,
// timers, clock and randomness.

export const VERSION = '0.1.0'

const IDLE = 18e5 // a session ends after 30 minutes without events
const BATCH = 20
let w = globalThis
let o = {}
let key, sn, timer, busy, last, at, ref, open, vitals
let q = []
// The queue as this page last stored it (see sync).
let saved
let tries = 0
let errors = 0
// Console warnings this page load: a few, never one per request.
let warned = 0

// JSON.stringify, but blind to a toJSON the page gave the built-in types
// (Prototype.js): it would turn lists and strings into quoted text.
function json(v, f) {
  const k = [Array, String, Number].map(t => [(t = t.prototype), Object.getOwnPropertyDescriptor(t, 'toJSON')]).filter(([p, d]) => d?.configurable && delete p.toJSON)
  try {
    return JSON.stringify(v, f)
  } finally {
    k.map(([p, d]) => Object.defineProperty(p, 'toJSON', d))
  }
}

// Storage: localStorage, or cookies when it throws (blocked or full storage,
// some private modes), or memory for the page's life when both throw
// (sandboxed frames), so a session and an opt-out still hold there. The queue
// is stored apart (`save`), never in a cookie: it would not fit.
const mem = {}
const ck = (k, v) => {
  try {
    w.document.cookie = `ll_${k}=${encodeURIComponent(v)};path=/;max-age=${v ? 3e7 : 0};SameSite=Lax`
  } catch {}
}
// Reading document.cookie throws in sandboxed frames.
const cookie = k => {
  try {
    return decodeURIComponent(w.document.cookie.match(`(^|; )ll_${k}=([^;]*)`)[2])
  } catch {}
}
const get = k => {
  try {
    return w.localStorage.getItem('ll_' + k) ?? cookie(k) ?? mem[k]
  } catch {
    return cookie(k) ?? mem[k]
  }
}
const set = (k, v) => {
  try {
    w.localStorage.setItem('ll_' + k, v)
  } catch {
    // A full storage keeps its old value, which `get` would read first.
    try {
      w.localStorage.removeItem('ll_' + k)
    } catch {}
    ck(k, (mem[k] = v))
  }
  return v
}
// The queue's name in localStorage: one per write key, so that a page of
// another project on the same site never sends this one's events.
const qname = () => 'll_q:' + key
// What this tab stored last, only once stored: a write refused (a full
// storage) must not make the older stored queue look newer than memory's.
// What a full storage cannot take is the oldest events, halved until the
// rest fits, as past `maxQueue`; memory still holds them all.
function save() {
  for (let n = q.length; ; n >>= 1) {
    const s = json(n ? q.slice(-n) : [])
    try {
      return w.localStorage.setItem(qname(), s), (saved = s)
    } catch {}
    if (!n) return
  }
}
// The site's tabs share the stored queue. When another tab stored it since
// this one did, its version is taken with this tab's own undelivered events
// added back: a tab may read a version from before another tab's last write
// (browsers pass writes between tabs late), and what it writes then lacks
// that tab's newest events, which that tab adds back at its next change.
// Events are told apart by messageId; entries without one are dropped.
// What a tab delivered is recorded for the others (`ll_s:<key>`, the last
// 500 ids), so that none adds back an event of its own another sent.
const mine = new Set()
const sname = () => 'll_s:' + key
function delivered() {
  try {
    const x = JSON.parse(w.localStorage.getItem(sname()))
    if (Array.isArray(x)) return x
  } catch {}
  return []
}
function sync() {
  // Another tab may have opted out: nothing of this one's is sent either.
  if (off()) return (q = []), mine.clear()
  let s
  try {
    s = w.localStorage.getItem(qname())
  } catch {}
  if (s && s != saved)
    try {
      let x = JSON.parse(s)
      if (Array.isArray(x)) {
        const there = ids((x = x.filter(e => e?.messageId)))
        for (const i of delivered()) mine.delete(i)
        q = x.concat(q.filter(e => mine.has(e.messageId) && !there.has(e.messageId)))
        saved = s
      }
    } catch {}
}
const ids = items => new Set(items.map(e => e.messageId))

// Read at every event: another tab of the site may have identified or reset.
const aid = () => get('aid') || set('aid', uuid())
// One kept before ids were checked, too long, would have every event refused.
const user = (u = get('uid')) => (u && !long(u) ? u : void 0)
const now = () => w.Date.now()
const iso = () => new Date(now()).toISOString()
// randomUUID needs a secure context; plain-http pages get the fallback.
const uuid = () =>
  w.crypto?.randomUUID?.() || '10000000-1000-4000-8000-100000000000'.replace(/[018]/g, c => (c ^ (w.Math.random() * 16) >> c / 4).toString(16))
// Not every runtime has listeners on its global (Node has none).
const on = (t, e, f, c) => t?.addEventListener?.(e, f, c)

const off = () =>
  get('optout') == 1 ||
  cookie('optout') == 1 ||
  (o.respectDnt && (w.navigator?.doNotTrack == 1 || w.navigator?.globalPrivacyControl))

function session() {
  const t = now()
  let [id, seen, n = 0] = (get('ses') || '').split('|')
  if (!id || t - seen > IDLE) {
    id = uuid()
    n++
  }
  set('ses', [id, t, (sn = n)].join('|'))
  return id
}

function where() {
  const l = w.location || {}
  const d = w.document || {}
  return { url: l.href, path: l.pathname, referrer: ref ?? d.referrer, title: d.title, search: l.search }
}

// Events have a `type`; feedback (no type) shares the queue so it is
// persisted and retried the same way, but goes to its own endpoint.
function add(type, x) {
  if (!key || off()) return
  const n = w.navigator || {}
  const s = w.screen || {}
  const e = { type: type || void 0, anonymousId: aid(), userId: user(), messageId: uuid(), timestamp: iso(), ...x }
  if (type)
    e.context = {
      release: o.release,
      library: { name: 'leanloop-js', version: VERSION },
      page: where(),
      userAgent: n.userAgent,
      locale: n.language,
      screen: { width: s.width, height: s.height },
      timezone: Intl.DateTimeFormat().resolvedOptions().timeZone,
      sessionId: session(),
    }
  else Object.assign(e, { page: w.location?.href, release: o.release, sessionId: session() })
  // A snapshot: the caller may mutate its objects later, and a value that
  // cannot be serialised must fail here rather than in every later flush.
  const c = snap(e)
  if (!c) return
  sync()
  q.push(c)
  mine.add(c.messageId)
  // Offline for long: keep the newest events, drop the oldest.
  q.splice(0, q.length - (o.maxQueue || 1e3))
  save()
  // Hidden (the page may be going away): no timer will fire, so beacon now.
  w.document?.visibilityState == 'hidden' ? hide() : q.length >= BATCH && !tries ? flush() : later(o.flushInterval || 1e3)
}

// BigInts become text and an object inside itself (a cycle) "[Circular]";
// what still cannot be serialised, or is too large to be stored, drops the
// event with a warning instead of throwing into the app.
function snap(e) {
  // The objects from the root to the value at hand: `this` is its holder.
  const path = []
  try {
    const t = json(e, function (k, v) {
      while (path.length && path[path.length - 1] !== this) path.pop()
      if (typeof v == 'bigint') return '' + v
      if (v && typeof v == 'object') {
        if (path.includes(v)) return '[Circular]'
        path.push(v)
      }
      return v
    })
    // Far over the collector's 32 KB for an event, it could take the
    // request past 5 MB and cost its other events; up to there, the
    // collector refuses it alone.
    if (t.length > 32768) throw 'over 32 KB'
    return JSON.parse(t)
  } catch (x) {
    warn('dropped: ' + x)
  }
}

function later(ms, force) {
  if (force || !timer) {
    w.clearTimeout(timer)
    timer = w.setTimeout(flush, ms)
  }
}

// The next request from `list`: up to `n` leading events, or one feedback.
function next(list = q, n = BATCH) {
  let items = list.slice(0, n)
  const i = items.findIndex(e => !e.type)
  items = items.slice(0, i < 0 ? n : i || 1)
  const base = { sentAt: iso(), writeKey: key }
  return [o.host + (i ? '/v1/batch' : '/v1/feedback'), json(i ? { batch: items, ...base } : { ...items[0], ...base }), items]
}

const done = items => {
  const sent = ids(items)
  sent.forEach(i => mine.delete(i))
  sync()
  q = q.filter(e => !sent.has(e.messageId))
  try {
    w.localStorage.setItem(sname(), json(delivered().concat([...sent]).slice(-500)))
  } catch {}
  save()
}

const warn = m => warned++ < 5 && w.console?.warn('leanloop: ' + m)

// Each wait is a random 50-100 % of the step, so clients that failed together
// do not retry together.
const backoff = n => Math.min(6e4, 1e3 * 2 ** n) * (0.5 + w.Math.random() / 2)

// text/plain keeps cross-origin posts "simple": no CORS preflight. A request
// stalled on a dead connection is given up after 10 s (and retried): the
// tab sending holds the other tabs' turn meanwhile.
function send(url, body, keepalive) {
  const c = w.AbortController && new w.AbortController()
  const t = c && w.setTimeout(() => c.abort(), 1e4)
  return w.fetch(url, { method: 'POST', headers: { 'Content-Type': 'text/plain' }, body, keepalive, signal: c?.signal }).finally(() => w.clearTimeout(t))
}

// Resolves to 0 when the request is finished with (sent, or refused for good),
// else to the milliseconds to wait before retrying.
async function post(url, body, items) {
  let after
  try {
    const r = await send(url, body)
    // Retrying cannot fix a refused request; the server dedups by messageId anyway.
    if (r.status < 500 && r.status != 429) {
      if (!r.ok) warn(`${r.status}: request dropped`)
      // A batch is stored but for the events it refuses, which it lists.
      else if (r.json)
        (await r.json().catch(() => 0))?.rejected?.forEach(x => {
          const e = items[x.index] || {}
          warn(`${e.event ?? e.name} refused (${x.field}): ${x.reason}`)
        })
      return 0
    }
    after = r.headers.get('Retry-After') * 1e3
  } catch {}
  const wait = backoff(tries++)
  return after || wait
}

async function drain() {
  // Another tab may have stored events, or sent some, since this one looked.
  sync()
  while (q.length && !off()) {
    const [url, body, items] = next()
    const wait = await post(url, body, items)
    if (wait) return later(wait, 1)
    tries = 0
    done(items)
  }
}

export function flush() {
  // A drain under way may have passed events queued since: one more after
  // it, unless it ended waiting to retry.
  if (busy) return busy.then(() => tries || flush())
  w.clearTimeout(timer)
  timer = 0
  // One of the site's tabs sends at a time where the browser has Web Locks:
  // each sends the queue they share, so two at once would send it twice.
  // A tab that finds another sending looks again later; one the browser
  // refuses locks (an opaque origin) sends on its own.
  const l = w.navigator?.locks
  const sending = l
    ? Promise.resolve()
        .then(() => l.request('ll_send:' + key, { ifAvailable: true }, x => (x ? drain() : later(o.flushInterval || 1e3))))
        .catch(drain)
    : drain()
  return (busy = sending.finally(() => (busy = 0)))
}

// The page may be gone before fetch completes: hand what is left to the
// browser. A beacon's fate is unknown (true only means "queued"), so beaconed
// events stay queued and stored: if the page lives on they are sent again, if
// not the next page load sends them; the server's messageId dedup makes the
// second copy harmless.
const beaconed = new Set()
const beacon = (url, body) => {
  try {
    return w.navigator.sendBeacon(url, body)
  } catch {
    send(url, body, true).catch(() => {})
    return 1
  }
}
function hide() {
  const v = vitals
  if (v && Object.keys(v).length) (vitals = 0), track('$web_vitals', v)
  let rest = q.filter(e => !beaconed.has(e.messageId))
  let n = BATCH
  while (rest.length && !off()) {
    const [url, body, items] = next(rest, n)
    // Refused: over what the browser lets beacons carry (64 KB in flight).
    // Then one event a beacon, each that fits, the rest left queued.
    if (beacon(url, body)) items.forEach(e => beaconed.add(e.messageId))
    else if (n > 1) {
      n = 1
      continue
    }
    rest = rest.slice(items.length)
  }
}

// LCP, CLS (largest session window) and INP (longest interaction), reported
// once per page load when the page is first hidden.
function observe() {
  const v = (vitals = {})
  // Browsers only warn about an entry type they lack, so ask first.
  const ob = (type, f, x) => {
    if (w.PerformanceObserver?.supportedEntryTypes?.includes(type)) {
      new w.PerformanceObserver(l => l.getEntries().forEach(f)).observe({ type, buffered: true, ...x })
      return 1
    }
  }
  let first = 0,
    prev = 0,
    cur = 0
  ob('largest-contentful-paint', e => (v.lcp = Math.round(e.startTime)))
  if (ob('layout-shift', e => {
    if (e.hadRecentInput) return
    if (e.startTime - prev > 1e3 || e.startTime - first > 5e3) (first = e.startTime), (cur = 0)
    prev = e.startTime
    cur += e.value
    v.cls = Math.max(v.cls, Math.round(cur * 1e4) / 1e4)
  })) v.cls = 0
  ob('event', e => e.interactionId && (v.inp = Math.max(v.inp || 0, e.duration)), { durationThreshold: 40 })
}

function click(e) {
  const el = e.target?.closest?.('[data-ll-event]')
  const p = {}
  if (!el) return
  for (const a of el.attributes) if (a.name.startsWith('data-ll-') && a.name != 'data-ll-event') p[a.name.slice(8)] = a.value
  track(el.getAttribute('data-ll-event'), p)
}

// A navigation is a new path, or a new hash route (`#/…` or `#!/…`, its
// query aside; `#/` is no hash) for apps that route by hash. A new query
// alone (search as you type) is not, nor is an anchor on the same path (a
// table of contents), as in posthog-js and Plausible.
const route = (l = w.location || {}) => l.pathname + ((l.hash || '').match(/^#!?\/[^?]+/) || [''])[0]
const nav = () => {
  const l = w.location || {}
  route() != at && !(/^#[^/!]/.test(l.hash) && at.split('#')[0] == l.pathname) && page()
}

export function init(writeKey, options) {
  if (key || !writeKey) return
  o = { ...options }
  w = o.window || globalThis
  // Not a relative path: a <base href> would send it elsewhere.
  const origin = w.location?.origin
  o.host = ('' + (o.host || (origin != 'null' && origin) || '')).replace(/\/+$/, '')
  key = writeKey
  sync()
  const d = w.document
  const h = w.history
  if (o.pageviews != false) {
    // Single-page apps navigate without a load: watch the history API.
    // A page that froze History.prototype refuses the patch: popstate and
    // hashchange still count.
    for (const m of ['pushState', 'replaceState']) {
      const f = h?.[m]
      try {
        if (f)
          h[m] = function () {
            const r = f.apply(this, arguments)
            nav()
            return r
          }
      } catch {}
    }
    on(w, 'popstate', nav)
    on(w, 'hashchange', nav)
    page()
  }
  if (o.errors != false) {
    // Capped: a failing handler must not turn into an event flood.
    const oops = safe((e, r, type) =>
      errors++ < 20 &&
      track('$exception', { message: '' + (r?.message ?? e.message ?? r), type: r?.name || type, stack: r?.stack?.slice?.(0, 2e3), source: e.filename, line: e.lineno, col: e.colno }))
    on(w, 'error', e => oops(e, e.error, 'Error'))
    on(w, 'unhandledrejection', e => oops(e, e.reason, 'UnhandledRejection'))
  }
  if (o.vitals != false) observe()
  // Capture phase: the app stopping propagation must not hide the click.
  if (o.clicks != false) on(d, 'click', click, true)
  on(w, 'pagehide', hide)
  on(d, 'visibilitychange', () => d.visibilityState == 'hidden' && hide())
  on(w, 'online', flush)
  const f = o.feedback
  if (f && !off()) {
    session()
    // Marked shown only once it has: a module that failed to load is
    // tried again on a later page.
    if (sn > (f.afterSessions || 0) && !get('fb')) prompt()?.then(shown => shown && set('fb', 1))
  }
  if (q.length) later(o.flushInterval || 1e3)
}

// No call throws into the page's code: what fails is dropped with a warning.
const safe =
  f =>
  (...a) => {
    try {
      return f(...a)
    } catch (x) {
      warn('failed: ' + x)
    }
  }

export const track = safe((event, properties) => add('track', { event, properties }))

export const page = safe((name, properties) => {
  const h = w.location?.href
  if (last && last != h) ref = last
  last = h
  at = route()
  add('page', { name, properties: { ...where(), ...properties } })
})

// A person's id as the server takes it: at most 1024 bytes of UTF-8.
// Kept when longer, every later event would be refused.
const long = u => {
  let n = 0
  for (let c of u) n += (c = c.codePointAt()) < 128 ? 1 : c < 2048 ? 2 : c < 65536 ? 3 : 4
  return n > 1024
}
const pid = u => {
  if (long((u = '' + u))) throw 'userId over 1024 bytes'
  return u
}

// identify(traits) as in analytics.js: traits of the current user.
export const identify = safe((userId, traits) => {
  if (userId === Object(userId)) (traits = userId), (userId = 0)
  // Before init (a module can be called then) nothing is kept.
  if (key && userId) set('uid', pid(userId))
  add('identify', { traits })
})

export const group = safe((groupId, traits) => add('group', { groupId, traits }))

export const alias = safe(userId => {
  if (!key) return
  if (!userId) throw 'no userId'
  add('alias', { userId: pid(userId), previousId: user() || aid() })
  set('uid', '' + userId)
})

// After logout: the next events belong to a new anonymous visitor.
export function reset() {
  for (const k of ['uid', 'aid', 'ses']) set(k, '')
}

export function setRelease(release) {
  o.release = release
}

export function optOut() {
  set('optout', 1)
  ck('optout', 1)
  q = []
  save()
}

export function optIn() {
  set('optout', '')
  ck('optout', '')
}

export const feedback = safe(f => {
  const { score, message, category } = f || {}
  add('', { score, message, category })
  return flush()
})

// The NPS prompt is a module of its own (prompt.js), fetched the first
// time it shows, from `{host}/sdk-prompt.mjs` unless the app hands it in
// (`prompt` option): most pages never show it. Shown on its own
// (afterSessions) it leaves focus where it is: the person may be typing.
export const showFeedback = safe(() => prompt(1))
function prompt(focus) {
  // Open: loading (1), or its element, unless the page removed that.
  if ((open && open.isConnected != false) || !key || off()) return
  open = 1
  // Ignored by bundlers: the module is the collector's, fetched at run time.
  return (o.prompt ? Promise.resolve(o.prompt) : import(/* webpackIgnore: true */ /* @vite-ignore */ o.host + '/sdk-prompt.mjs'))
    .then(m => ((open = m.prompt({ w, lang: o.locale || w.navigator?.language, feedback, on, focus, done: () => (open = 0) }) || open), 1))
    .catch(x => void warn('failed: ' + x, (open = 0)))
}

export default { VERSION, init, track, page, identify, group, alias, reset, flush, optOut, optIn, feedback, setRelease, showFeedback }
