import { test } from 'node:test'
import assert from 'node:assert/strict'
import { browser, load, start } from '../testing/fake-browser.mjs'
import * as prompt from '../src/prompt.js'

test('feedback() posts to /v1/feedback with the ids, page and release', async () => {
  const { sdk, b } = await start({ release: '3.1.0' })
  sdk.identify('u7')
  await sdk.feedback({ score: 8, message: 'Fast export', category: 'praise' })
  const [f] = b.feedback()
  const r = b.requests.at(-1)
  assert.equal(r.url, 'https://collect.example/v1/feedback')
  assert.deepEqual(r.headers, { 'Content-Type': 'text/plain' })
  assert.deepEqual(Object.keys(f).sort(), [
    'anonymousId', 'category', 'message', 'messageId', 'page', 'release', 'score', 'sentAt', 'sessionId', 'timestamp', 'userId', 'writeKey',
  ])
  assert.deepEqual([f.score, f.message, f.category, f.userId, f.release, f.page, f.writeKey], [8, 'Fast export', 'praise', 'u7', '3.1.0', 'https://shop.example/home', 'wk_test'])
  assert.equal(f.sessionId, b.events()[0].context.sessionId)
})

test('feedback is queued and retried like events, keeping its messageId', async () => {
  const { sdk, b } = await start({ pageviews: false })
  b.respond = r => (r.url.endsWith('/v1/feedback') ? { status: 502 } : { status: 200 })
  await sdk.feedback({ message: 'The chart is empty' })
  assert.equal(b.queued().length, 1)
  b.respond = () => ({ status: 200 })
  await b.advance(1000)
  const sent = b.feedback()
  assert.equal(sent.length, 2)
  assert.equal(sent[0].messageId, sent[1].messageId)
  assert.equal(sent[1].score, undefined)
  assert.deepEqual(b.queued(), [])
})

test('events and feedback keep their order across endpoints', async () => {
  const { sdk, b } = await start()
  sdk.track('a')
  sdk.feedback({ score: 3 })
  sdk.track('b')
  await sdk.flush()
  assert.deepEqual(
    b.requests.map(r => r.url.split('/').pop() + ':' + (r.body.batch?.length ?? r.body.score)),
    ['batch:2', 'feedback:3', 'batch:1'],
  )
})

