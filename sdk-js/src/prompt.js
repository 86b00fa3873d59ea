// Leanloop's NPS prompt, a module of its own: the SDK (leanloop.js) fetches
// it the first time the prompt shows, as most pages never show it. build.mjs
// writes the copy the collector serves at /sdk-prompt.mjs.

const TEXT = {
  en: ['How likely are you to recommend us to a friend?', 'Not likely', 'Very likely', 'Anything else? (optional)', 'Send', 'Close', 'Thank you!'],
  zh: ['您有多大可能向朋友推荐我们？', '不太可能', '非常可能', '其他建议（可选）', '提交', '关闭', '感谢您的反馈！'],
}
// The prompt's own styles; `all:initial` keeps the page's inherited ones out.
const CSS =
  ':host{all:initial}*{box-sizing:border-box;font:inherit}[role=dialog]{position:fixed;right:16px;bottom:16px;z-index:99999;width:min(360px,100vw - 32px);padding:16px;background:#fff;color:#111;font:14px/1.4 system-ui,sans-serif;border-radius:8px;box-shadow:0 4px 24px #0004}p{margin:0 24px 12px 0}div div,small{display:flex;gap:4px;justify-content:space-between}button{cursor:pointer;border:1px solid #ccc;border-radius:4px;background:#fff;padding:6px;flex:1}[aria-pressed=true],[data-ll-submit]{background:#111;color:#fff}[data-ll-close]{position:absolute;top:8px;right:8px;border:0}textarea{width:100%;margin:12px 0 8px}'

// The prompt: a dialog in a shadow root that keeps page styles out. Its
// strings are constants, never user input, so innerHTML is safe (a page
// that requires Trusted Types refuses it: the SDK then warns).
// `x`: the SDK's window `w`, the language `lang`, `feedback` (sends the
// answer), `on` (adds a listener), `focus` (move focus into the prompt)
// and `done` (called once it is gone). Returns the prompt's element (none
// while it waits for the page's body).
export function prompt(x) {
  const { w, feedback, on, focus, done } = x
  const d = w.document
  if (!d?.body) return d ? on(d, 'DOMContentLoaded', () => prompt(x)) : done()
  const lang = /^zh/i.test(x.lang) ? 'zh' : 'en'
  const t = TEXT[lang]
  const host = d.createElement('div')
  const r = host.attachShadow({ mode: 'open' })
  const back = d.activeElement
  let score, used
  host.setAttribute('data-ll-widget', '')
  r.innerHTML = `<style>${CSS}</style><div role="dialog" aria-labelledby="q" tabindex="-1" lang="${lang}"><button data-ll-close aria-label="${t[5]}">×</button><p id="q">${t[0]}</p><div role="group" aria-labelledby="q">${[...Array(11).keys()].map(i => `<button data-ll-score="${i}" aria-pressed="false">${i}</button>`).join('')}</div><small><span>${t[1]}</span><span>${t[2]}</span></small><textarea aria-label="${t[3]}" placeholder="${t[3]}"></textarea><button data-ll-submit>${t[4]}</button></div>`
  const box = r.querySelector('[role=dialog]')
  const close = () => {
    host.remove()
    done()
    // Focus goes back to where it was, unless the prompt showed on its own
    // and was never used (focus never left the page then).
    ;(focus || used) && back?.focus?.()
  }
  on(r, 'keydown', e => (used = 1) && e.key == 'Escape' && close())
  on(r, 'click', e => {
    used = 1
    const b = e.target.closest('button')
    if (!b) return
    const message = r.querySelector('textarea').value.trim()
    if (b.hasAttribute('data-ll-close')) return close()
    if (!b.hasAttribute('data-ll-submit')) {
      score = +b.getAttribute('data-ll-score')
      for (const x of r.querySelectorAll('[data-ll-score]')) x.setAttribute('aria-pressed', x == b)
    } else if (score != null || message) {
      feedback({ score, message: message || void 0, category: 'nps' })
      box.innerHTML = `<p role="status">${t[6]}</p>`
      box.focus()
      w.setTimeout(close, 2e3)
    }
  })
  d.body.appendChild(host)
  focus && r.querySelector('[data-ll-score]').focus()
  return host
}
