// Keeping the host off the device's back in the denoising loop, device-generic (c10::Event, so
// it builds against CPU-only LibTorch and does nothing on the CPU):
//   StepFence     a CUDA event per launched step; the host waits (polling, never a device or
//                 stream synchronize) only when it is more than N steps ahead of the device, so
//                 progress reports are at most N steps early and a cancel acts within N steps,
//                 while the device always has N steps queued.
//   copy_to_host  a device tensor into pinned host memory, asynchronously, then waits for that
//                 copy's event alone.
//   use_channels_last  a module's 4-d weights (convolutions) in channels_last memory format.
// Thread-safety: a StepFence belongs to the one thread that launches the steps.
#pragma once

#include <deque>

#include <torch/torch.h>

namespace diffusiond {

class StepFence {
 public:
  // max_ahead <= 0 or a non-CUDA device: no fence (launched() and wait() do nothing).
  StepFence(torch::Device device, int max_ahead);
  void launched();  // after a step's launches: records an event on the current stream
  void wait();      // until at most max_ahead recorded steps are still running on the device

 private:
  bool active_ = false;
  torch::Device device_;
  std::size_t max_ahead_ = 0;
  std::deque<c10::Event> pending_;  // oldest first
};

// `t` on the host (as t.to(kCPU)); from CUDA through pinned memory with a non-blocking copy.
torch::Tensor copy_to_host(const torch::Tensor& t);

// Every 4-d parameter of `module` (and its children) becomes channels_last, in place (set_data).
void use_channels_last(torch::nn::Module& module);

}  // namespace diffusiond
