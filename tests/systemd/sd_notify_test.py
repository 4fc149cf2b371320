#!/usr/bin/env python3
"""sd_notify protocol test of `diffusiond serve` (stdlib only).

Plays systemd's part: a datagram socket in NOTIFY_SOCKET, WATCHDOG_USEC in the environment, the
real daemon on the tiny model. Checks READY=1 arrives only once the model is loaded (/readyz is
already 200 when it arrives), WATCHDOG=1 arrives repeatedly, STATUS= lines are sent, SIGTERM
brings STOPPING=1 and exit code 0.

Env: DIFFUSIOND_BIN (default build/daemon/diffusiond).
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

SOURCE_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("DIFFUSIOND_BIN", os.path.join(SOURCE_DIR, "build", "daemon", "diffusiond"))
MODEL = os.path.join(SOURCE_DIR, "tests", "fixtures", "tiny-sd1")
WATCHDOG_USEC = 2_000_000
WAIT_S = 180  # upper bound for each wait; never a timing assertion


def log(msg):
    print(f"[sd_notify] {msg}", flush=True)


def fail(msg, proc=None, output=None):
    log(f"FAILED: {msg}")
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    if output is not None:
        output.seek(0)
        sys.stdout.write("---- diffusiond output ----\n" + output.read().decode(errors="replace"))
    sys.exit(1)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


class Notifications:
    """Reads sd_notify datagrams; each may carry several newline-separated KEY=VALUE lines."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.seen = []     # every line received, in order
        self.pending = []  # lines received but not yet looked at by wait_for

    def _receive(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, BlockingIOError):
            return False
        for line in data.decode(errors="replace").split("\n"):
            if line:
                self.seen.append(line)
                self.pending.append(line)
        return True

    def wait_for(self, predicate, timeout, on_message=None):
        """Returns the first line for which predicate(line) holds, or None at timeout."""
        deadline = time.monotonic() + timeout
        while True:
            while self.pending:
                line = self.pending.pop(0)
                if on_message:
                    on_message(line)
                if predicate(line):
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._receive(min(left, 1.0))

    def drain(self):
        while self._receive(0.2):
            pass


def main():
    if not os.access(BIN, os.X_OK):
        fail(f"diffusiond binary not found at {BIN} (set DIFFUSIOND_BIN)")
    with tempfile.TemporaryDirectory(prefix="diffusiond-notify-") as tmp:
        sock_path = os.path.join(tmp, "notify.sock")
        notes = Notifications(sock_path)
        port = free_port()
        data_dir = os.path.join(tmp, "data")
        os.mkdir(data_dir)
        env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC=str(WATCHDOG_USEC))
        env.pop("WATCHDOG_PID", None)
        args = [BIN, "serve", "--model", MODEL, "--devices", "cpu", "--data-dir", data_dir,
                "--listen", f"127.0.0.1:{port}"]
        log(" ".join(args))
        output = tempfile.TemporaryFile()
        proc = subprocess.Popen(args, env=env, stdout=output, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"

        # READY=1: by then every replica is loaded, so /readyz must already answer 200.
        ready_checks = []

        def check_ready(line):
            if line == "READY=1":
                ready_checks.append(http_status(f"{base}/readyz"))

        if notes.wait_for(lambda l: l == "READY=1", WAIT_S, check_ready) is None:
            fail(f"no READY=1 (exit code {proc.poll()}); got {notes.seen}",
                 proc, output)
        if ready_checks != [200]:
            fail(f"READY=1 came before the daemon was ready: /readyz answered {ready_checks}",
                 proc, output)
        log("READY=1 received; /readyz was 200")

        # WATCHDOG=1, repeatedly.
        pings = []
        got = notes.wait_for(lambda l: l == "WATCHDOG=1" and len(pings) >= 3, WAIT_S,
                             lambda l: pings.append(l) if l == "WATCHDOG=1" else None)
        if got is None:
            fail(f"WATCHDOG=1 not repeated (saw {len(pings)})", proc, output)
        log(f"WATCHDOG=1 received {len(pings)} times")

        # SIGTERM: STOPPING=1 and a clean exit.
        proc.send_signal(signal.SIGTERM)
        if notes.wait_for(lambda l: l == "STOPPING=1", WAIT_S) is None:
            fail("no STOPPING=1 after SIGTERM", proc, output)
        log("STOPPING=1 received")
        try:
            code = proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            fail("diffusiond did not exit after SIGTERM", proc, output)
        notes.drain()
        if code != 0:
            fail(f"exit code {code} after SIGTERM", None, output)
        log("exit code 0")

        lines = notes.seen
        statuses = [l for l in lines if l.startswith("STATUS=")]
        if not any("queue" in l for l in statuses):
            fail(f"no STATUS= line with the queue depth; got {sorted(set(lines))}", None, output)
        log(f"STATUS lines, e.g. {statuses[0]!r} ... {statuses[-1]!r}")
        if lines.index("STOPPING=1") < lines.index("READY=1"):
            fail("STOPPING=1 before READY=1", None, output)
    log("PASS")


if __name__ == "__main__":
    main()
