// Browser end-to-end test of diffusiond's web UI: the real daemon on the tiny model, Debian's
// chromium driven by playwright-core. Plain node; exits non-zero on the first failed check.
// Env: DIFFUSIOND_BIN (the daemon), DIFFUSIOND_BUILD_DIR (screenshots go to
// <build>/browser-screenshots), DIFFUSIOND_NODE_MODULES (where `npm ci` put playwright-core),
// CHROMIUM (default /usr/bin/chromium).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';

import { sourceDir, startDaemon } from './daemon.mjs';

const here = path.dirname(new URL(import.meta.url).pathname);
const modulesDir = process.env.DIFFUSIOND_NODE_MODULES || path.join(here, 'node_modules');
const { chromium } = createRequire(path.join(modulesDir, 'noop.js'))('playwright-core');

const buildDir = process.env.DIFFUSIOND_BUILD_DIR || path.join(sourceDir, 'build');
const shotDir = path.join(buildDir, 'browser-screenshots');
fs.mkdirSync(shotDir, { recursive: true });
const WAIT = { timeout: 180000 };
// waitForFunction re-checks on a timer rather than on animation frames, which a busy headless
// renderer may not produce.
const POLL = { ...WAIT, polling: 250 };

let step = 'start';
function log(msg) { console.log(`[browser_e2e] ${msg}`); }
function check(name) { step = name; log(name); }

async function launch() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'diffusiond-e2e-profile-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
           '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
           '--disable-dev-shm-usage'],  // CI containers often have a 64 MB /dev/shm
    viewport: { width: 1280, height: 900 },
    permissions: ['clipboard-read', 'clipboard-write'],
  });
  const pageErrors = [];
  const watch = (p) => {
    p.on('pageerror', (e) => pageErrors.push(String(e)));
    p.on('crash', () => pageErrors.push('the page crashed (renderer process gone)'));
  };
  context.pages().forEach(watch);  // the persistent context opens with a page already
  context.on('page', watch);
  const close = async () => {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  };
  return { context, pageErrors, close };
}

async function shot(page, name, fullPage = true) {
  const file = path.join(shotDir, `${name}.png`);
  await page.screenshot({ path: file, fullPage });
  log(`screenshot ${file}`);
}

// Records every value each progress bar in the queue takes, in order.
async function recordProgress(page) {
  await page.evaluate(() => {
    window.progressHistory = [];
    const note = (bar) => {
      const job = bar.closest('.job')?.dataset.jobId;
      window.progressHistory.push({ job, id: bar.id, value: Number(bar.getAttribute('value')),
                                    max: Number(bar.getAttribute('max')) });
    };
    new MutationObserver((records) => {
      for (const r of records) {
        if (r.type === 'attributes' && r.target.tagName === 'PROGRESS') note(r.target);
        for (const n of r.addedNodes || []) {
          if (n.querySelectorAll) n.querySelectorAll('progress').forEach(note);
        }
      }
    }).observe(document.querySelector('#queue'),
               { subtree: true, childList: true, attributes: true, attributeFilter: ['value', 'max'] });
  });
}

const jobItem = (page, id) => page.locator(`#queue .job[data-job-id="${id}"]`);

// Submits the form and returns the new job's id (from the POST /generate answer).
async function submit(page, how = 'click') {
  const answer = page.waitForResponse((r) => r.url().endsWith('/generate') && r.request().method() === 'POST');
  if (how === 'keyboard') {
    await page.locator('#prompt').focus();
    await page.keyboard.press('Control+Enter');
  } else {
    await page.locator('#generate').click();
  }
  const resp = await answer;
  return { status: resp.status(), body: await resp.json() };
}

// On a failure: what the page said and showed (uncaught errors, console, the queue's HTML).
async function dumpPage(page, pageErrors, consoleLines) {
  console.error(`---- page errors ----\n${pageErrors.join('\n') || '(none)'}`);
  console.error(`---- page console (last 40) ----\n${consoleLines.slice(-40).join('\n') || '(none)'}`);
  const queue = await page.evaluate(() => document.querySelector('#queue')?.outerHTML || '');
  console.error(`---- #queue (first 3000 chars) ----\n${queue.slice(0, 3000)}`);
  await shot(page, '99-failure');
}

