// The drop-in script's tail. build.mjs places it inside the same function as
// leanloop.js (exports removed, its default export bound to `leanloop`).
//
// The snippet may have left `window.leanloop = [[method, ...args], ...]`:
// those calls are replayed, `init` first, so nothing queued before the script
// arrived is lost. A script tag with data-write-key initialises on its own.
//
// Loaded twice (a tag manager and the page both adding it), the second copy
// leaves the first in place: two would send every event twice. A queued call
// that throws does not stop the ones after it.
const stub = window.leanloop
const tag = document.currentScript || document.querySelector('script[data-write-key]')
const data = tag?.dataset || {}
if (!stub?.VERSION) {
  window.leanloop = leanloop
  if (data.writeKey) init(data.writeKey, { host: data.host || new URL(tag.src, location.href).origin, release: data.release, respectDnt: 'respectDnt' in data })
  if (Array.isArray(stub))
    stub
      .sort((a, b) => (b[0] == 'init') - (a[0] == 'init'))
      .forEach(([m, ...args]) => {
        try {
          leanloop[m]?.(...args)
        } catch {}
      })
}
