#!/usr/bin/python3
"""diffusers' UNet (CFG batch of 2) and VAE decode on the CPU with wall AND process CPU time
(user+sys, all threads) per call: the reference side of the CPU side-by-side in
bench/RESULTS.md. On a shared machine the wall times move with the other processes' load; the
CPU time much less, and bench_pipeline prints the same measure for diffusiond's whole image.
Same inputs as shared/reference/bench_unet_vae.py.

    source /work/notes/refenv.sh   # diffusers v0.27.2 on Debian's torch 1.13
    /usr/bin/python3 bench/pipeline/diffusers_cpu_times.py --model DIR [--calls 5] [--threads 2]

Prints per call and a per-image estimate: steps+1 UNet calls (PNDM) + one VAE decode, without
the text encoder (transformers is not in the reference environment): a lower bound for
diffusers' image."""
import argparse
import os
import resource
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel


def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(f):
    w, c = time.time(), cpu_s()
    f()
    return time.time() - w, cpu_s() - c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--calls", type=int, default=5, help="timed UNet calls (plus one warm-up)")
    ap.add_argument("--steps", type=int, default=4, help="for the per-image estimate")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(a.model, "unet")).eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(a.model, "vae")).eval()
    g = torch.Generator("cpu").manual_seed(0)
    h, w = a.height // 8, a.width // 8
    x = torch.randn((2, unet.config.in_channels, h, w), generator=g)
    ctx = torch.randn((2, 77, unet.config.cross_attention_dim), generator=g)
    lat = torch.randn((1, vae.config.latent_channels, h, w), generator=g)
    unet_t, vae_t = [], []
    with torch.no_grad():
        for i in range(a.calls + 1):
            t = torch.tensor(999 - 50 * i)
            unet_t.append(timed(lambda: unet(x, t, encoder_hidden_states=ctx).sample))
        for _ in range(2):
            vae_t.append(timed(lambda: vae.decode(lat / vae.config.scaling_factor).sample))
    mean = lambda v, k: sum(e[k] for e in v) / len(v)
    uw, uc = mean(unet_t[1:], 0), mean(unet_t[1:], 1)
    vw, vc = vae_t[1]
    print(f"diffusers {a.model} {a.width}x{a.height} fp32 threads={torch.get_num_threads()} "
          f"torch {torch.__version__}")
    print("UNet calls (wall s / CPU s): " +
          " ".join(f"{e[0]:.2f}/{e[1]:.2f}" for e in unet_t[1:]) +
          f" (warm-up {unet_t[0][0]:.2f}/{unet_t[0][1]:.2f})")
    print(f"UNet mean: {uw:.3f} s wall, {uc:.3f} s CPU")
    print(f"VAE decode: {vw:.3f} s wall, {vc:.3f} s CPU (warm-up {vae_t[0][0]:.2f})")
    n = a.steps + 1
    print(f"per image ({n} UNet calls + VAE decode, no text encoder): {n * uw + vw:.2f} s wall, "
          f"{n * uc + vc:.2f} s CPU")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
