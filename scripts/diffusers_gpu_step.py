#!/usr/bin/env python3
"""diffusers' own UNet on a CUDA device, eager (its default attention: SDPA through
AttnProcessor2_0), fp16, timed as a pipeline step uses it: the CFG batch (2 x images) at the
given size, with CUDA events. The reference for bench_pipeline's "mean step" on the same weights
and card (scripts/device-check.sh runs both).

    python3 scripts/diffusers_gpu_step.py --model DIR [--size 512] [--batches 1,4] [--calls 20]

DIR: a diffusers folder with unet/ (e.g. `diffusiond make-random-model --arch sd15`). Prints
one "diffusers | ..." line per batch."""
import argparse
import os

import torch
from diffusers import UNet2DConditionModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batches", default="1,4", help="images per step (the UNet sees twice as many)")
    ap.add_argument("--calls", type=int, default=20, help="timed calls per batch, after 3 warm-ups")
    a = ap.parse_args()
    dev = torch.device("cuda:0")
    unet = UNet2DConditionModel.from_pretrained(os.path.join(a.model, "unet"),
                                                torch_dtype=torch.float16).to(dev).eval()
    side = a.size // 8
    for images in (int(b) for b in a.batches.split(",")):
        rows = 2 * images
        x = torch.randn((rows, unet.config.in_channels, side, side), device=dev, dtype=torch.float16)
        ctx = torch.randn((rows, 77, unet.config.cross_attention_dim), device=dev,
                          dtype=torch.float16)
        t = torch.tensor(500.0, device=dev)
        with torch.inference_mode():
            for _ in range(3):
                unet(x, t, encoder_hidden_states=ctx)
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(a.calls):
                unet(x, t, encoder_hidden_states=ctx)
            end.record()
            torch.cuda.synchronize()
        ms = start.elapsed_time(end) / a.calls
        print(f"diffusers | batch {images} (UNet rows {rows}) | {a.size}x{a.size} fp16 eager | "
              f"UNet {ms:.2f} ms per step | torch {torch.__version__}", flush=True)


if __name__ == "__main__":
    main()
