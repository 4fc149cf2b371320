// The in-process baseline of bench_serve: the same images made by pipeline/txt2img.h directly,
// one replica per worker thread, no HTTP, no store, no PNG.
#pragma once

#include <torch/types.h>

#include <string>
#include <vector>

#include "pipeline/device_tuning.h"
#include "serve_clients.h"

namespace diffusiond::bench {

struct InProcessRun {
  double wall_s = 0;                  // the parallel run: first image to last
  std::vector<double> image_ms;       // parallel run: generate() time per image
  std::vector<double> sequential_ms;  // one replica, one image at a time (nothing else running)
};

// First every image one at a time on the first replica (the unloaded pipeline time), then all of
// them again on one replica per entry of `devices`, each in its own thread, with
// `threads_per_worker` intra-op threads (process-wide, as the daemon sets it). batch > 1: each
// replica takes up to `batch` images at a time as one generate_batch() (what the daemon does
// with --max-batch), image_ms then being the batch's time divided by its images. `tuning`:
// what CUDA replicas use (as the daemon's --cuda-graphs etc.).
InProcessRun run_in_process(const std::string& model_dir, const std::vector<torch::Device>& devices,
                            torch::ScalarType dtype, int threads_per_worker, const WorkSpec& work,
                            int batch = 1, const DeviceTuning& tuning = {});

}  // namespace diffusiond::bench
