import { test } from 'node:test'
import assert from 'node:assert/strict'
import { browser, load, start } from '../testing/fake-browser.mjs'

test('init sends a page view; SPA navigation sends one per new path or hash route', async () => {
  const { sdk, b } = await start()
  b.win.history.pushState({}, '', '/pricing?plan=pro')
  b.win.history.replaceState({ scroll: 1 }, '') // same URL: not a navigation
  b.win.history.replaceState({}, '', '/pricing?plan=team') // the query alone: not one either
  b.go('/pricing?plan=team#faq')
  b.dispatch(b.win, 'hashchange') // an anchor: not one
  b.go('/pricing#/settings')
  b.dispatch(b.win, 'hashchange')
  b.dispatch(b.win, 'popstate') // both fire for one hash change: one page view
  b.go('/pricing#top')
  b.dispatch(b.win, 'hashchange') // an anchor on the same path, after a hash route: not one
  b.go('/pricing')
  b.dispatch(b.win, 'popstate') // back to no hash: the root route
  b.go('/pricing#/')
  b.dispatch(b.win, 'hashchange') // a hash router's root is no hash
  b.go('/pricing#/search?q=a')
  b.dispatch(b.win, 'hashchange')
  b.go('/pricing#/search?q=ab')
  b.dispatch(b.win, 'hashchange') // the query of a hash route alone: not one
  b.go('/home')
  b.dispatch(b.win, 'popstate')
  await sdk.flush()
  const pages = b.events().filter(e => e.type == 'page')
  assert.deepEqual(
    pages.map(e => [e.properties.path, e.properties.search, e.properties.referrer]),
    [
      ['/home', '', 'https://search.example/'],
      ['/pricing', '?plan=pro', 'https://shop.example/home'],
      ['/pricing', '', 'https://shop.example/pricing?plan=pro'],
      ['/pricing', '', 'https://shop.example/pricing#/settings'],
      ['/pricing', '', 'https://shop.example/pricing'],
      ['/home', '', 'https://shop.example/pricing#/search?q=a'],
    ],
  )
  assert.equal(pages[1].properties.url, 'https://shop.example/pricing?plan=pro')
  assert.equal(pages[2].properties.url, 'https://shop.example/pricing#/settings')
  assert.equal(pages[1].context.page.path, '/pricing')
})

test('a page that froze its history object still starts, and counts back and forward', async () => {
  const sdk = await load()
  const b = browser()
  Object.freeze(b.win.history)
  sdk.init('wk_test', { host: 'https://collect.example', window: b.win })
  b.go('/next')
  b.dispatch(b.win, 'popstate')
  await sdk.flush()
  assert.deepEqual(b.events().map(e => e.properties.path), ['/home', '/next'])
  assert.deepEqual(b.warnings, [])
})

test('page() takes a name and properties; pageviews: false turns automatic ones off', async () => {
  const { sdk, b } = await start({ pageviews: false })
  b.win.history.pushState({}, '', '/docs')
  sdk.page('Docs', { section: 'api' })
  await sdk.flush()
  const [e] = b.events()
  assert.equal(b.events().length, 1)
  assert.equal(e.name, 'Docs')
  assert.equal(e.properties.section, 'api')
  assert.equal(e.properties.path, '/docs')
})

