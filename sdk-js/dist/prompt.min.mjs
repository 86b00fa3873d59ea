/*! leanloop-js 0.1.0 prompt */
let TEXT={en:['How likely are you to recommend us to a friend?','Not likely','Very likely','Anything else? (optional)','Send','Close','Thank you!'],zh:['\u60a8\u6709\u591a\u5927\u53ef\u80fd\u5411\u670b\u53cb\u63a8\u8350\u6211\u4eec\uff1f','\u4e0d\u592a\u53ef\u80fd','\u975e\u5e38\u53ef\u80fd','\u5176\u4ed6\u5efa\u8bae\uff08\u53ef\u9009\uff09','\u63d0\u4ea4','\u5173\u95ed','\u611f\u8c22\u60a8\u7684\u53cd\u9988\uff01']}
let CSS=':host{all:initial}*{box-sizing:border-box;font:inherit}[role=dialog]{position:fixed;right:16px;bottom:16px;z-index:99999;width:min(360px,100vw - 32px);padding:16px;background:#fff;color:#111;font:14px/1.4 system-ui,sans-serif;border-radius:8px;box-shadow:0 4px 24px #0004}p{margin:0 24px 12px 0}div div,small{display:flex;gap:4px;justify-content:space-between}button{cursor:pointer;border:1px solid #ccc;border-radius:4px;background:#fff;padding:6px;flex:1}[aria-pressed=true],[data-ll-submit]{background:#111;color:#fff}[data-ll-close]{position:absolute;top:8px;right:8px;border:0}textarea{width:100%;margin:12px 0 8px}'
export function prompt(x){let{w,feedback,on,focus,done}=x
let d=w.document
if(!d?.body)return d?on(d,'DOMContentLoaded',()=>prompt(x)):done()
let lang=/^zh/i.test(x.lang)?'zh':'en'
let t=TEXT[lang]
let host=d.createElement('div')
let r=host.attachShadow({mode:'open'})
let back=d.activeElement
let score,used
host.setAttribute('data-ll-widget','')
r.innerHTML=`<style>${CSS}</style><div role="dialog" aria-labelledby="q" tabindex="-1" lang="${lang}"><button data-ll-close aria-label="${t[5]}">\u00d7</button><p id="q">${t[0]}</p><div role="group" aria-labelledby="q">${[...Array(11).keys()].map(i=>`<button data-ll-score="${i}" aria-pressed="false">${i}</button>`).join('')}</div><small><span>${t[1]}</span><span>${t[2]}</span></small><textarea aria-label="${t[3]}" placeholder="${t[3]}"></textarea><button data-ll-submit>${t[4]}</button></div>`
let box=r.querySelector('[role=dialog]')
let close=()=>{host.remove()
done()
;(focus||used)&&back?.focus?.()}
on(r,'keydown',e=>(used=1)&&e.key=='Escape'&&close())
on(r,'click',e=>{used=1
let b=e.target.closest('button')
if(!b)return
let message=r.querySelector('textarea').value.trim()
if(b.hasAttribute('data-ll-close'))return close()
if(!b.hasAttribute('data-ll-submit')){score=+b.getAttribute('data-ll-score')
for(let x of r.querySelectorAll('[data-ll-score]'))x.setAttribute('aria-pressed',x==b)}else if(score!=null||message){feedback({score,message:message||void 0,category:'nps'})
box.innerHTML=`<p role="status">${t[6]}</p>`
box.focus()
w.setTimeout(close,2e3)}})
d.body.appendChild(host)
focus&&r.querySelector('[data-ll-score]').focus()
return host}
