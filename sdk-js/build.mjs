// Builds dist/ from src/ with Node alone:
//   dist/leanloop.min.js  the drop-in script served at /sdk.js: one function
//                         that sets window.leanloop, comments and spacing removed
//   dist/prompt.min.mjs   the NPS prompt's module served at /sdk-prompt.mjs
// The ES module is src/leanloop.js itself (served at /sdk.mjs).
// `node build.mjs` writes dist/; test/dist.test.mjs checks it is current.

import { readFileSync, writeFileSync, mkdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const here = new URL('.', import.meta.url)
const read = name => readFileSync(new URL(name, here), 'utf8')

const ident = /[\w$]/
// After these characters a `/` starts a regular expression, not a division.
const beforeRegex = /[(,=:[!&|?{};]/
// A line break can go when the line ends in one of `after` or the next starts
// with one of `before`: no semicolon could be inserted there.
const after = '{([,;:?&|=>'
const before = '})].,:?'

// Removes comments, trailing commas and the spaces and line breaks a parser
// does not need (the source relies on line breaks instead of semicolons, so
// most stay), declares with `let` what the source declares with `const`, and
// keeps every string, template and regular expression as written.
// Identifiers are never renamed.
export function minify(code) {
  let out = ''
  let i = 0
  // Brace depths at which a `}` resumes an enclosing template literal.
  const templates = []
  let depth = 0
  const last = () => out.trimEnd().at(-1) || ''
  const emit = s => {
    if (out.endsWith('\n') && (after.includes(out.at(-2)) || before.includes(s[0]))) out = out.slice(0, -1)
    out += s
  }
  // Copies a quoted run starting at i up to and including the closing quote.
  const quoted = (close, stopAtHole) => {
    let j = i + 1
    while (j < code.length && code[j] != close) {
      if (code[j] == '\\') j++
      else if (stopAtHole && code[j] == '$' && code[j + 1] == '{') break
      j++
    }
    const hole = code[j] != close
    emit(code.slice(i, hole ? j + 2 : j + 1))
    i = hole ? j + 2 : j + 1
    return hole
  }
  while (i < code.length) {
    const c = code[i]
    const n = code[i + 1]
    if (c == "'" || c == '"') quoted(c)
    else if (c == '`' || (c == '}' && templates.at(-1) == depth)) {
      if (c == '}') templates.pop()
      if (quoted('`', true)) templates.push(depth)
    } else if (c == '/' && n == '/') {
      while (i < code.length && code[i] != '\n') i++
    } else if (c == '/' && n == '*') {
      i = code.indexOf('*/', i) + 2
    } else if (c == '/' && (beforeRegex.test(last()) || !last())) {
      let j = i + 1
      for (let cls = false; code[j] != '/' || cls; j++) {
        if (code[j] == '\\') j++
        else if (code[j] == '[') cls = true
        else if (code[j] == ']') cls = false
      }
      emit(code.slice(i, j + 1))
      i = j + 1
    } else if (c == '\n') {
      out = out.trimEnd()
      if (out && !out.endsWith('\n')) out += '\n'
      i++
    } else if (c == ' ' || c == '\t') {
      while (code[i] == ' ' || code[i] == '\t') i++
      const a = out.at(-1) || ''
      const b = code[i] || ''
      if ((ident.test(a) && ident.test(b)) || (a == b && (a == '+' || a == '-'))) out += ' '
    } else if (c == 'c' && /^const\s+[\w$[{]/.test(code.slice(i, i + 32)) && !/[\w$.]/.test(code[i - 1] || '')) {
      // Same bindings, scopes and dead zones for a program that never
      // assigns a constant (which would have thrown): two bytes less each.
      emit('let')
      i += 5
    } else {
      if (c == '{') depth++
      if (c == '}') depth--
      // A trailing comma, at a line's end too (never an elision: not after `[` or `,`).
      if (c == '}' || c == ']') {
        const t = out.replace(/\n$/, '')
        if (t.endsWith(',') && !'[,'.includes(t.at(-2))) out = t.slice(0, -1)
      }
      emit(c)
      i++
    }
  }
  return out.trim() + '\n'
}

// Pure ASCII, so the script reads the same whatever charset it is served with.
const ascii = s => s.replace(/[^\x00-\x7f]/g, c => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'))

export function build() {
  const src = read('src/leanloop.js')
  const version = src.match(/VERSION = '([^']+)'/)[1]
  const body = src.replace(/^export default /m, 'const leanloop = ').replace(/^export /gm, '')
  const script = `(() => {\n'use strict'\n${body}\n${read('src/global.js')}\n})()\n`
  return {
    'leanloop.min.js': `/*! leanloop-js ${version} */\n` + ascii(minify(script)),
    // The NPS prompt, fetched by the SDK when it first shows (/sdk-prompt.mjs).
    'prompt.min.mjs': `/*! leanloop-js ${version} prompt */\n` + ascii(minify(read('src/prompt.js'))),
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  mkdirSync(new URL('dist/', here), { recursive: true })
  for (const [name, text] of Object.entries(build())) {
    writeFileSync(new URL('dist/' + name, here), text)
    console.log(`dist/${name}: ${text.length} bytes`)
  }
}