test('uncaught errors and unhandled rejections become $exception events', async () => {
  const { sdk, b } = await start()
  const error = new TypeError('x is undefined')
  error.stack = 'TypeError: x is undefined\n' + '    at f (https://shop.example/app.js:10:5)\n'.repeat(200)
  b.dispatch(b.win, 'error', { message: 'Uncaught TypeError: x is undefined', filename: 'https://shop.example/app.js', lineno: 10, colno: 5, error })
  b.dispatch(b.win, 'error', { message: 'Script error.', filename: '', lineno: 0, colno: 0, error: null })
  b.dispatch(b.win, 'unhandledrejection', { reason: new RangeError('too far') })
  b.dispatch(b.win, 'unhandledrejection', { reason: 'plain string' })
  await sdk.flush()
  const ex = b.events().filter(e => e.event == '$exception').map(e => e.properties)
  assert.equal(ex.length, 4)
  assert.deepEqual({ ...ex[0], stack: undefined }, {
    message: 'x is undefined',
    type: 'TypeError',
    stack: undefined,
    source: 'https://shop.example/app.js',
    line: 10,
    col: 5,
  })
  assert.equal(ex[0].stack.length, 2000, 'stacks are truncated')
  assert.deepEqual(ex[1], { message: 'Script error.', type: 'Error', source: '', line: 0, col: 0 })
  assert.equal(ex[2].type, 'RangeError')
  assert.equal(ex[2].message, 'too far')
  assert.deepEqual(ex[3], { message: 'plain string', type: 'UnhandledRejection' })
})

test('exceptions are capped at 20 a page, so an error loop cannot flood', async () => {
  const { sdk, b } = await start()
  for (let i = 0; i < 50; i++) b.dispatch(b.win, 'error', { message: 'boom', error: new Error('boom') })
  await sdk.flush()
  assert.equal(b.events().filter(e => e.event == '$exception').length, 20)
})

test('release comes from init or setRelease and is on every event, feedback included', async () => {
  const { sdk, b } = await start({ release: '2.0.0' })
  sdk.track('a')
  sdk.identify('u1', { name: 'Ada' })
  sdk.group('acme', { seats: 5 })
  b.dispatch(b.win, 'error', { message: 'boom', error: new Error('boom') })
  sdk.setRelease('2.0.1')
  sdk.track('b')
  await sdk.feedback({ score: 9 })
  await sdk.flush()
  assert.deepEqual(
    b.events().map(e => e.context.release),
    ['2.0.0', '2.0.0', '2.0.0', '2.0.0', '2.0.0', '2.0.1'],
  )
  assert.equal(b.feedback()[0].release, '2.0.1')
})

test('identify, group and alias use the Segment shapes', async () => {
  const { sdk, b } = await start({ pageviews: false })
  sdk.track('anonymous')
  sdk.identify('u1', { email: 'a@b.c' })
  sdk.group('acme', { plan: 'team' })
  sdk.alias('u1-new')
  sdk.track('later')
  await sdk.flush()
  const [anon, identify, group, alias, later] = b.events()
  assert.equal(anon.userId, undefined)
  assert.deepEqual([identify.type, identify.userId, identify.traits], ['identify', 'u1', { email: 'a@b.c' }])
  assert.equal(identify.anonymousId, anon.anonymousId)
  assert.deepEqual([group.type, group.userId, group.groupId, group.traits], ['group', 'u1', 'acme', { plan: 'team' }])
  assert.deepEqual([alias.type, alias.userId, alias.previousId], ['alias', 'u1-new', 'u1'])
  assert.equal(later.userId, 'u1-new')
})

test('properties are copied when tracked; changing them later changes nothing', async () => {
  const { sdk, b } = await start({ pageviews: false })
  const props = { n: 1 }
  sdk.track('a', props)
  props.n = 2
  await sdk.flush()
  assert.equal(b.events()[0].properties.n, 1)
})

test('clicks on data-ll-event elements become events with their data-ll-* attributes', async () => {
  const { sdk, b } = await start({ pageviews: false })
  const button = {
    attributes: [
      { name: 'data-ll-event', value: 'Upgrade Clicked' },
      { name: 'data-ll-plan', value: 'pro' },
      { name: 'data-ll-source', value: 'banner' },
      { name: 'class', value: 'btn' },
    ],
    getAttribute: n => button.attributes.find(a => a.name == n)?.value,
  }
  const inner = { closest: sel => (sel == '[data-ll-event]' ? button : null) }
  b.dispatch(b.doc, 'click', { target: inner })
  b.dispatch(b.doc, 'click', { target: { closest: () => null } })
  await sdk.flush()
  assert.deepEqual(
    b.events().map(e => [e.event, e.properties]),
    [['Upgrade Clicked', { plan: 'pro', source: 'banner' }]],
  )
})

