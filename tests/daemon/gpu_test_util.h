// What the GPU test files share (test_daemon_gpu.cpp, test_daemon_gpu_graphs.cpp): the tiny
// model, the skip without CUDA, pixel comparison, the mixed batch of four requests and the
// sync-debug run of the denoising loop. Test code only.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "pipeline/txt2img.h"

#if DIFFUSIOND_TORCH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace diffusiond::gpu_test {

inline const std::string kModel = std::string(DIFFUSIOND_FIXTURES) + "/tiny-sd1";

// ctest runs each test case in its own process (catch_discover_tests), so exiting skips just the
// one test case. Run by hand without a CUDA device, the binary stops at the first CUDA test case.
constexpr int kSkipExitCode = 77;

inline void require_cuda() {
  if (torch::cuda::is_available()) return;
  std::cout << "no CUDA device: skipped (exit code " << kSkipExitCode << ")" << std::endl;
  std::fflush(nullptr);
  std::_Exit(kSkipExitCode);  // no static destructors: LibTorch's thread pools may be running
}

inline int max_abs_diff(const RgbImage& a, const RgbImage& b) {
  int worst = 0;
  for (std::size_t i = 0; i < a.pixels.size(); ++i)
    worst =
        std::max(worst, std::abs(static_cast<int>(a.pixels[i]) - static_cast<int>(b.pixels[i])));
  return worst;
}

// Four different requests (prompt, negative prompt absent/given/empty, guidance, seed) that may
// share one batch: 64x64, 8 steps of `scheduler`.
inline std::vector<Txt2ImgParams> mixed_batch(const std::string& scheduler) {
  std::vector<Txt2ImgParams> items;
  const char* prompts[] = {"a red house", "an astronaut riding a horse", "a bowl of fruit",
                           "a red house"};
  const std::optional<std::string> negatives[] = {std::nullopt, "blurry", "", "cartoon"};
  const double scales[] = {7.5, 3.0, 12.0, 7.5};
  for (int k = 0; k < 4; ++k) {
    Txt2ImgParams p;
    p.prompts = {prompts[k]};
    p.negative_prompt = negatives[k];
    p.guidance_scale = scales[k];
    p.seed = 11 + static_cast<std::uint64_t>(k);
    p.steps = 8;
    p.width = p.height = 64;
    p.scheduler = scheduler;
    items.push_back(p);
  }
  return items;
}

#if DIFFUSIOND_TORCH_CUDA
// Runs `items` as one batch with CUDA's sync-debug mode L_ERROR from the first step's callback
// to the last one's: any synchronising CUDA call (a blocking copy, .item(), a stream or device
// synchronize) throws. Image 1 leaves the batch at step 3, inside the checked span (with graphs:
// the next step captures a graph for the smaller batch there). Returns the error, "" if none.
inline std::string sync_error_of(StableDiffusion& pipe, const std::vector<Txt2ImgParams>& items) {
  auto& state = c10::cuda::warning_state();
  std::string error;
  try {
    pipe.generate_batch(items, [&](int image, int step, int steps) {
      if (step == 1 && image == 0) state.set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR);
      if (step == steps) state.set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
      return !(image == 1 && step == 3);
    });
  } catch (const std::exception& e) {
    error = e.what();
  }
  state.set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
  return error;
}
#endif

}  // namespace diffusiond::gpu_test
