// Starts the real diffusiond for the browser test: a free loopback port, the tiny test model,
// one CPU device and a fresh data dir. Owned by the test process; one call per daemon.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const sourceDir = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..');

export function daemonBinary() {
  const bin = process.env.DIFFUSIOND_BIN || path.join(sourceDir, 'build', 'daemon', 'diffusiond');
  if (!fs.existsSync(bin)) throw new Error(`diffusiond binary not found at ${bin} (set DIFFUSIOND_BIN)`);
  return bin;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Returns { url, stop(), log() }. Resolves once GET /readyz answers 200.
export async function startDaemon({ apiKey = '', extraArgs = [], readyTimeoutMs = 180000,
                                    model = path.join(sourceDir, 'tests', 'fixtures', 'tiny-sd1') } = {}) {
  const bin = daemonBinary();
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'diffusiond-e2e-data-'));
  const port = await freePort();
  // One intra-op thread: ctest runs tests in parallel, and OpenMP threads on an oversubscribed
  // CPU make every step many times slower.
  const args = ['serve', '--model', model,
                '--devices', 'cpu', '--threads', '1', '--data-dir', dataDir,
                '--listen', `127.0.0.1:${port}`, ...extraArgs];
  if (apiKey) args.push('--api-key', apiKey);
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (d) => { output += d; });
  child.stderr.on('data', (d) => { output += d; });
  let exited = null;
  const exit = new Promise((resolve) => child.on('exit', (code, signal) => {
    exited = { code, signal };
    resolve(exited);
  }));

  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    if (exited) {
      throw new Error(`diffusiond exited early (${JSON.stringify(exited)}): ${bin} ${args.join(' ')}\n${output}`);
    }
    try {
      const r = await fetch(`${url}/readyz`, apiKey ? { headers: { Authorization: `Bearer ${apiKey}` } } : {});
      if (r.status === 200) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`diffusiond not ready after ${readyTimeoutMs} ms:\n${output}`);
    }
    await sleep(200);
  }

  return {
    url,
    log: () => output,
    async stop() {
      if (!exited) {
        child.kill('SIGTERM');
        // The drain gives running images up to 30 s (--drain-timeout), then one more step.
        const timer = setTimeout(() => child.kill('SIGKILL'), 120000);
        await exit;
        clearTimeout(timer);
      }
      fs.rmSync(dataDir, { recursive: true, force: true });
      return exited;
    },
  };
}
