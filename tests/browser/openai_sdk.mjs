// The official `openai` npm package (unmodified, pinned by package-lock.json) against the real
// daemon on the tiny model: images.generate with n = 2 in both response formats, streaming with
// partial images, models.list / models.retrieve, and a 400 the SDK surfaces as an APIError.
// Plain node; exits non-zero on the first failed assertion.
// Env: DIFFUSIOND_BIN, DIFFUSIOND_NODE_MODULES (openai).
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import path from 'node:path';

import { startDaemon } from './daemon.mjs';

const here = path.dirname(new URL(import.meta.url).pathname);
const modulesDir = process.env.DIFFUSIOND_NODE_MODULES || path.join(here, 'node_modules');
const OpenAI = createRequire(path.join(modulesDir, 'noop.js'))('openai');

const PNG = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
const log = (msg) => console.log(`[openai_sdk] ${msg}`);
const isPng = (bytes) => bytes.subarray(0, 8).equals(PNG);
const pngWidth = (bytes) => bytes.readUInt32BE(16);

const apiKey = `sk-diffusiond-${process.pid}`;
const daemon = await startDaemon({ apiKey });
let failed = null;
try {
  const client = new OpenAI({ apiKey, baseURL: `${daemon.url}/v1`, maxRetries: 0, timeout: 300000 });

  log('models.list / models.retrieve');
  const models = [];
  for await (const m of client.models.list()) models.push(m);
  assert.equal(models.length, 1);
  assert.equal(models[0].object, 'model');
  const retrieved = await client.models.retrieve(models[0].id);
  assert.equal(retrieved.id, models[0].id);

  log('images.generate n=2, b64_json');
  const b64 = await client.images.generate({
    model: 'gpt-image-1', prompt: 'a lighthouse at dusk', n: 2, size: '64x64',
    response_format: 'b64_json', quality: 'low',
  });
  assert.equal(b64.data.length, 2);
  assert.equal(b64.size, '64x64');
  assert.equal(b64.output_format, 'png');
  assert.equal(b64.quality, 'low');
  assert.ok(Number.isInteger(b64.created));
  for (const image of b64.data) {
    const bytes = Buffer.from(image.b64_json, 'base64');
    assert.ok(isPng(bytes), 'b64_json is a PNG');
    assert.equal(pngWidth(bytes), 64);
  }

  log('images.generate n=2, url');
  const urls = await client.images.generate({
    model: models[0].id, prompt: 'a lighthouse at dusk', n: 2, size: '64x64', response_format: 'url',
    quality: 'low',
  });
  assert.equal(urls.data.length, 2);
  for (const image of urls.data) {
    assert.ok(image.url.startsWith(`${daemon.url}/jobs/`), image.url);
    const r = await fetch(image.url, { headers: { Authorization: `Bearer ${apiKey}` } });
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('content-type'), 'image/png');
    assert.ok(isPng(Buffer.from(await r.arrayBuffer())));
  }

  log('images.generate stream with partial_images=2');
  const stream = await client.images.generate({
    prompt: 'a slow fox', size: '128x128', stream: true, partial_images: 2, steps: 60,
  });
  const partial = [];
  const completed = [];
  for await (const event of stream) {
    if (event.type === 'image_generation.partial_image') partial.push(event);
    else if (event.type === 'image_generation.completed') completed.push(event);
    else assert.fail(`unexpected event type ${event.type}`);
  }
  assert.equal(completed.length, 1);
  assert.ok(isPng(Buffer.from(completed[0].b64_json, 'base64')));
  assert.equal(completed[0].size, '128x128');
  assert.ok(partial.length >= 1 && partial.length <= 2, `partial images: ${partial.length}`);
  partial.forEach((p, i) => {
    assert.equal(p.partial_image_index, i);
    assert.ok(isPng(Buffer.from(p.b64_json, 'base64')));
  });

  log('a 400 surfaces as an APIError');
  await assert.rejects(
    client.images.generate({ prompt: 'x', background: 'transparent' }),
    (err) => {
      assert.ok(err instanceof OpenAI.APIError, `an APIError, got ${err}`);
      assert.ok(err instanceof OpenAI.BadRequestError);
      assert.equal(err.status, 400);
      assert.equal(err.param, 'background');
      assert.equal(err.type, 'invalid_request_error');
      return true;
    });
  log('a wrong key is an AuthenticationError');
  const stranger = new OpenAI({ apiKey: 'wrong', baseURL: `${daemon.url}/v1`, maxRetries: 0 });
  await assert.rejects(stranger.models.list(), (err) => err instanceof OpenAI.AuthenticationError);
  log('all passed');
} catch (e) {
  failed = e;
} finally {
  await daemon.stop();
}
if (failed) {
  console.error('[openai_sdk] FAILED:', failed);
  console.error(daemon.log().slice(-4000));
  process.exit(1);
}
