// Cross-origin attacks on diffusiond from a real headless Chromium (issue 15, defects 1 and 2):
// the real daemon on the tiny model without an API key (the default), an "evil" page served by a
// second origin (a node http server on another loopback port) and a DNS-rebinding page
// (--host-resolver-rules maps evil.example to 127.0.0.1, so http://evil.example:<daemon port>
// reaches the daemon with Host: evil.example). The pages report what they could read; the daemon's
// own API (from node, proper Host) then says whether any of them started work. A positive control
// from the UI's own origin proves the guard is selective. Plain node; exits non-zero on a failure,
// listing every attack that got through.
// Env: DIFFUSIOND_BIN, DIFFUSIOND_NODE_MODULES (playwright-core), CHROMIUM (default
// /usr/bin/chromium); DIFFUSIOND_EXTRA_ARGS (space-separated, appended to `serve`; used to check
// that the test fails with the guard opened: `--allowed-hosts * --allowed-origins *`).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';

import { startDaemon } from './daemon.mjs';

const here = path.dirname(new URL(import.meta.url).pathname);
const modulesDir = process.env.DIFFUSIOND_NODE_MODULES || path.join(here, 'node_modules');
const { chromium } = createRequire(path.join(modulesDir, 'noop.js'))('playwright-core');

const WAIT = { timeout: 120000 };
const EVIL_HOST = 'evil.example';
const SECRET = `secret-prompt-${process.pid}-${Date.now()}`;
// Every prompt an attack tries to submit starts with this; none may ever reach the job list.
const ATTACK = 'attack';

let step = 'start';
function log(msg) { console.log(`[browser_cross_origin] ${msg}`); }
function check(name) { step = name; log(name); }
const violations = [];
function expect(ok, what) {
  if (!ok) {
    violations.push(what);
    console.error(`[browser_cross_origin] VIOLATION: ${what}`);
  }
}