// A PerformanceObserver that supports `types` and lets the test deliver entries.
function vitalsBrowser(types) {
  const b = browser()
  const observers = {}
  b.win.PerformanceObserver = class {
    static supportedEntryTypes = types
    constructor(callback) {
      this.callback = callback
    }
    observe({ type }) {
      if (!types.includes(type)) throw new TypeError(`asked for ${type}, which is not supported`)
      observers[type] = entries => this.callback({ getEntries: () => entries })
    }
  }
  return { b, observers }
}

test('web vitals go out once, as one $web_vitals event, when the page is first hidden', async () => {
  const { b, observers } = vitalsBrowser(['largest-contentful-paint', 'layout-shift', 'event', 'paint'])
  const sdk = await load()
  sdk.init('wk_test', { host: 'https://collect.example', window: b.win })
  observers['largest-contentful-paint']([{ startTime: 900.4 }, { startTime: 1234.6 }])
  observers['layout-shift']([
    { startTime: 100, value: 0.05 },
    { startTime: 600, value: 0.05 },
    { startTime: 700, value: 0.5, hadRecentInput: true },
    { startTime: 3000, value: 0.02 }, // a gap over 1 s starts a new window
  ])
  observers.event([
    { interactionId: 0, duration: 500 }, // not an interaction
    { interactionId: 7, duration: 120 },
    { interactionId: 8, duration: 80 },
  ])
  b.doc.visibilityState = 'hidden'
  b.dispatch(b.doc, 'visibilitychange')
  b.dispatch(b.win, 'pagehide')
  const vitals = b.events().filter(e => e.event == '$web_vitals')
  assert.equal(vitals.length, 1)
  assert.deepEqual(vitals[0].properties, { lcp: 1235, cls: 0.1, inp: 120 })
})

test('a browser without layout shifts or event timing reports only what it measured', async () => {
  const { b, observers } = vitalsBrowser(['largest-contentful-paint'])
  const sdk = await load()
  sdk.init('wk_test', { host: 'https://collect.example', window: b.win })
  observers['largest-contentful-paint']([{ startTime: 800 }])
  b.dispatch(b.win, 'pagehide')
  assert.deepEqual(b.events().find(e => e.event == '$web_vitals').properties, { lcp: 800 })
})

test('a page hidden before any measurement sends a zero CLS only where CLS is measured', async () => {
  const { b } = vitalsBrowser(['layout-shift'])
  const sdk = await load()
  sdk.init('wk_test', { host: 'https://collect.example', window: b.win })
  b.dispatch(b.win, 'pagehide')
  assert.deepEqual(b.events().find(e => e.event == '$web_vitals').properties, { cls: 0 })
  const none = browser()
  const again = await load()
  again.init('wk_test', { host: 'https://collect.example', window: none.win })
  none.dispatch(none.win, 'pagehide')
  assert.equal(none.events().filter(e => e.event == '$web_vitals').length, 0)
})

test('vitals, errors and clicks can each be turned off', async () => {
  const b = browser()
  let observed = 0
  b.win.PerformanceObserver = class {
    static supportedEntryTypes = ['largest-contentful-paint', 'layout-shift', 'event']
    observe() {
      observed++
    }
  }
  const sdk = await load()
  sdk.init('wk_test', { window: b.win, vitals: false, errors: false, clicks: false, pageviews: false })
  b.dispatch(b.win, 'error', { message: 'boom' })
  b.dispatch(b.doc, 'click', { target: { closest: () => ({ attributes: [], getAttribute: () => 'x' }) } })
  await sdk.flush()
  assert.equal(observed, 0)
  assert.equal(b.requests.length, 0)
})

