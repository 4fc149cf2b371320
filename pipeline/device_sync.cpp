#include "pipeline/device_sync.h"

#include <c10/core/impl/VirtualGuardImpl.h>

#include <chrono>
#include <thread>

namespace diffusiond {
namespace {

c10::Stream current_stream(torch::Device device) {
  return c10::impl::VirtualGuardImpl(device.type()).getStream(device);
}

// Polls the event: a blocking wait would spin a core (the CUDA default) or need an event made
// with the blocking-sync flag, which c10::Event cannot ask for.
void wait_for(const c10::Event& event) {
  while (!event.query()) std::this_thread::sleep_for(std::chrono::microseconds(100));
}

}  // namespace

StepFence::StepFence(torch::Device device, int max_ahead)
    : active_(device.is_cuda() && max_ahead > 0),
      device_(device),
      max_ahead_(max_ahead > 0 ? static_cast<std::size_t>(max_ahead) : 0) {}

void StepFence::launched() {
  if (!active_) return;
  pending_.emplace_back(c10::DeviceType::CUDA);
  pending_.back().record(current_stream(device_));
}

void StepFence::wait() {
  while (active_ && pending_.size() > max_ahead_) {
    wait_for(pending_.front());
    pending_.pop_front();
  }
}

torch::Tensor copy_to_host(const torch::Tensor& t) {
  if (!t.is_cuda()) return t.to(torch::kCPU);
  torch::Tensor host = torch::empty(t.sizes(), t.options().device(torch::kCPU).pinned_memory(true));
  host.copy_(t, /*non_blocking=*/true);
  c10::Event done(c10::DeviceType::CUDA);
  done.record(current_stream(t.device()));
  wait_for(done);
  return host;
}

void use_channels_last(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) {
    if (p.dim() == 4) p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
  }
}

}  // namespace diffusiond
