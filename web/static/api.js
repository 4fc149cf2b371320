// diffusiond web UI: talking to the daemon's HTTP API.
// Owns the API key (kept in localStorage), JSON requests with plain-words errors, image URLs that
// work with a key, and the Server-Sent Events stream of a job read through fetch() (EventSource
// cannot send an Authorization header). Runs on the page's single JS thread.

const KEY_STORAGE = 'diffusiond.apiKey';

let apiKey = localStorage.getItem(KEY_STORAGE) || '';
let keyPrompt = null;      // Promise of the open key dialog, shared by every request that got 401
let keyDeclined = false;  // the user closed the dialog: do not ask again until they act
let askForKeyHandler = null;

// The page provides the dialog that asks for the key: askForKey(message) -> Promise<string|null>.
export function onKeyNeeded(handler) { askForKeyHandler = handler; }
export function hasKey() { return apiKey !== ''; }
// A user action (e.g. Generate) may ask for the key again after the user once declined.
export function allowKeyPrompt() { keyDeclined = false; }
export function forgetKey() {
  apiKey = '';
  localStorage.removeItem(KEY_STORAGE);
}

// An error to show next to the form: `message` is plain words, `code` the API's code if any,
// `field` the request field it is about when the API names one.
export class ApiError extends Error {
  constructor(message, { status = 0, code = '', field = '' } = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

// Seeds are 64-bit: keep big ones as strings instead of letting JSON.parse round them.
function parseJson(text) {
  return JSON.parse(text.replace(/("seed"\s*:\s*)(\d{16,})/g, '$1"$2"'));
}

// Serialises a request body, writing `seed` (kept as a digit string) as a bare JSON number.
export function toJsonBody(body) {
  const seed = body.seed;
  if (typeof seed === 'string' && /^\d+$/.test(seed)) {
    return JSON.stringify({ ...body, seed: '\u0000SEED\u0000' })
      .replace('"\\u0000SEED\\u0000"', seed);
  }
  return JSON.stringify(body);
}

function authHeaders(extra = {}) {
  const h = { ...extra };
  if (apiKey) h.Authorization = `Bearer ${apiKey}`;
  return h;
}

async function askKeyOnce(refused) {
  if (!askForKeyHandler || keyDeclined) return false;
  if (!keyPrompt) {
    const msg = refused ? 'The daemon refused that API key. Enter the right one.'
                        : 'This daemon needs an API key. Enter it once; this browser will remember it.';
    keyPrompt = askForKeyHandler(msg).finally(() => { keyPrompt = null; });
  }
  const key = await keyPrompt;
  if (key === null || key === undefined) {
    keyDeclined = true;
    return false;
  }
  if (key !== apiKey) {
    apiKey = key.trim();
    localStorage.setItem(KEY_STORAGE, apiKey);
  }
  return true;
}

// fetch() with the key; on 401 asks for the key (once for all concurrent requests) and retries.
export async function authFetch(path, init = {}) {
  for (let attempt = 0; ; ++attempt) {
    const sentKey = apiKey;
    let resp;
    try {
      resp = await fetch(path, { ...init, headers: authHeaders(init.headers) });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(`Cannot reach diffusiond at ${location.origin}. Is it running?`);
    }
    if (resp.status !== 401 || attempt >= 3) return resp;
    // Another request may already have stored a new key while this one was in flight.
    if (apiKey !== sentKey) continue;
    if (!(await askKeyOnce(sentKey !== ''))) return resp;
  }
}

function plainWords(status, code, message, resp) {
  if (status === 429) {
    const after = resp && resp.headers.get('Retry-After');
    return `The queue is full. ${message ? message + ' ' : ''}Try again${after ? ` in ${after} s` : ' in a moment'}.`;
  }
  if (status === 401) return 'The daemon needs a valid API key.';
  if (status === 413) return message || 'The request is too large.';
  if (status === 503) return message || 'The daemon is not ready (still loading, or shutting down).';
  if (message) return message;
  return `The daemon answered ${status}${code ? ` (${code})` : ''}.`;
}

const FIELDS = ['negative_prompt', 'prompt', 'width', 'height', 'steps', 'guidance_scale', 'seed',
                'scheduler', 'n', 'negative_original_size', 'negative_crops_coords_top_left',
                'negative_target_size', 'original_size', 'crops_coords_top_left', 'target_size',
                'prompt_syntax'];
function fieldOf(error) {
  if (error && typeof error.field === 'string') return error.field;
  const text = `${error?.message || ''}`;
  return FIELDS.find((f) => new RegExp(`\\b${f}\\b`).test(text)) || '';
}

// Reads a JSON answer; throws ApiError with plain words for any non-2xx answer.
export async function readJson(resp) {
  const text = await resp.text();
  let body = null;
  try { body = text ? parseJson(text) : null; } catch { /* not JSON */ }
  if (!resp.ok) {
    const err = (body && body.error) || {};
    const message = typeof err === 'string' ? err : (err.message || '');
    throw new ApiError(plainWords(resp.status, err.code || '', message, resp),
                       { status: resp.status, code: err.code || '', field: fieldOf(err) });
  }
  return body;
}

export async function getJson(path) { return readJson(await authFetch(path)); }

export async function sendJson(method, path, body) {
  return readJson(await authFetch(path, {
    method,
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    body: body === undefined ? undefined : toJsonBody(body),
  }));
}

// A URL an <img> or a download link can use. Without a key it is the API URL itself (cacheable);
// with a key the PNG is fetched with the header and served from a blob: URL.
const blobUrls = new Map();
export async function imageUrl(url) {
  if (!apiKey) return url;
  if (blobUrls.has(url)) return blobUrls.get(url);
  const resp = await authFetch(url);
  if (!resp.ok) await readJson(resp);
  const blobUrl = URL.createObjectURL(await resp.blob());
  blobUrls.set(url, blobUrl);
  return blobUrl;
}

// Reads a Server-Sent Events stream with fetch(); calls onOpen() once the server accepted it
// (the moment to catch up with GET), then onEvent(type, data) per event. Resolves when the server
// ends the stream or `signal` aborts it; rejects on HTTP or network errors.
export async function streamEvents(path, onEvent, { signal, onOpen } = {}) {
  const resp = await authFetch(path, { headers: { Accept: 'text/event-stream' }, signal });
  if (!resp.ok) await readJson(resp);
  if (onOpen) onOpen();
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let type = '';
  let data = [];
  const dispatch = () => {
    if (data.length === 0) { type = ''; return; }
    const raw = data.join('\n');
    data = [];
    let payload = raw;
    try { payload = parseJson(raw); } catch { /* plain text event */ }
    const name = type || (payload && (payload.type || payload.event)) || 'message';
    type = '';
    onEvent(name, payload);
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let nl;
      while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + (buffer.startsWith('\r\n', nl) ? 2 : 1));
        if (line === '') { dispatch(); continue; }
        if (line.startsWith(':')) continue;  // comment / keep-alive
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let value2 = colon < 0 ? '' : line.slice(colon + 1);
        if (value2.startsWith(' ')) value2 = value2.slice(1);
        if (field === 'event') type = value2;
        else if (field === 'data') data.push(value2);
      }
    }
  } catch (e) {
    if (e.name !== 'AbortError') throw e;
  } finally {
    reader.releaseLock();
  }
}
