// How a replica uses its device beyond the model itself: CUDA graphs for the denoising step,
// channels_last convolutions, cuDNN's benchmark mode and how far the host may run ahead of the
// device. LibTorch-free (the daemon's torch_backend.h carries it); the one owner of these
// defaults (the daemon's options and `generate` leave a field alone unless given).
// Applied by StableDiffusion::set_device_tuning (pipeline/txt2img.h); CUDA replicas only: a CPU
// replica ignores every field.
#pragma once

#include <cstdint>

namespace diffusiond {

struct DeviceTuning {
  // Capture the UNet evaluation of a denoising step once per input shape (batch, latent size,
  // dtype, text sequence length, CFG) into a CUDA graph and replay it (pipeline/step_graphs.h).
  bool cuda_graphs = true;
  int cuda_graph_cache = 8;  // graphs kept per replica, least recently used evicted; 0 = none
  // UNet and VAE convolution weights in channels_last (NHWC) memory format: another cuDNN
  // algorithm, so images differ from the default layout by rounding. Off unless the benchmark
  // (scripts/device-check.sh) shows it faster on the card.
  bool channels_last = false;
  // cudnn.benchmark: cuDNN times its algorithms at each new convolution shape and keeps the
  // fastest (process-wide; the choice may differ between processes, so images may differ by
  // rounding between daemon runs).
  bool cudnn_benchmark = false;
  // Denoising steps the host may have launched beyond the last one the device finished (a CUDA
  // event per step): progress is reported at most this many steps early and a cancel takes
  // effect within as many; the device always has work queued. 0 = no limit (the host launches
  // every step at once).
  int max_steps_ahead = 2;
};

// What a replica's graph cache did since it was made (tests, logs).
struct GraphCacheStats {
  std::int64_t captures = 0;    // graphs captured (after their warm-up runs)
  std::int64_t replays = 0;     // steps run by replaying a graph
  std::int64_t eager_runs = 0;  // steps run eagerly (graphs off, or a shape whose capture failed)
  std::int64_t evictions = 0;   // graphs dropped by the size limit
  std::int64_t failures = 0;    // captures that failed (that shape then runs eagerly)
  std::int64_t invalidations = 0;  // whole-cache clears because the UNet's weights moved
  std::int64_t size = 0;           // graphs held now
  bool enabled = false;            // this replica replays graphs at all
};

}  // namespace diffusiond