test('nothing is sent before init or without a write key', async () => {
  const sdk = await load()
  sdk.track('early')
  const b = browser()
  sdk.init('', { window: b.win })
  sdk.track('no key')
  await sdk.flush()
  assert.equal(b.requests.length, 0)
})

test('a rejection whose reason cannot become text never throws into the page', async () => {
  const { sdk, b } = await start()
  b.dispatch(b.win, 'unhandledrejection', { reason: Symbol('s') })
  b.dispatch(b.win, 'unhandledrejection', { reason: Object.create(null) })
  b.dispatch(b.win, 'unhandledrejection', { reason: 'after' })
  await sdk.flush()
  const ex = b.events().filter(e => e.event == '$exception').map(e => e.properties.message)
  assert.ok(ex.includes('after'), `${ex}`)
})

test('alias without a user id changes nothing and warns', async () => {
  const { sdk, b } = await start({ pageviews: false })
  sdk.identify('real')
  for (const id of [undefined, null, '']) sdk.alias(id)
  sdk.track('x')
  await sdk.flush()
  assert.deepEqual(b.events().map(e => [e.type, e.userId]), [['identify', 'real'], ['track', 'real']])
  assert.match(b.warnings[0], /no userId/)
})

test('an id over 1024 bytes is refused with a warning and the current one kept', async () => {
  const { sdk, b } = await start({ pageviews: false })
  sdk.identify('real')
  sdk.identify('é'.repeat(513), { lost: true })
  sdk.alias('x'.repeat(1025))
  sdk.identify('x'.repeat(1024))
  sdk.track('after')
  await sdk.flush()
  const long = 'x'.repeat(1024)
  assert.deepEqual(
    b.events().map(e => [e.type, e.userId]),
    [['identify', 'real'], ['identify', long], ['track', long]],
  )
  assert.equal(b.warnings.filter(w => /over 1024 bytes/.test(w)).length, 2)
  // One kept too long (stored before ids were checked) is not sent.
  b.storage.setItem('ll_uid', 'y'.repeat(1025))
  sdk.track('kept too long')
  await sdk.flush()
  const last = b.events().at(-1)
  assert.deepEqual([last.event, last.userId, typeof last.anonymousId], ['kept too long', undefined, 'string'])
})

test('identify(traits), as analytics.js takes it, gives traits of the current user, never an id', async () => {
  const { sdk, b } = await start({ pageviews: false })
  sdk.identify({ email: 'a@b.c' })
  sdk.identify('u1')
  sdk.identify({ plan: 'pro' })
  sdk.track('later')
  await sdk.flush()
  assert.deepEqual(
    b.events().map(e => [e.type, e.userId, e.traits]),
    [
      ['identify', undefined, { email: 'a@b.c' }],
      ['identify', 'u1', undefined],
      ['identify', 'u1', { plan: 'pro' }],
      ['track', 'u1', undefined],
    ],
  )
  assert.equal(b.storage.getItem('ll_uid'), 'u1')
})

test('calls made before init send nothing and keep nothing', async () => {
  const sdk = await load()
  const b = browser()
  sdk.identify('early', { plan: 'pro' })
  sdk.alias('early-alias')
  sdk.track('early')
  sdk.init('wk_test', { host: 'https://collect.example', window: b.win, pageviews: false })
  sdk.track('after')
  await sdk.flush()
  assert.deepEqual(b.events().map(e => [e.event, e.userId]), [['after', undefined]])
  assert.equal(b.storage.getItem('ll_uid'), null)
})

test('a runtime whose global takes no event listeners (Node) starts and sends', async () => {
  const sdk = await load()
  const b = browser()
  const win = Object.assign({}, b.win)
  assert.equal(win.addEventListener, undefined)
  sdk.init('wk_test', { host: 'https://collect.example', window: win })
  sdk.track('from-node')
  await sdk.flush()
  assert.deepEqual(b.events().map(e => e.event ?? e.type), ['page', 'from-node'])
  assert.equal(b.warnings.length, 0, `${b.warnings}`)
})
