// Types for Leanloop's browser SDK (src/leanloop.js, dist/leanloop.js, and
// window.leanloop when loaded as the drop-in script).

export type Properties = Record<string, unknown>

export interface InitOptions {
  /** Collector origin, e.g. "https://collector.example.com". Default: the page's origin. */
  host?: string
  /** Put in `context.release` of every event and on feedback. */
  release?: string
  /** Send nothing when Do-Not-Track or Global Privacy Control is on. Default false. */
  respectDnt?: boolean
  /** Feedback prompt language: "zh" for Chinese, else English. Default: the browser's language. */
  locale?: string
  /** Show the feedback prompt once, in the session after the Nth. */
  feedback?: { afterSessions: number }
  /** Milliseconds an event waits for others before a batch is sent. Default 1000. */
  flushInterval?: number
  /** Most events kept while offline; the oldest are dropped first. Default 1000. */
  maxQueue?: number
  /** Automatic page views, including SPA navigation to a new path or hash route (`#/…`). Default true. */
  pageviews?: boolean
  /** `$exception` events for uncaught errors and unhandled rejections. Default true. */
  errors?: boolean
  /** One `$web_vitals` event (lcp, cls, inp) per page load. Default true. */
  vitals?: boolean
  /** Events for clicks on `[data-ll-event]` elements. Default true. */
  clicks?: boolean
  /**
   * The global object to use instead of `globalThis`: its fetch, navigator
   * (sendBeacon), localStorage, document, location, history, setTimeout,
   * clearTimeout, Date.now, Math.random and crypto. For tests and unusual
   * runtimes.
   */
  window?: any
  /**
   * The NPS prompt's module (`sdk-js/src/prompt.js`) for apps that bundle
   * it; by default it is fetched from `{host}/sdk-prompt.mjs` when the
   * prompt first shows.
   */
  prompt?: { prompt(context: unknown): void }
}

export interface Feedback {
  /** A whole number from 0 to 10. */
  score?: number
  message?: string
  category?: string
}

export const VERSION: string

/** Starts the SDK. A second call, or one without a write key, is ignored. */
export function init(writeKey: string, options?: InitOptions): void
export function track(event: string, properties?: Properties): void
/** Sent automatically on init and on SPA navigation unless `pageviews: false`. */
export function page(name?: string, properties?: Properties): void
export function identify(userId: string, traits?: Properties): void
/** Traits of the current user, with no new id (as analytics.js takes it). */
export function identify(traits: Properties): void
export function group(groupId: string, traits?: Properties): void
/** Links the current id (user id, else anonymous id) to `userId`, then uses `userId`. */
export function alias(userId: string): void
/** Forgets the user id, anonymous id and session, e.g. on logout. */
export function reset(): void
/** Sends the queue now. Settles when it is empty or a retry has been scheduled. */
export function flush(): Promise<void>
/** Stops all sending and clears the queue; remembered in cookie `ll_optout=1` and localStorage. */
export function optOut(): void
export function optIn(): void
/** Queues feedback for `POST /v1/feedback` and sends it at once. */
export function feedback(feedback: Feedback): Promise<void>
export function setRelease(release: string): void
/** Opens the NPS prompt (its module is fetched first); settles once it shows. */
export function showFeedback(): Promise<void> | undefined

declare const leanloop: {
  VERSION: typeof VERSION
  init: typeof init
  track: typeof track
  page: typeof page
  identify: typeof identify
  group: typeof group
  alias: typeof alias
  reset: typeof reset
  flush: typeof flush
  optOut: typeof optOut
  optIn: typeof optIn
  feedback: typeof feedback
  setRelease: typeof setRelease
  showFeedback: typeof showFeedback
}
export default leanloop

declare global {
  interface Window {
    leanloop: typeof leanloop
  }
}