async function testUi(daemon) {
  const { context, pageErrors, close } = await launch();
  const consoleLines = [];
  let page = null;
  try {
    page = context.pages()[0] || await context.newPage();
    page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
    check('page loads, model and samplers come from the daemon');
    await page.goto(daemon.url);
    await page.waitForSelector('body[data-ready="true"]', WAIT);
    const model = await (await fetch(`${daemon.url}/model`)).json();
    assert.equal(await page.locator('#model-name').textContent(), model.name);
    assert.equal(await page.locator('#test-model-notice').isVisible(), Boolean(model.is_test_model));
    const samplers = await page.locator('#sampler option').count();
    assert.ok(samplers >= 1, 'the sampler list is empty');
    const sizes = await page.locator('#size-preset option').allTextContents();
    assert.ok(model.size_presets.length >= 3, `GET /model size_presets: ${model.size_presets}`);
    for (const [w, h] of model.size_presets) {
      assert.ok(sizes.some((t) => t.includes(`${w} × ${h}`)), `size preset ${w}x${h} missing: ${sizes}`);
    }
    assert.ok(sizes.includes('Custom'), `no Custom size: ${sizes}`);
    // SD 1.x: no micro-conditioning, no absent/empty negative prompt choice.
    assert.equal(await page.locator('#advanced').isVisible(), false);
    assert.equal(await page.locator('#negative-empty-row').isVisible(), false);

    check('every form control has a label');
    const unlabelled = await page.evaluate(() => [...document.querySelectorAll('input, select, textarea')]
      .filter((e) => e.labels.length === 0 && !e.getAttribute('aria-label')).map((e) => e.id || e.name));
    assert.deepEqual(unlabelled, []);

    check('submit a prompt with Ctrl+Enter: progress moves, the image appears in the gallery');
    await recordProgress(page);
    await page.fill('#prompt', 'a photograph of an astronaut riding a horse');
    // Enough steps that the bar is seen between 0 and the end even on an idle machine (12 steps
    // of the tiny model took 136 ms: every event arrived before the page painted once).
    const steps = 48;
    await page.fill('#steps', String(steps));
    await page.fill('#seed', '1234');
    const first = await submit(page, 'keyboard');
    assert.equal(first.status, 202, JSON.stringify(first.body));
    const firstId = first.body.id;
    await page.waitForSelector(`#queue .job[data-job-id="${firstId}"][data-status="done"]`, WAIT);
    await page.waitForFunction(() => [...document.querySelectorAll('#gallery img')]
      .some((img) => img.complete && img.naturalWidth > 0), null, POLL);
    const history = (await page.evaluate(() => window.progressHistory)).filter((h) => h.job === firstId);
    const values = history.map((h) => h.value);
    const between = new Set(history.filter((h) => h.value > 0 && h.value < h.max).map((h) => h.value));
    assert.ok(between.size >= 2, `progress bar did not move through steps: ${values}`);
    assert.equal(history.at(-1).value, steps, `progress did not end at ${steps} of ${steps}: ${values}`);
    const img = page.locator('#gallery img').first();
    const natural = await img.evaluate((i) => [i.naturalWidth, i.naturalHeight]);
    const job = await (await fetch(`${daemon.url}/jobs/${firstId}`)).json();
    assert.deepEqual(natural, [job.request.width, job.request.height]);
    const device = job.images[0].device;
    assert.match(await jobItem(page, firstId).locator('.image-device').first().textContent(),
                 new RegExp(device.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
    await shot(page, '01-generated');

    check('gallery: enlarge, copy parameters, reuse seed');
    await page.locator('#gallery .thumb').first().click();
    await page.waitForSelector('#viewer[open]');
    await page.waitForFunction(() => document.querySelector('#viewer-image').naturalWidth > 0);
    assert.match(await page.locator('#viewer-params').textContent(), /Seed: 1234\b/);
    await shot(page, '02-viewer', false);
    await page.locator('#viewer-copy').click();
    await page.waitForSelector('#toast:not([hidden])');
    const copied = await page.evaluate(() => navigator.clipboard.readText());
    assert.match(copied, /^a photograph of an astronaut riding a horse\n/);
    assert.match(copied,
      new RegExp(`Steps: ${steps}, Sampler: .+, CFG scale: [\\d.]+, Seed: 1234, Size: \\d+x\\d+`));
    await page.locator('#viewer-close').click();
    await page.fill('#seed', '');
    await page.locator('#gallery .card').first().getByRole('button', { name: /Reuse seed/ }).click();
    assert.equal(await page.inputValue('#seed'), '1234');
    const href = await page.locator('#gallery .card a[download]').first().getAttribute('href');
    assert.equal(href, `/jobs/${firstId}/images/0.png`);

    check('device panel shows the device and its finished image');
    await page.waitForFunction((name) => {
      const d = document.querySelector(`#devices .device[data-device="${name}"]`);
      return d && /Images done\s*[1-9]/.test(d.textContent);
    }, device, POLL);

    check('LoRA list: add a LoRA with a weight; the job and its PNG carry it');
    const loras = (await (await fetch(`${daemon.url}/loras`)).json()).loras;
    assert.deepEqual(loras.map((l) => l.name), ['style_kohya', 'style_peft']);
    await page.locator('#loras summary').click();
    await page.selectOption('#lora-pick', 'style_kohya');
    await page.locator('#lora-add').click();
    await page.fill('#lora-list .lora[data-name="style_kohya"] .lora-weight', '0.8');
    await page.fill('#steps', '4');
    await page.fill('#seed', '42');
    const withLora = await submit(page);
    assert.equal(withLora.status, 202, JSON.stringify(withLora.body));
    assert.deepEqual(withLora.body.request.loras, [{ name: 'style_kohya', weight: 0.8 }]);
    await page.waitForSelector(`#queue .job[data-job-id="${withLora.body.id}"][data-status="done"]`, WAIT);
    await shot(page, '02b-lora');
    await page.locator('#lora-list .lora-remove').first().click();
    assert.equal(await page.locator('#lora-list .lora').count(), 0);

    check('cancel a long job while it runs');
    await page.fill('#steps', '150');
    await page.fill('#count', '16');
    await page.fill('#seed', '');
    const long = await submit(page);
    assert.equal(long.status, 202, JSON.stringify(long.body));
    const longItem = jobItem(page, long.body.id);
    await page.waitForFunction((id) => {
      const bar = document.querySelector(`#queue .job[data-job-id="${id}"] progress`);
      return bar && Number(bar.getAttribute('value')) > 0;
    }, long.body.id, POLL);
    await shot(page, '03-running');
    await longItem.getByRole('button', { name: /Cancel/ }).click();
    await page.waitForSelector(`#queue .job[data-job-id="${long.body.id}"][data-status="cancelled"]`, WAIT);
    const cancelled = await (await fetch(`${daemon.url}/jobs/${long.body.id}`)).json();
    assert.equal(cancelled.status, 'cancelled');
    assert.ok(cancelled.images.some((im) => im.status !== 'done'), 'the long job finished before the cancel');
    assert.equal(await longItem.locator('.cancel').isVisible(), false);
    await shot(page, '04-cancelled');

    check('the A1111 prompt syntax checkbox: off by default (plain, no field sent), on sends "a1111"');
    assert.equal(await page.isChecked('#a1111-syntax'), false);
    assert.equal(job.request.prompt_syntax, undefined);  // the first job: plain
    await page.fill('#prompt', 'a (red:1.3) [bicycle] BREAK a blue sky');
    await page.fill('#steps', '2');
    await page.check('#a1111-syntax');
    const a1111 = await submit(page);
    assert.equal(a1111.status, 202, JSON.stringify(a1111.body));
    await page.waitForSelector(`#queue .job[data-job-id="${a1111.body.id}"][data-status="done"]`, WAIT);
    const a1111Job = await (await fetch(`${daemon.url}/jobs/${a1111.body.id}`)).json();
    assert.equal(a1111Job.request.prompt_syntax, 'a1111');
    assert.deepEqual(a1111Job.request.prompts, ['a (red:1.3) [bicycle] BREAK a blue sky']);
    await page.uncheck('#a1111-syntax');

    check('an API error is shown next to the form for a bad size');
    await page.selectOption('#size-preset', 'custom');
    await page.fill('#width', '100');
    await page.fill('#steps', '4');
    await page.fill('#count', '1');
    const bad = await submit(page);
    assert.equal(bad.status, 400, JSON.stringify(bad.body));
    const error = page.locator('#form-error');
    await error.waitFor({ state: 'visible' });
    const text = await error.textContent();
    assert.ok(text.includes(bad.body.error.message), `shown "${text}", API said "${bad.body.error.message}"`);
    assert.match(text, /width/);
    assert.equal(await page.getAttribute('#width', 'aria-invalid'), 'true');
    await shot(page, '05-error');

    check('phone width: one column, nothing wider than the screen');
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(100);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    const wide = await page.evaluate(() => [...document.querySelectorAll('body *')]
      .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
      .map((e) => `${e.tagName.toLowerCase()}#${e.id}.${e.className}`).slice(0, 8));
    assert.ok(overflow <= 0, `page is ${overflow}px wider than a phone screen: ${wide}`);
    await shot(page, '06-phone');

    assert.deepEqual(pageErrors, [], 'uncaught errors in the page');
  } catch (e) {
    if (page) await dumpPage(page, pageErrors, consoleLines).catch((d) => log(`no page dump: ${d}`));
    throw e;
  } finally {
    await close();
  }
}

async function testApiKey(daemon, key) {
  const { context, pageErrors, close } = await launch();
  try {
    const page = context.pages()[0] || await context.newPage();
    check('with --api-key the page asks for the key once and keeps it');
    await page.goto(daemon.url);
    await page.waitForSelector('#key-dialog[open]', WAIT);
    await shot(page, '07-api-key', false);
    await page.fill('#api-key', key);
    await page.locator('#key-dialog button[value="save"]').click();
    await page.waitForSelector('body[data-ready="true"]', WAIT);
    assert.notEqual(await page.locator('#model-name').textContent(), 'loading…');
    assert.equal(await page.evaluate(() => localStorage.getItem('diffusiond.apiKey')), key);

    check('with a key: generate, the image loads through the key');
    await page.fill('#prompt', 'a red bicycle');
    await page.fill('#steps', '3');
    const job = await submit(page);
    assert.equal(job.status, 202, JSON.stringify(job.body));
    await page.waitForFunction(() => [...document.querySelectorAll('#gallery img')]
      .some((img) => img.complete && img.naturalWidth > 0), null, POLL);

    check('after a reload the key is remembered: no dialog');
    await page.reload();
    await page.waitForSelector('body[data-ready="true"]', WAIT);
    assert.equal(await page.locator('#key-dialog').evaluate((d) => d.open), false);
    await page.waitForFunction(() => [...document.querySelectorAll('#gallery img')]
      .some((img) => img.complete && img.naturalWidth > 0), null, POLL);
    await shot(page, '08-api-key-gallery');
    assert.deepEqual(pageErrors, [], 'uncaught errors in the page');
  } finally {
    await close();
  }
}

async function testSdxl(daemon) {
  const { context, pageErrors, close } = await launch();
  try {
    const page = context.pages()[0] || await context.newPage();
    check('SDXL: the model\'s own size presets, the Advanced micro-conditioning fields');
    await page.goto(daemon.url);
    await page.waitForSelector('body[data-ready="true"]', WAIT);
    const model = await (await fetch(`${daemon.url}/model`)).json();
    assert.equal(model.family, 'sdxl');
    const sizes = await page.locator('#size-preset option').allTextContents();
    for (const [w, h] of model.size_presets) {
      assert.ok(sizes.some((t) => t.includes(`${w} × ${h}`)), `size preset ${w}x${h} missing: ${sizes}`);
    }
    assert.equal(await page.inputValue('#steps'), String(model.defaults.steps));
    assert.equal(await page.locator('#negative-empty-row').isVisible(), true);
    await page.locator('#advanced summary').click();
    for (const id of ['original-height', 'original-width', 'crop-top', 'crop-left',
                      'target-height', 'target-width', 'negative-original-height',
                      'negative-original-width', 'negative-crop-top', 'negative-crop-left',
                      'negative-target-height', 'negative-target-width']) {
      assert.equal(await page.locator(`#${id}`).isVisible(), true, `#${id} not shown`);
    }

    check('SDXL: an empty negative prompt box sends none; the checkbox sends ""; crops are sent');
    await page.fill('#prompt', 'a red bicycle');
    await page.fill('#steps', '2');
    const absent = await submit(page);
    assert.equal(absent.status, 202, JSON.stringify(absent.body));
    let job = await (await fetch(`${daemon.url}/jobs/${absent.body.id}`)).json();
    assert.equal(job.request.negative_prompt, null);
    assert.deepEqual(job.request.crops_coords_top_left, [0, 0]);
    await page.check('#negative-empty');
    await page.fill('#crop-top', '16');
    await page.fill('#crop-left', '8');
    const empty = await submit(page);
    assert.equal(empty.status, 202, JSON.stringify(empty.body));
    job = await (await fetch(`${daemon.url}/jobs/${empty.body.id}`)).json();
    assert.equal(job.request.negative_prompt, '');
    assert.deepEqual(job.request.crops_coords_top_left, [16, 8]);
    assert.equal(job.request.negative_original_size, undefined);  // left empty: not sent
    await page.waitForSelector(`#queue .job[data-job-id="${empty.body.id}"][data-status="done"]`, WAIT);

    check('SDXL: negative micro-conditioning: one size alone is refused by name, both are sent');
    await page.fill('#negative-original-height', '32');
    await page.fill('#negative-original-width', '48');
    const half = await submit(page);
    assert.equal(half.status, 400, JSON.stringify(half.body));
    assert.equal(half.body.error.field, 'negative_target_size');
    assert.equal(await page.getAttribute('#negative-target-height', 'aria-invalid'), 'true');
    assert.ok((await page.locator('#form-error').textContent()).includes('negative_target_size'));
    await page.fill('#negative-target-height', '48');
    await page.fill('#negative-target-width', '80');
    const negative = await submit(page);
    assert.equal(negative.status, 202, JSON.stringify(negative.body));
    job = await (await fetch(`${daemon.url}/jobs/${negative.body.id}`)).json();
    assert.deepEqual(job.request.negative_original_size, [32, 48]);
    assert.deepEqual(job.request.negative_crops_coords_top_left, [0, 0]);
    assert.deepEqual(job.request.negative_target_size, [48, 80]);
    await page.waitForSelector(`#queue .job[data-job-id="${negative.body.id}"][data-status="done"]`, WAIT);
    await shot(page, '09-sdxl');
    assert.deepEqual(pageErrors, [], 'uncaught errors in the page');
  } finally {
    await close();
  }
}

// A models dir with tiny-sd1 and tiny-sdxl side by side (symlinks); removed by the caller.
function makeModelsDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'diffusiond-e2e-models-'));
  for (const name of ['tiny-sd1', 'tiny-sdxl'])
    fs.symlinkSync(path.join(sourceDir, 'tests', 'fixtures', name), path.join(dir, name));
  return dir;
}