// The attacker's page on another origin: simple requests that need no CORS preflight (a no-cors
// fetch with text/plain, an auto-submitted text/plain form whose name=value pair reads as JSON), a
// preflighted JSON POST, and attempts to read the job list and an image (CORS fetch, a canvas).
// It records what it saw in window.report and sets window.done.
function evilPage(daemon, imagePath) {
  const body = JSON.stringify({ prompt: `${ATTACK} no-cors`, steps: 1 });
  const json = JSON.stringify({ prompt: `${ATTACK} preflighted`, steps: 1 });
  // text/plain form encoding: `name=value\r\n` -> {"prompt":"attack form a=b"} and a CRLF.
  const formName = `{"prompt":"${ATTACK} form a`;
  const formValue = 'b"}';
  const attr = (s) => s.replace(/&/g, '&amp;').replace(/"/g, '&quot;');
  return `<!doctype html><meta charset="utf-8"><title>evil</title>
<iframe name="sink" id="sink"></iframe>
<form id="f" method="post" enctype="text/plain" target="sink" action="${daemon}/generate">
  <input type="hidden" name="${attr(formName)}" value="${attr(formValue)}">
</form>
<script>
const daemon = ${JSON.stringify(daemon)};
const report = { read: [] };
window.report = report;
async function attempt(name, fn) {
  try { report[name] = await fn(); } catch (e) { report[name] = { error: String(e) }; }
}
(async () => {
  await attempt('noCors', async () => {
    const r = await fetch(daemon + '/generate', { method: 'POST', mode: 'no-cors',
      headers: { 'Content-Type': 'text/plain' }, body: ${JSON.stringify(body)} });
    const text = await r.text();
    if (text) report.read.push(text);
    return { type: r.type, status: r.status, length: text.length };
  });
  await attempt('preflighted', async () => {
    const r = await fetch(daemon + '/generate', { method: 'POST',
      headers: { 'Content-Type': 'application/json' }, body: ${JSON.stringify(json)} });
    const text = await r.text();
    report.read.push(text);
    return { type: r.type, status: r.status, text };
  });
  await attempt('readJobs', async () => {
    const r = await fetch(daemon + '/jobs');
    const text = await r.text();
    report.read.push(text);
    return { type: r.type, status: r.status, text };
  });
  await attempt('readJobsNoCors', async () => {
    const r = await fetch(daemon + '/jobs', { mode: 'no-cors' });
    const text = await r.text();
    if (text) report.read.push(text);
    return { type: r.type, status: r.status, length: text.length };
  });
  await attempt('readImage', async () => {
    const r = await fetch(daemon + ${JSON.stringify(imagePath)});
    const bytes = new Uint8Array(await r.arrayBuffer());
    report.read.push('image bytes: ' + bytes.length);
    return { type: r.type, status: r.status, length: bytes.length };
  });
  await attempt('canvas', () => new Promise((resolve) => {
    const img = new Image();
    img.onload = () => {
      const c = document.createElement('canvas');
      c.width = img.naturalWidth; c.height = img.naturalHeight;
      const g = c.getContext('2d');
      g.drawImage(img, 0, 0);
      try {
        const px = g.getImageData(0, 0, 1, 1).data;
        report.read.push('pixels: ' + Array.from(px).join(','));
        resolve({ pixels: Array.from(px) });
      } catch (e) { resolve({ error: String(e), loaded: true }); }
    };
    img.onerror = () => resolve({ error: 'image did not load' });
    img.src = daemon + ${JSON.stringify(imagePath)};
  }));
  // Last: the form navigates the iframe; its load event fires whatever the answer was.
  await attempt('form', () => new Promise((resolve) => {
    document.getElementById('sink').onload = () => {
      let text = null;
      try { text = document.getElementById('sink').contentDocument.body.innerText; } catch (e) {}
      if (text) report.read.push(text);
      resolve({ loaded: true, readable: text !== null });
    };
    document.getElementById('f').submit();
  }));
  window.done = true;
})();
</script>`;
}

// The rebinding attacker's script, run in the document of http://evil.example:<daemon port>/ once
// that name resolves to 127.0.0.1: its same-origin requests (readable, no CORS needed) reach the
// daemon with Host: evil.example. (Chromium's Private Network Access already blocks a page that
// was loaded from a public address from fetching loopback; the daemon must not rely on that,
// other browsers do not, and a top-level navigation after the rebinding is not blocked: so the
// script runs in a document whose address is loopback, the state a completed rebinding reaches.)
function rebindingScript(jobId) {
  return `(async () => {
  const report = { read: [], statuses: {} };
  const targets = ['/jobs', '/jobs/${jobId}', '/jobs/${jobId}/images/0.png', '/metrics', '/'];
  for (const t of targets) {
    try {
      const r = await fetch(t);
      report.statuses[t] = r.status;
      report.read.push(t + ': ' + await r.text());
    } catch (e) { report.statuses[t] = String(e); }
  }
  try {
    const r = await fetch('/generate', { method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ prompt: '${ATTACK} rebinding', steps: 1 }) });
    report.statuses.generate = r.status;
    report.read.push('generate: ' + await r.text());
  } catch (e) { report.statuses.generate = String(e); }
  return report;
})()`;
}

function startEvilServer(html) {
  return new Promise((resolve, reject) => {
    const server = http.createServer((req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
      res.end(html());
    });
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

async function allJobs(daemon) {
  const jobs = [];
  let before = null;
  for (;;) {
    const r = await fetch(`${daemon.url}/jobs?limit=500${before ? `&before=${before}` : ''}`);
    assert.equal(r.status, 200);
    const page = await r.json();
    jobs.push(...page.jobs);
    if (!page.next) return jobs;
    before = page.next;
  }
}

async function waitDone(daemon, id) {
  for (let i = 0; i < 1200; ++i) {
    const job = await (await fetch(`${daemon.url}/jobs/${id}`)).json();
    if (['done', 'failed', 'cancelled'].includes(job.status)) return job;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`job ${id} did not finish`);
}

// What a page read that it must not have: the secret prompt, image bytes or pixels (cut short and
// printable, for the failure message).
const readSecret = (report) => report.read
  .filter((t) => t.includes(SECRET) || /^pixels:|^image bytes: [1-9]/.test(t))
  .map((t) => t.slice(0, 160).replace(/[^\x20-\x7e]/g, '.'));

async function main() {
  let daemon = null;
  let evil = null;
  let browser = null;
  try {
    check('start diffusiond (no API key) and submit a job with a secret prompt');
    const extraArgs = (process.env.DIFFUSIOND_EXTRA_ARGS || '').split(' ').filter(Boolean);
    daemon = await startDaemon({ extraArgs });
    const port = new URL(daemon.url).port;
    const posted = await fetch(`${daemon.url}/generate`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ prompt: SECRET, steps: 1, seed: 5 }) });
    assert.equal(posted.status, 202, 'curl-like POST without Origin must work');
    const secretJob = await waitDone(daemon, (await posted.json()).id);
    assert.equal(secretJob.status, 'done');
    const imagePath = secretJob.images[0].url;
    assert.ok(imagePath, 'the secret job has no image url');

    evil = await startEvilServer(() => evilPage(daemon.url, imagePath));
    const evilOrigin = `http://127.0.0.1:${evil.address().port}`;
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
             '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
             '--disable-dev-shm-usage', `--host-resolver-rules=MAP ${EVIL_HOST} 127.0.0.1`],
    });
    const context = await browser.newContext();
    // What the daemon actually answered to each request the browser sent to /generate (seen by
    // the browser's network layer, not by the page).
    const generateAnswers = [];
    context.on('response', (r) => {
      if (r.url().endsWith('/generate') && r.request().method() === 'POST')
        generateAnswers.push(`${r.request().frame()?.url?.() || ''} -> ${r.status()}`);
    });

    check(`evil page on ${evilOrigin}: simple POSTs, form, CORS reads`);
    const page = await context.newPage();
    await page.goto(`${evilOrigin}/`);
    await page.waitForFunction(() => window.done === true, null, { ...WAIT, polling: 100 });
    const report = await page.evaluate(() => window.report);
    log(`evil page report: ${JSON.stringify(report)}`);
    expect(report.noCors.type === 'opaque' || report.noCors.error, `no-cors POST answer was readable: ${JSON.stringify(report.noCors)}`);
    expect(report.preflighted.error, `preflighted JSON POST went through: ${JSON.stringify(report.preflighted)}`);
    expect(report.readJobs.error, `CORS read of /jobs succeeded: ${JSON.stringify(report.readJobs).slice(0, 300)}`);
    expect(report.readImage.error, `CORS read of the image succeeded: ${JSON.stringify(report.readImage)}`);
    expect(report.canvas.error, `the image's pixels were readable through a canvas: ${JSON.stringify(report.canvas)}`);
    expect(!report.form.readable, 'the form answer was readable by the page');
    expect(readSecret(report).length === 0, `the evil page read: ${readSecret(report).join(' | ')}`);

    check(`DNS rebinding: http://${EVIL_HOST}:${port}/ resolves to the daemon`);
    const rebound = await context.newPage();
    const nav = await rebound.goto(`http://${EVIL_HOST}:${port}/`);
    expect(nav.status() === 403, `the UI was served to Host ${EVIL_HOST}: ${nav.status()}`);
    const rebind = await rebound.evaluate(rebindingScript(secretJob.id));
    log(`rebinding page report: ${JSON.stringify(rebind).slice(0, 2000)}`);
    for (const [target, status] of Object.entries(rebind.statuses))
      expect(status === 403, `rebinding ${target} answered ${status}, not 403`);
    expect(rebind.read.every((t) => t.includes('host_not_allowed')), 'a rebinding answer was not host_not_allowed');
    expect(readSecret(rebind).length === 0, `the rebinding page read: ${readSecret(rebind).join(' | ')}`);

    check('positive control: the UI on its own origin submits a job; a text/plain body from it is 415');
    const jobsBefore = (await allJobs(daemon)).length;
    const ui = await context.newPage();
    await ui.goto(daemon.url);
    await ui.waitForSelector('body[data-ready="true"]', WAIT);
    await ui.fill('#prompt', 'control from the UI');
    await ui.fill('#steps', '1');
    const answer = ui.waitForResponse((r) => r.url().endsWith('/generate') && r.request().method() === 'POST');
    await ui.locator('#generate').click();
    const controlAnswer = await answer;
    assert.equal(controlAnswer.status(), 202, await controlAnswer.text());
    const controlId = (await controlAnswer.json()).id;
    const plain = await ui.evaluate(async () => (await fetch('/generate', {
      method: 'POST', headers: { 'Content-Type': 'text/plain' },
      body: JSON.stringify({ prompt: 'attack same-origin text/plain', steps: 1 }) })).status);
    expect(plain === 415, `a same-origin text/plain body answered ${plain}, not 415`);
    const local = await context.newPage();
    await local.goto(`http://localhost:${port}/`);
    const viaLocalhost = await local.evaluate(async () => (await fetch('/generate', {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ prompt: 'control from localhost', steps: 1 }) })).status);
    assert.equal(viaLocalhost, 202, 'the UI on http://localhost:<port> could not submit');
    assert.equal((await waitDone(daemon, controlId)).status, 'done');

    check('the daemon\'s own API: no attack created a job');
    log(`POST /generate answers seen by the browser: ${generateAnswers.join('; ')}`);
    const jobs = await allJobs(daemon);
    const prompts = jobs.map((j) => j.request.prompts[0]);
    log(`jobs: ${JSON.stringify(prompts)}`);
    const attacks = prompts.filter((p) => p.startsWith(ATTACK));
    expect(attacks.length === 0, `attacks created jobs: ${JSON.stringify(attacks)}`);
    expect(jobs.length === jobsBefore + 2, `${jobs.length} jobs, not the ${jobsBefore} + the two controls`);
    assert.deepEqual(prompts.filter((p) => !p.startsWith(ATTACK)).sort(),
                     ['control from localhost', 'control from the UI', SECRET].sort());

    if (violations.length) throw new Error(`${violations.length} attack(s) got through:\n  ${violations.join('\n  ')}`);
    log('PASS');
  } catch (e) {
    console.error(`[browser_cross_origin] FAILED at "${step}": ${e.stack || e}`);
    if (daemon) console.error(`---- diffusiond output (last 4000) ----\n${daemon.log().slice(-4000)}`);
    process.exitCode = 1;
  } finally {
    if (browser) await browser.close();
    if (evil) evil.close();
    if (daemon) await daemon.stop();
  }
}

await main();