// Just enough DOM for the widget: markup is parsed into a flat list of
// elements, which is all its selectors and event handling need.
function dom(b) {
  const element = (tag, attrs = {}) => ({
    tag,
    attrs,
    value: '',
    focus() {
      b.doc.activeElement = this
    },
    setAttribute(k, v) {
      this.attrs[k] = String(v)
    },
    hasAttribute: k => k in attrs,
    getAttribute: k => attrs[k],
    closest(sel) {
      return sel == tag ? this : null
    },
  })
  const parse = html =>
    [...html.matchAll(/<(\w+)([^>]*)>/g)].map(([, tag, rest]) =>
      element(tag, Object.fromEntries([...rest.matchAll(/([\w-]+)(?:="([^"]*)")?/g)].map(([, k, v]) => [k, v ?? '']))),
    )
  const matches = (el, sel) => {
    const [, tag, k, v] = sel.match(/^(\w*)(?:\[([\w-]+)(?:="?([^"\]]*)"?)?\])?$/)
    return (!tag || el.tag == tag) && (!k || (k in el.attrs && (v == null || el.attrs[k] == v)))
  }
  const page = { body: { children: [] }, shown: () => b.doc.body.children[0] }
  b.doc.body = {
    children: page.body.children,
    appendChild: host => page.body.children.push(host),
  }
  b.doc.activeElement = element('input', { id: 'search' })
  b.doc.createElement = tag => {
    const host = element(tag)
    host.remove = () => page.body.children.splice(page.body.children.indexOf(host), 1)
    host.attachShadow = ({ mode }) => {
      const root = new EventTarget()
      let els = []
      root.mode = mode
      Object.defineProperty(root, 'innerHTML', {
        get: () => root.html,
        set: html => {
          root.html = html
          els = parse(html)
          // The dialog's own innerHTML replaces what it contains.
          const box = els.find(e => e.attrs.role == 'dialog')
          if (box)
            Object.defineProperty(box, 'innerHTML', {
              set: inner => {
                root.html = root.html.replace(/(<div role="dialog"[^>]*>).*<\/div>$/, `$1${inner}</div>`)
                els = [box, ...parse(inner)]
              },
            })
        },
      })
      root.querySelector = sel => els.find(e => matches(e, sel)) ?? null
      root.querySelectorAll = sel => els.filter(e => matches(e, sel))
      host.shadowRoot = root
      return root
    }
    return host
  }
  page.click = sel => page.root().dispatchEvent(Object.defineProperty(new Event('click'), 'target', { value: page.root().querySelector(sel) }))
  page.key = key => page.root().dispatchEvent(Object.assign(new Event('keydown'), { key }))
  page.root = () => page.shown().shadowRoot
  return page
}

test('the NPS prompt is an accessible dialog in an open shadow root', async () => {
  const { sdk, b } = await start({ release: '4.0.0', pageviews: false })
  const page = dom(b)
  const before = b.doc.activeElement
  await Promise.all([sdk.showFeedback(), sdk.showFeedback()]) // already open: not twice
  assert.equal(page.body.children.length, 1)
  const host = page.shown()
  assert.ok(host.hasAttribute('data-ll-widget'))
  const root = page.root()
  assert.equal(root.mode, 'open')
  const dialog = root.querySelector('[role=dialog]')
  assert.equal(dialog.attrs['aria-labelledby'], 'q')
  assert.ok(root.querySelector('p[id=q]'))
  assert.equal(root.querySelector('[data-ll-close]').attrs['aria-label'], 'Close')
  assert.deepEqual(root.querySelectorAll('[data-ll-score]').map(e => [e.tag, e.attrs['data-ll-score']]), [...Array(11).keys()].map(i => ['button', `${i}`]))
  assert.ok(root.querySelector('textarea').attrs['aria-label'])
  assert.ok(root.querySelector('button[data-ll-submit]'))
  assert.match(root.html, /How likely are you to recommend us/)
  assert.equal(b.doc.activeElement, root.querySelector('[data-ll-score="0"]'), 'focus moves into the dialog')

  page.click('[data-ll-submit]')
  await b.settle()
  assert.equal(b.requests.length, 0, 'nothing chosen, nothing sent')

  page.click('[data-ll-score="7"]')
  page.click('[data-ll-score="9"]')
  assert.deepEqual(root.querySelectorAll('[data-ll-score]').map(e => e.attrs['aria-pressed']), ['false', 'false', 'false', 'false', 'false', 'false', 'false', 'false', 'false', 'true', 'false'])
  root.querySelector('textarea').value = '  Love it  '
  page.click('[data-ll-submit]')
  await b.settle()
  const [f] = b.feedback()
  assert.deepEqual([f.score, f.message, f.category, f.release], [9, 'Love it', 'nps', '4.0.0'])
  assert.match(root.html, /role="status">Thank you!/)
  assert.equal(b.doc.activeElement, dialog)
  await b.advance(2000)
  assert.equal(page.body.children.length, 0, 'closes itself after the thanks')
  assert.equal(b.doc.activeElement, before, 'focus goes back where it was')
})

test('Escape and the close button dismiss the prompt without sending', async () => {
  const { sdk, b } = await start({ pageviews: false })
  const page = dom(b)
  await sdk.showFeedback()
  page.key('Enter')
  assert.equal(page.body.children.length, 1)
  page.key('Escape')
  assert.equal(page.body.children.length, 0)
  await sdk.showFeedback()
  page.click('[data-ll-close]')
  assert.equal(page.body.children.length, 0)
  await b.settle()
  assert.equal(b.requests.length, 0)
})

test('Chinese strings for locale zh or a zh browser', async () => {
  for (const [option, language] of [['zh', 'en-US'], [undefined, 'zh-CN'], [undefined, 'zh-TW']]) {
    const { sdk, b } = await start({ pageviews: false, locale: option })
    b.win.navigator.language = language
    const page = dom(b)
    await sdk.showFeedback()
    assert.match(page.root().html, /您有多大可能向朋友推荐我们/)
    assert.equal(page.root().querySelector('[data-ll-close]').attrs['aria-label'], '关闭')
  }
})

test('the prompt waits for the body when called too early', async () => {
  const { sdk, b } = await start({ pageviews: false })
  await sdk.showFeedback()
  const page = dom(b)
  assert.equal(page.body.children.length, 0)
  b.dispatch(b.doc, 'DOMContentLoaded')
  assert.equal(page.body.children.length, 1)
})

test('feedback: {afterSessions: 2} shows the prompt once, in the third session', async () => {
  const b = browser()
  const shown = []
  for (let load_ = 0; load_ < 5; load_++) {
    const sdk = await load()
    const next = browser({ storage: b.storage, cookies: b.cookies, now: b.now + load_ * 31 * 60e3 })
    const page = dom(next)
    sdk.init('wk_test', { host: 'https://collect.example', window: next.win, feedback: { afterSessions: 2 }, prompt })
    await next.settle()
    shown.push(page.body.children.length)
  }
  assert.deepEqual(shown, [0, 0, 1, 0, 0])
})

test('shown on its own, the prompt leaves focus where the person is typing', async () => {
  const b = browser()
  const page = dom(b)
  const typing = b.doc.activeElement
  const sdk = await load()
  sdk.init('wk_test', { host: 'https://collect.example', window: b.win, pageviews: false, feedback: { afterSessions: 0 }, prompt })
  await b.settle()
  assert.equal(page.body.children.length, 1)
  assert.equal(b.doc.activeElement, typing)
})

test('a prompt the page refuses (Trusted Types) warns and throws nothing into the page', async () => {
  const refused = { prompt: () => { throw new TypeError("This document requires 'TrustedHTML' assignment") } }
  const b = browser()
  const sdk = await load()
  sdk.init('wk_test', { host: 'https://collect.example', window: b.win, pageviews: false, feedback: { afterSessions: 0 }, prompt: refused })
  await b.settle()
  assert.match(b.warnings.join(), /TrustedHTML/)
  assert.equal(b.storage.getItem('ll_fb'), null, 'not marked shown: a later page tries again')
  // init went on: the rest of the SDK works, and the prompt may be asked for again.
  sdk.track('After')
  await sdk.flush()
  assert.deepEqual(b.events().map(e => e.event), ['After'])
  await sdk.showFeedback()
  assert.equal(b.warnings.filter(w => /TrustedHTML/.test(w)).length, 2)
})

test('a prompt the page removed itself (a body replaced) may show again', async () => {
  const { sdk, b } = await start({ pageviews: false })
  const page = dom(b)
  await sdk.showFeedback()
  const first = page.shown()
  page.body.children.splice(0)
  await sdk.showFeedback()
  assert.equal(page.body.children.length, 0, 'still open as far as the SDK knows')
  first.isConnected = false
  await sdk.showFeedback()
  assert.equal(page.body.children.length, 1)
})
