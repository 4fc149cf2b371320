#!/usr/bin/env python3
"""systemd/diffusiond.conf.example against the real `diffusiond serve` (stdlib only).

1. Every long option of `diffusiond serve --help` (but --help and --config) is documented in the
   example, as `key = value` or `# key = value`.
2. Every documented key is a real option.
3. The example with its settings uncommented is accepted by the daemon: it starts, serves
   /readyz (with the example's API key) and exits 0 on SIGTERM.

Env: DIFFUSIOND_BIN (default build/daemon/diffusiond).
"""
import os
import threading
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

SOURCE_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("DIFFUSIOND_BIN", os.path.join(SOURCE_DIR, "build", "daemon", "diffusiond"))
EXAMPLE = os.path.join(SOURCE_DIR, "systemd", "diffusiond.conf.example")
MODEL = os.path.join(SOURCE_DIR, "tests", "fixtures", "tiny-sd1")
# Keys whose example values name things this machine lacks; the command line gives them instead.
NOT_RUNNABLE_HERE = {"model", "model-config", "models-dir", "variant", "api-key-file", "data-dir",
                     "listen", "store", "store-file"}
WAIT_S = 180


def fail(msg):
    print(f"[config_example] FAILED: {msg}", flush=True)
    sys.exit(1)


def help_options():
    out = subprocess.run([BIN, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    names = set(re.findall(r"^\s+(?:-\w,)?--([a-z][a-z0-9-]*)", out, re.M))
    return names - {"help", "config"}


def example_settings():
    """(key, value) of every `key = value` and `# key = value` line of the example."""
    settings = []
    with open(EXAMPLE, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^#?\s?([a-z][a-z0-9-]*)\s*=\s*(.+?)\s*$", line)
            if m:
                settings.append((m.group(1), m.group(2)))
    return settings


def main():
    if not os.access(BIN, os.X_OK):
        fail(f"diffusiond binary not found at {BIN} (set DIFFUSIOND_BIN)")
    options = help_options()
    settings = example_settings()
    documented = {k for k, _ in settings}
    missing = sorted(options - documented)
    unknown = sorted(documented - options)
    if missing:
        fail(f"options missing from {EXAMPLE}: {missing}")
    if unknown:
        fail(f"keys in {EXAMPLE} that `serve --help` does not know: {unknown}")
    print(f"[config_example] all {len(options)} options documented", flush=True)

    with tempfile.TemporaryDirectory(prefix="diffusiond-conf-") as tmp:
        conf = os.path.join(tmp, "diffusiond.conf")
        runnable = [(k, v) for k, v in settings if k not in NOT_RUNNABLE_HERE]
        with open(conf, "w", encoding="utf-8") as f:
            f.writelines(f"{k} = {v}\n" for k, v in runnable)
        api_key = dict(runnable).get("api-key", "")
        args = [BIN, "serve", "--config", conf, "--model", MODEL, "--devices", "cpu",
                "--threads", "1", "--data-dir", os.path.join(tmp, "data"),
                "--listen", "127.0.0.1:0"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        url = None
        log = []
        deadline = time.monotonic() + WAIT_S
        for line in proc.stdout:
            log.append(line)
            m = re.search(r"listening on (http://[\d.]+:\d+)", line)
            if m:
                url = m.group(1)
                break
            if time.monotonic() > deadline:
                break
        if url is None:
            proc.kill()
            fail(f"the daemon did not start with the example config:\n{''.join(log)}")
        # Keep reading the log so the pipe never fills.
        threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True).start()
        req = urllib.request.Request(f"{url}/readyz", headers={"Authorization": f"Bearer {api_key}"})
        status = None
        while time.monotonic() < deadline and status != 200:
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    status = r.status
            except urllib.error.HTTPError as e:
                status = e.code
            except OSError:
                status = None
            if status != 200:
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=WAIT_S)
        if status != 200:
            fail(f"/readyz answered {status} with the example config:\n{''.join(log)}")
        if code != 0:
            fail(f"exit code {code} after SIGTERM:\n{''.join(log)}")
        print(f"[config_example] the daemon ran with {len(runnable)} settings from the example",
              flush=True)
    print("[config_example] PASS")


if __name__ == "__main__":
    main()
