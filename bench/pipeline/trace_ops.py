#!/usr/bin/env python3
"""Self time per ATen op in a Chrome trace written by `bench_pipeline --trace FILE`.

    bench/pipeline/trace_ops.py TRACE [--scope NAME] [--top N]

--scope keeps the ops inside every event called NAME (the pipeline names its stages
diffusiond::UNet2DConditionModel and diffusiond::AutoencoderKL.decode) and prints the
times per scope call. Self time = an op's time minus the ops it called (same thread);
the same measure as torch.profiler's "Self CPU", so the tables compare with diffusers'."""
import argparse
import collections
import json


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--scope")
    ap.add_argument("--top", type=int, default=20)
    a = ap.parse_args()
    with open(a.trace) as f:
        events = json.load(f)
    if isinstance(events, dict):
        events = events.get("traceEvents", [])
    events = [e for e in events if e.get("ph") == "X"]
    windows = [(float(e["ts"]), float(e["ts"]) + float(e["dur"]))
               for e in events if a.scope and e["name"] == a.scope]
    if a.scope:
        if not windows:
            raise SystemExit(f"no event named {a.scope!r} in {a.trace}")
        events = [e for e in events if e["name"] != a.scope and
                  any(lo <= float(e["ts"]) < hi for lo, hi in windows)]
    calls = max(1, len(windows))
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[e.get("tid")].append(e)
    self_us, count = collections.Counter(), collections.Counter()
    for thread_events in by_thread.values():
        thread_events.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))
        stack = []
        for e in thread_events:
            start, dur = float(e["ts"]), float(e["dur"])
            while stack and float(stack[-1]["ts"]) + float(stack[-1]["dur"]) <= start:
                stack.pop()
            if stack:
                self_us[stack[-1]["name"]] -= dur
            self_us[e["name"]] += dur
            count[e["name"]] += 1
            stack.append(e)
    total = sum(self_us.values()) or 1.0
    scope = f" per {a.scope} call ({calls} calls)" if a.scope else ""
    print(f"self time{scope}: {total / 1e6 / calls:.3f} s")
    print(f"{'op':40s} {'self s':>8s} {'%':>6s} {'calls':>6s}")
    for name, us in self_us.most_common(a.top):
        print(f"{name:40s} {us / 1e6 / calls:8.3f} {100 * us / total:6.1f} {count[name] // calls:6d}")


if __name__ == "__main__":
    main()
