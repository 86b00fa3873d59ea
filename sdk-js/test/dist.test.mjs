import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { gzipSync } from 'node:zlib'
import vm from 'node:vm'
import { build, minify } from '../build.mjs'
import { browser } from '../testing/fake-browser.mjs'

const read = name => readFileSync(new URL(`../${name}`, import.meta.url), 'utf8')
const LIMIT = 5120

test('dist/ is what build.mjs makes from src/ (run `node build.mjs`)', () => {
  for (const [name, text] of Object.entries(build())) assert.equal(read(`dist/${name}`), text, `dist/${name} is stale`)
})

test('the drop-in script is at most 5 KB gzipped, and plain ASCII', t => {
  const script = read('dist/leanloop.min.js')
  const size = gzipSync(script).length
  t.diagnostic(`dist/leanloop.min.js: ${script.length} bytes, ${size} bytes gzipped (limit ${LIMIT})`)
  assert.ok(size <= LIMIT, `${size} bytes gzipped`)
  assert.match(script, /^[\x00-\x7f]*$/)
})

test('the drop-in script parses in browsers from 2020: no syntax or methods newer than ES2020', () => {
  const script = readFileSync(new URL('../dist/leanloop.min.js', import.meta.url), 'utf8')
  for (const newer of ['||=', '&&=', '??=', '.at(', 'replaceAll(', 'Object.hasOwn', 'structuredClone']) {
    assert.ok(!script.includes(newer), `${newer} in dist/leanloop.min.js`)
  }
})

test('minify keeps strings, templates and regexes, and drops comments, spacing and trailing commas', () => {
  const code = [
    "const a = 'x // not a comment, const' // a comment",
    'const b = `a ${ {k: "}", const: 1, c: o.const,}.k } b /* kept */`',
    '/* block */ const c = /[/]+ const/g.test(a) ? 1 / 2 : 3',
    'let d = a + +b - -c, constant = [1, 2,], holes = [,], more = [1,,]',
    'f(1,',
    '  2)',
    'const e = {',
    '  k: [1,',
    '  ],',
    '}',
    'g()',
    '(h)',
  ].join('\n')
  const out = minify(code)
  assert.equal(
    out,
    "let a='x // not a comment, const'\nlet b=`a ${{k:\"}\",const:1,c:o.const}.k} b /* kept */`\nlet c=/[/]+ const/g.test(a)?1/2:3\nlet d=a+ +b- -c,constant=[1,2],holes=[,],more=[1,,]\nf(1,2)\nlet e={k:[1]}\ng()\n(h)\n",
  )
})

// The drop-in script in a VM whose global is a pretend browser window.
function run(b, currentScript, inline = '') {
  const g = { ...b.win }
  for (const k of ['addEventListener', 'removeEventListener', 'dispatchEvent']) g[k] = b.win[k].bind(b.win)
  // The script's own Date and Math are the VM's; clock and randomness are not faked here.
  delete g.Date
  delete g.Math
  g.URL = URL
  g.window = g
  b.doc.currentScript = currentScript
  b.doc.querySelector = () => null
  vm.createContext(g)
  vm.runInContext(inline, g)
  vm.runInContext(read('dist/leanloop.min.js'), g)
  return g
}

test('a script tag with data-write-key starts the SDK on window.leanloop', async () => {
  const b = browser()
  const g = run(b, { src: 'https://collect.example/sdk.js', dataset: { writeKey: 'wk_tag', release: '5.0.0' } })
  assert.deepEqual(Object.keys(g.leanloop).sort(), [
    'VERSION', 'alias', 'feedback', 'flush', 'group', 'identify', 'init', 'optIn', 'optOut', 'page', 'reset', 'setRelease', 'showFeedback', 'track',
  ])
  g.leanloop.track('From Tag')
  await g.leanloop.flush()
  assert.equal(b.requests[0].url, 'https://collect.example/v1/batch', 'host defaults to the script origin')
  assert.equal(b.requests[0].body.writeKey, 'wk_tag')
  assert.deepEqual(b.events().map(e => [e.type, e.event, e.context.release]), [['page', undefined, '5.0.0'], ['track', 'From Tag', '5.0.0']])
})

test('the README snippet queues calls that the script replays, init first', async () => {
  const snippet = read('README.md').match(/<script>\n([\s\S]*?)<\/script>/)[1]
  const b = browser()
  const g = run(b, { src: 'https://cdn.example/sdk.js', dataset: {} }, `leanloop = []; leanloop.push(['track', 'Queued Early']); ${snippet}`)
  await g.leanloop.flush()
  assert.equal(b.requests[0].url, 'https://collector.example.com/v1/batch', 'the queued init set the host')
  assert.deepEqual(b.events().map(e => e.event ?? e.type), ['page', 'Queued Early', 'Viewed Pricing'])
  assert.equal(b.events()[0].context.release, '1.4.2')
})

test('the script loaded twice keeps the first copy, so nothing is sent twice', async () => {
  const b = browser()
  const g = run(b, { src: 'https://collect.example/sdk.js', dataset: { writeKey: 'wk_tag' } })
  const first = g.leanloop
  vm.runInContext(read('dist/leanloop.min.js'), g)
  assert.equal(g.leanloop, first)
  g.leanloop.track('Once')
  await g.leanloop.flush()
  assert.deepEqual(b.events().map(e => e.event ?? e.type), ['page', 'Once'])
})

test('a queued call that throws does not stop the calls queued after it', async () => {
  const b = browser()
  const bad = "Symbol('bad id')"
  const g = run(
    b,
    { src: 'https://collect.example/sdk.js', dataset: {} },
    `leanloop = [['init', 'wk', { host: 'https://collect.example' }], ['track', 'A'], ['identify', ${bad}], ['identify', 'u2'], ['track', 'B']]`,
  )
  await g.leanloop.flush()
  assert.deepEqual(b.events().map(e => [e.event ?? e.type, e.userId]), [['page', undefined], ['A', undefined], ['identify', 'u2'], ['B', 'u2']])
})