async function testModelPicker(daemon) {
  const { context, pageErrors, close } = await launch();
  try {
    const page = context.pages()[0] || await context.newPage();
    check('several models: the picker lists GET /models, the default selected');
    await page.goto(daemon.url);
    await page.waitForSelector('body[data-ready="true"]', WAIT);
    const listing = await (await fetch(`${daemon.url}/models`)).json();
    assert.equal(await page.locator('#model-picker').isVisible(), true);
    const options = await page.locator('#model-picker option').evaluateAll((os) => os.map((o) => o.value));
    assert.deepEqual(options, listing.models.map((m) => m.name));
    assert.equal(await page.inputValue('#model-picker'), listing.default);
    assert.equal(await page.inputValue('#steps'), '50');
    assert.equal(await page.locator('#advanced').isVisible(), false);

    check('picking the SDXL model shows its defaults, size presets and micro-conditioning');
    await page.selectOption('#model-picker', 'tiny-sdxl');
    const xl = listing.models.find((m) => m.name === 'tiny-sdxl');
    assert.equal(await page.inputValue('#steps'), String(xl.defaults.steps));
    assert.equal(await page.inputValue('#width'), String(xl.defaults.width));
    const sizes = await page.locator('#size-preset option').allTextContents();
    for (const [w, h] of xl.size_presets) {
      assert.ok(sizes.some((t) => t.includes(`${w} × ${h}`)), `size preset ${w}x${h} missing: ${sizes}`);
    }
    assert.equal(await page.locator('#advanced').isVisible(), true);
    await page.fill('#prompt', 'a green tram');
    await page.fill('#steps', '2');
    const sent = await submit(page);
    assert.equal(sent.status, 202, JSON.stringify(sent.body));
    const job = await (await fetch(`${daemon.url}/jobs/${sent.body.id}`)).json();
    assert.equal(job.model, 'tiny-sdxl');
    assert.equal(job.request.model, 'tiny-sdxl');
    assert.equal(job.request.width, xl.defaults.width);
    await page.waitForSelector(`#queue .job[data-job-id="${sent.body.id}"][data-status="done"]`, WAIT);
    await shot(page, '10-model-picker');

    check('picking the SD 1.x model again restores its defaults');
    await page.selectOption('#model-picker', 'tiny-sd1');
    assert.equal(await page.inputValue('#steps'), '50');
    assert.equal(await page.locator('#advanced').isVisible(), false);
    assert.deepEqual(pageErrors, [], 'uncaught errors in the page');
  } finally {
    await close();
  }
}

async function main() {
  let daemon = null;
  try {
    check('start diffusiond');
    daemon = await startDaemon({
      extraArgs: ['--lora-dir', path.join(sourceDir, 'tests', 'fixtures', 'tiny-sd1-extras', 'lora')],
    });
    await testUi(daemon);
    assert.deepEqual(await daemon.stop(), { code: 0, signal: null }, 'diffusiond did not exit 0 on SIGTERM');
    daemon = null;

    check('start diffusiond with an API key');
    const key = 'e2e-secret-key';
    daemon = await startDaemon({ apiKey: key });
    await testApiKey(daemon, key);
    await daemon.stop();
    daemon = null;

    check('start diffusiond with the tiny SDXL model');
    daemon = await startDaemon({ model: path.join(sourceDir, 'tests', 'fixtures', 'tiny-sdxl') });
    await testSdxl(daemon);
    await daemon.stop();
    daemon = null;

    check('start diffusiond with a models dir (tiny-sd1 and tiny-sdxl)');
    const modelsDir = makeModelsDir();
    try {
      daemon = await startDaemon({ model: 'tiny-sd1', extraArgs: ['--models-dir', modelsDir] });
      await testModelPicker(daemon);
      await daemon.stop();
      daemon = null;
    } finally {
      fs.rmSync(modelsDir, { recursive: true, force: true });
    }
    log(`PASS (screenshots in ${shotDir})`);
  } catch (e) {
    console.error(`[browser_e2e] FAILED at "${step}": ${e.stack || e}`);
    if (daemon) console.error(`---- diffusiond output ----\n${daemon.log()}`);
    process.exitCode = 1;
  } finally {
    if (daemon) await daemon.stop();
  }
}

await main();
